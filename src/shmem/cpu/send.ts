import { expertOffsetsOf } from '../../ep/expert-layout.js';
import {
  recordBytes,
  signalOffset,
  splitsOffset,
  stageCarrierOffset,
  stageRecordOffset,
  stageRowOffset,
  stageScaleOffset,
} from '../../ep/layout.js';
import type { RoutingPlan } from '../../ep/routing.js';
import { hostOf, isFirstSlot } from './rail.js';
import type { RankHeap } from './rank-heap.js';

/**
 * The three ways a dispatch's rows leave this rank (README, "The protocol"): staged (each row into its
 * owner's stage), staged with dedup (a token's row once per owner, with carriers and records), and direct
 * (the count exchange, then each row straight into its final place in the owner's expertX). `src` holds
 * the T rows as they travel (FP8 bytes, their scales in h.quantScales, or the bf16 input).
 */
export interface SendInput {
  src: Uint8Array;
  T: number;
  idx: Int32Array;
  plan: RoutingPlan;
  slot: number;
  peers: (Uint8Array | null)[];
  /** The owners this send reaches directly (the others, on other hosts, through rail.ts); default all. */
  to?: (d: number) => boolean;
}

const all = (_d: number) => true;

/** Staged send, without dedup: each row and its scales into its owner's stage, at its row for that owner. */
export function sendStaged(h: RankHeap, { src, T, idx, plan, slot, peers, to = all }: SendInput): void {
  const c = h.config;
  const k = c.topk;
  const rowBytes = c.dispatchRowBytes;
  // Token order, not row order: each token's row is read once (it stays in cache) and written to
  // each of its destinations; the rows land at the same places as in the protocol's row order.
  for (let t = 0; t < T; t++) {
    const rowSrc = src.subarray(t * rowBytes, (t + 1) * rowBytes);
    const sc = c.fp8 ? h.tokenScales(t) : null;
    for (let j = 0; j < k; j++) {
      const row = plan.pairRow[t * k + j];
      if (row < 0) continue;
      const d = (idx[t * k + j] / c.expertsPerRank) | 0;
      if (!to(d)) continue;
      const r = row - plan.destRowStart[d];
      h.putTo(peers, d, stageRowOffset(h.layout, c, slot, h.rank, r), rowSrc);
      if (sc) h.putTo(peers, d, stageScaleOffset(h.layout, c, slot, h.rank, r), sc);
    }
  }
}

/**
 * Dedup send (s -> d for every owner d): per (token, owner) the row and its scales once, at the
 * carrier row r0 (the row of the token's first slot on d); the record at r0 (back = t * k + j0, the
 * row of each slot on d or -1, its weight or 0); then every row's carrier index, one block per
 * owner. Returns the mask of slots the origin reduces over in combine (CombineState.carriers).
 */
export function sendDedup(
  h: RankHeap,
  { src, T, idx, plan, slot, peers, to = all }: SendInput,
  weights: Float32Array,
): Uint8Array {
  const c = h.config;
  const k = c.topk;
  const rowBytes = c.dispatchRowBytes;
  const carriers = new Uint8Array(T * k);
  const carrierOf = new Int32Array(plan.numRows); // per row in send order: its carrier's row r0
  const owner = new Int32Array(k);
  const record = new ArrayBuffer(recordBytes(c));
  const recI32 = new Int32Array(record);
  const recF32 = new Float32Array(record);
  const recBytes = new Uint8Array(record);
  // the origin reduces one partial per owner on its host and one per other host (pre-reduced there)
  const keyOf = (d: number) => (hostOf(h, d) === hostOf(h, h.rank) ? d : c.world + hostOf(h, d));
  const put = (d: number, off: number, bytes: Uint8Array) => {
    if (to(d)) h.putTo(peers, d, off, bytes); // (the carrier mask covers every owner all the same)
  };
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      owner[j] = plan.pairRow[t * k + j] < 0 ? -1 : (idx[t * k + j] / c.expertsPerRank) | 0;
    }
    for (let j0 = 0; j0 < k; j0++) {
      const d = owner[j0];
      if (d < 0) continue;
      if (!isFirstSlot((q) => owner[q], j0)) continue; // (j0 is t's first slot on d: its carrier slot)
      // and the first of its reduce key (README, "Between hosts")
      if (isFirstSlot((q) => (owner[q] < 0 ? -1 - q : keyOf(owner[q])), j0)) carriers[t * k + j0] = 1;
      const start = plan.destRowStart[d];
      const r0 = plan.pairRow[t * k + j0] - start;
      recI32[0] = t * k + j0;
      for (let j = 0; j < k; j++) {
        if (owner[j] === d) {
          const row = plan.pairRow[t * k + j];
          carrierOf[row] = r0;
          recI32[1 + j] = row - start;
          recF32[1 + k + j] = weights[t * k + j];
        } else {
          recI32[1 + j] = -1;
          recF32[1 + k + j] = 0;
        }
      }
      put(d, stageRowOffset(h.layout, c, slot, h.rank, r0), src.subarray(t * rowBytes, (t + 1) * rowBytes));
      if (c.fp8) put(d, stageScaleOffset(h.layout, c, slot, h.rank, r0), h.tokenScales(t));
      put(d, stageRecordOffset(h.layout, c, slot, h.rank, r0), recBytes);
    }
  }
  for (let d = 0; d < c.world; d++) {
    const block = carrierOf.subarray(plan.destRowStart[d], plan.destRowStart[d + 1]);
    if (block.length === 0) continue;
    const bytes = new Uint8Array(block.buffer, block.byteOffset, block.byteLength);
    put(d, stageCarrierOffset(h.layout, slot, h.rank, 0), bytes);
  }
  return carriers;
}

