import type { EpConfig } from '../../ep/config.js';
import { EP_ROUTE_THREADS, routeSharedBytes } from './args.js';

/**
 * Every kernel's grid, block and dynamic shared memory, in one place: what kernels/ep.cu's LAUNCH
 * CONFIGURATION block says, as functions of the config, the call's token count and the device's SM
 * count. The group launches with these; test/launch-sizes.test.ts holds them to the kernels' limits.
 */
export interface LaunchSize {
  grid: number;
  block: number;
  sharedBytes: number;
}

/** The kernels' largest block (EP_MAX_THREADS in kernels/ep_limits.cuh). */
export const MAX_BLOCK = 512;

/** Threads for a kernel that walks a row of `vectors` 16-byte vectors: a multiple of 32 near 256. */
export function rowBlock(vectors: number): number {
  const per = Math.ceil(vectors / Math.ceil(vectors / 256));
  return Math.min(MAX_BLOCK, Math.max(32, Math.ceil(per / 32) * 32));
}

/**
 * ep_dispatch: one thread per 16 values of a row, a block per (token, chunk of the row), at most 8 per
 * SM (`perSm`: fewer). ep_dispatch_local and ep_stage_send(_large) take one more block, which keeps the books
 * and stores no rows. ep_stage_send_large's row blocks each read every id once, so the group gives it no more
 * than the SMs hold at once (one wave: a second wave would read them all again, after the first).
 */
export function dispatchSize(
  cfg: EpConfig,
  tokens: number,
  sms: number,
  bookkeeping: boolean,
  perSm = 8,
): LaunchSize {
  const units = cfg.hidden / 16;
  const block = rowBlock(units);
  const grid = Math.min(
    Math.max(1, Math.min(8, perSm)) * sms,
    Math.max(1, tokens * Math.ceil(units / block)),
  );
  return { grid: grid + (bookkeeping ? 1 : 0), block, sharedBytes: 0 };
}

/**
 * ep_route: one block; half of one routes small batches faster (fewer warps at each barrier; measured
 * on an H100). Its shared memory is sized for maxTokensPerRank, so one value serves every call.
 */
export function routeSize(cfg: EpConfig, tokens: number): LaunchSize {
  const block = tokens * cfg.topk <= 4096 ? EP_ROUTE_THREADS / 2 : EP_ROUTE_THREADS;
  return { grid: 1, block, sharedBytes: routeSharedBytes(cfg.numExperts, cfg.maxTokensPerRank * cfg.topk) };
}

/**
 * The kernels below walk rows with 8 warps a block, and every block first builds its own tables (or loads
 * its own plan counts): at most 4 blocks an SM, and no more than the SM holds at once (`perSm`, from the
 * driver's occupancy for the kernel), so that the grid runs in one wave. A second wave would start its
 * tables only when the first wave's blocks end: their fixed cost twice on the critical path.
 */
export const WALK_BLOCK = 256;
export function walkGridCap(sms: number, perSm = 4): number {
  return Math.max(1, Math.min(4, perSm)) * sms;
}

/** A row walker for `items` warp-sized items: a warp each, 8 warps a block, one wave at most (walkGridCap). */
function walkSize(items: number, sms: number, perSm: number): LaunchSize {
  return {
    grid: Math.min(walkGridCap(sms, perSm), Math.max(1, Math.ceil(items / 8))),
    block: WALK_BLOCK,
    sharedBytes: 0,
  };
}

/** ep_stage_pack: a warp per (staged row, 2 KiB segment). */
export function stagePackSize(cfg: EpConfig, stageRows: number, sms: number, perSm = 4): LaunchSize {
  return walkSize(cfg.world * stageRows * Math.ceil(cfg.dispatchRowBytes / 2048), sms, perSm);
}

/**
 * The kernels that walk received rows (ep_recv_view, ep_combine_send without dedup): no more blocks than the rows that
 * can exist (W * maxRowsPerPeer, a warp each). Idle blocks are not free: each still joins the last-block-done count
 * with a system-scope atomic.
 */
export function rowWalkSize(cfg: EpConfig, sms: number, perSm = 4): LaunchSize {
  return walkSize(cfg.world * cfg.maxRowsPerPeer, sms, perSm);
}

/**
 * ep_combine_send. Without dedup it walks rows (rowWalkSize). With dedup a warp takes a (carrier, 2 KiB
 * segment of its partial) item (kernels/ep_recv.cuh, combine_send_partials), and a source sends this rank
 * at most one carrier a token and at most maxRowsPerPeer: up to W * min(maxTokensPerRank, maxRowsPerPeer)
 * carriers of ceil(2H / 2 KiB) items each, one item a warp where one wave holds them. (Sized by rows, a
 * warp took two or three items at T = 128: each item's plan, rows and stores one after another.)
 */
export function combineSendSize(cfg: EpConfig, sms: number, perSm = 4): LaunchSize {
  if (!cfg.dedup) return rowWalkSize(cfg, sms, perSm);
  const carriers = cfg.world * Math.min(cfg.maxTokensPerRank, cfg.maxRowsPerPeer);
  return walkSize(carriers * Math.ceil((2 * cfg.hidden) / 2048), sms, perSm);
}

/** ep_combine_reduce (and _dedup): one thread per 8 values of a row, a block per (token, chunk), at most 8 per SM. */
export function reduceSize(cfg: EpConfig, tokens: number, sms: number): LaunchSize {
  const vectors = cfg.hidden / 8;
  const block = rowBlock(vectors);
  return { grid: Math.min(8 * sms, Math.max(1, tokens * Math.ceil(vectors / block))), block, sharedBytes: 0 };
}

/** ep_rail_plan: one block per host (the block of this rank's own host returns at once). */
export function railPlanSize(cfg: EpConfig): LaunchSize {
  return { grid: cfg.nodes, block: 1024, sharedBytes: 0 };
}

/** ep_rail_forward, ep_rail_combine, ep_rail_land: a warp per (row or (token, slot), 2 KiB segment), 8 warps a block, one wave at most. */
export function railWalkSize(sms: number, perSm = 4): LaunchSize {
  return { grid: walkGridCap(sms, perSm), block: WALK_BLOCK, sharedBytes: 0 };
}

/**
 * The launches a host abort makes (no tokens: the kernel only signals the abort): the first kernel of the
 * dispatch, or ep_combine_send, with as few threads as each allows.
 */
export const ABORT_STAGE_SEND: LaunchSize = { grid: 2, block: 32, sharedBytes: 0 };
export const ABORT_COMBINE_SEND: LaunchSize = { grid: 1, block: 32, sharedBytes: 0 };
export function abortRouteSize(cfg: EpConfig): LaunchSize {
  return { ...routeSize(cfg, cfg.maxTokensPerRank), grid: 1, block: EP_ROUTE_THREADS };
}
