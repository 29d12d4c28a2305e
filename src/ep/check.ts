import { BF16_DECODE, FP8_DECODE, f32ToBf16 } from './codec.js';
import type { EpConfig } from './config.js';
import {
  type OracleDispatch,
  type OracleRankInput,
  pairRows,
  type RowOrigin,
  tokenEncoder,
} from './oracle.js';

/**
 * Tools for checking a transport against the oracle: a stand-in expert (a fixed function of a row and
 * its expert id, so that combine's result depends on every row being in the right place), and
 * comparisons that say where a misplaced row came from.
 */

/** bf16 bits that no correct result holds where we poison: a NaN with a payload. */
export const POISON_BF16 = 0x7fa5;
export const POISON_BYTE = 0xa5;

/** The stand-in expert's multiplier: exact in f32, different for neighbouring experts. */
function expertMultiplier(expert: number): number {
  return 1 + (expert % 7) * 0.125;
}

/** out[h] = bf16(f32(value(row)[h] * m(expert))), value = dequantised FP8 or the bf16 itself. */
export function standInExpert(
  cfg: EpConfig,
  expert: number,
  row: Uint8Array,
  scales: Float32Array,
  out: Uint16Array,
  outOffset: number,
): void {
  const H = cfg.hidden;
  const m = expertMultiplier(expert);
  if (cfg.fp8) {
    const G = cfg.fp8GroupSize;
    for (let h = 0; h < H; h++) {
      const v = Math.fround(FP8_DECODE[row[h]] * scales[(h / G) | 0]);
      out[outOffset + h] = f32ToBf16(Math.fround(v * m));
    }
  } else {
    const bf = new Uint16Array(row.buffer, row.byteOffset, H);
    for (let h = 0; h < H; h++) out[outOffset + h] = f32ToBf16(Math.fround(BF16_DECODE[bf[h]] * m));
  }
}

/** Runs the stand-in expert over a rank's expert-major rows; rows no expert holds are poisoned. */
export function runStandInExperts(
  cfg: EpConfig,
  rank: number,
  expertX: Uint8Array,
  expertScales: Float32Array | null,
  expertCounts: Int32Array,
  expertOffsets: Int32Array,
): Uint16Array {
  const { hidden: H, dispatchRowBytes: rb, groupsPerRow: G } = cfg;
  const out = new Uint16Array(cfg.expertRows * H).fill(POISON_BF16);
  for (let e = 0; e < cfg.expertsPerRank; e++) {
    // (wrong counts or offsets are compareDispatch's to report: run only over rows that exist)
    const n = Math.max(0, Math.min(expertCounts[e], cfg.expertRows - expertOffsets[e]));
    for (let i = 0; i < (expertOffsets[e] >= 0 ? n : 0); i++) {
      const r = expertOffsets[e] + i;
      standInExpert(
        cfg,
        rank * cfg.expertsPerRank + e,
        expertX.subarray(r * rb, (r + 1) * rb),
        expertScales ? expertScales.subarray(r * G, (r + 1) * G) : new Float32Array(0),
        out,
        r * H,
      );
    }
  }
  return out;
}

/**
 * The stand-in experts' outputs for rank `src`'s own tokens, as oracleCombine asks for them: row `row` of local
 * expert `le` at `owner`, numbered in the owner's expert-major order (the rows of the sources before `src` first).
 * Computed from src's inputs alone (each token encoded once, each of its pairs through its expert), so a rank
 * checks its combine without the other ranks' dispatch: about W times less work than from every owner's rows.
 */
export function oracleOutputsFor(cfg: EpConfig, inputs: readonly OracleRankInput[], src: number) {
  const { topk: k, numExperts: E, expertsPerRank: EPR, hidden: H } = cfg;
  const me = inputs[src];
  // src's pairs of each expert, in order; the first's row is where src's rows of that expert start
  const pairsOf: number[][] = Array.from({ length: E }, () => []);
  for (let p = 0; p < me.numTokens * k; p++) {
    const e = me.topkIdx[p];
    if (e >= 0 && e < E) pairsOf[e].push(p);
  }
  const rowOf = pairRows(cfg, inputs, src);
  // (oracleCombine asks for each pair's row once: the token's encoding is what is worth keeping)
  const encode = tokenEncoder(cfg, me);
  return (owner: number, le: number, row: number): { data: Uint16Array; offset: number } => {
    const e = owner * EPR + le;
    const first = pairsOf[e]?.[0];
    const p = first === undefined ? undefined : pairsOf[e][row - rowOf[first]];
    if (p === undefined)
      throw new Error(`oracleOutputsFor: row ${row} of expert ${e} is not one of rank ${src}'s`);
    const r = encode(Math.floor(p / k));
    const out = new Uint16Array(H);
    standInExpert(cfg, e, r.bytes, r.scales, out, 0);
    return { data: out, offset: 0 };
  };
}

function describe(o: RowOrigin): string {
  return `(src ${o.src}, token ${o.token}, slot ${o.slot}, expert ${o.expert})`;
}

/** Byte-for-byte equality of two byte arrays. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** What a rank's transport produced by dispatch, on the host. */
export interface ActualDispatch {
  expertX: Uint8Array;
  expertScales: Float32Array | null;
  expertCounts: Int32Array;
  expertOffsets: Int32Array;
  /** Source-major: splits [W][EPR+1], rows [W][MAX_M][rowBytes], scales [W][MAX_M][G]. */
  recvSplits?: Int32Array;
  recvX?: Uint8Array;
  recvScales?: Float32Array | null;
}

