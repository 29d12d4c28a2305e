import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import {
  chooseCpuDispatchPath,
  chooseDispatchPath,
  parseDispatchPath,
  requestedDispatchPath,
  STAGED_AUTO_MAX_PAIRS,
} from '../src/ep/dispatch-path.js';

const shape = { numExperts: 256, hidden: 7168, topk: 8, dedup: false };

describe('the dispatch path of a group', () => {
  test('auto stages small batches across ranks and goes direct for large ones', () => {
    const at = (world: number, maxTokensPerRank: number) =>
      chooseDispatchPath(resolveConfig({ ...shape, world, maxTokensPerRank }), 'auto');
    assert.equal(at(2, 1), 'staged');
    assert.equal(at(4, STAGED_AUTO_MAX_PAIRS / 8), 'staged');
    assert.equal(at(4, STAGED_AUTO_MAX_PAIRS / 8 + 1), 'direct');
    assert.equal(at(2, 4096), 'direct');
    assert.equal(at(1, 1), 'direct', 'one rank: its own kernels');
  });

  test('an explicit request is kept, at every batch size the transport takes', () => {
    for (const maxTokensPerRank of [128, 4096]) {
      const cfg = resolveConfig({ ...shape, world: 2, maxTokensPerRank });
      assert.equal(chooseDispatchPath(cfg, 'staged'), 'staged');
      assert.equal(chooseDispatchPath(cfg, 'direct'), 'direct');
    }
    // one rank never stages, whatever is asked (nothing crosses)
    assert.equal(
      chooseDispatchPath(resolveConfig({ ...shape, world: 1, maxTokensPerRank: 4 }), 'staged'),
      'direct',
    );
  });

  test('a group over several hosts stages at every batch size; direct refused', () => {
    const at = (maxTokensPerRank: number, requested: 'auto' | 'staged' | 'direct' = 'auto') =>
      chooseDispatchPath(resolveConfig({ ...shape, world: 4, nodes: 2, maxTokensPerRank }), requested);
    assert.equal(at(1), 'staged');
    assert.equal(at(4096), 'staged', 'auto would go direct on one host');
    assert.equal(at(4096, 'staged'), 'staged');
    assert.throws(() => at(128, 'direct'), {
      code: 'MOE_CONFIG',
      message: /nodes > 1 \(2\) needs dispatchPath 'staged'/,
    });
  });

  test('dedup rides on the stage: staged whatever auto would pick, at every batch size; direct refused', () => {
    const at = (maxTokensPerRank: number, requested: 'auto' | 'staged' | 'direct' = 'auto') =>
      chooseDispatchPath(resolveConfig({ ...shape, world: 2, maxTokensPerRank, dedup: true }), requested);
    assert.equal(at(1), 'staged');
    assert.equal(at(4096), 'staged', 'auto would go direct here without dedup');
    assert.equal(at(16, 'staged'), 'staged');
    assert.throws(() => at(16, 'direct'), {
      code: 'MOE_CONFIG',
      message: /dedup \(on by default\) needs dispatchPath 'staged'.*pass dedup: false/,
    });
    // one rank: nothing to de-duplicate, its own kernels
    const one = resolveConfig({ ...shape, world: 1, maxTokensPerRank: 4, dedup: true });
    assert.equal(chooseDispatchPath(one, 'auto'), 'direct');
  });

  test('the cpu transport runs either protocol at any W: direct only when asked, and never with dedup', () => {
    for (const world of [1, 2, 4]) {
      const cfg = resolveConfig({ ...shape, world, maxTokensPerRank: 4096 });
      assert.equal(chooseCpuDispatchPath(cfg, 'auto'), 'staged');
      assert.equal(chooseCpuDispatchPath(cfg, 'staged'), 'staged');
      assert.equal(chooseCpuDispatchPath(cfg, 'direct'), 'direct');
      const dd = resolveConfig({ ...shape, world, maxTokensPerRank: 4, dedup: true });
      assert.equal(chooseCpuDispatchPath(dd, 'auto'), 'staged');
      assert.throws(() => chooseCpuDispatchPath(dd, 'direct'), {
        code: 'MOE_CONFIG',
        message: /pass dedup: false/,
      });
    }
  });

  test('the request: the option, else MOE_A2A_DISPATCH_PATH, else auto; a bad one names its source', () => {
    const saved = process.env.MOE_A2A_DISPATCH_PATH;
    try {
      delete process.env.MOE_A2A_DISPATCH_PATH;
      assert.equal(requestedDispatchPath(undefined), 'auto');
      process.env.MOE_A2A_DISPATCH_PATH = 'direct';
      assert.equal(requestedDispatchPath(undefined), 'direct');
      assert.equal(requestedDispatchPath('staged'), 'staged', 'the option wins');
      assert.throws(() => requestedDispatchPath('fast'), { message: /^dispatchPath must be/ });
      process.env.MOE_A2A_DISPATCH_PATH = 'quick';
      assert.throws(() => requestedDispatchPath(undefined), { message: /^MOE_A2A_DISPATCH_PATH must be/ });
    } finally {
      if (saved === undefined) delete process.env.MOE_A2A_DISPATCH_PATH;
      else process.env.MOE_A2A_DISPATCH_PATH = saved;
    }
  });

  test('parseDispatchPath names where a bad value came from', () => {
    assert.equal(parseDispatchPath('staged', 'x'), 'staged');
    assert.throws(() => parseDispatchPath('fast', 'MOE_A2A_DISPATCH_PATH'), {
      code: 'MOE_CONFIG',
      message: /MOE_A2A_DISPATCH_PATH must be 'auto', 'staged' or 'direct', got 'fast'/,
    });
  });
});
