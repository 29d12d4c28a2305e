import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { runScriptOnRanks, siblingModule } from '../src/cli/ranks.js';
import { resolveConfig } from '../src/ep/config.js';
import { expertOffsetsOf, expertShape } from '../src/ep/expert-layout.js';
import type { OverflowTask } from './helpers/overflow-rank.js';

describe('expert layout: where each local expert rows start', () => {
  const base = { world: 2, numExperts: 8, hidden: 16, topk: 2, maxTokensPerRank: 5, fp8: false };
  const counts = [3, 0, 2, 4];

  test('packed: an exclusive prefix of the counts; shape [expertRows, cols]', () => {
    const cfg = resolveConfig({ ...base, expertLayout: 'packed' });
    assert.deepEqual([...expertOffsetsOf(cfg, counts)], [0, 3, 3, 5]);
    // 2 sources * maxRowsPerPeer (5 tokens * min(2, 4) = 10) = 20 < 4 experts * 10
    assert.equal(cfg.expertRows, 20);
    assert.deepEqual(expertShape(cfg, 16), [20, 16]);
    assert.deepEqual(expertShape(cfg, 2), [20, 2]);
  });

  test('padded: expert e at e * maxRowsPerExpert whatever the counts; shape [EPR, cap, cols]', () => {
    const cfg = resolveConfig({ ...base, expertLayout: 'padded' });
    assert.equal(cfg.expertCapacity, 10);
    assert.deepEqual([...expertOffsetsOf(cfg, counts)], [0, 10, 20, 30]);
    assert.deepEqual(expertShape(cfg, 16), [4, 10, 16]);
    assert.equal(cfg.expertRows, 40);
  });
});

describe('packed layout: an expert over capacity', () => {
  for (const dispatchPath of ['direct', 'staged'] as const) {
    test(`fails the call with CapacityError on its owner, and stores no row past expertX (${dispatchPath})`, async () => {
      const script = siblingModule(import.meta.url, 'helpers/overflow-rank');
      const task: OverflowTask = { dispatchPath };
      const out = await runScriptOnRanks<string[]>('cpu', 2, script, task);
      for (const [rank, calls] of out.entries()) {
        assert.equal(calls.length, 2);
        for (const c of calls)
          assert.match(
            c,
            /^(CapacityError: expert \d received \d+ rows but maxRowsPerExpert is 4|PeerFailedError)/,
            `rank ${rank}: ${c}`,
          );
      }
      assert.ok(out.flat().some((c) => c.startsWith('CapacityError: expert 0 received 16 rows')));
    });
  }
});
