import { ConfigError } from '../errors.js';
import type { EpConfig } from './config.js';

/**
 * How a group moves a dispatch's rows between ranks (README and kernels/ep.cu, "The protocol"):
 * - 'staged': each row goes into its owner's stage at once (on cuda every dispatch block routes its own
 *   tokens) and the owner packs it expert-major after one signal round: no count exchange before the
 *   rows move.
 * - 'direct': the ranks all-gather their per-expert counts first, then each row is stored once, straight
 *   into its final place in the owner's expertX: no stage and no pack, one more signal round.
 * The cpu transport runs either at any W (chooseCpuDispatchPath). A cuda group with one rank uses its
 * one-rank kernels whatever is asked (chooseDispatchPath says 'direct' for it: no stage).
 * A group with `dedup` stages (de-duplication rides on the stage), and so does a group over several hosts.
 * Every rank of a group must use the same path: it follows from the config (and an explicit request),
 * never from a call's own token count.
 */
export type DispatchPath = 'staged' | 'direct';
export type DispatchPathRequest = DispatchPath | 'auto';

/**
 * The largest maxTokensPerRank * topk for which 'auto' stages. Measured on 2 x H200 at the DeepSeek-V3
 * shape (bench/NOTES.md v7, serving loop): staged is faster at T = 1 (24.5 against 27.9 us) and T = 32
 * (33.9 against 34.9), direct at T = 128 (63.6 against 67.7) and T = 512 (174 against 197): the pack's
 * local copy of every row costs more than the count round trip it saves once rows are many.
 */
export const STAGED_AUTO_MAX_PAIRS = 256;

export function parseDispatchPath(v: unknown, from: string): DispatchPathRequest {
  if (v === 'auto' || v === 'staged' || v === 'direct') return v;
  throw new ConfigError(`${from} must be 'auto', 'staged' or 'direct', got '${String(v)}'`, {
    fields: 'dispatchPath',
  });
}

/** The path a group with this config takes for `requested` (throws ConfigError when it cannot take it). */
export function chooseDispatchPath(cfg: EpConfig, requested: DispatchPathRequest = 'auto'): DispatchPath {
  if (cfg.world === 1) return 'direct';
  if (cfg.nodes > 1) {
    // rows cross hosts to a rail peer, who hands them to their owners' stages
    if (requested === 'direct') throw nodesDirectError(cfg);
    return 'staged';
  }
  if (cfg.dedup) {
    // de-duplication rides on the stage: a token's row is staged once per owner, which fans it out
    if (requested === 'direct') throw dedupDirectError();
    return 'staged';
  }
  if (requested !== 'auto') return requested;
  return cfg.maxTokensPerRank * cfg.topk <= STAGED_AUTO_MAX_PAIRS ? 'staged' : 'direct';
}

/**
 * The cpu transport runs either protocol at any W, as the executable specification of both: 'direct'
 * when asked for (not with dedup), else staged.
 */
export function chooseCpuDispatchPath(cfg: EpConfig, requested: DispatchPathRequest = 'auto'): DispatchPath {
  if (requested !== 'direct') return 'staged';
  if (cfg.nodes > 1) throw nodesDirectError(cfg);
  if (cfg.dedup) throw dedupDirectError();
  return 'direct';
}

/** The path a group's options ask for: `option`, else MOE_A2A_DISPATCH_PATH, else 'auto'. */
export function requestedDispatchPath(option: unknown): DispatchPathRequest {
  return parseDispatchPath(
    option ?? process.env.MOE_A2A_DISPATCH_PATH ?? 'auto',
    option !== undefined ? 'dispatchPath' : 'MOE_A2A_DISPATCH_PATH',
  );
}

function nodesDirectError(cfg: EpConfig): ConfigError {
  return new ConfigError(
    `nodes > 1 (${cfg.nodes}) needs dispatchPath 'staged' (or 'auto'), got 'direct': rows cross hosts to a rail peer, who hands them to their owners' stages`,
    { fields: 'nodes,dispatchPath' },
  );
}

function dedupDirectError(): ConfigError {
  return new ConfigError(
    "dedup (on by default) needs dispatchPath 'staged' (or 'auto'), got 'direct'; pass dedup: false to go direct",
    { fields: 'dedup,dispatchPath' },
  );
}
