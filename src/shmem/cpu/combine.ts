import { sumPartialsBf16, weightedSumBf16 } from '../../ep/codec.js';
import { combineRowOffset, stageRecordOffset } from '../../ep/layout.js';
import { type HostTensor, hostTensor } from '../../ep/tensor.js';
import { combineRoute } from './rail.js';
import type { RankHeap } from './rank-heap.js';

/**
 * Combine on host memory (ep_combine_send + ep_combine_reduce): the owner returns rows (or, with dedup,
 * one pre-reduced partial per token and rank) into each origin's combine buffer, fences and signals it;
 * the origin reduces what came back.
 */

/** What combine needs of its dispatch. */
export interface CombineState {
  slot: number;
  numTokens: number;
  pairRow: Int32Array;
  /** i32 [W][EPR + 1] as received: counts per local expert from each source, then its m_st. */
  splits: Int32Array;
  /**
   * dedup: u8 [T * k], 1 where the origin reduces the partial at (t, j): the first of t's slots on an owner
   * on this host, or on another host (whose rail peer sums its owners' partials there).
   */
  carriers: Uint8Array | null;
}

/**
 * Without dedup, owner side: each source's rows (expert by expert, from where the source's rows of that
 * expert start in expertOut) to its combine buffer at m_st + their index in its order; fence, signal.
 */
export function sendRows(h: RankHeap, st: CombineState, out: Uint16Array, call: number): void {
  const c = h.config;
  const epr = c.expertsPerRank;
  const spp = h.layout.splitsPerPeer;
  const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  const rowBytes = c.combineRowBytes;
  const expertBase = new Int32Array(epr); // rows of each expert taken by sources before s
  for (let s = 0; s < c.world; s++) {
    // (expert-major order is by source, so sources go in order)
    const to = combineRoute(h, st.slot, s);
    const peer = h.shmem.mapped(to.rank);
    let row = st.splits[s * spp + epr]; // m_st
    for (let e = 0; e < epr; e++) {
      const count = st.splits[s * spp + e];
      const from = (h.rowStarts[e] + expertBase[e]) * rowBytes;
      const rows = outBytes.subarray(from, from + count * rowBytes);
      const off = to.rowOffset(row);
      if (peer) peer.set(rows, off);
      else h.shmem.put(to.rank, off, rows);
      expertBase[e] += count;
      row += count;
    }
    h.shmem.fence();
    h.shmem.signal(to.rank, to.signal, BigInt(call));
  }
}

/**
 * dedup combine, owner side: for each source s (in rank order) and each of its carrier rows r0, the
 * partial bf16(sum over the record's slots j with rows[j] >= 0, in j order, of f32(w[j] * out row of
 * (s, rows[j]))), written to s's combineRecv at row `back`; then fence and signal s.
 */
export function sendPartials(h: RankHeap, st: CombineState, out: Uint16Array, call: number): void {
  const c = h.config;
  const k = c.topk;
  const H = c.hidden;
  const epr = c.expertsPerRank;
  const spp = h.layout.splitsPerPeer;
  const expertBase = new Int32Array(epr); // rows of each expert taken by sources before s
  const packed = new Int32Array(c.maxRowsPerPeer); // expert-major row of each row of s
  const partial = new Uint16Array(H);
  const partialBytes = new Uint8Array(partial.buffer);
  const rows: Uint16Array[] = [];
  const offs: number[] = [];
  const ws: number[] = [];
  for (let s = 0; s < c.world; s++) {
    let count = 0;
    for (let e = 0; e < epr; e++) {
      const n = st.splits[s * spp + e];
      for (let i = 0; i < n; i++) packed[count++] = h.rowStarts[e] + expertBase[e] + i;
      expertBase[e] += n;
    }
    const carrier = h.carrierBlock(st.slot, s, st.splits);
    const to = combineRoute(h, st.slot, s);
    const peer = h.shmem.mapped(to.rank);
    const peer16 =
      peer && peer.byteOffset % 2 === 0
        ? new Uint16Array(peer.buffer, peer.byteOffset, peer.byteLength >> 1)
        : null;
    for (let r0 = 0; r0 < count; r0++) {
      if (carrier[r0] !== r0) continue;
      const rec = stageRecordOffset(h.layout, c, st.slot, s, r0) / 4;
      rows.length = 0;
      offs.length = 0;
      ws.length = 0;
      for (let j = 0; j < k; j++) {
        const r = h.i32[rec + 1 + j];
        if (r < 0) continue;
        rows.push(out);
        offs.push(packed[r] * H);
        ws.push(h.f32[rec + 1 + k + j]);
      }
      const off = to.rowOffset(h.i32[rec]);
      if (peer16) {
        weightedSumBf16(rows, offs, ws, H, peer16, off / 2);
      } else {
        weightedSumBf16(rows, offs, ws, H, partial, 0);
        h.shmem.put(to.rank, off, partialBytes);
      }
    }
    h.shmem.fence();
    h.shmem.signal(to.rank, to.signal, BigInt(call));
  }
}

/** This rank's combine buffer of call slot `slot`, as bf16 rows. */
function received(h: RankHeap, slot: number): Uint16Array {
  const local = h.shmem.local();
  const base = combineRowOffset(h.layout, h.config, slot, 0);
  return new Uint16Array(local.buffer, local.byteOffset + base, h.layout.combineRows * h.config.hidden);
}

/**
 * dedup combine, origin side: y[t] = bf16(S), S = the partial at t's first carrier slot, then
 * S = f32(S + partial) for each next carrier slot in increasing j; +0 for a token with none. Over several
 * hosts a carrier slot is the first of each owner on this host and of each other host (its partial is
 * that host's, pre-reduced by its rail peer: rail.ts, preReduce).
 */
export function reduceDedup(h: RankHeap, st: CombineState): HostTensor {
  const { topk: k, hidden: H } = h.config;
  const carriers = st.carriers as Uint8Array;
  const recv = received(h, st.slot);
  const y = new Uint16Array(st.numTokens * H);
  const offs: number[] = [];
  for (let t = 0; t < st.numTokens; t++) {
    offs.length = 0;
    for (let j = 0; j < k; j++) if (carriers[t * k + j]) offs.push((t * k + j) * H);
    sumPartialsBf16(recv, offs, H, y, t * H);
  }
  return hostTensor('bf16', [st.numTokens, H], y);
}

/** Without dedup, origin side: y[t] = bf16(sum over valid j in order of f32(w[t,j] * row of (t, j))). */
export function reduce(h: RankHeap, st: CombineState, weights: Float32Array): HostTensor {
  const { topk: k, hidden: H } = h.config;
  const recv = received(h, st.slot);
  const y = new Uint16Array(st.numTokens * H);
  const rows: Uint16Array[] = [];
  const offs: number[] = [];
  const ws: number[] = [];
  for (let t = 0; t < st.numTokens; t++) {
    rows.length = 0;
    offs.length = 0;
    ws.length = 0;
    for (let j = 0; j < k; j++) {
      const row = st.pairRow[t * k + j];
      if (row < 0) continue;
      rows.push(recv);
      offs.push(row * H);
      ws.push(weights[t * k + j]);
    }
    weightedSumBf16(rows, offs, ws, H, y, t * H);
  }
  return hostTensor('bf16', [st.numTokens, H], y);
}
