import { readFileSync } from 'node:fs';
import type { GroupOptions } from '../../create.js';
import type {
  CombineOptions,
  DispatchOptions,
  DispatchResult,
  EpGroup,
  SourceMajorRecv,
} from '../../ep/api.js';
import { checkUsable } from '../../ep/call-errors.js';
import { CallSequence, checkCombineInputs, checkDispatchInputs } from '../../ep/call-sequence.js';
import type { EpConfig } from '../../ep/config.js';
import { chooseDispatchPath, type DispatchPath, requestedDispatchPath } from '../../ep/dispatch-path.js';
import { expertShape } from '../../ep/expert-layout.js';
import type { CombineHandle } from '../../ep/handle.js';
import { computeLayout, type HeapLayout, recordBytes, signalOffset, stagedRowsFor } from '../../ep/layout.js';
import { type DType, type HostTensor, hostTensor, numel } from '../../ep/tensor.js';
import {
  ArgumentError,
  ConfigError,
  InternalError,
  type MoeA2aError,
  PeerTimeoutError,
  ShapeError,
} from '../../errors.js';
import {
  EP_ABORT_BIT,
  EP_ARGS_BYTES,
  EP_ERR_NONE,
  EP_LOCAL_MAX_PAIRS,
  EP_MAX_EXPERTS,
  EP_MAX_PAIRS,
  EP_STAMPS,
  EP_STATE_BYTES,
  EpArgsWriter,
  readEpError,
} from './args.js';
import { fatbinPath } from './available.js';
import { deviceError } from './device-errors.js';
import { DeviceTensor, elementBytes } from './device-tensor.js';
import {
  type CudaDriver,
  type CuEvent,
  type CuStream,
  type HostMappedBuffer,
  type KernelLauncher,
  loadDriver,
} from './driver.js';
import { captureGraphCall, type GraphCall } from './graph.js';
import { type CudaHeap, openCudaHeap } from './heap.js';
import { type LaunchMode, LaunchQueue } from './launch-queue.js';
import {
  ABORT_COMBINE_SEND,
  ABORT_STAGE_SEND,
  abortRouteSize,
  dispatchSize,
  type LaunchSize,
  reduceSize,
  routeSize,
  rowWalkSize,
  stagePackSize,
} from './launch-sizes.js';

const KERNELS = [
  'ep_route',
  'ep_dispatch',
  'ep_dispatch_local',
  'ep_recv_view',
  'ep_combine_send',
  'ep_combine_reduce',
  'ep_stage_send',
  'ep_stage_pack',
  'ep_barrier',
] as const;
type KernelName = (typeof KERNELS)[number];
const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;

interface HandleState {
  numTokens: number;
  topkIdx: DeviceTensor;
  weights: DeviceTensor | null;
}

/**
 * What a group takes from outside itself: the driver, the symmetric heap and the kernel image. The
 * defaults are the real ones; tests pass a recording fake driver and a heap in host-visible memory.
 */
export interface CudaGroupDeps {
  driver(): CudaDriver;
  openHeap: typeof openCudaHeap;
  moduleImage(): Uint8Array;
}

const realDeps: CudaGroupDeps = {
  driver: loadDriver,
  openHeap: openCudaHeap,
  moduleImage: () => readFileSync(fatbinPath()),
};

type CuModuleHandle = ReturnType<CudaDriver['moduleLoadData']>;
/** The kernel module, loaded once per driver and device: every group of the process shares it. */
const modules = new WeakMap<CudaDriver, Map<number, CuModuleHandle>>();

function moduleFor(drv: CudaDriver, ordinal: number, image: () => Uint8Array): CuModuleHandle {
  let byDevice = modules.get(drv);
  if (!byDevice) {
    byDevice = new Map();
    modules.set(drv, byDevice);
  }
  let m = byDevice.get(ordinal);
  if (m === undefined) {
    m = drv.moduleLoadData(image());
    byDevice.set(ordinal, m);
  }
  return m;
}

/**
 * The cuda transport's group: a fixed set of kernel launches on one stream, peers' heaps mapped through
 * CUDA IPC. Dispatch is stage_send -> stage_pack (the staged path: rows go to their owners' stages at
 * once, the owner packs them expert-major), or route -> dispatch (the direct path: counts all-gathered
 * first, each row stored straight into its place in the owner's expertX), or ep_dispatch_local alone for
 * one rank and a small batch; combine is combine_send -> combine_reduce (kernels/ep.cu tells the
 * protocol; DispatchPath which path a group takes). No host synchronisation sits inside a dispatch or
 * combine: routing and capacity errors are found on the device and reported through a small host-mapped
 * error word, read at checkpoints (synchronize(), download(), and the start of the next call).
 *
 * Outputs (expertX, expertScales, expertCounts, combine's y) are views of buffers the group owns:
 * valid until the next dispatch (y: the next combine).
 */
