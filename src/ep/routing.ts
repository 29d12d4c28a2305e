import { ShapeError } from '../errors.js';
import {
  duplicateExpertError,
  expertCapacityError,
  expertIdError,
  peerCapacityError,
} from './call-errors.js';
import type { EpConfig } from './config.js';

/**
 * The sender's routing plan for one call, from topkIdx [T, k] (i32, -1 = dropped).
 * Pairs (t, j) are numbered p = t * k + j. Sorting the valid pairs by expert, stably (pair order kept
 * inside an expert), gives each pair a row in the send order; the rows for destination d are
 * [destRowStart[d], destRowStart[d + 1]).
 */
export interface RoutingPlan {
  readonly numTokens: number;
  /** Valid (not dropped) pairs. */
  readonly numRows: number;
  /** i32 [E]: pairs per expert. */
  readonly expertCounts: Int32Array;
  /** i32 [E + 1]: exclusive prefix sum of expertCounts (cumsum). */
  readonly expertOffsets: Int32Array;
  /** i32 [numRows]: the pair index p of each row, in send order. */
  readonly rowPair: Int32Array;
  /** i32 [T * k]: the row of pair p, or -1 when dropped. */
  readonly pairRow: Int32Array;
  /** i32 [W + 1]: first row for each destination (= expertOffsets[d * EPR]); m_st of d is destRowStart[d]. */
  readonly destRowStart: Int32Array;
}

/** Checks ids (in range, distinct within a token) and capacity, and builds the plan. Nothing is truncated: any overflow throws. */
export function planRouting(cfg: EpConfig, topkIdx: Int32Array, numTokens: number): RoutingPlan {
  const { topk: k, numExperts: E, world: W, expertsPerRank: EPR } = cfg;
  if (topkIdx.length !== numTokens * k) {
    throw new ShapeError(`topkIdx must hold ${numTokens} x ${k} ids, got ${topkIdx.length}`, {
      argument: 'topkIdx',
    });
  }
  const expertCounts = new Int32Array(E);
  for (let p = 0; p < topkIdx.length; p++) {
    const e = topkIdx[p];
    if (e === -1) continue;
    if (e < -1 || e >= E) {
      const t = Math.floor(p / k);
      const j = p % k;
      throw expertIdError(t, j, e, E);
    }
    for (let q = p - (p % k); q < p; q++) {
      if (topkIdx[q] === e) {
        const t = Math.floor(p / k);
        throw duplicateExpertError(t, p % k, e, q % k);
      }
    }
    expertCounts[e]++;
  }
  const expertOffsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) expertOffsets[e + 1] = expertOffsets[e] + expertCounts[e];
  const destRowStart = new Int32Array(W + 1);
  for (let d = 0; d <= W; d++) destRowStart[d] = expertOffsets[d * EPR];
  for (let d = 0; d < W; d++) {
    const count = destRowStart[d + 1] - destRowStart[d];
    if (count > cfg.maxRowsPerPeer) {
      throw peerCapacityError(d, count, cfg.maxRowsPerPeer);
    }
  }
  const numRows = expertOffsets[E];
  const rowPair = new Int32Array(numRows);
  const pairRow = new Int32Array(topkIdx.length).fill(-1);
  const next = expertOffsets.slice(0, E);
  for (let p = 0; p < topkIdx.length; p++) {
    const e = topkIdx[p];
    if (e < 0) continue;
    const row = next[e]++;
    rowPair[row] = p;
    pairRow[p] = row;
  }
  return { numTokens, numRows, expertCounts, expertOffsets, rowPair, pairRow, destRowStart };
}

/** Throws CapacityError when some local expert would get more rows than expertCapacity. */
export function checkExpertCapacity(
  c: EpConfig,
  rank: number,
  splits: Int32Array,
  splitsPerPeer: number,
): void {
  for (let e = 0; e < c.expertsPerRank; e++) {
    let rows = 0;
    for (let s = 0; s < c.world; s++) rows += splits[s * splitsPerPeer + e];
    if (rows > c.expertCapacity) {
      throw expertCapacityError(rank * c.expertsPerRank + e, rows, c.expertCapacity);
    }
  }
}
