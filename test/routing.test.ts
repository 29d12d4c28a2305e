import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type EpConfig, resolveConfig } from '../src/ep/config.js';
import { planRouting } from '../src/ep/routing.js';
import { CapacityError, RoutingError, ShapeError } from '../src/errors.js';
import { rng } from './helpers/random.js';

function cfgOf(
  world: number,
  numExperts: number,
  topk: number,
  maxTokensPerRank: number,
  maxRowsPerPeer?: number,
) {
  return resolveConfig({ world, numExperts, topk, maxTokensPerRank, hidden: 8, fp8: false, maxRowsPerPeer });
}

function catchErr(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  assert.fail('expected a throw');
}

describe('planRouting: hand-worked W = 2, E = 4, k = 2, T = 3', () => {
  // rank 0 owns experts 0, 1; rank 1 owns 2, 3 (EPR = 2). Expert 2 gets nothing; pair 3 is dropped.
  //   token 0: [3, 0]   pairs p0 -> 3, p1 -> 0
  //   token 1: [0, -1]  pairs p2 -> 0, p3 dropped
  //   token 2: [3, 1]   pairs p4 -> 3, p5 -> 1
  // sorted by expert, stable: e0: p1, p2 | e1: p5 | e2: - | e3: p0, p4
  const cfg = cfgOf(2, 4, 2, 3);
  const plan = planRouting(cfg, Int32Array.from([3, 0, 0, -1, 3, 1]), 3);

  test('counts and offsets', () => {
    assert.equal(plan.numTokens, 3);
    assert.equal(plan.numRows, 5);
    assert.deepEqual([...plan.expertCounts], [2, 1, 0, 2]);
    assert.deepEqual([...plan.expertOffsets], [0, 2, 3, 3, 5]);
  });

  test('rowPair and pairRow', () => {
    assert.deepEqual([...plan.rowPair], [1, 2, 5, 0, 4]);
    assert.deepEqual([...plan.pairRow], [3, 0, 1, -1, 4, 2]);
  });

  test('destRowStart: rank 0 gets rows [0, 3), rank 1 rows [3, 5)', () => {
    assert.deepEqual([...plan.destRowStart], [0, 3, 5]);
  });

  test('typed arrays of the documented lengths', () => {
    assert.ok(plan.expertCounts instanceof Int32Array && plan.expertCounts.length === 4);
    assert.ok(plan.expertOffsets instanceof Int32Array && plan.expertOffsets.length === 5);
    assert.ok(plan.rowPair instanceof Int32Array && plan.rowPair.length === 5);
    assert.ok(plan.pairRow instanceof Int32Array && plan.pairRow.length === 6);
    assert.ok(plan.destRowStart instanceof Int32Array && plan.destRowStart.length === 3);
  });

  test('a second hand-worked case: W = 2, E = 4, k = 1, T = 4, all to rank 1', () => {
    // experts [3, 2, 3, 2]: e2: p1, p3 | e3: p0, p2; rank 0 gets nothing
    const p = planRouting(cfgOf(2, 4, 1, 4), Int32Array.from([3, 2, 3, 2]), 4);
    assert.deepEqual([...p.expertCounts], [0, 0, 2, 2]);
    assert.deepEqual([...p.expertOffsets], [0, 0, 0, 2, 4]);
    assert.deepEqual([...p.rowPair], [1, 3, 0, 2]);
    assert.deepEqual([...p.pairRow], [2, 0, 3, 1]);
    assert.deepEqual([...p.destRowStart], [0, 0, 4]);
  });

  test('every slot dropped: no rows, and the same with T = 0', () => {
    const p = planRouting(cfgOf(2, 4, 2, 3), Int32Array.from([-1, -1, -1, -1]), 2);
    assert.equal(p.numRows, 0);
    assert.deepEqual([...p.expertOffsets], [0, 0, 0, 0, 0]);
    assert.deepEqual([...p.pairRow], [-1, -1, -1, -1]);
    assert.deepEqual([...p.destRowStart], [0, 0, 0]);
    const z = planRouting(cfgOf(2, 4, 2, 3), new Int32Array(0), 0);
    assert.equal(z.numRows, 0);
    assert.equal(z.rowPair.length, 0);
    assert.equal(z.pairRow.length, 0);
  });
});

