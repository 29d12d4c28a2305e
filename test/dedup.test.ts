// The de-duplicated protocol on the cpu transport, step by step, in one rank's heap (W = 1: every row
// is for this rank, so its heap holds what a sender wrote and what the owner sent back). The multi-rank
// results are checked against the oracle by the conformance suite (test/conformance/suite.ts).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { expertShape } from '../src/ep/expert-layout.js';
import {
  combineRowOffset,
  computeLayout,
  recordBytes,
  stageCarrierOffset,
  stagedRowsFor,
  stageRecordOffset,
  stageRowOffset,
} from '../src/ep/layout.js';
import { oracleCombine, oracleDispatch } from '../src/ep/oracle.js';
import { hostTensor } from '../src/ep/tensor.js';
import { HandleError, ShapeError } from '../src/errors.js';
import { HostEpGroup } from '../src/shmem/cpu/group.js';
import { CpuTransport } from '../src/shmem/cpu/heap.js';
import { rng } from './helpers/random.js';

const POISON = 0xa5;

/** A W = 1 cpu group over a heap the test can read. */
function openGroup(dedup: boolean) {
  const cfg = resolveConfig({
    world: 1,
    numExperts: 4,
    hidden: 8,
    topk: 3,
    maxTokensPerRank: 4,
    fp8: false,
    dedup,
  });
  const layout = computeLayout(cfg, stagedRowsFor(cfg));
  const heap = new SharedArrayBuffer(layout.totalBytes);
  const group = new HostEpGroup(cfg, layout, new CpuTransport(0, 1, [heap], null), 1000);
  return { cfg, layout, heap, group, bytes: new Uint8Array(heap) };
}

describe('dedup on the cpu transport: the heap, step by step (W = 1)', () => {
  // E = 4, k = 3, T = 3. Rows in (expert, token) order:
  //   expert 0: (t0, j1) row 0, (t1, j2) row 1;  expert 1: (t1, j0) row 2, (t2, j2) row 3;
  //   expert 2: (t0, j0) row 4;                   expert 3: (t1, j1) row 5, (t2, j0) row 6.
  // Carrier slots (first valid slot of the token on this rank): t0 j0 (row 4), t1 j0 (row 2), t2 j0 (row 6).
  const idx = Int32Array.from([2, 0, -1, 1, 3, 0, 3, -1, 1]);
  const w = Float32Array.from([0.5, 0.25, 0.125, 0.75, 1, 0.375, 2, 0.625, 0.0625]);
  const H = 8;
  const x = rng(5).bf16Array(3 * H);

  test('dispatch writes data at carrier rows only, a carrier index per row and a record per carrier', () => {
    const { cfg, layout, group, bytes } = openGroup(true);
    bytes.fill(POISON);
    const res = group.dispatch(hostTensor('bf16', [3, H], x), hostTensor('i32', [3, 3], idx), {
      topkWeights: hostTensor('f32', [3, 3], w),
      returnRecv: true,
    });
    const slot = 1; // call 1
    const i32 = new Int32Array(bytes.buffer);
    const f32 = new Float32Array(bytes.buffer);
    const carrier = [...i32.subarray(stageCarrierOffset(layout, slot, 0, 0) / 4).subarray(0, 7)];
    assert.deepEqual(carrier, [4, 2, 2, 6, 4, 2, 6]);
    // row data: the token's bf16 row at rows 4 (t0), 2 (t1), 6 (t2); the others not written
    const rowAt = (r: number) => {
      const off = stageRowOffset(layout, cfg, slot, 0, r);
      return bytes.subarray(off, off + 2 * H);
    };
    const tokenRow = (t: number) => new Uint8Array(x.buffer, t * 2 * H, 2 * H);
    assert.deepEqual(rowAt(4), tokenRow(0));
    assert.deepEqual(rowAt(2), tokenRow(1));
    assert.deepEqual(rowAt(6), tokenRow(2));
    for (const r of [0, 1, 3, 5])
      assert.ok(
        rowAt(r).every((b) => b === POISON),
        `row ${r} not written`,
      );
    // records: back = t * k + j0, rows[j] (or -1), w[j] (or 0); non-carrier rows have none
    const record = (r: number) => {
      const o = stageRecordOffset(layout, cfg, slot, 0, r) / 4;
      return { back: i32[o], rows: [...i32.subarray(o + 1, o + 4)], w: [...f32.subarray(o + 4, o + 7)] };
    };
    assert.deepEqual(record(4), { back: 0, rows: [4, 0, -1], w: [0.5, 0.25, 0] });
    assert.deepEqual(record(2), { back: 3, rows: [2, 5, 1], w: [0.75, 1, 0.375] });
    assert.deepEqual(record(6), { back: 6, rows: [6, -1, 3], w: [2, 0, 0.0625] });
    assert.equal(recordBytes(cfg), 32);
    for (const r of [0, 1, 3, 5]) {
      const o = stageRecordOffset(layout, cfg, slot, 0, r);
      assert.ok(
        bytes.subarray(o, o + recordBytes(cfg)).every((b) => b === POISON),
        `no record at row ${r}`,
      );
    }
    // the outputs are those of the plain protocol (the oracle's), the source-major view included
    const want = oracleDispatch(cfg, [{ numTokens: 3, x, topkIdx: idx, topkWeights: w }], 0);
    assert.deepEqual([...(res.expertCounts.data as Int32Array)], [...want.expertCounts]);
    const xs = res.expertX.data as Uint16Array; // (a view of the heap's expertX region)
    const ex = new Uint8Array(xs.buffer, xs.byteOffset, xs.byteLength);
    const offsets = res.expertOffsets.data as Int32Array;
    for (let e = 0; e < 4; e++) {
      const n = want.expertCounts[e];
      const from = offsets[e] * 2 * H;
      assert.deepEqual(ex.subarray(from, from + n * 2 * H), want.expertRows[e], `expert ${e}`);
    }
    assert.ok(res.recv);
    const rx = new Uint8Array((res.recv.x.data as Uint16Array).buffer);
    assert.deepEqual(rx.subarray(0, 7 * 2 * H), want.recvRows[0]);
    assert.deepEqual([...(res.recv.splits.data as Int32Array)], [...want.recvSplits]);
  });

  test('combine: one partial per carrier at row back, nothing else; y as the oracle', () => {
    for (const dedup of [true, false]) {
      const { cfg, layout, group, bytes } = openGroup(dedup);
      bytes.fill(POISON);
      const res = group.dispatch(hostTensor('bf16', [3, H], x), hostTensor('i32', [3, 3], idx), {
        topkWeights: hostTensor('f32', [3, 3], w),
      });
      const out = rng(6).bf16Array(cfg.expertRows * H);
      const y = group.combine(hostTensor('bf16', expertShape(cfg, H), out), res.handle).data as Uint16Array;
      const inputs = [{ numTokens: 3, x, topkIdx: idx, topkWeights: w }];
      const offsets = res.expertOffsets.data as Int32Array;
      const want = oracleCombine(cfg, inputs, 0, (_o, le, row) => ({
        data: out,
        offset: (offsets[le] + row) * H,
      }));
      assert.deepEqual([...y], [...want], `dedup ${dedup}`);
      if (!dedup) continue;
      const u16 = new Uint16Array(bytes.buffer);
      const row = (r: number) => {
        const o = combineRowOffset(layout, cfg, 1, r) / 2;
        return [...u16.subarray(o, o + H)];
      };
      // W = 1: each token's one partial is its result
      assert.deepEqual(row(0), [...y.subarray(0, H)]);
      assert.deepEqual(row(3), [...y.subarray(H, 2 * H)]);
      assert.deepEqual(row(6), [...y.subarray(2 * H, 3 * H)]);
      const poison16 = POISON * 0x101;
      for (const r of [1, 2, 4, 5, 7, 8])
        assert.ok(
          row(r).every((v) => v === poison16),
          `row ${r}`,
        );
    }
  });

  test('weights: dispatch needs them, combine refuses them; the group goes on', () => {
    const { group, cfg } = openGroup(true);
    const X = hostTensor('bf16', [3, H], x);
    const I = hostTensor('i32', [3, 3], idx);
    const W = hostTensor('f32', [3, 3], w);
    const out = hostTensor('bf16', expertShape(cfg, H));
    assert.throws(
      () => group.dispatch(X, I),
      (e: unknown) =>
        e instanceof ShapeError &&
        e.details.argument === 'topkWeights' &&
        /dispatch needs topkWeights f32 \[T, k\] with dedup/.test(e.message),
    );
    const d = group.dispatch(X, I, { topkWeights: W });
    assert.throws(
      () => group.combine(out, d.handle, { topkWeights: W }),
      (e: unknown) =>
        e instanceof ShapeError && /with dedup the router weights travel with dispatch/.test(e.message),
    );
    assert.throws(() => group.combine(out, d.handle), HandleError, 'the refused call was abandoned');
    const d2 = group.dispatch(X, I, { topkWeights: W });
    const zero = group.combine(out, d2.handle).data as Uint16Array;
    assert.ok(
      zero.every((v) => v === 0),
      'zero expert outputs give +0',
    );
    // T = 0
    const empty = group.dispatch(hostTensor('bf16', [0, H]), hostTensor('i32', [0, 3]), {
      topkWeights: hostTensor('f32', [0, 3]),
    });
    assert.equal(group.combine(out, empty.handle).data.length, 0);
    // plain groups still take weights at combine, and dispatch without them
    const plain = openGroup(false).group;
    const p = plain.dispatch(X, I);
    assert.equal(plain.combine(out, p.handle, { topkWeights: W }).data.length, 3 * H);
  });
});

