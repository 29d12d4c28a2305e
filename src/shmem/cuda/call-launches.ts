import type { SourceMajorRecv } from '../../ep/api.js';
import type { EpConfig } from '../../ep/config.js';
import type { DispatchPath } from '../../ep/dispatch-path.js';
import { flaggedMaxTokens } from '../../ep/layout.js';
import type { DType } from '../../ep/tensor.js';
import { ConfigError, InternalError } from '../../errors.js';
import { EP_ARGS_BYTES, EP_LOCAL_MAX_PAIRS, EP_STAGE_SMEM_PAIRS, type EpArgsWriter } from './args.js';
import type { DeviceTensor } from './device-tensor.js';
import type { CudaDriver, CuModule, CuStream } from './driver.js';
import { KERNELS, type KernelLaunchers, type KernelName, prepareLaunchers } from './kernel-module.js';
import { LaunchQueue } from './launch-queue.js';
import {
  ABORT_COMBINE_SEND,
  ABORT_STAGE_SEND,
  abortRouteSize,
  combineSendSize,
  dispatchSize,
  type LaunchSize,
  railPlanSize,
  railWalkSize,
  reduceSize,
  routeSize,
  rowWalkSize,
  stagePackSize,
  WALK_BLOCK,
} from './launch-sizes.js';
import type { CudaRail } from './rail.js';

const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;

/**
 * The kernel launches of a group's calls: which kernels a dispatch or a combine runs, with which
 * sizes and EpArgs, handed to the launch queue (eager) or to a capturing stream (graphs). Knows
 * nothing of the call order or handles: the group decides when a call may run.
 */
export class CallLaunches {
  /** How eager calls reach the driver (the caller brackets a call with begin() and submit()). */
  readonly queue: LaunchQueue;
  private readonly launchers: KernelLaunchers;
  /** Programmatic dependent launches between a call's own kernels; MOE_A2A_DEPENDENT_LAUNCH=0 turns them off. */
  private readonly dependentLaunches = process.env.MOE_A2A_DEPENDENT_LAUNCH !== '0';