/**
 * Direct send (the cuda transport's ep_route + ep_dispatch): this rank's per-expert counts to every
 * rank (counts[slot][me], then countSignal), and once every rank's counts are in (`waitAll`), each row
 * straight into its final place in its owner's expertX: in local expert le's rows of owner d (whose
 * start the counts give), after the rows of the sources before this rank, in this rank's order. Rows
 * of an expert over capacity are not stored (its owner fails the call). Then dispatchSignal to every
 * rank and a wait for every rank's. Returns the split records the staged protocol would have received
 * (per source: rows per local expert, m_st).
 */
export function sendDirect(
  h: RankHeap,
  { src, T, idx, plan, slot, peers }: SendInput,
  call: number,
  waitAll: (region: 'countSignal' | 'dispatchSignal', call: number) => void,
): Int32Array {
  const c = h.config;
  const { numExperts: E, world: W, topk: k, expertsPerRank: epr, expertCapacity: cap } = c;
  const rowBytes = c.dispatchRowBytes;
  const G = c.groupsPerRow;
  const L = h.layout;
  const me = h.rank;
  const countsAt = (s: number) => L.counts.offset + slot * L.counts.slotBytes + s * E * 4;
  const mine = new Uint8Array(plan.expertCounts.buffer, plan.expertCounts.byteOffset, E * 4);
  for (let i = 1; i <= W; i++) {
    const d = (me + i) % W;
    h.shmem.putWithSignal(d, countsAt(me), mine, signalOffset(L.countSignal, slot, me), BigInt(call));
  }
  waitAll('countSignal', call);
  const counts = h.i32.slice(countsAt(0) / 4, countsAt(0) / 4 + W * E); // [W][E]
  const before = new Int32Array(E); // rows of each expert from the sources before this rank
  const total = new Int32Array(E);
  for (let s = 0; s < W; s++) {
    for (let e = 0; e < E; e++) {
      if (s < me) before[e] += counts[s * E + e];
      total[e] += counts[s * E + e];
    }
  }
  // where each expert's rows start in its owner's expertX (an expert over capacity stores nothing and takes
  // no rows from the next ones: a call that fails stores no row past the end)
  const start = new Int32Array(E);
  const stored = total.map((n) => Math.min(n, cap));
  for (let d = 0; d < W; d++) start.set(expertOffsetsOf(c, stored.subarray(d * epr, (d + 1) * epr)), d * epr);
  for (let t = 0; t < T; t++) {
    const rowSrc = src.subarray(t * rowBytes, (t + 1) * rowBytes);
    const sc = c.fp8 ? h.tokenScales(t) : null;
    for (let j = 0; j < k; j++) {
      const p = t * k + j;
      const row = plan.pairRow[p];
      const e = idx[p];
      if (row < 0 || total[e] > cap) continue;
      const d = (e / epr) | 0;
      const r = start[e] + before[e] + (row - plan.expertOffsets[e]);
      h.putTo(peers, d, L.expertX.offset + r * rowBytes, rowSrc);
      if (sc) h.putTo(peers, d, L.expertScales.offset + r * G * 4, sc);
    }
  }
  h.shmem.fence();
  for (let i = 1; i <= W; i++) {
    const d = (me + i) % W;
    h.shmem.signal(d, signalOffset(L.dispatchSignal, slot, me), BigInt(call));
  }
  waitAll('dispatchSignal', call);
  const spp = L.splitsPerPeer;
  const splits = new Int32Array(W * spp);
  const first = me * epr; // this rank's first expert
  for (let s = 0; s < W; s++) {
    for (let le = 0; le < epr; le++) splits[s * spp + le] = counts[s * E + first + le];
    let mSt = 0; // s's rows for experts before this rank's: where its rows for me start in its order
    for (let e = 0; e < first; e++) mSt += counts[s * E + e];
    splits[s * spp + epr] = mSt;
  }
  return splits;
}

/**
 * Staged: this rank's split record for each owner (its rows per local expert of that owner, then m_st),
 * with the dispatch signal, once its rows are fenced. From the next rank on, so senders spread over receivers.
 */
export function sendSplits(h: RankHeap, plan: RoutingPlan, slot: number, call: number, to = all): void {
  const c = h.config;
  const epr = c.expertsPerRank;
  for (let i = 1; i <= c.world; i++) {
    const d = (h.rank + i) % c.world;
    if (!to(d)) continue;
    const rec = new Int32Array(epr + 1);
    for (let e = 0; e < epr; e++) rec[e] = plan.expertCounts[d * epr + e];
    rec[epr] = plan.destRowStart[d];
    h.shmem.putWithSignal(
      d,
      splitsOffset(h.layout, slot, h.rank),
      new Uint8Array(rec.buffer),
      signalOffset(h.layout.dispatchSignal, slot, h.rank),
      BigInt(call),
    );
  }
}