test('oracle over two hosts: the other host pre-reduces its owners, one more rounding (hand-worked)', () => {
  // W = 4 over 2 hosts (ranks 0-1, 2-3), one expert per rank, k = 3, H = 1. Rank 0's token goes to
  // experts 2, 3 (host 1) and 1 (its own host), each output weighted 1: P_2 = 1, P_3 = P_1 = 2^-8.
  // Host 1 sums P_2 + P_3 = 1 + 2^-8 and rounds it to bf16: a tie, to even, 1. The origin adds P_1:
  // 1 + 2^-8 rounds to 1 again. On one host the three partials add in f32 to 1 + 2^-7 first: 0x3f81.
  const ONE = 0x3f80;
  const TINY = 0x3b80; // 2^-8
  const out = [0, TINY, ONE, TINY]; // the output of rank r's one expert
  const inputs = [0, 1, 2, 3].map((r) => ({
    numTokens: r === 0 ? 1 : 0,
    x: new Uint16Array(r === 0 ? 1 : 0),
    topkIdx: r === 0 ? Int32Array.of(2, 3, 1) : new Int32Array(0),
    topkWeights: r === 0 ? Float32Array.of(1, 1, 1) : new Float32Array(0),
  }));
  const y = (nodes: number) => {
    const cfg = resolveConfig({
      world: 4,
      numExperts: 4,
      hidden: 8,
      topk: 3,
      maxTokensPerRank: 1,
      nodes,
      fp8: false,
      dedup: true,
    });
    return oracleCombine({ ...cfg, hidden: 1 }, inputs, 0, (owner) => ({
      data: Uint16Array.of(out[owner]),
      offset: 0,
    }))[0];
  };
  assert.equal(y(2), ONE);
  assert.equal(y(1), 0x3f81);
});
