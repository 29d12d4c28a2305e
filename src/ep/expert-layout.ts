import type { EpConfig } from './config.js';

/**
 * Where each local expert's rows sit in expertX and expertOut (EpConfig.expertLayout): both transports and
 * the oracle take the rows' places from here, so the layouts cannot drift apart.
 */

/** The shape of an expert-major tensor of `cols` values a row: [EPR, expertCapacity, cols] or [expertRows, cols]. */
export function expertShape(cfg: EpConfig, cols: number): number[] {
  return cfg.expertLayout === 'packed'
    ? [cfg.expertRows, cols]
    : [cfg.expertsPerRank, cfg.expertCapacity, cols];
}

/**
 * The row (of expertX viewed as [expertRows, H]) where each local expert's rows start: e * expertCapacity
 * (padded), or the rows of the experts before it (packed: an exclusive prefix of the counts).
 */
export function expertOffsetsOf(cfg: EpConfig, counts: ArrayLike<number>): Int32Array {
  const out = new Int32Array(cfg.expertsPerRank);
  let next = 0;
  for (let e = 0; e < cfg.expertsPerRank; e++) {
    out[e] = cfg.expertLayout === 'packed' ? next : e * cfg.expertCapacity;
    next += counts[e];
  }
  return out;
}