  private readonly config: EpConfig;
  private readonly dispatchPath: DispatchPath;
  private readonly stageRows: number;
  private readonly smCount: number;
  private readonly recvSplits: bigint;
  /** Between hosts: the rail whose NCCL exchanges sit between the kernels; else null. */
  private readonly rail: CudaRail | null;
  /** Batches up to this many tokens get their dedup partials back flagged (0: none; see flagged()). */
  private readonly flaggedTokenLimit: number;
  /**
   * The row-walking kernels' launch sizes, fixed for the group's life: no call's T changes them, and their
   * grids stay in one wave (walkGridCap, from the blocks of each an SM holds at once).
   */
  private readonly walkSizes: Record<WalkKernel, LaunchSize>;
  /** ep_stage_send_large's blocks an SM (one wave: the driver's occupancy for it). */
  private readonly largeSendPerSm: number;

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
    module: CuModule,
    /** The group's EpArgs, every field of the group's life filled (fillGroupArgs). */
    private readonly args: EpArgsWriter,
    group: {
      config: EpConfig;
      dispatchPath: DispatchPath;
      /** The heap layout's stageRows (stage_pack's launch size depends on it). */
      stageRows: number;
      smCount: number;
      /** GroupBuffers.recvSplits: what recvView copies out as the view's splits. */
      recvSplits: bigint;
      rail?: CudaRail | null;
    },
  ) {
    const c = group.config;
    this.config = c;
    this.dispatchPath = group.dispatchPath;
    this.stageRows = group.stageRows;
    this.smCount = group.smCount;
    this.recvSplits = group.recvSplits;
    this.rail = group.rail ?? null;
    // as computeLayout sized flaggedRecv for; MOE_A2A_FLAGGED_MAX_TOKENS lowers it (0: never; benchmarks)
    const flaggable = this.dispatchPath === 'staged' && c.dedup === true && c.world > 1 && !this.rail;
    this.flaggedTokenLimit = flaggable ? flaggedLimit(c.world, process.env.MOE_A2A_FLAGGED_MAX_TOKENS) : 0;
    this.launchers = prepareLaunchers(drv, module, args.bytes);
    // MOE_A2A_ONE_WAVE=0: 4 blocks an SM whatever the occupancy (benchmarks: the grids before one wave)
    const oneWave = process.env.MOE_A2A_ONE_WAVE !== '0';
    const perSm = (k: WalkKernel) =>
      oneWave ? drv.maxActiveBlocksPerSm(this.launchers[k].fn, WALK_BLOCK, 0) : 4;
    const sms = group.smCount;
    // MOE_A2A_WALK_BLOCKS=n: at most n blocks a walker (checks: a few warps walk many items each)
    const most = walkBlocksLimit(process.env.MOE_A2A_WALK_BLOCKS);
    const capped = (size: LaunchSize): LaunchSize => ({ ...size, grid: Math.min(size.grid, most) });
    // ep_stage_send_large in one wave (MOE_A2A_SEND_WAVE=0: 8 blocks an SM, as the other dispatch kernels)
    const block = dispatchSize(c, 1, sms, true).block;
    this.largeSendPerSm =
      oneWave && process.env.MOE_A2A_SEND_WAVE !== '0'
        ? drv.maxActiveBlocksPerSm(this.launchers.ep_stage_send_large.fn, block, 0)
        : 8;
    this.walkSizes = {
      ep_stage_pack: capped(stagePackSize(c, this.stageRows, sms, perSm('ep_stage_pack'))),
      ep_stage_pack_own: capped(stagePackSize(c, this.stageRows, sms, perSm('ep_stage_pack_own'))),
      ep_combine_send: capped(combineSendSize(c, sms, perSm('ep_combine_send'))),
      ep_recv_view: capped(rowWalkSize(c, sms, perSm('ep_recv_view'))),
      ep_rail_forward: capped(railWalkSize(sms, perSm('ep_rail_forward'))),
      ep_rail_combine: capped(railWalkSize(sms, perSm('ep_rail_combine'))),
      ep_rail_land: capped(railWalkSize(sms, perSm('ep_rail_land'))),
    };
    this.queue = new LaunchQueue(drv, stream, args.bytes);
    // between hosts a call's NCCL exchange sits between its kernels: they are launched as they come
    if (process.env.MOE_A2A_EAGER_GRAPHS === '0' || this.rail) this.queue.mode = 'direct';
    // opt in always: the kernel's static shared memory counts towards the 48 KiB default limit too
    // (routeSize gives every call, and every captured graph, the size for maxTokensPerRank)
    drv.funcSetAttribute(
      this.launchers.ep_route.fn,
      CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
      routeSize(c, c.maxTokensPerRank).sharedBytes,
    );
    if (EP_ARGS_BYTES !== args.bytes.length) {
      throw new InternalError(
        `the kernel argument buffer is ${args.bytes.length} bytes, EpArgs ${EP_ARGS_BYTES}`,
      );
    }
  }

  /**
   * `afterOurs`: the kernel before it on the stream is one of this group's, of the same call, so it is
   * launched as a programmatic dependent (it starts while that kernel drains and waits on the device;
   * every kernel that can be launched so begins with griddepcontrol.wait). Never after a caller's work.
   */
  private launch(name: KernelName, size: LaunchSize, afterOurs = false): void {
    this.queue.add(
      KERNELS.indexOf(name),
      this.launchers[name],
      size.grid,
      size.block,
      size.sharedBytes,
      afterOurs && this.dependentLaunches,
    );
  }

  /** A row walker, at the size the group fixed for it (walkSizes). */
  private launchWalker(name: WalkKernel, afterOurs = false): void {
    this.launch(name, this.walkSizes[name], afterOurs);
  }

  /**
   * A call whose input the host rejected still runs its kernels with hostAbort set, so that every
   * peer receives this rank's abort signal for the call and none waits for a timeout.
   */
  abortDispatch(): void {
    this.args.set('hostAbort', 1);
    this.args.numTokens = 0;
    // the first kernel of the group's dispatch: its count (direct) or row (staged) signal carries the abort
    if (this.dispatchPath === 'staged') this.launch('ep_stage_send', ABORT_STAGE_SEND);
    else this.launch('ep_route', abortRouteSize(this.config));
    this.args.set('hostAbort', 0);
    if (!this.rail) return;
    // between hosts: the abort travels in this rank's messages, it still passes on what other hosts send
    // through it, and no combine will follow, so its abort comes now (the exchanges must pair up)
    this.railDispatch(0);
    this.abortCombine();
  }

  /** A combine this rank refuses still signals every peer (with the abort bit), so none waits. */
  abortCombine(): void {
    this.args.set('hostAbort', 1);
    this.args.numTokens = 0;
    this.launch('ep_combine_send', ABORT_COMBINE_SEND);
    this.args.set('hostAbort', 0);
    if (this.rail) this.railCombine();
  }

  /** Between hosts, after ep_stage_send: the messages built, exchanged, and forwarded to this host's owners. */
  private railDispatch(T: number): void {
    const rail = this.rail as CudaRail;
    this.launch('ep_rail_plan', railPlanSize(this.config), true);
    this.launch('ep_rail_rows', dispatchSize(this.config, T, this.smCount, false), true);
    rail.exchange('dispatch', this.stream);
    this.launchWalker('ep_rail_forward'); // (after NCCL's kernel: not a dependent)
  }

  /** Between hosts, after ep_combine_send: the rows for other hosts' sources gathered, exchanged and landed. */
  private railCombine(): void {
    const rail = this.rail as CudaRail;
    this.launchWalker('ep_rail_combine', true);
    rail.exchange('combine', this.stream);
    this.launchWalker('ep_rail_land');
  }

  /**
   * The launches of one dispatch (eager, or recorded into a graph): stage_send -> stage_pack (staged),
   * route -> dispatch (direct); or, with one rank and a small batch, ep_dispatch_local alone (each block
   * routes its own tokens: no routing block to wait for).
   */
  dispatch(x: DeviceTensor, topkIdx: DeviceTensor, w: DeviceTensor | null, T: number): void {
    const a = this.args;
    const c = this.config;
    a.numTokens = T;
    // every field this call does not read is zero, so that equal calls have equal bytes (LaunchQueue)
    a.set('x', x.devicePtr)
      .set('topkIdx', topkIdx.devicePtr)
      .set('topkWeights', w?.devicePtr ?? 0n)
      .set('expertOut', 0n);
    a.set('combineFlagged', this.flagged(T) ? 1 : 0); // (the records this dispatch sends say so)
    const sms = this.smCount;
    if (c.world === 1 && T * c.topk <= EP_LOCAL_MAX_PAIRS) {
      this.launch('ep_dispatch_local', dispatchSize(c, T, sms, true));
      return;
    }
    if (this.dispatchPath === 'staged') {
      // (past the ids shared memory holds, the kernel that reads them once a block; with dedup on one host it
      // stores this rank's own rows in expertX itself, and ep_stage_pack_own packs the peers' only: own_direct)
      const large = T * c.topk > EP_STAGE_SMEM_PAIRS;
      if (large) this.launch('ep_stage_send_large', dispatchSize(c, T, sms, true, this.largeSendPerSm));
      else this.launch('ep_stage_send', dispatchSize(c, T, sms, true));
      if (this.rail) this.railDispatch(T);
      const ownDirect = large && c.dedup === true && !this.rail;
      this.launchWalker(ownDirect ? 'ep_stage_pack_own' : 'ep_stage_pack', true);
      return;
    }
    this.launch('ep_route', routeSize(c, T));
    this.launch('ep_dispatch', dispatchSize(c, T, sms, false), true);
  }

  /**
   * Whether a call of T tokens has its dedup partials come back flagged (README, "Flagged partials"): the
   * owners store them with the call beside every 4 bytes, and the reduction polls them as they land.
   */
  flagged(T: number): boolean {
    // (a group that cannot flag has a limit of 0: even its empty calls go without)
    return this.flaggedTokenLimit > 0 && T <= this.flaggedTokenLimit;
  }

  /**
   * The launches of one combine: send -> reduce. `afterDispatch`: recorded right after this call's
   * dispatch kernels (GraphCall.step), so its first kernel may be a programmatic dependent too.
   */
  combine(
    expertOut: DeviceTensor,
    topkIdx: DeviceTensor,
    w: DeviceTensor,
    T: number,
    afterDispatch = false,
  ): void {
    const a = this.args;
    a.numTokens = T;
    a.set('x', 0n) // (unread here: equal calls have equal bytes)
      .set('topkIdx', topkIdx.devicePtr)
      .set('topkWeights', w.devicePtr)
      .set('expertOut', expertOut.devicePtr);
    // a rank's own rows are read in place by the reduction: with one rank nothing travels
    const send = this.config.world > 1;
    const flagged = this.flagged(T);
    a.set('combineFlagged', flagged ? 1 : 0);
    if (send) this.launchWalker('ep_combine_send', afterDispatch);
    if (this.rail) this.railCombine();
    // (dedup and flagged partials have kernels of their own: each keeps its own registers, kernels/ep_combine.cuh)
    const dedup = this.config.dedup && send;
    const reduce = flagged
      ? 'ep_combine_reduce_flagged'
      : dedup
        ? 'ep_combine_reduce_dedup'
        : 'ep_combine_reduce';
    this.launch(reduce, reduceSize(this.config, T, this.smCount), send || afterDispatch);
  }

  /**
   * The source-major view of what this rank received (rows each source sent, in the source's order),
   * rebuilt from expertX by ep_recv_view into new device tensors from `newTensor` (the caller frees
   * them). Submits the queue: follows this call's dispatch launches.
   */
  recvView(newTensor: (dtype: DType, shape: number[]) => DeviceTensor): SourceMajorRecv<DeviceTensor> {
    const c = this.config;
    const x = newTensor(c.fp8 ? 'fp8_e4m3' : 'bf16', [c.world, c.maxRowsPerPeer, c.hidden]);
    const scales = c.fp8 ? newTensor('f32', [c.world, c.maxRowsPerPeer, c.groupsPerRow]) : null;
    const splits = newTensor('i32', [c.world, c.expertsPerRank + 1]);
    this.args.set('viewX', x.devicePtr).set('viewScales', scales?.devicePtr ?? 0n);
    this.launchWalker('ep_recv_view', true);
    this.args.set('viewX', 0n).set('viewScales', 0n);
    this.queue.submit(); // the kernels above, before the copy below
    this.drv.memcpyDtoDAsync(splits.devicePtr, this.recvSplits, splits.bytes, this.stream);
    return { x, scales, splits };
  }

  /** ep_barrier, launched at once (see CudaEpGroup.deviceBarrier). */
  deviceBarrier(): void {
    this.launchers.ep_barrier.launch([1, 1, 1], [32, 1, 1], 0, this.stream);
  }
}

