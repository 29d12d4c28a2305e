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
import type { DispatchPath } from '../../ep/dispatch-path.js';
import { expertShape } from '../../ep/expert-layout.js';
import type { CombineHandle } from '../../ep/handle.js';
import type { HostTensor } from '../../ep/tensor.js';
import { ArgumentError, type MoeA2aError, PeerTimeoutError, ShapeError } from '../../errors.js';
import type { CallLaunches } from './call-launches.js';
import { takeDeviceError } from './device-errors.js';
import { DeviceTensor, deviceTensorShape } from './device-tensor.js';
import type { CudaDriver, CuStream } from './driver.js';
import { abortPeersOnExit } from './exit-abort.js';
import { captureGraphCall, type GraphCall } from './graph.js';
import type { GroupBuffers } from './group-buffers.js';
import {
  type CudaGroupDeps,
  type GroupParts,
  openGroupParts,
  realDeps,
  releaseGroupParts,
} from './group-setup.js';
import type { LaunchMode } from './launch-queue.js';
import { waitOrAbortRail } from './rail.js';
import type { TensorIo } from './tensor-io.js';

export type { CudaGroupDeps } from './group-setup.js';

/** Between hosts: how many timeouts a wait for the stream gives a call that makes no progress. */
const STREAM_PATIENCE = 3;

interface HandleState {
  numTokens: number;
  topkIdx: DeviceTensor;
  weights: DeviceTensor | null;
}

/**
 * The cuda transport's group: a fixed set of kernel launches on one stream, peers' heaps mapped through
 * CUDA IPC. Dispatch is stage_send -> stage_pack (the staged path: rows go to their owners' stages at
 * once, the owner packs them expert-major), or route -> dispatch (the direct path: counts all-gathered
 * first, each row stored straight into its place in the owner's expertX), or ep_dispatch_local alone for
 * one rank and a small batch; combine is combine_send -> combine_reduce (kernels/ep.cu tells the
 * protocol; DispatchPath which path a group takes; CallLaunches the launches). No host synchronisation
 * sits inside a dispatch or combine: routing and capacity errors are found on the device and reported
 * through a small host-mapped error word, read at checkpoints (synchronize(), download(), and the start
 * of the next call). Between hosts (config.nodes > 1) each call's NCCL exchanges with the rail peers sit
 * between its kernels (rail.ts, kernels/ep_rail.cuh): every dispatch is then followed by one combine on
 * the stream (settleCombine), and every wait for the stream is bounded (waitForStream).
 *
 * Outputs (expertX, expertScales, expertCounts, combine's y) are views of buffers the group owns:
 * valid until the next dispatch (y: the next combine).
 */
export class CudaEpGroup implements EpGroup<DeviceTensor> {
  readonly transport = 'cuda' as const;
  readonly rank: number;
  readonly config: EpConfig;
  /** How this group's dispatch moves rows between ranks (the same on every rank; see DispatchPath). */
  readonly dispatchPath: DispatchPath;
  private closed = false;
  /** Who made the latest dispatch ('eager' or a graph), and whether it was combined: the graph rules. */
  private lastDispatch: {
    by: object | 'eager';
    combined: boolean;
    /** A graph's dispatch: its combine replayed as captured (settleCombine). */
    settle?: () => void;
  } = { by: 'eager', combined: true };
  private broken: MoeA2aError | null = null;
  /** The order of calls and their handles; a call refused here is aborted on every rank. */
  private readonly sequence: CallSequence<HandleState>;
  // (the parts every call uses; the rest are reached through `parts`)
  private readonly drv: CudaDriver;
  private readonly stream: CuStream;
  private readonly launches: CallLaunches;
  private readonly io: TensorIo;
  private readonly buffers: GroupBuffers;
  private barriers = 0;
  private readonly graphs = new Set<GraphCall>();
  /** Bytes of this rank's symmetric heap (every rank has one of this size, mapped by its peers). */
  get heapBytes(): number {
    return this.parts.layout.totalBytes;
  }

  private constructor(private readonly parts: GroupParts) {
    this.config = parts.config;
    this.dispatchPath = parts.dispatchPath;
    this.drv = parts.drv;
    this.stream = parts.stream;
    this.launches = parts.launches;
    this.io = parts.io;
    this.buffers = parts.buffers;
    this.rank = parts.heap.rank;
    this.sequence = new CallSequence<HandleState>(this, this.rank, {
      abortDispatch: () => {
        this.lastDispatch = { by: 'eager', combined: true }; // (no graph's combine may follow it)
        this.railLaunches(() => this.launches.abortDispatch());
      },
      abortCombine: () => {
        this.lastDispatch.combined = true; // (the graph rules: that call is over)
        this.railLaunches(() => this.launches.abortCombine());
      },
    });
    process.on('exit', this.onExit);
    if (parts.rail) {
      this.io.drain = () => this.waitForStream();
      parts.timer.wait = () => this.waitForStream();
    }
  }

