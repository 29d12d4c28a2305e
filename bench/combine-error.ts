/**
 * How far combine's result lies from the exact weighted sum, with and without de-duplication.
 *
 *   node --import tsx bench/combine-error.ts [--tokens 256] [--hidden 1024] [--seed 1]
 *
 * Both reductions are the oracle's (src/ep/oracle.ts), which every transport matches bit for bit, so
 * this needs no GPU. Realistic data: expert outputs ~ N(0, 1) as bf16; each token picks the top-8 of
 * 256 experts by a sigmoid score and weighs them by score / sum of scores (DeepSeek-V3's router). The
 * exact sum is computed in f64 from the same bf16 outputs and f32 weights. Errors are in units of the
 * bf16 spacing (ulp) at the sum of the terms' magnitudes, sum_j |w_j out_j|: the scale rounding errors
 * live on (at the exact value itself, a sum that cancels to near zero would make any error look huge).
 * Prints a table and writes JSON under bench/results/.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BF16_DECODE, f32ToBf16 } from '../src/ep/codec.js';
import { resolveConfig } from '../src/ep/config.js';
import { type OracleRankInput, oracleCombine, oracleDispatch } from '../src/ep/oracle.js';
import { Rng } from '../src/ep/random.js';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const tokens = arg('tokens', 256);
const hidden = arg('hidden', 1024);
const seed = arg('seed', 1);
const E = 256;
const k = 8;

function gaussian(rng: Rng): number {
  const u = 1 - rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

/** One rank's tokens routed as DeepSeek-V3 does: top-k sigmoid scores, normalised to sum 1. */
function routedInput(rng: Rng): OracleRankInput {
  const idx = new Int32Array(tokens * k);
  const w = new Float32Array(tokens * k);
  for (let t = 0; t < tokens; t++) {
    const scores = Array.from({ length: E }, (_, e) => ({ e, s: 1 / (1 + Math.exp(-gaussian(rng))) }));
    scores.sort((a, b) => b.s - a.s);
    const top = scores.slice(0, k);
    const sum = top.reduce((acc, x) => acc + x.s, 0);
    top.forEach((x, j) => {
      idx[t * k + j] = x.e;
      w[t * k + j] = Math.fround(x.s / sum);
    });
  }
  return { numTokens: tokens, x: new Uint16Array(tokens * hidden), topkIdx: idx, topkWeights: w };
}

/** bf16 spacing (ulp) at |v|: 2^(exponent - 7); at least the smallest normal's. */
function bf16Ulp(v: number): number {
  const a = Math.abs(v);
  if (a < 2 ** -126) return 2 ** -133;
  return 2 ** (Math.floor(Math.log2(a)) - 7);
}

interface Row {
  world: number;
  /** Hosts the ranks span: with dedup, another host's owners are pre-reduced there (one more rounding). */
  nodes: number;
  dedup: boolean;
  meanUlp: number;
  maxUlp: number;
  /** Share of elements that differ from the exact sum rounded once to bf16. */
  offCorrectlyRounded: number;
}

const rows: Row[] = [];
// each world on one host, with and without dedup; then over hosts, where only dedup rounds differently
const runs: { world: number; nodes: number[] }[] = [
  { world: 2, nodes: [1] },
  { world: 4, nodes: [1, 2] },
  { world: 8, nodes: [1, 2] },
  { world: 16, nodes: [1, 2, 4] },
];
for (const { world, nodes: nodesList } of runs) {
  const rng = new Rng(seed * 1000 + world);
  const inputs = Array.from({ length: world }, () => routedInput(rng));
  const base = resolveConfig({ world, numExperts: E, hidden, topk: k, maxTokensPerRank: tokens, fp8: false });
  // every owner's expert outputs, in the oracle's expert-major order: N(0, 1) as bf16
  const outs = Array.from({ length: world }, (_, owner) => {
    const d = oracleDispatch(base, inputs, owner);
    return Array.from(d.expertCounts, (n) => {
      const a = new Uint16Array(n * hidden);
      for (let i = 0; i < a.length; i++) a[i] = f32ToBf16(gaussian(rng));
      return a;
    });
  });
  const outOf = (owner: number, le: number, row: number) => ({ data: outs[owner][le], offset: row * hidden });
  const variants = nodesList.flatMap((nodes) =>
    (nodes === 1 ? [false, true] : [true]).map((dedup) => ({ nodes, dedup })),
  );
  for (const { nodes, dedup } of variants) {
    const cfg = { ...base, dedup, nodes, ranksPerNode: world / nodes };
    let sumUlp = 0;
    let maxUlp = 0;
    let off = 0;
    let n = 0;
    for (let src = 0; src < world; src++) {
      const y = oracleCombine(cfg, inputs, src, outOf);
      // the exact sums, in f64, from the same pairs (expert-major positions as the oracle numbers them)
      const exact = new Float64Array(tokens * hidden);
      const scale = new Float64Array(tokens * hidden);
      const pos = new Map<number, number>();
      for (let s = 0; s <= src; s++) {
        for (let p = 0; p < tokens * k; p++) {
          const e = inputs[s].topkIdx[p];
          const r = pos.get(e) ?? 0;
          pos.set(e, r + 1);
          if (s !== src) continue;
          const t = Math.floor(p / k);
          const row = outOf(Math.floor(e / (E / world)), e % (E / world), r);
          const wv = inputs[src].topkWeights[p];
          for (let h = 0; h < hidden; h++) {
            const term = wv * BF16_DECODE[row.data[row.offset + h]];
            exact[t * hidden + h] += term;
            scale[t * hidden + h] += Math.abs(term);
          }
        }
      }
      for (let i = 0; i < exact.length; i++) {
        const err = Math.abs(BF16_DECODE[y[i]] - exact[i]) / bf16Ulp(scale[i]);
        sumUlp += err;
        maxUlp = Math.max(maxUlp, err);
        if (y[i] !== f32ToBf16(exact[i])) off++;
        n++;
      }
    }
    rows.push({ world, nodes, dedup, meanUlp: sumUlp / n, maxUlp, offCorrectlyRounded: off / n });
  }
}

console.log(
  `combine error against the exact f64 sum, in bf16 ulps at sum_j |w_j out_j|; ${tokens} tokens per rank, H = ${hidden}, top-${k} of ${E} (seed ${seed})`,
);
console.log('  W  hosts  dedup  mean ulp  max ulp  off the correctly rounded bf16');
for (const r of rows) {
  console.log(
    `${String(r.world).padStart(3)}  ${String(r.nodes).padStart(5)}  ${(r.dedup ? 'on' : 'off').padStart(5)}  ${r.meanUlp.toFixed(3).padStart(8)}  ${r.maxUlp.toFixed(2).padStart(7)}  ${(100 * r.offCorrectlyRounded).toFixed(1).padStart(6)} %`,
  );
}
const date = new Date().toISOString();
mkdirSync('bench/results', { recursive: true });
const file = join('bench/results', `${date.replace(/[:.]/g, '-')}-combine-error.json`);
writeFileSync(
  file,
  `${JSON.stringify({ date, tokens, hidden, topk: k, numExperts: E, seed, rows }, null, 2)}\n`,
);
console.log(`results: ${file}`);
