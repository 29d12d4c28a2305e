import { BF16_DECODE, f32ToBf16, quantizeRowsFp8 } from './codec.js';
import type { EpConfig } from './config.js';

/**
 * The reference: what every rank must hold after dispatch and what combine must return, computed in
 * one process with plain loops. It shares nothing with the transports but the codecs (and the config
 * type), so a bug in the routing plan or a transport cannot hide by appearing in both.
 */

export interface OracleRankInput {
  numTokens: number;
  /** bf16 [T, H] */
  x: Uint16Array;
  /** i32 [T, k], -1 = dropped */
  topkIdx: Int32Array;
  /** f32 [T, k] */
  topkWeights: Float32Array;
}

/** Where a received row came from. */
export interface RowOrigin {
  src: number;
  token: number;
  slot: number;
  expert: number;
}

export interface OracleDispatch {
  /** i32 [W][EPR + 1]: for each src, rows per local expert, then m_st. */
  recvSplits: Int32Array;
  /** Per src: the rows it sent me, expert-sorted, [count][rowBytes] bytes (FP8 or bf16 little-endian). */
  recvRows: Uint8Array[];
  /** Per src: f32 [count][H/G] scales (FP8 only; empty otherwise). */
  recvScales: Float32Array[];
  /** Per src: the origin of each of those rows. */
  recvOrigin: RowOrigin[][];
  /** i32 [EPR]: rows per local expert over all sources. */
  expertCounts: Int32Array;
  /** Per local expert: its rows [count][rowBytes], sources in rank order. */
  expertRows: Uint8Array[];
  expertScales: Float32Array[];
  expertOrigin: RowOrigin[][];
}

/** One row of rank `src`'s input as it is sent: FP8 bytes + scales, or the bf16 bytes. */
function encodeRow(
  cfg: EpConfig,
  inp: OracleRankInput,
  token: number,
): { bytes: Uint8Array; scales: Float32Array } {
  const H = cfg.hidden;
  if (!cfg.fp8) {
    const row = inp.x.slice(token * H, (token + 1) * H);
    return { bytes: new Uint8Array(row.buffer), scales: new Float32Array(0) };
  }
  const bytes = new Uint8Array(H);
  const scales = new Float32Array(cfg.groupsPerRow);
  quantizeRowsFp8(inp.x, token * H, 1, H, cfg.fp8GroupSize, bytes, 0, scales, 0);
  return { bytes, scales };
}

