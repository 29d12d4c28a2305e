import type {
  CombineOptions,
  DispatchOptions,
  DispatchResult,
  EpGroup,
  SourceMajorRecv,
} from '../../ep/api.js';
import { checkUsable, peerAbortedError } from '../../ep/call-errors.js';
import { CallSequence, checkCombineInputs, checkDispatchInputs } from '../../ep/call-sequence.js';
import { quantizeRowsFp8 } from '../../ep/codec.js';
import type { EpConfig } from '../../ep/config.js';
import type { DispatchPath } from '../../ep/dispatch-path.js';
import type { CombineHandle } from '../../ep/handle.js';
import { type HeapLayout, signalOffset } from '../../ep/layout.js';
import { checkExpertCapacity, planRouting } from '../../ep/routing.js';
import { checkTensor, type HostTensor } from '../../ep/tensor.js';
import type { MoeA2aError } from '../../errors.js';
import { ABORT_BIT, type SymmetricTransport, type WaitResult, type WaitSubject } from '../transport.js';
import { type CombineState, reduce, reduceDedup, sendPartials, sendRows } from './combine.js';
import {
  forwardRailCombine,
  forwardRailMessages,
  hostOf,
  localOf,
  type RowsBack,
  railAbort,
  rankAt,
  sameHost,
  sendRailMessages,
} from './rail.js';
import { RankHeap } from './rank-heap.js';
import { copyRecv, repack, viewFromExpertX } from './receive.js';
import { type SendInput, sendDedup, sendDirect, sendSplits, sendStaged } from './send.js';

type SignalRegion = 'countSignal' | 'dispatchSignal' | 'combineSignal';

interface HandleState extends CombineState {
  weights: Float32Array | null;
  /** Between hosts: the rows this rank sends on, as rail peer, in this call's combine. */
  rowsBack: RowsBack | null;
}

/**
 * The protocol of the README ("The protocol") on host memory, over any SymmetricTransport (the cpu
 * transport today): the call sequence, the waits and the aborts here; the sends (send.ts), the receive
 * side (receive.ts) and combine (combine.ts) work on this rank's heap (rank-heap.ts). Rows are written
 * straight into the peer's heap where the transport maps it.
 *
 * Outputs (expertX, expertScales, expertCounts, expertOffsets) live in buffers the group owns and
 * rewrites on every dispatch; they are handed out only after the call has fully succeeded, so a caller
 * never sees a half-written result.
 *
 * With config.dedup a token's row crosses to each owner once (at its carrier row, the token's first
 * row for that owner), with a carrier index for every row and a record per carrier row (the token's
 * rows on that owner and their weights, and where the partial goes back); the receiver unpacks rows
 * from their carriers, so every dispatch output is the same as without dedup. In combine the owner
 * sends back one pre-reduced bf16 partial per (token, rank), which the origin sums.
 */
export class HostEpGroup implements EpGroup<HostTensor> {
  readonly transport = 'cpu' as const;
  readonly rank: number;
  private closed = false;
  /** Set once a peer timed out or died: the heap may still receive that peer's late writes. */
  private broken: MoeA2aError | null = null;
  private readonly sequence: CallSequence<HandleState>;
  private readonly heap: RankHeap;
  /** Between hosts: what the latest dispatch's combine sends on as rail peer (see rail.ts). */
  private railRows: RowsBack | null = null;

  constructor(
    readonly config: EpConfig,
    private readonly layout: HeapLayout,
    private readonly shmem: SymmetricTransport,
    private readonly timeoutMs: number,
    /** How dispatch moves rows (src/ep/dispatch-path.ts); 'direct' needs a layout without a stage. */
    readonly dispatchPath: DispatchPath = 'staged',
  ) {
    this.rank = shmem.rank;
    this.heap = new RankHeap(config, layout, shmem);
    this.sequence = new CallSequence<HandleState>(this, this.rank, {
      // direct: peers wait for the counts first, so that is where they must learn of the abort
      abortDispatch: (call) => this.abort(dispatchPath === 'direct' ? 'countSignal' : 'dispatchSignal', call),
      abortCombine: (call) => this.abort('combineSignal', call),
    });
  }

  private usable(): void {
    checkUsable(this.closed, this.broken);
  }

