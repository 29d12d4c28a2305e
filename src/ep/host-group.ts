import type { MoeA2aError } from '../errors.js';
import { ABORT_BIT, type SymmetricTransport } from '../shmem/transport.js';
import type { CombineOptions, DispatchOptions, DispatchResult, EpGroup, SourceMajorRecv } from './api.js';
import { checkUsable, missingWeightsError, peerAbortedError, tooManyTokensError } from './call-errors.js';
import { quantizeRowsFp8, weightedSumBf16 } from './codec.js';
import type { EpConfig } from './config.js';
import { type CombineHandle, HandleRegistry, withAbandoned } from './handle.js';
import {
  combineRowOffset,
  type HeapLayout,
  recvRowOffset,
  recvScaleOffset,
  signalOffset,
  splitsOffset,
} from './layout.js';
import { checkExpertCapacity, planRouting } from './routing.js';
import { checkTensor, type HostTensor, hostTensor } from './tensor.js';

interface HandleState {
  slot: number;
  numTokens: number;
  pairRow: Int32Array;
  weights: Float32Array | null;
  /** i32 [W][EPR + 1] as received: counts per local expert from each source, then its m_st. */
  splits: Int32Array;
}

/**
 * The protocol of DESIGN.md on host memory, over any SymmetricTransport (the cpu transport today).
 * Rows are written straight into the peer's heap where the transport maps it (no staging copy).
 *
 * Outputs (expertX, expertScales, expertCounts) live in buffers the group owns and rewrites on every
 * dispatch; they are handed out only after the call has fully succeeded, so a caller never sees a
 * half-written result.
 */
export class HostEpGroup implements EpGroup<HostTensor> {
  readonly transport = 'cpu' as const;
  readonly rank: number;
  private calls = 0;
  private closed = false;
  /** Set once a peer timed out or died: the heap may still receive that peer's late writes. */
  private broken: MoeA2aError | null = null;
  private readonly handles = new HandleRegistry<HandleState>();
  private readonly expertX: Uint8Array;
  private readonly expertScales: Float32Array | null;
  private readonly expertCounts: Int32Array;
  /** FP8: each token quantised once per call, then copied to each destination that wants it. */
  private readonly quantRows: Uint8Array;
  private readonly quantScales: Float32Array;
  private heapI32: Int32Array;
  private heapF32: Float32Array;

  constructor(
    readonly config: EpConfig,
    private readonly layout: HeapLayout,
    private readonly shmem: SymmetricTransport,
    private readonly timeoutMs: number,
  ) {
    const c = config;
    this.rank = shmem.rank;
    const rows = c.expertsPerRank * c.expertCapacity;
    this.expertX = new Uint8Array(rows * c.dispatchRowBytes);
    this.expertScales = c.fp8 ? new Float32Array(rows * c.groupsPerRow) : null;
    this.expertCounts = new Int32Array(c.expertsPerRank);
    this.quantRows = new Uint8Array(c.fp8 ? c.maxTokensPerRank * c.hidden : 0);
    this.quantScales = new Float32Array(c.fp8 ? c.maxTokensPerRank * c.groupsPerRow : 0);
    const local = shmem.local();
    this.heapI32 = new Int32Array(local.buffer, local.byteOffset, local.byteLength / 4);
    this.heapF32 = new Float32Array(local.buffer, local.byteOffset, local.byteLength / 4);
  }

  private usable(): void {
    checkUsable(this.closed, this.broken);
  }

  /** Tells every peer that this rank abandons call `call` (its input was invalid), so none waits for it. */
  private abort(region: 'dispatchSignal' | 'combineSignal', call: number): void {
    const off = signalOffset(this.layout[region], call & 1, this.rank);
    for (let d = 0; d < this.config.world; d++) this.shmem.signal(d, off, BigInt(call) | ABORT_BIT);
  }

