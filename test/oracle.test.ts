import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bf16ToF32, f32ToBf16, quantizeRowsFp8 } from '../src/ep/codec.js';
import { type EpConfig, resolveConfig } from '../src/ep/config.js';
import {
  type OracleDispatch,
  type OracleRankInput,
  oracleCombine,
  oracleDispatch,
} from '../src/ep/oracle.js';
import { planRouting } from '../src/ep/routing.js';
import { rng } from './helpers/random.js';

/** bf16 rows -> their little-endian bytes, as the oracle stores them. */
function bytesOf(rows: number[][]): Uint8Array {
  const u = new Uint16Array(rows.flat());
  return new Uint8Array(u.buffer);
}

function asBf16(bytes: Uint8Array): Uint16Array {
  const copy = bytes.slice();
  return new Uint16Array(copy.buffer, 0, copy.length / 2);
}

describe('oracle: hand-worked W = 2, E = 4, k = 2, T = 2, H = 8, bf16', () => {
  // rank 0 owns experts 0, 1; rank 1 owns 2, 3. Payload x[src][t][h] = src * 16 + t * 8 + h (exact in bf16).
  //   rank 0: token 0 -> [1, 2] w [0.5, 0.25];  token 1 -> [0, 1]  w [0.25, 0.5]
  //   rank 1: token 0 -> [3, 0] w [0.5, 0.5];   token 1 -> [-1, 2] w [0.75, 0.5]
  // rank 0's send order: e0: (t1,s0) | e1: (t0,s0), (t1,s1) | e2: (t0,s1) | e3: -
  // rank 1's send order: e0: (t0,s1) | e1: - | e2: (t1,s1) | e3: (t0,s0)
  const cfg = resolveConfig({ world: 2, numExperts: 4, hidden: 8, topk: 2, maxTokensPerRank: 2, fp8: false });
  const H = 8;
  const row = (src: number, t: number) =>
    Array.from({ length: H }, (_, h) => f32ToBf16(src * 16 + t * 8 + h));
  const inputs: OracleRankInput[] = [0, 1].map((src) => ({
    numTokens: 2,
    x: new Uint16Array([...row(src, 0), ...row(src, 1)]),
    topkIdx: Int32Array.from(src === 0 ? [1, 2, 0, 1] : [3, 0, -1, 2]),
    topkWeights: Float32Array.from(src === 0 ? [0.5, 0.25, 0.25, 0.5] : [0.5, 0.5, 0.75, 0.5]),
  }));
  const d0 = oracleDispatch(cfg, inputs, 0);
  const d1 = oracleDispatch(cfg, inputs, 1);
  const o = (src: number, token: number, slot: number, expert: number) => ({ src, token, slot, expert });

  test('rank 0 receives: from rank 0 tokens 1, 0, 1 (experts 0, 1, 1); from rank 1 token 0 (expert 0)', () => {
    // counts per local expert, then m_st (rows of src below my first expert)
    assert.deepEqual([...d0.recvSplits], [1, 2, 0, 1, 0, 0]);
    assert.deepEqual(d0.recvOrigin, [[o(0, 1, 0, 0), o(0, 0, 0, 1), o(0, 1, 1, 1)], [o(1, 0, 1, 0)]]);
    assert.deepEqual(d0.recvRows[0], bytesOf([row(0, 1), row(0, 0), row(0, 1)]));
    assert.deepEqual(d0.recvRows[1], bytesOf([row(1, 0)]));
    assert.deepEqual([...d0.expertCounts], [2, 2]);
    assert.deepEqual(d0.expertOrigin, [
      [o(0, 1, 0, 0), o(1, 0, 1, 0)],
      [o(0, 0, 0, 1), o(0, 1, 1, 1)],
    ]);
    assert.deepEqual(d0.expertRows[0], bytesOf([row(0, 1), row(1, 0)]));
    assert.deepEqual(d0.expertRows[1], bytesOf([row(0, 0), row(0, 1)]));
  });

  test('rank 1 receives: from rank 0 token 0 (expert 2, m_st 3); from rank 1 tokens 1, 0 (experts 2, 3, m_st 1)', () => {
    assert.deepEqual([...d1.recvSplits], [1, 0, 3, 1, 1, 1]);
    assert.deepEqual(d1.recvOrigin, [[o(0, 0, 1, 2)], [o(1, 1, 1, 2), o(1, 0, 0, 3)]]);
    assert.deepEqual(d1.recvRows[0], bytesOf([row(0, 0)]));
    assert.deepEqual(d1.recvRows[1], bytesOf([row(1, 1), row(1, 0)]));
    assert.deepEqual([...d1.expertCounts], [2, 1]);
    assert.deepEqual(d1.expertOrigin, [[o(0, 0, 1, 2), o(1, 1, 1, 2)], [o(1, 0, 0, 3)]]);
    assert.deepEqual(d1.expertRows[0], bytesOf([row(0, 0), row(1, 1)]));
    assert.deepEqual(d1.expertRows[1], bytesOf([row(1, 0)]));
  });

  test('no scales when fp8 is off', () => {
    for (const d of [d0, d1]) {
      for (const s of d.recvScales) assert.equal(s.length, 0);
      for (const s of d.expertScales) assert.equal(s.length, 0);
    }
  });

  test('combine: expert e returns (e + 1) * its input row; y = sum_j w_j * (e_j + 1) * x, by hand', () => {
    const disp = [d0, d1];
    const calls: string[] = [];
    const expertOutOf = (owner: number, le: number, r: number) => {
      const rows = asBf16(disp[owner].expertRows[le]);
      assert.ok(r >= 0 && r < disp[owner].expertCounts[le], `row ${r} of expert ${le} on rank ${owner}`);
      const e = owner * cfg.expertsPerRank + le;
      const data = rows.slice(r * H, (r + 1) * H).map((v) => f32ToBf16((e + 1) * bf16ToF32(v)));
      calls.push(`${owner}.${le}.${r}`);
      return { data, offset: 0 };
    };
    // coefficients sum_j w_j * (e_j + 1):
    //   rank 0 token 0: 0.5 * 2 + 0.25 * 3 = 1.75;  token 1: 0.25 * 1 + 0.5 * 2 = 1.25
    //   rank 1 token 0: 0.5 * 4 + 0.5 * 1 = 2.5;     token 1: (dropped) + 0.5 * 3 = 1.5
    // every product and sum is exact in f32 and bf16 (values <= 57.5 with <= 8 significant bits)
    const coef = [
      [1.75, 1.25],
      [2.5, 1.5],
    ];
    for (const src of [0, 1]) {
      const y = oracleCombine(cfg, inputs, src, expertOutOf);
      assert.equal(y.length, 2 * H);
      for (let t = 0; t < 2; t++) {
        for (let h = 0; h < H; h++) {
          assert.equal(
            bf16ToF32(y[t * H + h]),
            coef[src][t] * (src * 16 + t * 8 + h),
            `rank ${src} y[${t}][${h}]`,
          );
        }
      }
    }
    // a few values written out: rank 0 y[0][4] = 1.75 * 4 = 7; rank 1 y[1][7] = 1.5 * 31 = 46.5
    assert.equal(bf16ToF32(oracleCombine(cfg, inputs, 0, expertOutOf)[4]), 7);
    assert.equal(bf16ToF32(oracleCombine(cfg, inputs, 1, expertOutOf)[H + 7]), 46.5);
    // every valid pair's row is looked up, and nothing else: rank 0 has 4 valid pairs, rank 1 has 3
    assert.deepEqual([...new Set(calls)].sort(), [
      '0.0.0',
      '0.0.1',
      '0.1.0',
      '0.1.1',
      '1.0.0',
      '1.0.1',
      '1.1.0',
    ]);
  });

  test('combine looks up exactly the expert-major row of each valid pair', () => {
    const disp = [d0, d1];
    for (const src of [0, 1]) {
      const seen: string[] = [];
      oracleCombine(cfg, inputs, src, (owner, le, r) => {
        const org = disp[owner].expertOrigin[le][r];
        assert.equal(org.src, src, 'the row looked up came from this rank');
        seen.push(`${org.token}.${org.slot}`);
        return { data: new Uint16Array(H), offset: 0 };
      });
      // once per h per valid pair, so take the distinct ones
      const distinct = [...new Set(seen)].sort();
      assert.deepEqual(distinct, src === 0 ? ['0.0', '0.1', '1.0', '1.1'] : ['0.0', '0.1', '1.1']);
    }
  });
});

