import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { oracleOutputsFor, standInExpert } from '../src/ep/check.js';
import { resolveConfig } from '../src/ep/config.js';
import { type OracleRankInput, oracleCombine, oracleDispatch } from '../src/ep/oracle.js';
import { rng } from './helpers/random.js';

/**
 * verify checks a rank's combine with oracleOutputsFor: the stand-in experts' outputs for that rank's own rows,
 * computed from its own inputs alone. It must give what the stand-in experts give on every owner's expert-major
 * rows from the full oracle dispatch, which is what verify computed before.
 */
describe('check: oracleOutputsFor (verify without the other ranks dispatch)', () => {
  for (const fp8 of [false, true])
    for (const dedup of [false, true])
      test(`equals the stand-in experts on the oracle's expert-major rows, row for row, and in combine (W = 3, ${fp8 ? 'FP8' : 'bf16'}${dedup ? ', dedup' : ''})`, () => {
        const r = rng(fp8 ? 71 : 17);
        const cfg = resolveConfig({
          world: 3,
          numExperts: 12,
          hidden: 64,
          topk: 4,
          maxTokensPerRank: 9,
          fp8,
          fp8GroupSize: 32,
          dedup,
        });
        // ragged batches, some slots dropped
        const inputs: OracleRankInput[] = [9, 0, 6].map((T) => ({
          numTokens: T,
          x: r.bf16Array(T * cfg.hidden),
          topkIdx: r.topkIdx(T, cfg.topk, cfg.numExperts, 0.2),
          topkWeights: r.weights(T * cfg.topk),
        }));
        const { expertsPerRank: EPR, hidden: H, dispatchRowBytes: rb, groupsPerRow: G } = cfg;
        // the full path: every owner's expert-major rows, through the stand-in expert
        const full = [0, 1, 2].map((owner) => {
          const d = oracleDispatch(cfg, inputs, owner);
          return (le: number, row: number) => {
            const out = new Uint16Array(H);
            standInExpert(
              cfg,
              owner * EPR + le,
              d.expertRows[le].subarray(row * rb, (row + 1) * rb),
              d.expertScales[le].subarray(row * G, (row + 1) * G),
              out,
              0,
            );
            return { data: out, offset: 0 };
          };
        });
        let asked = 0;
        for (const src of [0, 1, 2]) {
          const mine = oracleOutputsFor(cfg, inputs, src);
          const both = (owner: number, le: number, row: number) => {
            const a = mine(owner, le, row);
            const b = full[owner](le, row);
            assert.deepEqual(
              a.data.subarray(a.offset, a.offset + H),
              b.data.subarray(b.offset, b.offset + H),
              `src ${src}: owner ${owner}, expert ${le}, row ${row}`,
            );
            asked++;
            return a;
          };
          const y = oracleCombine(cfg, inputs, src, both);
          assert.deepEqual(
            y,
            oracleCombine(cfg, inputs, src, (o, le, row) => full[o](le, row)),
            `src ${src}: y`,
          );
        }
        assert.ok(asked > 0, 'combine asked for rows');
      });

  test("a row that is not one of the rank's own is refused", () => {
    const cfg = resolveConfig({
      world: 2,
      numExperts: 4,
      hidden: 8,
      topk: 1,
      maxTokensPerRank: 2,
      fp8: false,
    });
    const inputs: OracleRankInput[] = [0, 1].map(() => ({
      numTokens: 2,
      x: new Uint16Array(16),
      topkIdx: Int32Array.from([0, 0]),
      topkWeights: Float32Array.from([1, 1]),
    }));
    // rank 1's rows of expert 0 are rows 2 and 3 (rank 0's come first); rows 0 and 1 are rank 0's
    const of1 = oracleOutputsFor(cfg, inputs, 1);
    assert.equal(of1(0, 0, 2).data.length, 8);
    assert.throws(() => of1(0, 0, 0), /not one of rank 1's/);
  });
});