  /** A rank process that exits with this group open tells its peers (see abortPeersOnExit). */
  private readonly onExit = () => {
    if (this.closed) return;
    abortPeersOnExit(this.drv, this.parts.heap, this.parts.layout, this.config, this.sequence.calls);
  };

  static async create(
    config: EpConfig,
    options: GroupOptions & { timeoutMs: number },
    deps: CudaGroupDeps = realDeps,
  ) {
    return new CudaEpGroup(await openGroupParts(config, options, deps));
  }

  // ------------------------------------------------------------------ tensors in and out (TensorIo)

  /** Copies a host tensor to new device memory (the caller frees it with free()). */
  upload(t: HostTensor): DeviceTensor {
    this.notClosed();
    return this.io.upload(t);
  }

  /**
   * Copies `src` (same dtype and size) into `dst`: a device tensor on the group's stream; a host
   * tensor at once, waiting until its bytes are on the device (so it also waits for queued work).
   */
  copyInto(dst: DeviceTensor, src: HostTensor | DeviceTensor): void {
    this.notClosed();
    this.io.copyInto(dst, src);
  }

  /** Waits for the stream, reports any device error, and copies `t` to a new host tensor. */
  download(t: DeviceTensor): HostTensor {
    this.synchronize();
    return this.io.toHost(t);
  }

  /** Fills the group's output buffers with `byte` (for checks that every element gets written). */
  poisonOutputs(byte: number): void {
    this.notClosed();
    const b = this.buffers;
    for (const t of [b.expertX, b.expertScales, b.expertCounts, b.expertOffsets]) {
      if (t) this.drv.memsetD8Async(t.devicePtr, byte, t.bytes, this.stream);
    }
    this.drv.memsetD8Async(b.y, byte, this.config.maxTokensPerRank * this.config.hidden * 2, this.stream);
  }

  /**
   * Device time (microseconds, CUDA events on the group's stream) of the work `fn` launches; waits
   * for it. For benchmarks: the host's own cost is not in it.
   */
  timeOnDevice(fn: () => void): number {
    this.notClosed();
    return this.parts.timer.time(fn, () => this.throwDeviceError());
  }

  /** Waits until every launched call has finished; throws the first error a kernel reported. */
  synchronize(): void {
    this.notClosed();
    try {
      this.waitForStream();
    } catch (err) {
      this.broken ??= err as MoeA2aError;
      throw err;
    }
    this.throwDeviceError();
  }

  /**
   * Waits for the stream. Between hosts an NCCL transfer waits for its peer without a deadline: when no
   * call finishes within STREAM_PATIENCE timeouts (a call chains up to two waits of the kernels', each
   * bounded by the timeout: they report first), or NCCL reports a broken connection, the rail's
   * communicator is aborted (the transfers end, and the kernels after them find the messages missing and
   * name the rank), then the stream is waited for again. The group is broken then.
   */
  private waitForStream(): void {
    const { watch, rail, timeoutMs } = this.parts;
    if (!watch || !rail) {
      this.drv.streamSynchronize(this.stream);
      return;
    }
    const why = waitOrAbortRail(rail, watch, STREAM_PATIENCE * timeoutMs);
    if (why === null) return;
    // the kernels after the aborted transfers name the rank whose message did not come
    const named = takeDeviceError(this.parts.errWord.view, this.config)?.error;
    const thrown =
      named ??
      new PeerTimeoutError(
        `rank ${this.rank}: the exchange between hosts failed: ${why}; its NCCL communicator was aborted`,
        { rank: this.rank, timeoutMs },
      );
    this.broken = thrown;
    throw thrown;
  }

  // Tensor I/O and waits need the group's stream and context: after close(), a ClosedError, not a
  // driver error about a destroyed stream.
  private notClosed(): void {
    checkUsable(this.closed, null);
  }

  private throwDeviceError(): void {
    const taken = takeDeviceError(this.parts.errWord.view, this.config);
    if (taken === null) return;
    const { error: err, call } = taken;
    const wasBroken = this.broken !== null;
    if (err instanceof PeerTimeoutError) this.broken ??= err;
    // between hosts: the dispatch that failed (the one still open, not an earlier call's error read late)
    // will not be combined here, and the exchanges must pair up: after a timeout too, since this rank's
    // rail peers, which may have failed the call otherwise (an abort), post that combine's exchange
    if (this.parts.rail && !wasBroken && !this.lastDispatch.combined && call === this.sequence.calls) {
      this.sequence.abandon();
      this.settleCombine();
    }
    throw err;
  }

