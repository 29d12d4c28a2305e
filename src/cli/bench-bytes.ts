import type { EpConfig } from '../ep/config.js';
import { recordBytes } from '../ep/layout.js';

/**
 * Bytes one rank moves per dispatch + combine, counted two ways (both are printed by the bench):
 * - as DeepEP and NCCL EP count them: every selected (token, expert) pair, local ones included, at
 *   DeepEP's per-row sizes (FP8 dispatch: H + H/128 * 4 + 16 bytes; bf16: 2H; combine 2H), so that a
 *   GB/s figure compares with theirs;
 * - the bytes that really cross NVLink from this rank: its pairs whose expert lives on another rank, at
 *   our row sizes (dispatch: the row and its scales; combine: the bf16 row coming back); with dedup,
 *   one row (and its record) per (token, other rank) each way.
 */
export interface CallBytes {
  /** Selected pairs (expert id >= 0). */
  selections: number;
  /** Pairs whose expert is on another rank. */
  remote: number;
  deepepDispatch: number;
  deepepCombine: number;
  wireDispatch: number;
  wireCombine: number;
  /** (token, other rank) pairs: a token's row crosses to each of those ranks once with dedup. */
  remoteTokenRanks: number;
  /** With dedup: one row + scales + record per (token, other rank), one carrier index per remote pair. */
  wireDispatchDedup: number;
  /** With dedup: one bf16 partial per (token, other rank). */
  wireCombineDedup: number;
}

export function callBytes(cfg: EpConfig, topkIdx: Int32Array, rank: number): CallBytes {
  let selections = 0;
  let remote = 0;
  let remoteTokenRanks = 0;
  const k = cfg.topk;
  for (let p = 0; p < topkIdx.length; p++) {
    const e = topkIdx[p];
    if (e < 0) continue;
    selections++;
    const owner = Math.floor(e / cfg.expertsPerRank);
    if (owner === rank) continue;
    remote++;
    // the token's first slot on this owner carries its row (dedup)
    let first = true;
    for (let q = p - (p % k); q < p; q++)
      if (topkIdx[q] >= 0 && Math.floor(topkIdx[q] / cfg.expertsPerRank) === owner) first = false;
    if (first) remoteTokenRanks++;
  }
  const H = cfg.hidden;
  const deepepRow = cfg.fp8 ? H + (H / 128) * 4 + 16 : 2 * H;
  const wireRow = cfg.dispatchRowBytes + (cfg.fp8 ? cfg.groupsPerRow * 4 : 0);
  return {
    selections,
    remote,
    deepepDispatch: selections * deepepRow,
    deepepCombine: selections * 2 * H,
    wireDispatch: remote * wireRow,
    wireCombine: remote * cfg.combineRowBytes,
    remoteTokenRanks,
    wireDispatchDedup: remoteTokenRanks * (wireRow + recordBytes(cfg)) + remote * 4,
    wireCombineDedup: remoteTokenRanks * cfg.combineRowBytes,
  };
}
