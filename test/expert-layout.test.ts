import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { expertOffsetsOf, expertShape } from '../src/ep/expert-layout.js';

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