  // ------------------------------------------------------------------ the collectives

  private usable(): void {
    checkUsable(this.closed, this.broken);
    this.throwDeviceError();
  }

  /**
   * How eager dispatch and combine hand their kernels to the driver: 'graph' (the default) replays a
   * graph cached per kernel sequence, 'direct' launches each kernel (see LaunchMode). Results are
   * the same; 'graph' costs the host less. MOE_A2A_EAGER_GRAPHS=0 makes 'direct' the default.
   */
  get launchMode(): LaunchMode {
    return this.launches.queue.mode;
  }
  set launchMode(mode: LaunchMode) {
    if (mode !== 'graph' && mode !== 'direct') {
      throw new ArgumentError(`launchMode must be 'graph' or 'direct', got ${String(mode)}`, {
        argument: 'launchMode',
      });
    }
    if (this.parts.rail && mode === 'graph') {
      throw new ArgumentError(
        "between hosts (nodes > 1) eager calls launch their kernels directly (the NCCL exchange sits between them): launchMode stays 'direct'",
        { argument: 'launchMode' },
      );
    }
    this.launches.queue.mode = mode;
  }

  /**
   * Between hosts every dispatch on the stream is followed by exactly one combine, before the next
   * dispatch or the end: the NCCL exchanges of all ranks must pair up. A dispatch that will not be
   * combined here (it failed, or the caller moved on) gets its combine's abort now.
   */
  private settleCombine(): void {
    if (!this.parts.rail || this.lastDispatch.combined) return;
    this.lastDispatch.combined = true;
    // a graph's dispatch: its own combine graph (a peer replays the same captured exchange; it sends the
    // aborts itself when the dispatch failed); an eager one: the combine's abort
    const settle = this.lastDispatch.settle;
    if (settle) settle();
    else this.railLaunches(() => this.launches.abortCombine());
  }

  /** Between hosts a launch sequence that stops part-way leaves the exchanges unpaired: the group is broken. */
  private railLaunches(launch: () => void): void {
    try {
      launch();
    } catch (err) {
      if (this.parts.rail) this.broken ??= err as MoeA2aError;
      throw err;
    }
  }

