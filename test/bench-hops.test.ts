// The hop projection (src/cli/bench-hops.ts): a hand-worked case, and its two limits (one host: NVLink
// only, as the de-duplicated bytes; one GPU per host: across hosts only).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { callBytes } from '../src/cli/bench-bytes.js';
import { hopBytes } from '../src/cli/bench-hops.js';
import { resolveConfig } from '../src/ep/config.js';
import { Rng, randomTopk } from '../src/ep/random.js';

test('a hand-worked case: 2 hosts of 2 GPUs, four tokens of rank 0', () => {
  const cfg = resolveConfig({
    world: 4,
    numExperts: 8,
    hidden: 16,
    topk: 2,
    maxTokensPerRank: 4,
    fp8: false,
  });
  // owners: expert e on rank e >> 1; hosts: ranks 0-1 and 2-3; rank 0's rail partner on host 1 is rank 2
  const idx = Int32Array.of(0, 6, 2, 5, 4, 5, -1, 1);
  const h = hopBytes(cfg, 2, idx, 4, 0);
  const wireRow = 32 + 32; // bf16 row of 16 values, and the 2-slot record padded to 32 bytes
  // tokens 0, 1 and 2 reach host 1 (once each); token 0 is forwarded there to rank 3, token 1 goes to
  // rank 1 at home; token 2's owner on host 1 is rank 2 itself
  assert.deepEqual(h, {
    world: 4,
    gpusPerHost: 2,
    interDispatch: 3 * wireRow,
    interCombine: 3 * 32,
    nvlinkDispatch: 2 * wireRow,
    nvlinkCombine: 2 * 32,
    interPadded: 1 * 4 * wireRow,
    // our messages to the one other host (G = 2 owners there):
    // dispatch: header 16, splits 2 * 3 * 4 -> 32, then per token its books (8 + 2 slots * 12 = 32 bytes)
    // 4 * 32 = 128, rows 4 * 32 = 128; combine: header 16, status 2 * 8 = 16, count 4 -> 16, then one
    // pre-reduced row per token, 4 positions: index 4 * 4 = 16, rows 4 * 32 = 128
    railDispatch: 16 + 32 + 128 + 128,
    railCombine: 16 + 16 + 16 + 16 + 128,
  });
});

test('one host: only NVLink, one row per (token, other GPU); one GPU per host: only the hop between hosts', () => {
  const cfg = resolveConfig({ world: 8, numExperts: 256, hidden: 512, topk: 8, maxTokensPerRank: 64 });
  const idx = randomTopk(new Rng(3), 64, 8, 256, 0.1);
  for (const rank of [0, 5]) {
    const b = callBytes(cfg, idx, rank);
    const wireRow = cfg.dispatchRowBytes + cfg.groupsPerRow * 4 + 80; // the record, 68 bytes padded to 80
    const one = hopBytes(cfg, 8, idx, 64, rank);
    assert.equal(one.interDispatch, 0);
    assert.equal(one.interPadded, 0);
    assert.equal(one.railDispatch + one.railCombine, 0, 'no message between hosts');
    assert.equal(one.nvlinkDispatch, b.remoteTokenRanks * wireRow);
    assert.equal(one.nvlinkCombine, b.wireCombineDedup);
    const spread = hopBytes(cfg, 1, idx, 64, rank);
    assert.equal(spread.nvlinkDispatch, 0);
    assert.equal(spread.interDispatch, b.remoteTokenRanks * wireRow);
    assert.equal(spread.interPadded, 7 * 64 * wireRow);
  }
});