  /** Waits for every peer's signal of this call; an abort from a peer becomes PeerFailedError. */
  private waitAll(region: 'dispatchSignal' | 'combineSignal', call: number): void {
    const slot = call & 1;
    const deadline = performance.now() + this.timeoutMs;
    const phase = region === 'dispatchSignal' ? 'dispatch' : 'combine';
    for (let s = 0; s < this.config.world; s++) {
      const peer = (this.rank + s) % this.config.world;
      let r: string;
      try {
        r = this.shmem.waitUntil(signalOffset(this.layout[region], slot, peer), BigInt(call), deadline, {
          peer,
          slot,
          callCount: call,
          phase,
        });
      } catch (err) {
        this.broken = err as MoeA2aError;
        throw err;
      }
      if (r === 'aborted') {
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
    const call = ++this.calls;
    this.handles.abandonPending(); // a new dispatch ends the previous call's chance to combine
    const slot = call & 1;
    let plan: ReturnType<typeof planRouting>;
    let weights: Float32Array | null = null;
    let T: number;
    try {
      [T] = checkTensor('x', x, 'bf16', [undefined, c.hidden]);
      if (T > c.maxTokensPerRank) {
        throw tooManyTokensError(T, c.maxTokensPerRank);
      }
      checkTensor('topkIdx', topkIdx, 'i32', [T, c.topk]);
      if (options.topkWeights !== undefined) {
        checkTensor('topkWeights', options.topkWeights, 'f32', [T, c.topk]);
        weights = Float32Array.from(options.topkWeights.data as Float32Array);
      }
      plan = planRouting(c, topkIdx.data as Int32Array, T);
    } catch (err) {
      this.abort('dispatchSignal', call);
      throw err;
    }
    const xs = x.data as Uint16Array;
    const idxData = topkIdx.data as Int32Array;
    const rowBytes = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    let src: Uint8Array;
    if (c.fp8) {
      quantizeRowsFp8(xs, 0, T, c.hidden, c.fp8GroupSize, this.quantRows, 0, this.quantScales, 0);
      src = this.quantRows;
    } else {
      src = new Uint8Array(xs.buffer, xs.byteOffset, xs.byteLength);
    }
    const epr = c.expertsPerRank;
    const k = c.topk;
    const peers = Array.from({ length: c.world }, (_, d) => this.shmem.mapped(d));
    // Token order, not row order: each token's row is read once (it stays in cache) and written to
    // each of its destinations; the rows land at the same places as in the protocol's row order.
    for (let t = 0; t < T; t++) {
      const rowSrc = src.subarray(t * rowBytes, (t + 1) * rowBytes);
      const sc = c.fp8 ? new Uint8Array(this.quantScales.buffer, t * G * 4, G * 4) : null;
      for (let j = 0; j < k; j++) {
        const row = plan.pairRow[t * k + j];
        if (row < 0) continue;
        const d = (idxData[t * k + j] / epr) | 0;
        const r = row - plan.destRowStart[d];
        const off = recvRowOffset(this.layout, c, slot, this.rank, r);
        const peer = peers[d];
        if (peer) peer.set(rowSrc, off);
        else this.shmem.put(d, off, rowSrc);
        if (sc) {
          const sOff = recvScaleOffset(this.layout, c, slot, this.rank, r);
          if (peer) peer.set(sc, sOff);
          else this.shmem.put(d, sOff, sc);
        }
      }
    }
    this.shmem.fence();
    for (let i = 1; i <= c.world; i++) {
      const d = (this.rank + i) % c.world; // start with the next rank so senders spread over receivers
      const rec = new Int32Array(epr + 1);
      for (let e = 0; e < epr; e++) rec[e] = plan.expertCounts[d * epr + e];
      rec[epr] = plan.destRowStart[d];
      this.shmem.putWithSignal(
        d,
        splitsOffset(this.layout, slot, this.rank),
        new Uint8Array(rec.buffer),
        signalOffset(this.layout.dispatchSignal, slot, this.rank),
        BigInt(call),
      );
    }
    this.waitAll('dispatchSignal', call);
    const splits = this.readSplits(slot);
    try {
      checkExpertCapacity(c, this.rank, splits, this.layout.splitsPerPeer);
    } catch (err) {
      this.abort('combineSignal', call); // peers will not wait in combine for a rank that cannot combine
      throw err;
    }
    this.repack(slot, splits);
    const state: HandleState = { slot, numTokens: T, pairRow: plan.pairRow, weights, splits };
    const handle = this.handles.issue(this, call, T, this.rank, state);
    return {
      expertX: this.expertXTensor(),
      expertScales: this.expertScales
        ? hostTensor('f32', [epr, c.expertCapacity, G], this.expertScales)
        : null,
      expertCounts: hostTensor('i32', [epr], this.expertCounts),
      handle,
      recv: options.returnRecv ? this.copyRecv(slot, splits) : null,
    };
  }

  private expertXTensor(): HostTensor {
    const c = this.config;
    const shape = [c.expertsPerRank, c.expertCapacity, c.hidden];
    if (c.fp8) return hostTensor('fp8_e4m3', shape, this.expertX);
    return hostTensor('bf16', shape, new Uint16Array(this.expertX.buffer));
  }

  private readSplits(slot: number): Int32Array {
    const c = this.config;
    const n = c.world * this.layout.splitsPerPeer;
    const start = splitsOffset(this.layout, slot, 0) / 4;
    return this.heapI32.slice(start, start + n);
  }

  /** Source-major receive slot -> expert-major output: rows of (expert e, source s) after those of sources < s. */
  private repack(slot: number, splits: Int32Array): void {
    const c = this.config;
    const epr = c.expertsPerRank;
    const spp = this.layout.splitsPerPeer;
    const local = this.shmem.local();
    const rowBytes = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    this.expertCounts.fill(0);
    for (let s = 0; s < c.world; s++) {
      let row = 0;
      for (let e = 0; e < epr; e++) {
        const count = splits[s * spp + e];
        const dstRow = e * c.expertCapacity + this.expertCounts[e];
        const from = recvRowOffset(this.layout, c, slot, s, row);
        this.expertX.set(local.subarray(from, from + count * rowBytes), dstRow * rowBytes);
        if (this.expertScales) {
          const sFrom = recvScaleOffset(this.layout, c, slot, s, row) / 4;
          this.expertScales.set(this.heapF32.subarray(sFrom, sFrom + count * G), dstRow * G);
        }
        this.expertCounts[e] += count;
        row += count;
      }
    }
  }

  private copyRecv(slot: number, splits: Int32Array): SourceMajorRecv<HostTensor> {
    const c = this.config;
    const local = this.shmem.local();
    const from = recvRowOffset(this.layout, c, slot, 0, 0);
    const bytes = local.slice(from, from + c.world * c.maxRowsPerPeer * c.dispatchRowBytes);
    const shape = [c.world, c.maxRowsPerPeer, c.hidden];
    const x = c.fp8
      ? hostTensor('fp8_e4m3', shape, bytes)
      : hostTensor('bf16', shape, new Uint16Array(bytes.buffer));
    let scales: HostTensor | null = null;
    if (c.fp8) {
      const sFrom = recvScaleOffset(this.layout, c, slot, 0, 0) / 4;
      const n = c.world * c.maxRowsPerPeer * c.groupsPerRow;
      scales = hostTensor(
        'f32',
        [c.world, c.maxRowsPerPeer, c.groupsPerRow],
        this.heapF32.slice(sFrom, sFrom + n),
      );
    }
    return { x, scales, splits: hostTensor('i32', [c.world, this.layout.splitsPerPeer], splits.slice()) };
  }

  combine(
    expertOut: HostTensor,
    handle: CombineHandle,
    options: CombineOptions<HostTensor> = {},
  ): HostTensor {
    this.usable();
    const c = this.config;
    const call = this.calls;
    let st: HandleState;
    try {
      st = this.handles.take(this, handle, call);
    } catch (err) {
      // a refused handle: if the latest dispatch still waits for its combine, its peers are (or will
      // be) waiting in that combine, so abandon it on every rank rather than leave them to time out
      if (!this.handles.abandonPending()) throw err;
      this.abort('combineSignal', call);
      throw withAbandoned(err, call);
    }
    let weights: Float32Array;
    try {
      checkTensor('expertOut', expertOut, 'bf16', [c.expertsPerRank, c.expertCapacity, c.hidden]);
      if (options.topkWeights !== undefined) {
        checkTensor('topkWeights', options.topkWeights, 'f32', [st.numTokens, c.topk]);
        weights = options.topkWeights.data as Float32Array;
      } else if (st.weights) {
        weights = st.weights;
      } else {
        throw missingWeightsError();
      }
    } catch (err) {
      // the peers are (or will be) in this combine: tell them, so every rank abandons it together
      this.handles.abandonTaken(handle);
      this.abort('combineSignal', call);
      throw err;
    }
    const slot = st.slot;
    const epr = c.expertsPerRank;
    const spp = this.layout.splitsPerPeer;
    const out = expertOut.data as Uint16Array;
    const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    const rowBytes = c.combineRowBytes;
    const expertBase = new Int32Array(epr); // rows of each expert taken by sources before s
    for (let i = 0; i < c.world; i++) {
      const s = i; // expert-major order is by source, so walk sources in order
      const peer = this.shmem.mapped(s);
      const mSt = st.splits[s * spp + epr];
      let row = mSt;
      for (let e = 0; e < epr; e++) {
        const count = st.splits[s * spp + e];
        const from = (e * c.expertCapacity + expertBase[e]) * rowBytes;
        const rows = outBytes.subarray(from, from + count * rowBytes);
        const off = combineRowOffset(this.layout, c, slot, row);
        if (peer) peer.set(rows, off);
        else this.shmem.put(s, off, rows);
        expertBase[e] += count;
        row += count;
      }
      this.shmem.fence();
      this.shmem.signal(s, signalOffset(this.layout.combineSignal, slot, this.rank), BigInt(call));
    }
    this.waitAll('combineSignal', call);
    return this.reduce(st, weights);
  }

  private reduce(st: HandleState, weights: Float32Array): HostTensor {
    const c = this.config;
    const k = c.topk;
    const H = c.hidden;
    const local = this.shmem.local();
    const base = combineRowOffset(this.layout, c, st.slot, 0);
    const recv = new Uint16Array(local.buffer, local.byteOffset + base, this.layout.combineRows * H);
    const y = new Uint16Array(st.numTokens * H);
    const rows: Uint16Array[] = [];
    const offs: number[] = [];
    const ws: number[] = [];
    for (let t = 0; t < st.numTokens; t++) {
      rows.length = 0;
      offs.length = 0;
      ws.length = 0;
      for (let j = 0; j < k; j++) {
        const row = st.pairRow[t * k + j];
        if (row < 0) continue;
        rows.push(recv);
        offs.push(row * H);
        ws.push(weights[t * k + j]);
      }
      weightedSumBf16(rows, offs, ws, H, y, t * H);
    }
    return hostTensor('bf16', [st.numTokens, H], y);
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
      // drop this group's own views of the heap too, so the memory goes when the last rank closes
      this.heapI32 = new Int32Array(0);
      this.heapF32 = new Float32Array(0);
    }
  }
}