/** The kernels that walk rows with WALK_BLOCK threads and size their grids by occupancy (launch-sizes.ts). */
const WALK_KERNELS = [
  'ep_stage_pack',
  'ep_stage_pack_own',
  'ep_combine_send',
  'ep_recv_view',
  'ep_rail_forward',
  'ep_rail_combine',
  'ep_rail_land',
] as const satisfies readonly KernelName[];
type WalkKernel = (typeof WALK_KERNELS)[number];

/** Environment variable `name` as a whole number >= `min`, or undefined when unset or empty. */
function wholeFromEnv(name: string, env: string | undefined, min: number): number | undefined {
  if (env === undefined || env === '') return undefined;
  const n = Number(env);
  if (!Number.isInteger(n) || n < min) {
    throw new ConfigError(`${name} must be a whole number >= ${min}, got '${env}'`);
  }
  return n;
}

/** MOE_A2A_WALK_BLOCKS: unset, no cap; else a whole number >= 1 (every walker is correct for any grid >= 1). */
export function walkBlocksLimit(env: string | undefined): number {
  return wholeFromEnv('MOE_A2A_WALK_BLOCKS', env, 1) ?? Number.POSITIVE_INFINITY;
}

/** flaggedMaxTokens(world), or the smaller limit a benchmark asks for (MOE_A2A_FLAGGED_MAX_TOKENS). */
function flaggedLimit(world: number, env: string | undefined): number {
  const most = flaggedMaxTokens(world);
  return Math.min(wholeFromEnv('MOE_A2A_FLAGGED_MAX_TOKENS', env, 0) ?? most, most);
}
