import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createGroup } from '../src/create.js';
import { type EpConfigInput, resolveConfig } from '../src/ep/config.js';
import { ConfigError, ErrorCodes } from '../src/errors.js';

const base: EpConfigInput = { world: 2, numExperts: 8, hidden: 256, topk: 2, maxTokensPerRank: 16 };

/**
 * Asserts resolveConfig(input) throws a ConfigError whose message names every field in `fields` (or
 * matches `messageNames` when given) and whose details.fields lists them.
 */
function rejects(input: unknown, fields: string[], what = '', messageNames?: RegExp): ConfigError {
  let caught: unknown;
  try {
    resolveConfig(input as EpConfigInput);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ConfigError, `${what}: expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.code, 'MOE_CONFIG');
  assert.equal(caught.code, ErrorCodes.config);
  assert.equal(caught.name, 'ConfigError');
  if (messageNames) assert.match(caught.message, messageNames, what);
  for (const f of fields) {
    if (!messageNames)
      assert.match(
        caught.message,
        new RegExp(`\\b${f}\\b`),
        `${what}: message "${caught.message}" names ${f}`,
      );
    assert.ok(
      String(caught.details.fields).split(',').includes(f),
      `${what}: details.fields "${String(caught.details.fields)}" includes ${f}`,
    );
  }
  return caught;
}

describe('resolveConfig: bad configurations', () => {
  test('numExperts not divisible by world', () => {
    const e = rejects({ ...base, world: 3, numExperts: 8 }, ['numExperts', 'world']);
    assert.match(e.message, /8/);
    assert.match(e.message, /3/);
    assert.equal(e.details.numExperts, 8);
    assert.equal(e.details.world, 3);
    rejects({ ...base, world: 4, numExperts: 6 }, ['numExperts', 'world']);
  });

  test('hidden not a multiple of fp8GroupSize when fp8 is on (default and explicit)', () => {
    // 136 is a multiple of 8 but not of 128
    const e = rejects({ ...base, hidden: 136 }, ['hidden', 'fp8GroupSize']);
    assert.match(e.message, /136/);
    assert.match(e.message, /128/);
    rejects({ ...base, hidden: 256, fp8: true, fp8GroupSize: 96 }, ['hidden', 'fp8GroupSize']);
  });

  test('fp8 off allows hidden not a multiple of fp8GroupSize', () => {
    const cfg = resolveConfig({ ...base, hidden: 136, fp8: false });
    assert.equal(cfg.hidden, 136);
    assert.equal(cfg.fp8, false);
    assert.equal(cfg.groupsPerRow, 0);
    const cfg2 = resolveConfig({ ...base, hidden: 200, fp8: false, fp8GroupSize: 128 });
    assert.equal(cfg2.hidden, 200);
  });

  test('hidden not a multiple of 8 (fp8 on or off)', () => {
    const e = rejects({ ...base, hidden: 100, fp8: false }, ['hidden']);
    assert.match(e.message, /100/);
    assert.match(e.message, /multiple of 8/);
    rejects({ ...base, hidden: 132 }, ['hidden']);
    rejects({ ...base, hidden: 4, fp8: false }, ['hidden']);
  });

  test('topk greater than numExperts', () => {
    const e = rejects({ ...base, world: 1, numExperts: 4, topk: 5 }, ['topk', 'numExperts']);
    assert.equal(e.details.topk, 5);
    assert.equal(e.details.numExperts, 4);
    // equal is fine
    assert.equal(resolveConfig({ ...base, world: 1, numExperts: 4, topk: 4 }).topk, 4);
  });

  const numericFields = [
    'world',
    'numExperts',
    'hidden',
    'topk',
    'maxTokensPerRank',
    'fp8GroupSize',
    'maxRowsPerPeer',
  ] as const;
  for (const field of numericFields) {
    test(`${field}: zero, negative, non-integer, NaN, Infinity and non-number are rejected`, () => {
      const bads: unknown[] = [0, -1, -128, 1.5, 127.5, Number.NaN, Number.POSITIVE_INFINITY, '8', true];
      // null for a required field is wrong; for an optional one (fp8GroupSize, maxRowsPerPeer) `??` takes the default
      if (field !== 'fp8GroupSize' && field !== 'maxRowsPerPeer') bads.push(null);
      for (const bad of bads) {
        const e = rejects({ ...base, [field]: bad }, [field], `${field} = ${String(bad)}`);
        assert.equal(e.details.value, String(bad));
      }
    });
  }

  test('upper limits: world <= 1024, topk <= 64', () => {
    rejects({ ...base, world: 1025, numExperts: 1025 * 2 }, ['world']);
    rejects({ ...base, world: 1, numExperts: 128, topk: 65 }, ['topk']);
    assert.equal(resolveConfig({ ...base, world: 1024, numExperts: 1024 }).world, 1024);
    assert.equal(resolveConfig({ ...base, world: 1, numExperts: 128, topk: 64 }).topk, 64);
  });

  test('fp8GroupSize must be a multiple of 8 and at most 1024 when fp8 is on', () => {
    rejects({ ...base, hidden: 256, fp8GroupSize: 4 }, ['fp8GroupSize']);
    rejects({ ...base, hidden: 2048, fp8GroupSize: 2048 }, ['fp8GroupSize']);
    assert.equal(resolveConfig({ ...base, hidden: 1024, fp8GroupSize: 1024 }).groupsPerRow, 1);
  });

  test('maxRowsPerPeer above maxTokensPerRank * topk', () => {
    // 16 tokens * k 2 = 32 rows at most
    const e = rejects({ ...base, maxRowsPerPeer: 33 }, ['maxRowsPerPeer', 'maxTokensPerRank', 'topk']);
    assert.match(e.message, /33/);
    assert.match(e.message, /32/);
    assert.equal(e.details.maxRowsPerPeer, 33);
    assert.equal(resolveConfig({ ...base, maxRowsPerPeer: 32 }).maxRowsPerPeer, 32);
  });

  test('dedup needs topk <= 32; without dedup topk may go to 64', () => {
    const big = { ...base, world: 1, numExperts: 64 };
    const e = rejects({ ...big, topk: 33, dedup: true }, ['topk', 'dedup']);
    assert.match(e.message, /33/);
    assert.match(e.message, /at most 32/);
    assert.equal(e.details.topk, 33);
    rejects({ ...big, topk: 64, dedup: true }, ['topk', 'dedup']);
    assert.equal(resolveConfig({ ...big, topk: 32, dedup: true }).topk, 32);
    assert.equal(resolveConfig({ ...big, topk: 33, dedup: false }).topk, 33);
    assert.equal(resolveConfig({ ...big, topk: 64 }).dedup, false);
  });

  test('nodes: 1 by default; it must divide world; the cpu transport stages across hosts, cuda stays on one', async () => {
    assert.equal(resolveConfig(base).nodes, 1);
    assert.equal(resolveConfig(base).ranksPerNode, 2);
    const two = resolveConfig({ ...base, world: 4, numExperts: 8, nodes: 2 });
    assert.equal(two.ranksPerNode, 2);
    rejects({ ...base, world: 6, numExperts: 12, nodes: 4 }, ['world', 'nodes']);
    rejects({ ...base, nodes: 3 }, ['nodes'], 'more hosts than ranks');
    rejects({ ...base, nodes: 0 }, ['nodes']);
    await assert.rejects(
      createGroup({
        ...base,
        world: 4,
        numExperts: 8,
        nodes: 2,
        transport: 'cpu',
        rank: 0,
        dispatchPath: 'direct',
        dedup: false,
      }),
      (e: unknown) =>
        e instanceof ConfigError && /nodes > 1 \(2\) needs dispatchPath 'staged'/.test(e.message),
    );
    // (checked before any driver is loaded: this runs without a GPU)
    await assert.rejects(
      createGroup({ ...base, world: 130, numExperts: 130, nodes: 65, transport: 'cuda', rank: 0 }),
      (e: unknown) =>
        e instanceof ConfigError && /the cuda transport supports nodes up to 64, got 65/.test(e.message),
    );
  });

  test('dedup not a boolean', () => {
    for (const bad of [1, 0, 'yes', 'true', {}]) {
      rejects({ ...base, dedup: bad }, ['dedup'], `dedup = ${JSON.stringify(bad)}`);
    }
  });

  test('fp8 not a boolean', () => {
    for (const bad of [1, 0, 'yes', 'false', {}]) {
      rejects({ ...base, fp8: bad }, ['fp8'], `fp8 = ${JSON.stringify(bad)}`);
    }
  });

  test('a configuration that is not an object', () => {
    for (const bad of [null, undefined, 42, 'world=2', true]) {
      rejects(bad, ['config'], `config = ${String(bad)}`, /configuration must be an object/);
    }
  });
});

describe('resolveConfig: defaults and derived sizes', () => {
  test('fp8 defaults to true, fp8GroupSize to 128', () => {
    const cfg = resolveConfig(base);
    assert.equal(cfg.fp8, true);
    assert.equal(cfg.fp8GroupSize, 128);
    assert.equal(cfg.groupsPerRow, 2);
    assert.equal(cfg.dispatchRowBytes, 256);
    assert.equal(cfg.combineRowBytes, 512);
  });

  test('dedup defaults to true where topk <= 32 and to false above, and echoes what is given', () => {
    assert.equal(resolveConfig(base).dedup, true);
    assert.equal(resolveConfig({ ...base, dedup: undefined }).dedup, true);
    assert.equal(resolveConfig({ ...base, dedup: false }).dedup, false);
    assert.equal(resolveConfig({ ...base, numExperts: 64, topk: 32 }).dedup, true);
    assert.equal(resolveConfig({ ...base, numExperts: 64, topk: 33 }).dedup, false);
    // the sizes do not depend on it
    const { dedup: _a, ...plain } = resolveConfig({ ...base, dedup: false });
    const { dedup: _b, ...withDedup } = resolveConfig({ ...base, dedup: true });
    assert.deepEqual(withDedup, plain);
  });

  test('expertLayout: packed by default, holding what can arrive; padded holds EPR * maxRowsPerExpert rows', () => {
    const v3 = { world: 4, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 };
    assert.equal(resolveConfig(v3).expertLayout, 'packed');
    const padded = resolveConfig({ ...v3, expertLayout: 'padded' });
    assert.equal(padded.expertLayout, 'padded');
    assert.equal(padded.expertRows, 64 * 4 * 4096); // every expert could take every token of every rank
    const packed = resolveConfig(v3);
    assert.equal(packed.expertLayout, 'packed');
    // each source sends this rank at most maxRowsPerPeer = 4096 * 8 rows: 8x fewer rows than padded
    assert.equal(packed.expertRows, 4 * 4096 * 8);
    assert.equal(padded.expertRows / packed.expertRows, 8);
    // a smaller maxRowsPerExpert bounds the packed rows too
    const few = resolveConfig({ ...v3, expertLayout: 'packed', maxRowsPerExpert: 100 });
    assert.equal(few.expertRows, 64 * 100);
    // one expert per rank: both layouts hold the same rows
    const one = { world: 2, numExperts: 2, hidden: 8, topk: 2, maxTokensPerRank: 5, fp8: false };
    assert.equal(resolveConfig(one).expertRows, resolveConfig({ ...one, expertLayout: 'padded' }).expertRows);
    for (const bad of ['Packed', 'compact', 1])
      rejects({ ...base, expertLayout: bad }, ['expertLayout'], `expertLayout = ${JSON.stringify(bad)}`);
  });

  test('bf16 dispatch rows are 2H bytes, combine rows always 2H', () => {
    const cfg = resolveConfig({ ...base, fp8: false, hidden: 7168 });
    assert.equal(cfg.dispatchRowBytes, 14336);
    assert.equal(cfg.combineRowBytes, 14336);
  });

  test('maxRowsPerPeer default = maxTokensPerRank * min(topk, numExperts / world)', () => {
    // DeepSeek-like: E 256, W 8 -> EPR 32; k 8 < 32 -> 128 * 8
    let cfg = resolveConfig({ world: 8, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    assert.equal(cfg.expertsPerRank, 32);
    assert.equal(cfg.maxRowsPerPeer, 1024);
    // EPR 2 < k 8: a token sends at most 2 rows to one rank -> 128 * 2
    cfg = resolveConfig({ world: 8, numExperts: 16, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    assert.equal(cfg.expertsPerRank, 2);
    assert.equal(cfg.maxRowsPerPeer, 256);
    // EPR 4 == k 4
    cfg = resolveConfig({ world: 2, numExperts: 8, hidden: 128, topk: 4, maxTokensPerRank: 5 });
    assert.equal(cfg.maxRowsPerPeer, 20);
  });

  test('expertCapacity = world * min(maxTokensPerRank, maxRowsPerPeer)', () => {
    // default maxRowsPerPeer 1024 > 128 tokens -> 8 * 128
    let cfg = resolveConfig({ world: 8, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    assert.equal(cfg.expertCapacity, 1024);
    // explicit maxRowsPerPeer 50 < 128 tokens -> 8 * 50
    cfg = resolveConfig({
      world: 8,
      numExperts: 256,
      hidden: 7168,
      topk: 8,
      maxTokensPerRank: 128,
      maxRowsPerPeer: 50,
    });
    assert.equal(cfg.maxRowsPerPeer, 50);
    assert.equal(cfg.expertCapacity, 400);
    // world 1, k 1: maxRowsPerPeer = T, capacity T
    cfg = resolveConfig({ world: 1, numExperts: 1, hidden: 8, topk: 1, maxTokensPerRank: 3, fp8: false });
    assert.equal(cfg.maxRowsPerPeer, 3);
    assert.equal(cfg.expertCapacity, 3);
  });

  test('echoes the inputs and derives expertsPerRank', () => {
    const cfg = resolveConfig({ ...base, fp8GroupSize: 64 });
    assert.equal(cfg.world, 2);
    assert.equal(cfg.numExperts, 8);
    assert.equal(cfg.expertsPerRank, 4);
    assert.equal(cfg.hidden, 256);
    assert.equal(cfg.topk, 2);
    assert.equal(cfg.maxTokensPerRank, 16);
    assert.equal(cfg.fp8GroupSize, 64);
    assert.equal(cfg.groupsPerRow, 4);
  });
});

describe('createGroup: timeoutMs', () => {
  for (const timeoutMs of [0, -5, Number.NaN, 2 ** 31, 1e13]) {
    test(`${timeoutMs} is refused before any transport opens`, async () => {
      await assert.rejects(
        createGroup({ ...base, world: 1, transport: 'cpu', timeoutMs }),
        (err: unknown) =>
          err instanceof ConfigError && /timeoutMs must be in \(0, 2147483647\]/.test(err.message),
      );
    });
  }
});