export class CudaEpGroup implements EpGroup<DeviceTensor> {
  readonly transport = 'cuda' as const;
  readonly rank: number;
  private closed = false;
  /** Who made the latest dispatch ('eager' or a graph), and whether it was combined: the graph rules. */
  private lastDispatch: { by: object | 'eager'; combined: boolean } = { by: 'eager', combined: true };
  private broken: MoeA2aError | null = null;
  /** The order of calls and their handles; a call refused here is aborted on every rank. */
  private readonly sequence: CallSequence<HandleState>;
  private readonly args = new EpArgsWriter();
  private readonly launchers: Record<KernelName, KernelLauncher>;
  private readonly owned: bigint[] = [];
  private readonly userBuffers = new Set<bigint>();
  private readonly expertX: DeviceTensor;
  private readonly expertScales: DeviceTensor | null;
  private readonly expertCounts: DeviceTensor;
  private readonly expertOffsets: DeviceTensor;
  private readonly recvSplits: bigint;
  private readonly y: bigint;
  private readonly smCount: number;
  /** Programmatic dependent launches between a call's own kernels; MOE_A2A_DEPENDENT_LAUNCH=0 turns them off. */
  private readonly dependentLaunches = process.env.MOE_A2A_DEPENDENT_LAUNCH !== '0';
  private readonly queue: LaunchQueue;
  /** How this group's dispatch moves rows between ranks (the same on every rank; see DispatchPath). */
  readonly dispatchPath: DispatchPath;
  /** Bytes of this rank's symmetric heap (every rank has one of this size, mapped by its peers). */
  get heapBytes(): number {
    return this.layout.totalBytes;
  }
  /** EP_STAMPS u64 of device memory once stamps were asked for (setStamps), else null. */
  private stampBuffer: bigint | null = null;