/** Checks every documented property of a plan against the ids, with no use of the plan's own logic. */
function checkPlan(cfg: EpConfig, ids: Int32Array, T: number, what: string): void {
  const { numExperts: E, world: W, expertsPerRank: EPR, topk: k } = cfg;
  const plan = planRouting(cfg, ids, T);
  const valid: number[] = [];
  for (let p = 0; p < T * k; p++) if (ids[p] >= 0) valid.push(p);
  assert.equal(plan.numTokens, T, what);
  assert.equal(plan.numRows, valid.length, `${what}: numRows`);
  // counts by direct tally, summing to the number of valid pairs
  const counts = new Array<number>(E).fill(0);
  for (const p of valid) counts[ids[p]]++;
  assert.deepEqual([...plan.expertCounts], counts, `${what}: expertCounts`);
  assert.equal(
    counts.reduce((a, b) => a + b, 0),
    valid.length,
  );
  // offsets: exclusive prefix sum, E + 1 entries
  assert.equal(plan.expertOffsets.length, E + 1);
  let sum = 0;
  for (let e = 0; e <= E; e++) {
    assert.equal(plan.expertOffsets[e], sum, `${what}: expertOffsets[${e}]`);
    if (e < E) sum += counts[e];
  }
  // rowPair / pairRow: inverse permutations over the valid pairs
  assert.equal(plan.rowPair.length, valid.length);
  assert.equal(plan.pairRow.length, T * k);
  assert.deepEqual(
    [...plan.rowPair].sort((a, b) => a - b),
    valid,
    `${what}: rowPair is a permutation of the valid pairs`,
  );
  for (let r = 0; r < plan.numRows; r++) assert.equal(plan.pairRow[plan.rowPair[r]], r, `${what}: row ${r}`);
  for (let p = 0; p < T * k; p++) {
    if (ids[p] < 0) assert.equal(plan.pairRow[p], -1, `${what}: dropped pair ${p}`);
  }
  // sorted by expert, each expert's rows at its offset, and stable: pair indices increase within an expert
  for (let r = 0; r < plan.numRows; r++) {
    const e = ids[plan.rowPair[r]];
    assert.ok(
      r >= plan.expertOffsets[e] && r < plan.expertOffsets[e + 1],
      `${what}: row ${r} in expert ${e}`,
    );
    if (r > 0) {
      const prev = ids[plan.rowPair[r - 1]];
      assert.ok(prev <= e, `${what}: sorted at row ${r}`);
      if (prev === e) assert.ok(plan.rowPair[r - 1] < plan.rowPair[r], `${what}: stable at row ${r}`);
    }
  }
  // destinations: rows [destRowStart[d], destRowStart[d + 1]) are exactly the pairs whose expert is owned by d
  assert.equal(plan.destRowStart.length, W + 1);
  assert.equal(plan.destRowStart[0], 0);
  assert.equal(plan.destRowStart[W], valid.length);
  for (let d = 0; d < W; d++) {
    const mine = valid.filter((p) => ids[p] >= d * EPR && ids[p] < (d + 1) * EPR).sort((a, b) => a - b);
    const got = [...plan.rowPair.subarray(plan.destRowStart[d], plan.destRowStart[d + 1])].sort(
      (a, b) => a - b,
    );
    assert.deepEqual(got, mine, `${what}: destination ${d}`);
    assert.ok(mine.length <= cfg.maxRowsPerPeer);
  }
}

describe('planRouting: properties on random seeded cases', () => {
  test('counts, prefix sums, inverse permutations, stability and destinations', () => {
    const r = rng(20240601);
    let cases = 0;
    for (const W of [1, 2, 3, 4, 8]) {
      for (const EPR of [1, 2, 3, 5]) {
        const E = W * EPR;
        for (const k of [...new Set([1, 2, 4, E])].filter((kk) => kk <= E)) {
          for (const T of [0, 1, 2, 7, 33]) {
            for (const drop of [0, 0.25, 1]) {
              const cfg = cfgOf(W, E, k, Math.max(T, 1));
              const ids = r.topkIdx(T, k, E, drop);
              checkPlan(cfg, ids, T, `W=${W} E=${E} k=${k} T=${T} drop=${drop}`);
              cases++;
            }
          }
        }
      }
    }
    assert.ok(cases >= 1000);
  });

  test('T smaller than maxTokensPerRank, and many tokens on one expert (k = 1, E = 1)', () => {
    checkPlan(cfgOf(1, 1, 1, 64), new Int32Array(40), 40, 'E=1');
    const r = rng(7);
    checkPlan(cfgOf(4, 256, 8, 128), r.topkIdx(100, 8, 256, 0.1), 100, 'DeepSeek-like');
  });

  test('the plan does not change or keep its input', () => {
    const ids = Int32Array.from([3, 0, 0, -1, 3, 1]);
    const copy = ids.slice();
    const plan = planRouting(cfgOf(2, 4, 2, 3), ids, 3);
    assert.deepEqual(ids, copy);
    ids.fill(2);
    assert.deepEqual([...plan.rowPair], [1, 2, 5, 0, 4]);
  });
});