function makeInputs(cfg: EpConfig, seed: number, tokens: number[], drop: number): OracleRankInput[] {
  const r = rng(seed);
  return tokens.map((T) => ({
    numTokens: T,
    x: r.bf16Array(T * cfg.hidden, { minExp: -30, maxExp: 30 }),
    topkIdx: r.topkIdx(T, cfg.topk, cfg.numExperts, drop),
    topkWeights: r.weights(T * cfg.topk),
  }));
}

describe('oracle: random cases', () => {
  test('recvSplits and recvOrigin agree with each source rank planRouting', () => {
    for (const [W, E, k, seed] of [
      [2, 4, 2, 1],
      [3, 6, 3, 2],
      [4, 8, 2, 3],
      [4, 16, 5, 4],
      [1, 3, 2, 5],
    ]) {
      const cfg = resolveConfig({
        world: W,
        numExperts: E,
        hidden: 8,
        topk: k,
        maxTokensPerRank: 9,
        fp8: false,
        dedup: false,
      });
      const tokens = Array.from({ length: W }, (_, i) => [0, 1, 5, 9][(i + seed) % 4]);
      const inputs = makeInputs(cfg, seed, tokens, 0.2);
      const EPR = cfg.expertsPerRank;
      const plans = inputs.map((inp) => planRouting(cfg, inp.topkIdx, inp.numTokens));
      for (let dst = 0; dst < W; dst++) {
        const d = oracleDispatch(cfg, inputs, dst);
        let total = 0;
        for (let src = 0; src < W; src++) {
          const plan = plans[src];
          const rec = d.recvSplits.subarray(src * (EPR + 1), (src + 1) * (EPR + 1));
          assert.deepEqual(
            [...rec.subarray(0, EPR)],
            [...plan.expertCounts.subarray(dst * EPR, (dst + 1) * EPR)],
          );
          assert.equal(rec[EPR], plan.destRowStart[dst], 'm_st');
          const pairs = [...plan.rowPair.subarray(plan.destRowStart[dst], plan.destRowStart[dst + 1])];
          assert.deepEqual(
            d.recvOrigin[src].map((g) => g.token * k + g.slot),
            pairs,
          );
          for (const g of d.recvOrigin[src])
            assert.equal(inputs[src].topkIdx[g.token * k + g.slot], g.expert);
          assert.equal(d.recvRows[src].length, pairs.length * 2 * cfg.hidden);
          total += pairs.length;
        }
        assert.equal(
          d.expertCounts.reduce((a, b) => a + b, 0),
          total,
        );
        // expert-major: each local expert's rows, sources in rank order, tokens in order within a source
        for (let le = 0; le < EPR; le++) {
          const org = d.expertOrigin[le];
          assert.equal(org.length, d.expertCounts[le]);
          for (let i = 1; i < org.length; i++) {
            const a = org[i - 1];
            const b = org[i];
            assert.ok(a.src < b.src || (a.src === b.src && a.token < b.token));
          }
          for (const g of org) assert.equal(g.expert, dst * EPR + le);
        }
      }
    }
  });

  test('combine: random rows per (src, token, expert), y computed directly per token', () => {
    const cfg = resolveConfig({
      world: 3,
      numExperts: 6,
      hidden: 16,
      topk: 3,
      maxTokensPerRank: 7,
      fp8: false,
      dedup: false,
    });
    const H = cfg.hidden;
    const tokens = [7, 0, 4];
    const inputs = makeInputs(cfg, 42, tokens, 0.25);
    const r = rng(43);
    // table[src][token][expert] = a random bf16 row: the "expert output" for that pair
    const table = tokens.map((T) => Array.from({ length: T * cfg.numExperts }, () => r.bf16Array(H)));
    const disp = [0, 1, 2].map((d) => oracleDispatch(cfg, inputs, d));
    for (let src = 0; src < 3; src++) {
      const y = oracleCombine(cfg, inputs, src, (owner, le, row) => {
        const g = disp[owner].expertOrigin[le][row];
        return { data: table[g.src][g.token * cfg.numExperts + g.expert], offset: 0 };
      });
      const inp = inputs[src];
      for (let t = 0; t < inp.numTokens; t++) {
        for (let h = 0; h < H; h++) {
          let acc = 0;
          for (let j = 0; j < cfg.topk; j++) {
            const e = inp.topkIdx[t * cfg.topk + j];
            if (e < 0) continue;
            const v = bf16ToF32(table[src][t * cfg.numExperts + e][h]);
            acc = Math.fround(acc + Math.fround(inp.topkWeights[t * cfg.topk + j] * v));
          }
          assert.equal(y[t * H + h], f32ToBf16(acc), `rank ${src} y[${t}][${h}]`);
        }
      }
    }
  });

  test('combine of a token whose slots are all dropped is +0', () => {
    const cfg = resolveConfig({
      world: 1,
      numExperts: 2,
      hidden: 8,
      topk: 2,
      maxTokensPerRank: 1,
      fp8: false,
    });
    const inputs: OracleRankInput[] = [
      {
        numTokens: 1,
        x: new Uint16Array(8),
        topkIdx: Int32Array.from([-1, -1]),
        topkWeights: new Float32Array(2),
      },
    ];
    const y = oracleCombine(cfg, inputs, 0, () => assert.fail('no row should be looked up'));
    assert.deepEqual([...y], Array(8).fill(0));
  });
});