  private constructor(
    readonly config: EpConfig,
    private readonly layout: HeapLayout,
    private readonly drv: CudaDriver,
    private readonly heap: CudaHeap,
    private readonly stream: CuStream,
    private readonly errWord: HostMappedBuffer,
    private readonly timeoutMs: number,
    private readonly module: ReturnType<CudaDriver['moduleLoadData']>,
    ordinal: number,
  ) {
    try {
      const c = config;
      this.rank = heap.rank;
      this.sequence = new CallSequence<HandleState>(this, this.rank, {
        abortDispatch: () => {
          this.lastDispatch = { by: 'eager', combined: true }; // (no graph's combine may follow it)
          this.abortDispatch();
        },
        abortCombine: () => {
          this.lastDispatch.combined = true; // (the graph rules: that call is over)
          this.abortCombine();
        },
      });
      this.dispatchPath = layout.stageRows > 0 ? 'staged' : 'direct';
      this.smCount = drv.deviceAttribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, ordinal);
      const alloc = (bytes: number) => {
        const p = drv.memAlloc(Math.max(bytes, 16));
        this.owned.push(p);
        return p;
      };
      const epr = c.expertsPerRank;
      const xDtype: DType = c.fp8 ? 'fp8_e4m3' : 'bf16';
      // expertX and its scales live in the heap: peers store their rows straight into them
      const inHeap = (offset: number) => heap.local + BigInt(offset);
      this.expertX = new DeviceTensor(xDtype, expertShape(c, c.hidden), inHeap(layout.expertX.offset), null);
      this.expertScales = c.fp8
        ? new DeviceTensor('f32', expertShape(c, c.groupsPerRow), inHeap(layout.expertScales.offset), null)
        : null;
      this.recvSplits = alloc(c.world * (epr + 1) * 4);
      this.expertCounts = new DeviceTensor('i32', [epr], alloc(epr * 4), null);
      this.expertOffsets = new DeviceTensor('i32', [epr], alloc(epr * 4), null);
      this.y = alloc(c.maxTokensPerRank * c.hidden * 2);
      const peerBases = alloc(8 * c.world);
      drv.memcpyHtoD(peerBases, BigUint64Array.from(heap.peers));
      const state = alloc(EP_STATE_BYTES);
      drv.memsetD8(state, 0, EP_STATE_BYTES);
      // the copy and memset above run on the legacy stream, which does not order with this group's
      // non-blocking stream: finish them before any kernel reads them
      drv.synchronizeContext();
      const a = this.args;
      a.rank = this.rank;
      a.world = c.world;
      a.numExperts = c.numExperts;
      a.expertsPerRank = epr;
      a.hidden = c.hidden;
      a.topk = c.topk;
      a.maxRowsPerPeer = c.maxRowsPerPeer;
      a.expertCapacity = c.expertCapacity;
      a.groupSize = c.fp8GroupSize;
      a.groupsPerRow = c.groupsPerRow;
      a.set('fp8', c.fp8 ? 1 : 0);
      a.set('splitsPerPeer', epr + 1);
      a.set('timeoutNs', BigInt(Math.round(timeoutMs * 1e6)));
      const L = layout;
      a.set('countSignalOff', L.countSignal.offset).set('countSignalSlot', L.countSignal.slotBytes);
      a.set('dispatchSignalOff', L.dispatchSignal.offset).set(
        'dispatchSignalSlot',
        L.dispatchSignal.slotBytes,
      );
      a.set('combineSignalOff', L.combineSignal.offset).set('combineSignalSlot', L.combineSignal.slotBytes);
      a.set('countsOff', L.counts.offset).set('countsSlot', L.counts.slotBytes);
      a.set('combineRecvOff', L.combineRecv.offset).set('combineRecvSlot', L.combineRecv.slotBytes);
      a.set('expertXOff', L.expertX.offset).set('expertScalesOff', L.expertScales.offset);
      a.set('dispatchRowBytes', c.dispatchRowBytes).set('combineRowBytes', c.combineRowBytes);
      a.set('peerBases', peerBases);
      a.set('expertCounts', this.expertCounts.devicePtr);
      a.set('expertOffsets', this.expertOffsets.devicePtr);
      a.set('packedExperts', c.expertLayout === 'packed' ? 1 : 0);
      a.set('y', this.y);
      a.set('pairRow', alloc(c.maxTokensPerRank * c.topk * 4));
      a.set('pairDest', alloc(c.maxTokensPerRank * c.topk * 4));
      a.set('recvSplits', this.recvSplits);
      a.set('state', state);
      a.set('errHost', errWord.devicePtr);
      a.set('stageSplitsOff', L.stageSplits.offset).set('stageSplitsSlot', L.stageSplits.slotBytes);
      a.set('stageDataOff', L.stageData.offset).set('stageDataSlot', L.stageData.slotBytes);
      a.set('stageScalesOff', L.stageScales.offset).set('stageScalesSlot', L.stageScales.slotBytes);
      a.set('barrierSignalOff', L.barrierSignal.offset);
      a.set('stageRows', L.stageRows);
      a.set('selfPairs', alloc(Math.max(1, L.stageRows) * 4));
      // de-duplication rides on the stage (a one-rank group has nothing to de-duplicate: its one partial
      // per token is the whole sum, the same result)
      const dedup = L.stageRecords.bytes > 0;
      a.set('dedup', dedup ? 1 : 0);
      a.set('stageCarrierOff', L.stageCarrier.offset).set('stageCarrierSlot', L.stageCarrier.slotBytes);
      a.set('stageRecordsOff', L.stageRecords.offset).set('stageRecordsSlot', L.stageRecords.slotBytes);
      a.set('recordBytes', dedup ? recordBytes(c) : 0);
      // per source: a count, then its carriers' plans (kernels/ep_args.h)
      const plansBytes = Math.ceil((c.world * 4) / 16) * 16 + c.world * L.stageRows * recordBytes(c);
      a.set('carrierPlans', dedup ? alloc(plansBytes) : 0n);
      this.launchers = Object.fromEntries(
        KERNELS.map((k) => [k, drv.prepareLaunch(drv.moduleGetFunction(module, k), a.bytes)]),
      ) as Record<KernelName, KernelLauncher>;
      this.queue = new LaunchQueue(drv, stream, a.bytes);
      if (process.env.MOE_A2A_EAGER_GRAPHS === '0') this.queue.mode = 'direct';
      // opt in always: the kernel's static shared memory counts towards the 48 KiB default limit too
      // (routeSize gives every call, and every captured graph, the size for maxTokensPerRank)
      drv.funcSetAttribute(
        this.launchers.ep_route.fn,
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        routeSize(c, c.maxTokensPerRank).sharedBytes,
      );
      if (EP_ARGS_BYTES !== a.bytes.length) {
        throw new InternalError(
          `the kernel argument buffer is ${a.bytes.length} bytes, EpArgs ${EP_ARGS_BYTES}`,
        );
      }
      process.on('exit', this.onExit);
    } catch (err) {
      // nothing of a group that was never made may stay allocated
      for (const p of this.owned) drv.memFree(p);
      throw err;
    }
  }

  /**
   * A rank process that exits with this group open (it threw, or was stopped) tells its peers: it
   * writes the abort value into every signal word a peer could be waiting on for it, so they fail at
   * once with PeerFailedError naming it instead of waiting for the timeout.
   */
  private readonly onExit = () => {
    if (this.closed) return;
    const n = BigInt(this.sequence.calls);
    const c = this.config;
    const L = this.layout;
    const word = (r: typeof L.countSignal, call: bigint): [bigint, bigint] => [
      BigInt(signalOffset(r, Number(call & 1n), this.rank)),
      call | EP_ABORT_BIT,
    ];
    // the next call's counts (direct) or rows (staged), and every word of the current call a peer may
    // still wait on
    const words = [
      word(L.countSignal, n + 1n),
      word(L.dispatchSignal, n + 1n),
      word(L.countSignal, n),
      word(L.dispatchSignal, n),
      word(L.combineSignal, n),
    ];
    for (let p = 0; p < c.world; p++) {
      if (p === this.rank) continue;
      for (const [off, v] of words) {
        try {
          this.drv.memcpyHtoD(this.heap.peers[p] + off, BigUint64Array.of(v), 8);
        } catch {
          // the process is going away; a peer that misses this still times out
        }
      }
    }
  };

  static async create(
    config: EpConfig,
    options: GroupOptions & { timeoutMs: number },
    deps: CudaGroupDeps = realDeps,
  ) {
    // the routing kernel runs in one block: its shared memory bounds E and T * k
    if (config.numExperts > EP_MAX_EXPERTS) {
      throw new ConfigError(
        `the cuda transport supports numExperts up to ${EP_MAX_EXPERTS}, got ${config.numExperts}`,
        {
          fields: 'numExperts',
        },
      );
    }
    if (config.maxTokensPerRank * config.topk > EP_MAX_PAIRS) {
      throw new ConfigError(
        `the cuda transport supports maxTokensPerRank * topk up to ${EP_MAX_PAIRS}, got ${config.maxTokensPerRank * config.topk}`,
        { fields: 'maxTokensPerRank,topk' },
      );
    }
    const drv = deps.driver();
    const localRank = Number(process.env.LOCAL_RANK ?? 0);
    const ordinal = options.device ?? localRank % drv.deviceCount;
    drv.useDevice(ordinal);
    const path = chooseDispatchPath(config, requestedDispatchPath(options.dispatchPath));
    const module = moduleFor(drv, ordinal, deps.moduleImage);
    const layout = computeLayout(config, path === 'staged' ? stagedRowsFor(config) : 0);
    const heap = await deps.openHeap(
      drv,
      config.world,
      layout.totalBytes,
      options.timeoutMs,
      `${path} dispatch${config.dedup && path === 'staged' ? ' with dedup' : ''}, ${layout.totalBytes} bytes`,
    );
    // what creation took goes back if a later step fails (the constructor frees its own allocations)
    let stream: CuStream | null = null;
    let errWord: HostMappedBuffer | null = null;
    try {
      stream = drv.streamCreate({ nonBlocking: true });
      errWord = drv.allocHostMapped(64);
      errWord.view.fill(0);
      return new CudaEpGroup(config, layout, drv, heap, stream, errWord, options.timeoutMs, module, ordinal);
    } catch (err) {
      errWord?.free();
      if (stream !== null) drv.streamDestroy(stream);
      await heap.close(options.timeoutMs).catch(() => {});
      throw err;
    }
  }

  // ------------------------------------------------------------------ tensors in and out

  /** Copies a host tensor to new device memory (the caller frees it with free()). */
  upload(t: HostTensor): DeviceTensor {
    this.notClosed();
    const bytes = t.data.byteLength;
    const d = this.newTensor(t.dtype, t.shape, bytes);
    if (bytes > 0) this.copyFromHost(d.devicePtr, t.data, bytes);
    return d;
  }

  /** New device memory for the caller (free() returns it; close() frees what is left). */
  private newTensor(
    dtype: DType,
    shape: readonly number[],
    bytes = numel(shape) * elementBytes(dtype),
  ): DeviceTensor {
    const p = this.drv.memAlloc(Math.max(bytes, 16));
    this.userBuffers.add(p);
    return new DeviceTensor(dtype, shape, p, (ptr) => {
      if (this.userBuffers.delete(ptr)) this.drv.memFree(ptr);
    });
  }

  /**
   * Copies `src` (same dtype and size) into `dst`: a device tensor on the group's stream; a host
   * tensor at once, waiting until its bytes are on the device (so it also waits for queued work).
   */
  copyInto(dst: DeviceTensor, src: HostTensor | DeviceTensor): void {
    this.notClosed();
    const bytes = src instanceof DeviceTensor ? src.bytes : src.data.byteLength;
    if (src.dtype !== dst.dtype || bytes !== dst.bytes) {
      throw new ShapeError(
        `copyInto needs the same dtype and size: ${dst.dtype} ${dst.bytes} B <- ${src.dtype} ${bytes} B`,
      );
    }
    if (bytes === 0) return;
    if (src instanceof DeviceTensor)
      this.drv.memcpyDtoDAsync(dst.devicePtr, src.devicePtr, bytes, this.stream);
    else this.copyFromHost(dst.devicePtr, src.data, bytes);
  }

  /**
   * A copy from JavaScript memory that the group's kernels see. cuMemcpyHtoD from pageable memory
   * may return before its data lands on the device, and it is not ordered with this group's
   * non-blocking stream: without the wait a kernel launched right after can read the old bytes.
   * (An async copy on the stream would let the driver read the JavaScript memory after the call.)
   */
  private copyFromHost(dst: bigint, src: HostTensor['data'], bytes: number): void {
    // the legacy-stream copy is not ordered with this group's stream either: finish what is queued
    // there first (a replay may still read `dst`, a memset may still fill it)
    this.drv.streamSynchronize(this.stream);
    this.drv.memcpyHtoD(dst, src, bytes);
    this.drv.synchronizeContext();
  }

  /** Waits for the stream, reports any device error, and copies `t` to a new host tensor. */
  download(t: DeviceTensor): HostTensor {
    this.synchronize();
    const host = hostTensor(t.dtype, t.shape);
    if (t.bytes > 0) this.drv.memcpyDtoH(host.data, t.devicePtr, t.bytes);
    return host;
  }

  /** Fills the group's output buffers with `byte` (for checks that every element gets written). */
  poisonOutputs(byte: number): void {
    this.notClosed();
    for (const t of [this.expertX, this.expertScales, this.expertCounts, this.expertOffsets]) {
      if (t) this.drv.memsetD8Async(t.devicePtr, byte, t.bytes, this.stream);
    }
    this.drv.memsetD8Async(this.y, byte, this.config.maxTokensPerRank * this.config.hidden * 2, this.stream);
  }

  /**
   * Device time (microseconds, CUDA events on the group's stream) of the work `fn` launches; waits
   * for it. For benchmarks: the host's own cost is not in it.
   */
  timeOnDevice(fn: () => void): number {
    this.notClosed();
    this.events ??= [this.drv.eventCreate(), this.drv.eventCreate()];
    const [start, end] = this.events;
    this.drv.eventRecord(start, this.stream);
    fn();
    this.drv.eventRecord(end, this.stream);
    this.drv.eventSynchronize(end);
    this.throwDeviceError();
    return this.drv.eventElapsedTime(start, end) * 1000;
  }
  private events: [CuEvent, CuEvent] | null = null;

  /** Waits until every launched call has finished; throws the first error a kernel reported. */
  synchronize(): void {
    this.notClosed();
    try {
      this.drv.streamSynchronize(this.stream);
    } catch (err) {
      this.broken ??= err as MoeA2aError;
      throw err;
    }
    this.throwDeviceError();
  }

  // Tensor I/O and waits need the group's stream and context: after close(), a ClosedError, not a
  // driver error about a destroyed stream.
  private notClosed(): void {
    checkUsable(this.closed, null);
  }

  private throwDeviceError(): void {
    const view = this.errWord.view;
    if (view[0] === 0 && view[1] === 0 && view[2] === 0 && view[3] === 0) return;
    const e = readEpError(view);
    view.fill(0); // handled: the device never clears it
    if (e.code === EP_ERR_NONE) return;
    const err = deviceError(e, this.config);
    if (err instanceof PeerTimeoutError) this.broken = err;
    throw err;
  }

  // ------------------------------------------------------------------ the collectives

  private usable(): void {
    checkUsable(this.closed, this.broken);
    this.throwDeviceError();
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

  /**
   * How eager dispatch and combine hand their kernels to the driver: 'graph' (the default) replays a
   * graph cached per kernel sequence, 'direct' launches each kernel (see LaunchMode). Results are
   * the same; 'graph' costs the host less. MOE_A2A_EAGER_GRAPHS=0 makes 'direct' the default.
   */
  get launchMode(): LaunchMode {
    return this.queue.mode;
  }
  set launchMode(mode: LaunchMode) {
    if (mode !== 'graph' && mode !== 'direct') {
      throw new ArgumentError(`launchMode must be 'graph' or 'direct', got ${String(mode)}`, {
        argument: 'launchMode',
      });
    }
    this.queue.mode = mode;
  }

  /** A device tensor of this dtype and shape, or the error that says why not; its shape (a TensorCheck). */
  private readonly shapeOf = (
    name: string,
    t: unknown,
    dtype: DType,
    dims: readonly (number | undefined)[],
  ): readonly number[] => {
    if (!(t instanceof DeviceTensor)) {
      throw new ArgumentError(`${name} must be a DeviceTensor (use group.upload() for host data)`, {
        argument: name,
      });
    }
    if (t.dtype !== dtype)
      throw new ShapeError(`${name} must have dtype ${dtype}, got ${t.dtype}`, { argument: name });
    if (t.shape.length !== dims.length || t.shape.some((d, i) => dims[i] !== undefined && d !== dims[i])) {
      throw new ShapeError(
        `${name} must have shape ${dtype} [${dims.map((d) => d ?? '?').join(', ')}], got [${t.shape.join(', ')}]`,
        { argument: name },
      );
    }
    return t.shape;
  };

  /**
   * A call whose input the host rejected still runs its kernels with hostAbort set, so that every
   * peer receives this rank's abort signal for the call and none waits for a timeout.
   */
  private abortDispatch(): void {
    this.args.set('hostAbort', 1);
    this.args.numTokens = 0;
    // the first kernel of the group's dispatch: its count (direct) or row (staged) signal carries the abort
    if (this.dispatchPath === 'staged') this.launch('ep_stage_send', ABORT_STAGE_SEND);
    else this.launch('ep_route', abortRouteSize(this.config));
    this.args.set('hostAbort', 0);
  }

  /** A combine this rank refuses still signals every peer (with the abort bit), so none waits. */
  private abortCombine(): void {
    this.args.set('hostAbort', 1);
    this.launch('ep_combine_send', ABORT_COMBINE_SEND);
    this.args.set('hostAbort', 0);
  }

  dispatch(
    x: DeviceTensor,
    topkIdx: DeviceTensor,
    options: DispatchOptions<DeviceTensor> = {},
  ): DispatchResult<DeviceTensor> {
    this.usable();
    const { call, checked: T } = this.sequence.beginDispatch(() =>
      checkDispatchInputs(this.config, this.shapeOf, x, topkIdx, options.topkWeights),
    );
    const w = options.topkWeights ?? null;
    let recv: SourceMajorRecv<DeviceTensor> | null = null;
    this.queue.begin();
    try {
      this.launchDispatch(x, topkIdx, w, T);
      if (options.returnRecv) recv = this.recvView();
    } finally {
      this.queue.submit();
    }
    const handle = this.sequence.issue(call, T, { numTokens: T, topkIdx, weights: w });
    this.lastDispatch = { by: 'eager', combined: false };
    return {
      expertX: this.expertX,
      expertScales: this.expertScales,
      expertCounts: this.expertCounts,
      expertOffsets: this.expertOffsets,
      handle,
      recv,
    };
  }

  /**
   * The launches of one dispatch (eager, or recorded into a graph): stage_send -> stage_pack (staged),
   * route -> dispatch (direct); or, with one rank and a small batch, ep_dispatch_local alone (each block
   * routes its own tokens: no routing block to wait for).
   */
  private launchDispatch(x: DeviceTensor, topkIdx: DeviceTensor, w: DeviceTensor | null, T: number): void {
    const a = this.args;
    const c = this.config;
    a.numTokens = T;
    // every field this call does not read is zero, so that equal calls have equal bytes (LaunchQueue)
    a.set('x', x.devicePtr)
      .set('topkIdx', topkIdx.devicePtr)
      .set('topkWeights', w?.devicePtr ?? 0n)
      .set('expertOut', 0n);
    const sms = this.smCount;
    if (c.world === 1 && T * c.topk <= EP_LOCAL_MAX_PAIRS) {
      this.launch('ep_dispatch_local', dispatchSize(c, T, sms, true));
      return;
    }
    if (this.dispatchPath === 'staged') {
      this.launch('ep_stage_send', dispatchSize(c, T, sms, true));
      this.launch('ep_stage_pack', stagePackSize(c, this.layout.stageRows, sms), true);
      return;
    }
    this.launch('ep_route', routeSize(c, T));
    this.launch('ep_dispatch', dispatchSize(c, T, sms, false), true);
  }

  /**
   * The launches of one combine: send -> reduce. `afterDispatch`: recorded right after this call's
   * dispatch kernels (GraphCall.step), so its first kernel may be a programmatic dependent too.
   */
  private launchCombine(
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
    if (send) this.launch('ep_combine_send', rowWalkSize(this.config, this.smCount), afterDispatch);
    this.launch('ep_combine_reduce', reduceSize(this.config, T, this.smCount), send || afterDispatch);
  }

  /**
   * The source-major view of what this rank received (rows each source sent, in the source's order),
   * rebuilt from expertX by ep_recv_view into new device tensors (the caller frees them).
   */
  private recvView(): SourceMajorRecv<DeviceTensor> {
    const c = this.config;
    const x = this.newTensor(c.fp8 ? 'fp8_e4m3' : 'bf16', [c.world, c.maxRowsPerPeer, c.hidden]);
    const scales = c.fp8 ? this.newTensor('f32', [c.world, c.maxRowsPerPeer, c.groupsPerRow]) : null;
    const splits = this.newTensor('i32', [c.world, c.expertsPerRank + 1]);
    this.args.set('viewX', x.devicePtr).set('viewScales', scales?.devicePtr ?? 0n);
    this.launch('ep_recv_view', rowWalkSize(this.config, this.smCount), true);
    this.args.set('viewX', 0n).set('viewScales', 0n);
    this.queue.submit(); // the kernels above, before the copy below
    this.drv.memcpyDtoDAsync(splits.devicePtr, this.recvSplits, splits.bytes, this.stream);
    return { x, scales, splits };
  }

  combine(
    expertOut: DeviceTensor,
    handle: CombineHandle,
    options: CombineOptions<DeviceTensor> = {},
  ): DeviceTensor {
    this.usable();
    const c = this.config;
    const { state: st, checked: from } = this.sequence.beginCombine(handle, (state) =>
      checkCombineInputs(
        c,
        this.shapeOf,
        expertOut,
        options.topkWeights,
        state.numTokens,
        state.weights !== null,
      ),
    );
    this.lastDispatch.combined = true;
    // (checked: 'given' means this combine's weights, 'dispatch' those dispatch kept)
    const w = (from === 'given' ? options.topkWeights : st.weights) as DeviceTensor;
    this.queue.begin();
    try {
      this.launchCombine(expertOut, st.topkIdx, w, st.numTokens);
    } finally {
      this.queue.submit();
    }
    return new DeviceTensor('bf16', [st.numTokens, c.hidden], this.y, null);
  }

  /**
   * Captures dispatch, combine, and both as one step, for `numTokens` tokens, as CUDA graphs bound to group-owned input
   * buffers (see GraphCall for the rules). Collective only in the sense that every rank must then
   * replay the same sequence; capturing itself runs nothing.
   */
  captureGraph(numTokens: number): GraphCall {
    this.usable();
    const c = this.config;
    if (!Number.isInteger(numTokens) || numTokens < 0 || numTokens > c.maxTokensPerRank) {
      throw new ShapeError(`a graph is captured for 0..${c.maxTokensPerRank} tokens, got ${numTokens}`, {
        tokens: numTokens,
      });
    }
    const T = numTokens;
    // the bound inputs, filled on the device (no host copy of what may be gigabytes of expertOut)
    const filled = (dtype: DType, shape: number[], byte: number) => {
      const t = this.newTensor(dtype, shape);
      if (t.bytes > 0) this.drv.memsetD8Async(t.devicePtr, byte, t.bytes, this.stream);
      return t;
    };
    const x = filled('bf16', [T, c.hidden], 0);
    const topkIdx = filled('i32', [T, c.topk], 0xff); // every id -1 (dropped) until the caller writes some
    const topkWeights = filled('f32', [T, c.topk], 0);
    const expertOut = filled('bf16', expertShape(c, c.hidden), 0);
    const call = captureGraphCall(
      {
        drv: this.drv,
        stream: this.stream,
        recordDispatch: () => this.launchDispatch(x, topkIdx, topkWeights, T),
        recordCombine: (afterDispatch) =>
          this.launchCombine(expertOut, topkIdx, topkWeights, T, afterDispatch),
        usable: () => this.usable(),
        beginCall: (by, combined) => {
          this.sequence.begin();
          this.lastDispatch = { by, combined };
        },
        takeCombine: (by) => {
          if (this.lastDispatch.by !== by || this.lastDispatch.combined) return false;
          this.lastDispatch.combined = true;
          return true;
        },
        closing: (g) => {
          this.graphs.delete(g);
          if (!this.closed) this.synchronize();
        },
      },
      {
        numTokens: T,
        x,
        topkIdx,
        topkWeights,
        expertOut,
        expertX: this.expertX,
        expertScales: this.expertScales,
        expertCounts: this.expertCounts,
        expertOffsets: this.expertOffsets,
        y: new DeviceTensor('bf16', [T, c.hidden], this.y, null),
      },
    );
    this.graphs.add(call);
    return call;
  }

  async barrier(): Promise<void> {
    this.usable();
    this.synchronize();
    await this.heap.barrier(`user${++this.barriers}`, this.timeoutMs);
  }

  /**
   * Enqueues a barrier of every rank on the device (ep_barrier) and returns at once: what is enqueued
   * after it starts on every rank within about one NVLink signal of the others, with no host in the
   * loop. For timing one call across ranks (a host barrier leaves the ranks' launch skew in the time).
   * Collective; between calls only. A rank that does not come is reported as PeerTimeoutError.
   */
  deviceBarrier(): void {
    this.usable();
    this.launchers.ep_barrier.launch([1, 1, 1], [32, 1, 1], 0, this.stream);
  }

  /**
   * Benchmarks: from now on the kernels write phase stamps (EP_STAMP, %globaltimer ns) into a small
   * device buffer, in eager calls and in graphs captured after this (a graph keeps what it captured).
   * `false` stops it for later calls and captures.
   */
  setStamps(on: boolean): void {
    if (on && this.stampBuffer === null) {
      this.stampBuffer = this.drv.memAlloc(EP_STAMPS * 8);
      this.owned.push(this.stampBuffer);
    }
    this.args.set('stamps', on && this.stampBuffer !== null ? this.stampBuffer : 0n);
    if (on) this.clearStamps();
  }

  /** Zeroes the stamps (on the stream: before the next call's kernels write them). */
  clearStamps(): void {
    if (this.stampBuffer !== null) this.drv.memsetD8Async(this.stampBuffer, 0, EP_STAMPS * 8, this.stream);
  }

  /** Waits for the stream and returns the stamps (ns; 0 = not written since the last clear). */
  readStamps(): number[] {
    this.synchronize();
    if (this.stampBuffer === null) return new Array(EP_STAMPS).fill(0);
    const out = new BigUint64Array(EP_STAMPS);
    this.drv.memcpyDtoH(out, this.stampBuffer, EP_STAMPS * 8);
    return Array.from(out, Number);
  }

  /**
   * What the benchmark's floor kernels (src/shmem/cuda/floors.ts) need from this group: the driver, its
   * stream and module, the device array of heap bases, and a heap region they may overwrite (expertX:
   * no call may be in flight, and the next dispatch rewrites it anyway). Not for other uses.
   */
  benchContext() {
    return {
      drv: this.drv,
      stream: this.stream,
      module: this.module,
      peerBases: this.args.get('peerBases') as bigint,
      smCount: this.smCount,
      scratch: this.layout.expertX,
      timeOnDevice: (fn: () => void) => this.timeOnDevice(fn),
    };
  }
  private barriers = 0;
  private readonly graphs = new Set<GraphCall>();

  async close(): Promise<void> {
    if (this.closed) return;
    for (const g of [...this.graphs]) g.close(); // before the stream and buffers they use go
    this.closed = true;
    process.off('exit', this.onExit);
    try {
      this.drv.streamSynchronize(this.stream);
    } catch {
      // the heap is freed below either way
    }
    try {
      this.queue.close();
    } catch {
      // (a broken context): the stream and heap still go below
    }
    try {
      await this.heap.close(this.timeoutMs);
    } finally {
      for (const p of this.owned) this.drv.memFree(p);
      for (const p of this.userBuffers) this.drv.memFree(p);
      this.userBuffers.clear();
      for (const e of this.events ?? []) this.drv.eventDestroy(e);
      this.drv.streamDestroy(this.stream);
      this.errWord.free();
    }
  }
}

export async function createCudaGroup(
  config: EpConfig,
  options: GroupOptions & { timeoutMs: number },
): Promise<EpGroup<DeviceTensor>> {
  return CudaEpGroup.create(config, options);
}
