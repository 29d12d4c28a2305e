import { CapacityError, RoutingError, ShapeError } from '../errors.js';
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
      throw new RoutingError(
        `topkIdx[${t}][${j}] = ${e} is not an expert id: ids must be in [0, ${E}) or -1 for a dropped slot`,
        { token: t, slot: j, expert: e },
      );
    }
    for (let q = p - (p % k); q < p; q++) {
      if (topkIdx[q] === e) {
        const t = Math.floor(p / k);
        throw new RoutingError(
          `token ${t} names expert ${e} twice (slots ${q % k} and ${p % k}): a token's experts must be distinct`,
          { token: t, slot: p % k, expert: e },
        );
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
      throw new CapacityError(
        `destination rank ${d} would receive ${count} rows but maxRowsPerPeer is ${cfg.maxRowsPerPeer}; ` +
          'raise maxRowsPerPeer in the group config or send fewer tokens to its experts',
        { destination: d, count, limit: cfg.maxRowsPerPeer },
      );
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
      throw new CapacityError(
        `local expert ${e} (global id ${rank * c.expertsPerRank + e}) received ${rows} rows but maxRowsPerExpert is ${c.expertCapacity}; ` +
          'raise maxRowsPerExpert in the group config',
        { expert: rank * c.expertsPerRank + e, count: rows, limit: c.expertCapacity },
      );
    }
  }
}
