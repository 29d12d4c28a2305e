import type { EpConfig } from '../ep/config.js';

/**
 * Bytes one rank moves per dispatch + combine, counted two ways (both are printed by the bench):
 * - as DeepEP and NCCL EP count them: every selected (token, expert) pair, local ones included, at
 *   DeepEP's per-row sizes (FP8 dispatch: H + H/128 * 4 + 16 bytes; bf16: 2H; combine 2H), so that a
 *   GB/s figure compares with theirs;
 * - the bytes that really cross NVLink from this rank: its pairs whose expert lives on another rank, at
 *   our row sizes (dispatch: the row and its scales; combine: the bf16 row coming back).
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
}

export function callBytes(cfg: EpConfig, topkIdx: Int32Array, rank: number): CallBytes {
  let selections = 0;
  let remote = 0;
  for (const e of topkIdx) {
    if (e < 0) continue;
    selections++;
    if (Math.floor(e / cfg.expertsPerRank) !== rank) remote++;
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
  };
}