describe('oracle: FP8 dispatch', () => {
  test('rows are quantizeRowsFp8 of the source token, and recvScales its scales', () => {
    const cfg = resolveConfig({ world: 2, numExperts: 4, hidden: 256, topk: 2, maxTokensPerRank: 5 });
    assert.equal(cfg.fp8, true);
    const H = cfg.hidden;
    const gpr = cfg.groupsPerRow;
    const inputs = makeInputs(cfg, 77, [5, 4], 0.1);
    inputs[0].x.fill(0, 2 * H, 3 * H); // token 2 of rank 0: all zero -> scales 1
    const quant = (src: number, t: number) => {
      const q = new Uint8Array(H);
      const s = new Float32Array(gpr);
      quantizeRowsFp8(inputs[src].x, t * H, 1, H, cfg.fp8GroupSize, q, 0, s, 0);
      return { q, s };
    };
    let zeroRowsSeen = 0;
    for (let dst = 0; dst < 2; dst++) {
      const d: OracleDispatch = oracleDispatch(cfg, inputs, dst);
      for (let src = 0; src < 2; src++) {
        const org = d.recvOrigin[src];
        assert.equal(d.recvRows[src].length, org.length * H);
        assert.equal(d.recvScales[src].length, org.length * gpr);
        org.forEach((g, i) => {
          const { q, s } = quant(g.src, g.token);
          assert.deepEqual(d.recvRows[src].subarray(i * H, (i + 1) * H), q, `dst ${dst} src ${src} row ${i}`);
          assert.deepEqual(d.recvScales[src].subarray(i * gpr, (i + 1) * gpr), s);
          if (g.src === 0 && g.token === 2) {
            zeroRowsSeen++;
            assert.deepEqual([...d.recvScales[src].subarray(i * gpr, (i + 1) * gpr)], [1, 1]);
          }
        });
      }
      for (let le = 0; le < cfg.expertsPerRank; le++) {
        d.expertOrigin[le].forEach((g, i) => {
          const { q, s } = quant(g.src, g.token);
          assert.deepEqual(d.expertRows[le].subarray(i * H, (i + 1) * H), q);
          assert.deepEqual(d.expertScales[le].subarray(i * gpr, (i + 1) * gpr), s);
        });
      }
    }
    // token 2 of rank 0 is received once per kept slot (the fixed seed keeps at least one)
    const kept = [0, 1].filter((j) => inputs[0].topkIdx[2 * 2 + j] >= 0).length;
    assert.ok(kept > 0);
    assert.equal(zeroRowsSeen, kept);
  });
});