describe('planRouting: bad inputs', () => {
  const cfg = cfgOf(2, 4, 2, 3);

  test('an id >= E names the token and slot', () => {
    const e = catchErr(() => planRouting(cfg, Int32Array.from([0, 1, 2, 4, 3, 1]), 3));
    assert.ok(e instanceof RoutingError);
    assert.equal(e.code, 'MOE_ROUTING');
    assert.equal(e.details.token, 1);
    assert.equal(e.details.slot, 1);
    assert.equal(e.details.expert, 4);
    assert.match(e.message, /topkIdx\[1\]\[1\]/);
    assert.match(e.message, /\b4\b/);
  });

  test('an id < -1 names the token and slot', () => {
    const e = catchErr(() => planRouting(cfg, Int32Array.from([0, 1, 2, 3, -2, 1]), 3));
    assert.ok(e instanceof RoutingError);
    assert.equal(e.code, 'MOE_ROUTING');
    assert.equal(e.details.token, 2);
    assert.equal(e.details.slot, 0);
    assert.equal(e.details.expert, -2);
    assert.match(e.message, /topkIdx\[2\]\[0\]/);
    assert.match(e.message, /-2/);
  });

  test('a huge id (beyond i32 range cannot occur; use 2^31 - 1) is rejected', () => {
    const e = catchErr(() => planRouting(cfg, Int32Array.from([2 ** 31 - 1, 0]), 1));
    assert.ok(e instanceof RoutingError);
    assert.equal(e.details.token, 0);
    assert.equal(e.details.slot, 0);
  });

  test('a token naming one expert twice', () => {
    const e = catchErr(() => planRouting(cfg, Int32Array.from([0, 1, 2, 3, 1, 1]), 3));
    assert.ok(e instanceof RoutingError);
    assert.equal(e.code, 'MOE_ROUTING');
    assert.equal(e.details.token, 2);
    assert.equal(e.details.slot, 1);
    assert.equal(e.details.expert, 1);
    assert.match(e.message, /token 2/);
    // k = 3: the repeat is two slots apart
    const e3 = catchErr(() => planRouting(cfgOf(1, 4, 3, 2), Int32Array.from([0, 1, 2, 3, 2, 3]), 2));
    assert.ok(e3 instanceof RoutingError);
    assert.equal(e3.details.token, 1);
    assert.equal(e3.details.slot, 2);
    assert.equal(e3.details.expert, 3);
  });

  test('the same expert in different tokens is fine; two dropped slots in a token are fine', () => {
    const p = planRouting(cfg, Int32Array.from([1, 0, 1, 0, -1, -1]), 3);
    assert.equal(p.numRows, 4);
  });

  test('more rows for one destination than maxRowsPerPeer -> CapacityError naming destination, count, limit', () => {
    // maxRowsPerPeer 3: tokens 0 and 1 send experts 2 and 3 (rank 1) -> 4 rows to rank 1; rank 0 gets 1
    const small = cfgOf(2, 4, 2, 3, 3);
    const e = catchErr(() => planRouting(small, Int32Array.from([2, 3, 3, 2, 0, -1]), 3));
    assert.ok(e instanceof CapacityError);
    assert.equal(e.code, 'MOE_CAPACITY');
    assert.equal(e.details.destination, 1);
    assert.equal(e.details.count, 4);
    assert.equal(e.details.limit, 3);
    assert.match(e.message, /rank 1/);
    assert.match(e.message, /\b4 rows\b/);
    assert.match(e.message, /maxRowsPerPeer is 3/);
    // exactly at the limit is fine
    assert.equal(planRouting(small, Int32Array.from([2, 3, 3, -1, 0, -1]), 3).numRows, 4);
  });

  test('capacity is checked for destination 0 too', () => {
    const small = cfgOf(2, 4, 2, 3, 2);
    const e = catchErr(() => planRouting(small, Int32Array.from([0, 1, 0, 2, 1, 3]), 3));
    assert.ok(e instanceof CapacityError);
    assert.equal(e.details.destination, 0);
    assert.equal(e.details.count, 4);
    assert.equal(e.details.limit, 2);
  });

  test('a topkIdx of the wrong length -> ShapeError', () => {
    for (const [len, T] of [
      [5, 3],
      [7, 3],
      [0, 1],
      [2, 0],
    ]) {
      const e = catchErr(() => planRouting(cfg, new Int32Array(len), T));
      assert.ok(e instanceof ShapeError, `length ${len}, T ${T}`);
      assert.equal(e.code, 'MOE_SHAPE');
      assert.equal(e.details.argument, 'topkIdx');
      assert.match(e.message, /topkIdx/);
      assert.match(e.message, new RegExp(`\\b${T} x 2\\b`));
    }
  });
});
