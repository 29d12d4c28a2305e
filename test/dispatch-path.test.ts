import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { EP_STAGE_MAX_PAIRS } from '../src/shmem/cuda/args.js';
import {
  chooseDispatchPath,
  parseDispatchPath,
  STAGED_AUTO_MAX_PAIRS,
} from '../src/shmem/cuda/dispatch-path.js';

const shape = { numExperts: 256, hidden: 7168, topk: 8 };

describe('the dispatch path of a cuda group', () => {
  test('auto stages small batches across ranks and goes direct for large ones', () => {
    const at = (world: number, maxTokensPerRank: number) =>
      chooseDispatchPath(resolveConfig({ ...shape, world, maxTokensPerRank }), 'auto');
    assert.equal(at(2, 1), 'staged');
    assert.equal(at(4, STAGED_AUTO_MAX_PAIRS / 8), 'staged');
    assert.equal(at(4, STAGED_AUTO_MAX_PAIRS / 8 + 1), 'direct');
    assert.equal(at(2, 4096), 'direct');
    assert.equal(at(1, 1), 'direct', 'one rank: its own kernels');
  });

  test('an explicit request is kept where the kernels allow it, and refused with ConfigError where not', () => {
    const small = resolveConfig({ ...shape, world: 2, maxTokensPerRank: 128 });
    assert.equal(chooseDispatchPath(small, 'staged'), 'staged');
    assert.equal(chooseDispatchPath(small, 'direct'), 'direct');
    const big = resolveConfig({ ...shape, world: 2, maxTokensPerRank: EP_STAGE_MAX_PAIRS / 8 + 1 });
    assert.throws(() => chooseDispatchPath(big, 'staged'), { code: 'MOE_CONFIG', message: /'staged' needs/ });
    assert.equal(chooseDispatchPath(big, 'direct'), 'direct');
    // one rank never stages, whatever is asked (nothing crosses)
    assert.equal(
      chooseDispatchPath(resolveConfig({ ...shape, world: 1, maxTokensPerRank: 4 }), 'staged'),
      'direct',
    );
  });

  test('parseDispatchPath names where a bad value came from', () => {
    assert.equal(parseDispatchPath('staged', 'x'), 'staged');
    assert.throws(() => parseDispatchPath('fast', 'MOE_A2A_DISPATCH_PATH'), {
      code: 'MOE_CONFIG',
      message: /MOE_A2A_DISPATCH_PATH must be 'auto', 'staged' or 'direct', got 'fast'/,
    });
  });
});