  /**
   * Tells every peer that this rank abandons call `call` (its input was invalid), so none waits for it.
   * A dispatch abandoned here still waits for every peer's signal of the call (arrived or aborted): a
   * rank that refused several calls in a row would otherwise run ahead, and its signal of call n + 2
   * would overwrite the one of call n that a peer may not have read yet. (Best effort: a peer that does
   * not come leaves the group broken, and the caller gets the error that made this rank abandon.)
   */
  private abort(region: SignalRegion, call: number): void {
    try {
      if (this.config.nodes > 1 && region !== 'countSignal') {
        const dispatch = region === 'dispatchSignal';
        railAbort(this.heap, dispatch ? 'dispatch' : 'combine', call);
        // as rail peer, still pass on what others send through this rank
        if (dispatch) this.railRows = forwardRailMessages(this.heap, call & 1, call, this.waitOne);
        else if (this.railRows) forwardRailCombine(this.heap, call & 1, call, this.railRows, this.waitOne);
      } else {
        const off = signalOffset(this.layout[region], call & 1, this.rank);
        for (let d = 0; d < this.config.world; d++) this.shmem.signal(d, off, BigInt(call) | ABORT_BIT);
      }
      if (region !== 'combineSignal') this.waitAll(region, call, { settled: true });
    } catch {
      // (the wait marked the group broken)
    }
  }

  /** Waits for a signal word of this rank (a failed wait breaks the group). */
  private waitWord(offset: number, call: number, deadline: number, subject: WaitSubject): WaitResult {
    try {
      return this.shmem.waitUntil(offset, BigInt(call), deadline, subject);
    } catch (err) {
      this.broken = err as MoeA2aError;
      throw err;
    }
  }

  /** Waits for one signal word of this rank to reach `call`; true when it came with the abort bit. */
  private readonly waitOne = (
    offset: number,
    call: number,
    peer: number,
    phase: 'dispatch' | 'combine',
  ): boolean =>
    this.waitWord(offset, call, performance.now() + this.timeoutMs, {
      peer,
      slot: call & 1,
      callCount: call,
      phase,
    }) === 'aborted';

  /** The rank that passes a signal of rank `peer` (on another host) on to this rank (rail.ts). */
  private relayOf(peer: number, phase: 'dispatch' | 'combine'): number {
    const h = this.heap;
    return phase === 'dispatch'
      ? rankAt(h, hostOf(h, h.rank), localOf(h, peer)) // peer's rail peer on this host
      : rankAt(h, hostOf(h, peer), localOf(h, h.rank)); // this rank's rail peer on peer's host
  }

  /** Waits for every peer's signal of this call; an abort from a peer becomes PeerFailedError. */
  private waitAll(region: SignalRegion, call: number, opts: { settled?: boolean } = {}): void {
    const slot = call & 1;
    const deadline = performance.now() + this.timeoutMs;
    const phase = region === 'combineSignal' ? 'combine' : 'dispatch';
    // this host's ranks first: a rank on another host signals through one of them (its rail peer here),
    // so a silent rail peer is named as itself, not as the rank whose rows it did not pass on
    const W = this.config.world;
    const order = Array.from({ length: W }, (_, s) => (this.rank + s) % W);
    if (this.config.nodes > 1) {
      const here = sameHost(this.heap);
      order.sort((a, b) => Number(!here(a)) - Number(!here(b))); // (stable: rank order within each)
    }
    for (const peer of order) {
      // between hosts, a rank on another host signals through a rail peer: on this host in dispatch, on
      // its own host in combine
      const via = this.config.nodes > 1 && !sameHost(this.heap)(peer) ? this.relayOf(peer, phase) : undefined;
      const r = this.waitWord(signalOffset(this.layout[region], slot, peer), call, deadline, {
        peer,
        slot,
        callCount: call,
        phase,
        ...(via === undefined ? {} : { via }),
      });
      if (r === 'aborted' && !opts.settled) {
        throw peerAbortedError(peer, phase, call);
      }
    }
  }