describe('oracle: dedup combine', () => {
  /** expertOutOf over a table of random rows, one per (src, token, expert), as the owners hold them. */
  function tableOutputs(cfg: EpConfig, inputs: OracleRankInput[], seed: number) {
    const r = rng(seed);
    const H = cfg.hidden;
    const table = inputs.map((inp) =>
      Array.from({ length: inp.numTokens * cfg.numExperts }, () =>
        r.bf16Array(H, { minExp: -12, maxExp: 12 }),
      ),
    );
    const disp = Array.from({ length: cfg.world }, (_, d) => oracleDispatch(cfg, inputs, d));
    return (owner: number, le: number, row: number) => {
      const g = disp[owner].expertOrigin[le][row];
      return { data: table[g.src][g.token * cfg.numExperts + g.expert], offset: 0 };
    };
  }

  test('hand-worked W = 2, k = 3: the partial of rank 0 rounds to bf16 before rank 1 is added', () => {
    // rank 0 (experts 0, 1) and rank 1 (experts 2, 3); rank 0 has one token -> experts [0, 2, 1], so
    // slots 0 and 2 sit on rank 0 and slot 1 on rank 1; rank 1 has no tokens. Weights [0.5, 0.25, 2].
    // Per channel h the three expert outputs (o0, o1, o2) and the products p = w * o (all exact):
    //   h0: (2, 2^-6, 2^-9)          p = (1, 2^-8, 2^-8)
    //       without dedup: ((1 + 2^-8) + 2^-8) = 1 + 2^-7           -> bf16 0x3f81
    //       with dedup: P0 = bf16(1 + 2^-8) = 1 (a tie, to even); P1 = 2^-8; bf16(1 + 2^-8) = 1 -> 0x3f80
    //   h1: (2 + 2^-6, -2^-6, 2^-9)  p = (1 + 2^-7, -2^-8, 2^-8)
    //       without: ((1 + 2^-7 - 2^-8) + 2^-8) = 1 + 2^-7                     -> 0x3f81
    //       with: P0 = bf16(1 + 2^-7 + 2^-8) = 1 + 2^-6 (tie, to even); P1 = -2^-8;
    //             1 + 2^-6 - 2^-8 = 1 + 3 * 2^-8, a tie between 0x3f81 and 0x3f82 -> 0x3f82
    //   h2: the negation of h0                                      -> 0xbf81 / 0xbf80
    //   h3: (2, 2^-7, 3 * 2^-10)     p = (1, 2^-9, 3 * 2^-9)
    //       without: 1 + 2^-9 + 3 * 2^-9 = 1 + 2^-7                             -> 0x3f81
    //       with: P0 = bf16(1 + 3 * 2^-9) = 1 + 2^-7; + 2^-9 -> bf16 1 + 2^-7  -> 0x3f81
    //   h4: (4, 0, 0) -> 2 (0x4000);  h5: (0, 4, 0) -> 1 (0x3f80);  h6: (0, 0, 1) -> 2 (0x4000);  h7: 0
    const base = { world: 2, numExperts: 4, hidden: 8, topk: 3, maxTokensPerRank: 1, fp8: false };
    const plain = resolveConfig({ ...base, dedup: false });
    const dedup = resolveConfig({ ...base, dedup: true });
    const inputs: OracleRankInput[] = [
      {
        numTokens: 1,
        x: new Uint16Array(8),
        topkIdx: Int32Array.from([0, 2, 1]),
        topkWeights: Float32Array.from([0.5, 0.25, 2]),
      },
      { numTokens: 0, x: new Uint16Array(0), topkIdx: new Int32Array(0), topkWeights: new Float32Array(0) },
    ];
    const o = [
      [2, 2 + 2 ** -6, -2, 2, 4, 0, 0, 0], // expert 0 (slot 0)
      [2 ** -6, -(2 ** -6), -(2 ** -6), 2 ** -7, 0, 4, 0, 0], // expert 2 (slot 1)
      [2 ** -9, 2 ** -9, -(2 ** -9), 3 * 2 ** -10, 0, 0, 1, 0], // expert 1 (slot 2)
    ];
    const slotOf = [0, 2, 1, -1]; // expert -> its slot in the token
    const disp = [0, 1].map((d) => oracleDispatch(plain, inputs, d));
    const outOf = (owner: number, le: number, row: number) => {
      const g = disp[owner].expertOrigin[le][row];
      const vals = o[slotOf[g.expert]];
      return { data: Uint16Array.from(vals, (v) => f32ToBf16(v)), offset: 0 };
    };
    for (const v of o.flat()) assert.equal(bf16ToF32(f32ToBf16(v)), v, `${v} is exact in bf16`);
    const without = oracleCombine(plain, inputs, 0, outOf);
    const withDedup = oracleCombine(dedup, inputs, 0, outOf);
    const hex = (y: Uint16Array) => [...y].map((b) => `0x${b.toString(16).padStart(4, '0')}`);
    assert.deepEqual(hex(without), [
      '0x3f81',
      '0x3f81',
      '0xbf81',
      '0x3f81',
      '0x4000',
      '0x3f80',
      '0x4000',
      '0x0000',
    ]);
    assert.deepEqual(hex(withDedup), [
      '0x3f80',
      '0x3f82',
      '0xbf80',
      '0x3f81',
      '0x4000',
      '0x3f80',
      '0x4000',
      '0x0000',
    ]);
    assert.equal(oracleCombine(dedup, inputs, 1, outOf).length, 0);
  });

  test('a token whose valid slots all sit on one rank gets exactly the result without dedup', () => {
    // W = 3, EPR = 4, k = 3: each token picks its experts on one random rank (some slots dropped);
    // wide exponents so that any difference in rounding would show
    const base = { world: 3, numExperts: 12, hidden: 16, topk: 3, maxTokensPerRank: 9, fp8: false };
    const plain = resolveConfig({ ...base, dedup: false });
    const dedup = resolveConfig({ ...base, dedup: true });
    const r = rng(2024);
    const inputs: OracleRankInput[] = [9, 4, 7].map((T) => {
      const idx = new Int32Array(T * 3);
      for (let t = 0; t < T; t++) {
        const owner = r.int(3);
        const local = r.topkIdx(1, 3, 4, 0.3);
        for (let j = 0; j < 3; j++) idx[t * 3 + j] = local[j] < 0 ? -1 : owner * 4 + local[j];
      }
      return { numTokens: T, x: r.bf16Array(T * 16), topkIdx: idx, topkWeights: r.weights(T * 3) };
    });
    const outOf = tableOutputs(plain, inputs, 7);
    for (let src = 0; src < 3; src++) {
      assert.deepEqual(oracleCombine(dedup, inputs, src, outOf), oracleCombine(plain, inputs, src, outOf));
    }
  });

  test('random routing: single-rank tokens agree, and some token spread over ranks differs', () => {
    const base = { world: 4, numExperts: 16, hidden: 32, topk: 5, maxTokensPerRank: 12, fp8: false };
    const plain = resolveConfig({ ...base, dedup: false });
    const dedup = resolveConfig({ ...base, dedup: true });
    const inputs = makeInputs(plain, 31, [12, 12, 5, 0], 0.2);
    const outOf = tableOutputs(plain, inputs, 32);
    let differs = 0;
    for (let src = 0; src < 4; src++) {
      const a = oracleCombine(plain, inputs, src, outOf);
      const b = oracleCombine(dedup, inputs, src, outOf);
      for (let t = 0; t < inputs[src].numTokens; t++) {
        const owners = new Set<number>();
        for (let j = 0; j < 5; j++) {
          const e = inputs[src].topkIdx[t * 5 + j];
          if (e >= 0) owners.add(Math.floor(e / 4));
        }
        const same = a.subarray(t * 32, (t + 1) * 32).every((v, h) => v === b[t * 32 + h]);
        if (owners.size <= 1) assert.ok(same, `rank ${src} token ${t} sits on one rank`);
        if (!same) differs++;
      }
    }
    assert.ok(differs > 0, 'the seed gives some token whose result rounds differently');
  });

  test('W = 1 with dedup equals W = 1 without, FP8 and bf16', () => {
    for (const fp8 of [true, false]) {
      const base = {
        world: 1,
        numExperts: 8,
        hidden: 128,
        topk: 6,
        maxTokensPerRank: 10,
        fp8,
        fp8GroupSize: 32,
      };
      const plain = resolveConfig({ ...base, dedup: false });
      const dedup = resolveConfig({ ...base, dedup: true });
      const inputs = makeInputs(plain, fp8 ? 5 : 6, [10], 0.25);
      const outOf = tableOutputs(plain, inputs, 8);
      const y = oracleCombine(plain, inputs, 0, outOf);
      assert.deepEqual(oracleCombine(dedup, inputs, 0, outOf), y);
      assert.ok(y.some((v) => v !== 0));
    }
  });

  test('a token with every slot dropped is +0 with dedup too; dispatch is the same', () => {
    const base = { world: 2, numExperts: 4, hidden: 8, topk: 2, maxTokensPerRank: 2, fp8: false };
    const plain = resolveConfig({ ...base, dedup: false });
    const dedup = resolveConfig({ ...base, dedup: true });
    const inputs = makeInputs(plain, 9, [2, 2], 0.3);
    inputs[0].topkIdx.fill(-1, 0, 2);
    const outOf = tableOutputs(plain, inputs, 10);
    const y = oracleCombine(dedup, inputs, 0, outOf);
    assert.deepEqual([...y.subarray(0, 8)], Array(8).fill(0));
    for (const d of [0, 1])
      assert.deepEqual(oracleDispatch(dedup, inputs, d), oracleDispatch(plain, inputs, d));
  });
});