/**
 * Compares a rank's dispatch output with the oracle, bit for bit. Returns null when equal, else a
 * message naming the first wrong thing; a misplaced row is named by where it came from.
 */
export function compareDispatch(
  cfg: EpConfig,
  actual: ActualDispatch,
  expected: OracleDispatch,
): string | null {
  const { expertsPerRank: epr, dispatchRowBytes: rb, groupsPerRow: G } = cfg;
  for (let e = 0; e < epr; e++) {
    if (actual.expertCounts[e] !== expected.expertCounts[e]) {
      return `expertCounts[${e}] is ${actual.expertCounts[e]}, expected ${expected.expertCounts[e]}`;
    }
  }
  // where each expert's rows must start: its fixed block (padded), or after the experts before it (packed)
  let next = 0;
  for (let e = 0; e < epr; e++) {
    const want = cfg.expertLayout === 'packed' ? next : e * cfg.expertCapacity;
    next += expected.expertCounts[e];
    if (actual.expertOffsets[e] !== want) {
      return `expertOffsets[${e}] is ${actual.expertOffsets[e]}, expected ${want} (${cfg.expertLayout} layout)`;
    }
  }
  // where each expected row's bytes live, to name a misplaced row by its origin
  const byContent = new Map<string, RowOrigin>();
  const key = (row: Uint8Array) => Buffer.from(row.buffer, row.byteOffset, row.byteLength).toString('base64');
  for (let e = 0; e < epr; e++) {
    for (let i = 0; i < expected.expertCounts[e]; i++) {
      byContent.set(key(expected.expertRows[e].subarray(i * rb, (i + 1) * rb)), expected.expertOrigin[e][i]);
    }
  }
  for (let e = 0; e < epr; e++) {
    for (let i = 0; i < expected.expertCounts[e]; i++) {
      const r = actual.expertOffsets[e] + i;
      const got = actual.expertX.subarray(r * rb, (r + 1) * rb);
      const want = expected.expertRows[e].subarray(i * rb, (i + 1) * rb);
      const origin = expected.expertOrigin[e][i];
      if (!bytesEqual(got, want)) {
        const found = byContent.get(key(got));
        const what = found
          ? `holds the row of ${describe(found)}`
          : `differs at byte ${firstDiff(got, want)} (0x${got[firstDiff(got, want)].toString(16)} vs 0x${want[firstDiff(got, want)].toString(16)}) and matches no row sent here`;
        return `expertX[${e}][${i}] should be ${describe(origin)} but ${what}`;
      }
      if (actual.expertScales) {
        for (let g = 0; g < G; g++) {
          const a = actual.expertScales[r * G + g];
          const b = expected.expertScales[e][i * G + g];
          if (!Object.is(a, b))
            return `expertScales[${e}][${i}][${g}] of ${describe(origin)} is ${a}, expected ${b}`;
        }
      }
    }
  }
  if (actual.recvSplits) {
    const spp = epr + 1;
    for (let s = 0; s < cfg.world; s++) {
      for (let i = 0; i < spp; i++) {
        const a = actual.recvSplits[s * spp + i];
        const b = expected.recvSplits[s * spp + i];
        if (a !== b)
          return `recv splits from rank ${s}, entry ${i} ${i === epr ? '(m_st)' : ''}is ${a}, expected ${b}`;
      }
      const n = expected.recvOrigin[s].length;
      if (actual.recvX) {
        const base = s * cfg.maxRowsPerPeer * rb;
        const got = actual.recvX.subarray(base, base + n * rb);
        if (!bytesEqual(got, expected.recvRows[s])) {
          const at = Math.floor(firstDiff(got, expected.recvRows[s]) / rb);
          return `source-major block of rank ${s}, row ${at} should be ${describe(expected.recvOrigin[s][at])} but differs`;
        }
      }
      if (actual.recvScales) {
        const base = s * cfg.maxRowsPerPeer * G;
        for (let i = 0; i < n * G; i++) {
          if (!Object.is(actual.recvScales[base + i], expected.recvScales[s][i])) {
            return `source-major scales of rank ${s}, row ${Math.floor(i / G)} group ${i % G} differ`;
          }
        }
      }
    }
  }
  return null;
}

/** Compares combine output y (bf16 [T, H]) with the oracle's; names the first token and channel that differ. */
export function compareCombine(
  cfg: EpConfig,
  input: OracleRankInput,
  y: Uint16Array,
  expected: Uint16Array,
): string | null {
  if (y.length !== expected.length) return `combine returned ${y.length} values, expected ${expected.length}`;
  for (let i = 0; i < y.length; i++) {
    if (y[i] !== expected[i]) {
      const t = Math.floor(i / cfg.hidden);
      const ids = Array.from(input.topkIdx.subarray(t * cfg.topk, (t + 1) * cfg.topk)).join(',');
      return `y[${t}][${i % cfg.hidden}] is 0x${y[i].toString(16)}, expected 0x${expected[i].toString(16)} (token ${t} went to experts ${ids})`;
    }
  }
  return null;
}