  dispatch(
    x: DeviceTensor,
    topkIdx: DeviceTensor,
    options: DispatchOptions<DeviceTensor> = {},
  ): DispatchResult<DeviceTensor> {
    this.usable();
    this.settleCombine();
    const { call, checked: T } = this.sequence.beginDispatch(() =>
      checkDispatchInputs(this.config, deviceTensorShape, x, topkIdx, options.topkWeights),
    );
    const w = options.topkWeights ?? null;
    let recv: SourceMajorRecv<DeviceTensor> | null = null;
    const queue = this.launches.queue;
    // (set first: between hosts, a dispatch launched at all is followed by one combine)
    this.lastDispatch = { by: 'eager', combined: false };
    queue.begin();
    try {
      this.railLaunches(() => this.launches.dispatch(x, topkIdx, w, T));
      if (options.returnRecv)
        recv = this.launches.recvView((dtype, shape) => this.io.newTensor(dtype, shape));
    } finally {
      queue.submit();
    }
    const handle = this.sequence.issue(call, T, { numTokens: T, topkIdx, weights: w });
    this.parts.watch?.mark();
    const b = this.buffers;
    return {
      expertX: b.expertX,
      expertScales: b.expertScales,
      expertCounts: b.expertCounts,
      expertOffsets: b.expertOffsets,
      handle,
      recv,
    };
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
        deviceTensorShape,
        expertOut,
        options.topkWeights,
        state.numTokens,
        state.weights !== null,
      ),
    );
    this.lastDispatch.combined = true;
    // (checked: 'given' means this combine's weights, 'dispatch' those dispatch kept)
    const w = (from === 'given' ? options.topkWeights : st.weights) as DeviceTensor;
    const queue = this.launches.queue;
    queue.begin();
    try {
      this.railLaunches(() => this.launches.combine(expertOut, st.topkIdx, w, st.numTokens));
    } finally {
      queue.submit();
    }
    this.parts.watch?.mark();
    return new DeviceTensor('bf16', [st.numTokens, c.hidden], this.buffers.y, null);
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
    const x = this.io.filled('bf16', [T, c.hidden], 0);
    const topkIdx = this.io.filled('i32', [T, c.topk], 0xff); // every id -1 (dropped) until the caller writes some
    const topkWeights = this.io.filled('f32', [T, c.topk], 0);
    const expertOut = this.io.filled('bf16', expertShape(c, c.hidden), 0);
    const b = this.buffers;
    const call = captureGraphCall(
      {
        drv: this.drv,
        stream: this.stream,
        recordDispatch: () => this.launches.dispatch(x, topkIdx, topkWeights, T),
        recordCombine: (afterDispatch) =>
          this.launches.combine(expertOut, topkIdx, topkWeights, T, afterDispatch),
        usable: () => this.usable(),
        beginCall: (by, combined, combineNow) => {
          this.settleCombine();
          this.parts.watch?.mark();
          this.sequence.begin();
          this.lastDispatch = { by, combined, settle: combineNow };
        },
        launch: (run) => this.railLaunches(run),
        takeCombine: (by) => {
          if (this.lastDispatch.by !== by || this.lastDispatch.combined) return false;
          this.lastDispatch.combined = true;
          return true;
        },
        closing: (g, by) => {
          this.graphs.delete(g);
          // (between hosts: a dispatch of this graph still open gets its combine while the graph exists)
          if (this.lastDispatch.by === by && !this.broken) this.settleCombine();
          if (!this.closed) this.synchronize();
        },
      },
      {
        numTokens: T,
        x,
        topkIdx,
        topkWeights,
        expertOut,
        expertX: b.expertX,
        expertScales: b.expertScales,
        expertCounts: b.expertCounts,
        expertOffsets: b.expertOffsets,
        y: new DeviceTensor('bf16', [T, c.hidden], b.y, null),
      },
    );
    this.graphs.add(call);
    return call;
  }

  async barrier(): Promise<void> {
    this.usable();
    this.synchronize();
    await this.parts.heap.barrier(`user${++this.barriers}`, this.parts.timeoutMs);
  }

  // ------------------------------------------------------------------ benchmarks only

  /** Whether this group's calls of T tokens get their dedup partials back flagged (README, "Flagged partials"). */
  flaggedPartials(T: number): boolean {
    return this.launches.flagged(T);
  }

  /**
   * Enqueues a barrier of every rank on the device (ep_barrier; between hosts, of this rank's host only:
   * its signals cross no host) and returns at once: what is enqueued
   * after it starts on every rank within about one NVLink signal of the others, with no host in the
   * loop. For timing one call across ranks (a host barrier leaves the ranks' launch skew in the time).
   * Collective; between calls only. A rank that does not come is reported as PeerTimeoutError.
   */
  deviceBarrier(): void {
    this.usable();
    this.launches.deviceBarrier();
  }

  /**
   * Benchmarks: from now on the kernels write phase stamps (EP_STAMP, %globaltimer ns) into a small
   * device buffer, in eager calls and in graphs captured after this (a graph keeps what it captured).
   * `false` stops it for later calls and captures.
   */
  setStamps(on: boolean): void {
    this.parts.stamps.set(on);
  }

  /** Zeroes the stamps (on the stream: before the next call's kernels write them). */
  clearStamps(): void {
    this.parts.stamps.clear();
  }

  /** Waits for the stream and returns the stamps (ns; 0 = not written since the last clear). */
  readStamps(): number[] {
    this.synchronize();
    return this.parts.stamps.read();
  }

  /**
   * What the benchmark's floor kernels (src/shmem/cuda/floors.ts) need from this group: the driver, its
   * stream and module, the device array of heap bases, and a heap region they may overwrite (expertX:
   * no call may be in flight, and the next dispatch rewrites it anyway). Not for other uses.
   */
  benchContext() {
    const p = this.parts;
    return {
      drv: this.drv,
      stream: this.stream,
      module: p.module,
      peerBases: p.args.get('peerBases') as bigint,
      smCount: p.smCount,
      scratch: p.layout.expertX,
      timeOnDevice: (fn: () => void) => this.timeOnDevice(fn),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.parts.rail && !this.broken) {
      try {
        this.settleCombine(); // (before the graphs go: a graph's dispatch is combined by its own graph)
      } catch {
        // (a launch that failed broke the group; the bounded wait below still runs)
      }
    }
    for (const g of [...this.graphs]) {
      try {
        g.close(); // before the stream and buffers they use go (it waits for the stream: it may throw)
      } catch {
        // (reported to whoever waited before; the group goes either way)
      }
    }
    if (this.parts.rail) {
      // between hosts the stream may hold transfers a peer will never answer: a bounded wait (which
      // aborts the rail when it must) before the release's unbounded one
      try {
        this.waitForStream();
      } catch {
        // (the rail was aborted if it had to be: the stream is free to go)
      }
    }
    this.closed = true;
    process.off('exit', this.onExit);
    await releaseGroupParts(this.parts);
  }
}

export async function createCudaGroup(
  config: EpConfig,
  options: GroupOptions & { timeoutMs: number },
): Promise<EpGroup<DeviceTensor>> {
  return CudaEpGroup.create(config, options);
}