/** encodeRow of rank `inp`'s tokens, each token encoded once (a token goes out with the same bytes to every expert). */
export function tokenEncoder(
  cfg: EpConfig,
  inp: OracleRankInput,
): (token: number) => ReturnType<typeof encodeRow> {
  const encoded = new Map<number, ReturnType<typeof encodeRow>>();
  return (token) => {
    let r = encoded.get(token);
    if (!r) {
      r = encodeRow(cfg, inp, token);
      encoded.set(token, r);
    }
    return r;
  };
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function concatF32(parts: Float32Array[]): Float32Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Float32Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** What rank `dst` holds after dispatch, given every rank's inputs. */
export function oracleDispatch(
  cfg: EpConfig,
  inputs: readonly OracleRankInput[],
  dst: number,
): OracleDispatch {
  const { world: W, expertsPerRank: EPR, topk: k } = cfg;
  const recvSplits = new Int32Array(W * (EPR + 1));
  const recvRows: Uint8Array[] = [];
  const recvScales: Float32Array[] = [];
  const recvOrigin: RowOrigin[][] = [];
  // per local expert, per src: rows
  const byExpert: { bytes: Uint8Array; scales: Float32Array; origin: RowOrigin }[][][] = [];
  for (let e = 0; e < EPR; e++) byExpert.push(Array.from({ length: W }, () => []));
  for (let src = 0; src < W; src++) {
    const inp = inputs[src];
    let before = 0; // src's valid pairs whose expert is below my first expert: m_st
    for (let p = 0; p < inp.numTokens * k; p++) {
      const e = inp.topkIdx[p];
      if (e >= 0 && e < dst * EPR) before++;
    }
    const rows: Uint8Array[] = [];
    const scales: Float32Array[] = [];
    const origin: RowOrigin[] = [];
    const encode = tokenEncoder(cfg, inp);
    for (let le = 0; le < EPR; le++) {
      const expert = dst * EPR + le;
      let count = 0;
      for (let t = 0; t < inp.numTokens; t++) {
        for (let j = 0; j < k; j++) {
          if (inp.topkIdx[t * k + j] !== expert) continue;
          const r = encode(t);
          const o = { src, token: t, slot: j, expert };
          rows.push(r.bytes);
          scales.push(r.scales);
          origin.push(o);
          byExpert[le][src].push({ ...r, origin: o });
          count++;
        }
      }
      recvSplits[src * (EPR + 1) + le] = count;
    }
    recvSplits[src * (EPR + 1) + EPR] = before;
    recvRows.push(concat(rows));
    recvScales.push(concatF32(scales));
    recvOrigin.push(origin);
  }
  const expertCounts = new Int32Array(EPR);
  const expertRows: Uint8Array[] = [];
  const expertScales: Float32Array[] = [];
  const expertOrigin: RowOrigin[][] = [];
  for (let le = 0; le < EPR; le++) {
    const all = byExpert[le].flat();
    expertCounts[le] = all.length;
    expertRows.push(concat(all.map((r) => r.bytes)));
    expertScales.push(concatF32(all.map((r) => r.scales)));
    expertOrigin.push(all.map((r) => r.origin));
  }
  return {
    recvSplits,
    recvRows,
    recvScales,
    recvOrigin,
    expertCounts,
    expertRows,
    expertScales,
    expertOrigin,
  };
}

/**
 * Each of rank `src`'s pairs' row among its expert's rows in expert-major order (the rows of the sources before
 * src first, then src's pairs in order), -1 for a slot with no expert. One pass over the pairs.
 */
export function pairRows(cfg: EpConfig, inputs: readonly OracleRankInput[], src: number): Int32Array {
  const { topk: k, numExperts: E } = cfg;
  const next = new Int32Array(E); // the next row of each expert
  for (let s = 0; s < src; s++) {
    const ids = inputs[s].topkIdx;
    for (let p = 0; p < inputs[s].numTokens * k; p++) if (ids[p] >= 0 && ids[p] < E) next[ids[p]]++;
  }
  const ids = inputs[src].topkIdx;
  const rows = new Int32Array(inputs[src].numTokens * k).fill(-1);
  for (let p = 0; p < rows.length; p++) if (ids[p] >= 0 && ids[p] < E) rows[p] = next[ids[p]]++;
  return rows;
}

/**
 * What combine returns on rank `src`: y[t] = bf16(sum over valid j, in order, of f32(w[t,j] * out[t,j])),
 * where out[t,j] is the row that the owner of expert topkIdx[t,j] produced for this pair.
 * `expertOutOf(owner, localExpert, row)` gives that owner's bf16 output row (an array and offset):
 * rows are numbered as in the oracle's expert-major order.
 *
 * With cfg.dedup, each owner d of token t first reduces its own slots: P_d = bf16(sum over valid j
 * with owner d, in order, of f32(w[t,j] * out[t,j])), the f32 sum starting from 0. Over several hosts
 * (cfg.nodes > 1) the owners of t on a host other than src's are then reduced inside their host:
 * Q = bf16(S), S = P of that host's first owner (by its first slot), then S = f32(S + P) for each next
 * owner there in the order of their first slots. Last, y[t] = bf16(S) over t's keys in the order of
 * their first slots, S starting from the first key's partial, then S = f32(S + partial): a key is an
 * owner on src's host (its P) or a whole other host (its Q). y[t] = +0 when t has no valid slot.
 */
export function oracleCombine(
  cfg: EpConfig,
  inputs: readonly OracleRankInput[],
  src: number,
  expertOutOf: (owner: number, localExpert: number, row: number) => { data: Uint16Array; offset: number },
): Uint16Array {
  const { hidden: H, topk: k, expertsPerRank: EPR, world: W, ranksPerNode: G } = cfg;
  const inp = inputs[src];
  const y = new Uint16Array(inp.numTokens * H);
  const pairPos = pairRows(cfg, inputs, src);
  /** acc += token t's slots in order (of `owner` only, unless it is -1), each weighted: f32 at every step. */
  const addSlots = (acc: Float32Array, t: number, owner: number) => {
    for (let j = 0; j < k; j++) {
      const e = inp.topkIdx[t * k + j];
      if (e < 0 || (owner >= 0 && Math.floor(e / EPR) !== owner)) continue;
      const r = expertOutOf(Math.floor(e / EPR), e % EPR, pairPos[t * k + j]);
      const w = inp.topkWeights[t * k + j];
      for (let h = 0; h < H; h++) acc[h] += Math.fround(w * BF16_DECODE[r.data[r.offset + h]]);
    }
  };
  if (cfg.dedup) {
    const host = (r: number) => Math.floor(r / G);
    // the key an owner's partial is summed under at the origin: itself on src's host, else its host
    const keyOf = (d: number) => (host(d) === host(src) ? d : W + host(d));
    /** f32 sum in order, the first term taken as it is (no rounding on a single term). */
    const sumInOrder = (terms: number[]) => terms.reduce((s, x, i) => (i === 0 ? x : Math.fround(s + x)), 0);
    for (let t = 0; t < inp.numTokens; t++) {
      // owners of t in the order of their first (carrier) slots, and the keys in the order of theirs
      const owners: number[] = [];
      for (let j = 0; j < k; j++) {
        const e = inp.topkIdx[t * k + j];
        if (e >= 0 && !owners.includes(Math.floor(e / EPR))) owners.push(Math.floor(e / EPR));
      }
      // per key, the indices in `owners` of the owners it sums (in order)
      const keys: number[] = [];
      const groups: number[][] = [];
      for (const [i, d] of owners.entries()) {
        const at = keys.indexOf(keyOf(d));
        if (at >= 0) groups[at].push(i);
        else {
          keys.push(keyOf(d));
          groups.push([i]);
        }
      }
      // P[i][h]: owner i's partial, the f32 sum over its slots in order (a Float32Array rounds each step
      // to f32, as Math.fround does), then rounded to bf16
      const P = owners.map((owner) => {
        const acc = new Float32Array(H);
        addSlots(acc, t, owner);
        for (let h = 0; h < H; h++) acc[h] = BF16_DECODE[f32ToBf16(acc[h])];
        return acc;
      });
      if (keys.length === 0) continue;
      const terms: number[] = [];
      for (let h = 0; h < H; h++) {
        const partials = keys.map((key, i) => {
          if (key < W) return P[groups[i][0]][h];
          terms.length = 0;
          for (const o of groups[i]) terms.push(P[o][h]);
          return BF16_DECODE[f32ToBf16(sumInOrder(terms))];
        });
        y[t * H + h] = f32ToBf16(sumInOrder(partials));
      }
    }
    return y;
  }
  const acc = new Float32Array(H);
  for (let t = 0; t < inp.numTokens; t++) {
    acc.fill(0);
    addSlots(acc, t, -1);
    for (let h = 0; h < H; h++) y[t * H + h] = f32ToBf16(acc[h]);
  }
  return y;
}