  dispatch(
    x: HostTensor,
    topkIdx: HostTensor,
    options: DispatchOptions<HostTensor> = {},
  ): DispatchResult<HostTensor> {
    this.usable();
    const c = this.config;
    const h = this.heap;
    const { call, checked } = this.sequence.beginDispatch(() => {
      const T = checkDispatchInputs(c, checkTensor, x, topkIdx, options.topkWeights);
      // routing errors are found here, on the host: refused like a bad shape
      return { T, plan: planRouting(c, topkIdx.data as Int32Array, T) };
    });
    const { T, plan } = checked;
    const slot = call & 1;
    const weights = options.topkWeights ? Float32Array.from(options.topkWeights.data as Float32Array) : null;
    const xs = x.data as Uint16Array;
    let src: Uint8Array;
    if (c.fp8) {
      quantizeRowsFp8(xs, 0, T, c.hidden, c.fp8GroupSize, h.quantRows, 0, h.quantScales, 0);
      src = h.quantRows;
    } else {
      src = new Uint8Array(xs.buffer, xs.byteOffset, xs.byteLength);
    }
    const hosts = c.nodes > 1; // (then rows to other hosts go through their rail peers: rail.ts)
    const to = hosts ? sameHost(h) : undefined;
    const input: SendInput = { src, T, idx: topkIdx.data as Int32Array, plan, slot, peers: h.peers(), to };
    let carriers: Uint8Array | null = null;
    let rowsBack: RowsBack | null = null;
    let splits: Int32Array;
    if (this.dispatchPath === 'direct') {
      splits = sendDirect(h, input, call, (region, n) => this.waitAll(region, n));
    } else {
      if (c.dedup) carriers = sendDedup(h, input, weights as Float32Array);
      else sendStaged(h, input);
      if (hosts) sendRailMessages(h, input, weights, call);
      this.shmem.fence();
      sendSplits(h, plan, slot, call, to);
      if (hosts) rowsBack = this.railRows = forwardRailMessages(h, slot, call, this.waitOne);
      this.waitAll('dispatchSignal', call);
      splits = h.readSplits(slot);
    }
    try {
      checkExpertCapacity(c, this.rank, splits, this.layout.splitsPerPeer);
    } catch (err) {
      this.abort('combineSignal', call); // peers will not wait in combine for a rank that cannot combine
      throw err;
    }
    h.countRows(splits);
    if (this.dispatchPath === 'staged') repack(h, slot, splits);
    const state: HandleState = {
      slot,
      numTokens: T,
      pairRow: plan.pairRow,
      weights,
      splits,
      carriers,
      rowsBack,
    };
    const handle = this.sequence.issue(call, T, state);
    let recv: SourceMajorRecv<HostTensor> | null = null;
    if (options.returnRecv)
      recv = this.dispatchPath === 'direct' ? viewFromExpertX(h, splits) : copyRecv(h, slot, splits);
    return { ...h.outputs(), handle, recv };
  }

  combine(
    expertOut: HostTensor,
    handle: CombineHandle,
    options: CombineOptions<HostTensor> = {},
  ): HostTensor {
    this.usable();
    const c = this.config;
    const {
      call,
      state: st,
      checked: from,
    } = this.sequence.beginCombine(handle, (state) =>
      checkCombineInputs(
        c,
        checkTensor,
        expertOut,
        options.topkWeights,
        state.numTokens,
        state.weights !== null,
      ),
    );
    const out = expertOut.data as Uint16Array;
    if (c.dedup) sendPartials(this.heap, st, out, call);
    else sendRows(this.heap, st, out, call);
    if (st.rowsBack) forwardRailCombine(this.heap, st.slot, call, st.rowsBack, this.waitOne);
    this.waitAll('combineSignal', call);
    if (c.dedup) return reduceDedup(this.heap, st);
    const weights = from === 'given' ? (options.topkWeights?.data as Float32Array) : st.weights;
    return reduce(this.heap, st, weights as Float32Array);
  }

  get heapBytes(): number {
    return this.layout.totalBytes;
  }

  upload(t: HostTensor): HostTensor {
    return t; // host memory is what this transport's calls take
  }

  download(t: HostTensor): HostTensor {
    return t;
  }

  synchronize(): void {
    this.usable(); // every call finished before it returned: only a broken or closed group to report
  }

  timeOnDevice(fn: () => void): number {
    const t0 = performance.now();
    fn();
    return (performance.now() - t0) * 1000;
  }

  poisonOutputs(byte: number): void {
    this.heap.poison(byte);
  }

  async barrier(): Promise<void> {
    this.usable();
    try {
      this.shmem.barrier(performance.now() + this.timeoutMs);
    } catch (err) {
      this.broken = err as MoeA2aError; // the barrier's count is off now: the group cannot go on
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.broken) this.shmem.barrier(performance.now() + this.timeoutMs);
    } finally {
      this.shmem.close();
      this.heap.release();
    }
  }
}
