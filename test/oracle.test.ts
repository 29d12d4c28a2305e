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
