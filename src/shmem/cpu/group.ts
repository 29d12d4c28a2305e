import type {
  CombineOptions,
  DispatchOptions,
  DispatchResult,
  EpGroup,
  SourceMajorRecv,
} from '../../ep/api.js';
import { checkUsable, peerAbortedError } from '../../ep/call-errors.js';
import { CallSequence, checkCombineInputs, checkDispatchInputs } from '../../ep/call-sequence.js';
import { BF16_DECODE, f32BitsToBf16, quantizeRowsFp8, weightedSumBf16 } from '../../ep/codec.js';
import type { EpConfig } from '../../ep/config.js';
import type { DispatchPath } from '../../ep/dispatch-path.js';
import { expertOffsetsOf, expertShape } from '../../ep/expert-layout.js';
import type { CombineHandle } from '../../ep/handle.js';
import {
  combineRowOffset,
  type HeapLayout,
  recordBytes,
  signalOffset,
  splitsOffset,
  stageCarrierOffset,
  stageRecordOffset,
  stageRowOffset,
  stageScaleOffset,
} from '../../ep/layout.js';
import { checkExpertCapacity, planRouting } from '../../ep/routing.js';
import { checkTensor, type HostTensor, hostTensor } from '../../ep/tensor.js';
import type { MoeA2aError } from '../../errors.js';
import { ABORT_BIT, type SymmetricTransport } from '../transport.js';

type SignalRegion = 'countSignal' | 'dispatchSignal' | 'combineSignal';

interface HandleState {
  slot: number;
  numTokens: number;
  pairRow: Int32Array;
  weights: Float32Array | null;
  /** i32 [W][EPR + 1] as received: counts per local expert from each source, then its m_st. */
  splits: Int32Array;
  /** dedup: u8 [T * k], 1 where (t, j) is a carrier slot (valid, the first of t's slots on its owner). */
  carriers: Uint8Array | null;
}

/**
 * The protocol of DESIGN.md on host memory, over any SymmetricTransport (the cpu transport today).
 * Rows are written straight into the peer's heap where the transport maps it (no staging copy).
 *
 * Outputs (expertX, expertScales, expertCounts) live in buffers the group owns (expertX and its scales in
 * the heap's regions, the layout both transports share) and rewrites on every dispatch; they are handed
 * out only after the call has fully succeeded, so a caller never sees a half-written result.
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
  private readonly expertX: Uint8Array;
  private readonly expertScales: Float32Array | null;
  private readonly expertCounts: Int32Array;
  /** Where each local expert's rows start in expertX (src/ep/expert-layout.ts); combine reads them too. */
  private readonly expertOffsets: Int32Array;
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
    /** How dispatch moves rows (src/ep/dispatch-path.ts); 'direct' needs a layout without a stage. */
    readonly dispatchPath: DispatchPath = 'staged',
  ) {
    const c = config;
    this.rank = shmem.rank;
    this.sequence = new CallSequence<HandleState>(this, this.rank, {
      // direct: peers wait for the counts first, so that is where they must learn of the abort
      abortDispatch: (call) => this.abort(dispatchPath === 'direct' ? 'countSignal' : 'dispatchSignal', call),
      abortCombine: (call) => this.abort('combineSignal', call),
    });
    const rows = c.expertRows;
    const local = shmem.local();
    // the outputs live in the heap's expertX region, as on cuda (peers never write it on this protocol)
    const at = local.byteOffset + layout.expertX.offset;
    this.expertX = new Uint8Array(local.buffer, at, rows * c.dispatchRowBytes);
    const scalesAt = local.byteOffset + layout.expertScales.offset;
    this.expertScales = c.fp8 ? new Float32Array(local.buffer, scalesAt, rows * c.groupsPerRow) : null;
    this.expertCounts = new Int32Array(c.expertsPerRank);
    this.expertOffsets = new Int32Array(c.expertsPerRank);
    this.quantRows = new Uint8Array(c.fp8 ? c.maxTokensPerRank * c.hidden : 0);
    this.quantScales = new Float32Array(c.fp8 ? c.maxTokensPerRank * c.groupsPerRow : 0);
    this.heapI32 = new Int32Array(local.buffer, local.byteOffset, local.byteLength / 4);
    this.heapF32 = new Float32Array(local.buffer, local.byteOffset, local.byteLength / 4);
  }

  private usable(): void {
    checkUsable(this.closed, this.broken);
  }

  /** Tells every peer that this rank abandons call `call` (its input was invalid), so none waits for it. */
  private abort(region: SignalRegion, call: number): void {
    const off = signalOffset(this.layout[region], call & 1, this.rank);
    for (let d = 0; d < this.config.world; d++) this.shmem.signal(d, off, BigInt(call) | ABORT_BIT);
  }

  /** Waits for every peer's signal of this call; an abort from a peer becomes PeerFailedError. */
  private waitAll(region: SignalRegion, call: number): void {
    const slot = call & 1;
    const deadline = performance.now() + this.timeoutMs;
    const phase = region === 'combineSignal' ? 'combine' : 'dispatch';
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
    const { call, checked } = this.sequence.beginDispatch(() => {
      const T = checkDispatchInputs(c, checkTensor, x, topkIdx, options.topkWeights);
      // routing errors are found here, on the host: refused like a bad shape
      return { T, plan: planRouting(c, topkIdx.data as Int32Array, T) };
    });
    const { T, plan } = checked;
    const slot = call & 1;
    const weights = options.topkWeights ? Float32Array.from(options.topkWeights.data as Float32Array) : null;
    const xs = x.data as Uint16Array;
    const idxData = topkIdx.data as Int32Array;
    const G = c.groupsPerRow;
    let src: Uint8Array;
    if (c.fp8) {
      quantizeRowsFp8(xs, 0, T, c.hidden, c.fp8GroupSize, this.quantRows, 0, this.quantScales, 0);
      src = this.quantRows;
    } else {
      src = new Uint8Array(xs.buffer, xs.byteOffset, xs.byteLength);
    }
    const epr = c.expertsPerRank;
    const peers = Array.from({ length: c.world }, (_, d) => this.shmem.mapped(d));
    let carriers: Uint8Array | null = null;
    let splits: Int32Array;
    if (this.dispatchPath === 'direct') {
      splits = this.sendDirect(src, T, idxData, plan, slot, call, peers);
    } else {
      if (c.dedup) carriers = this.sendDedup(src, T, idxData, weights as Float32Array, plan, slot, peers);
      else this.sendStaged(src, T, idxData, plan, slot, peers);
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
      splits = this.readSplits(slot);
    }
    try {
      checkExpertCapacity(c, this.rank, splits, this.layout.splitsPerPeer);
    } catch (err) {
      this.abort('combineSignal', call); // peers will not wait in combine for a rank that cannot combine
      throw err;
    }
    this.countRows(splits);
    if (this.dispatchPath === 'staged') this.repack(slot, splits);
    const state: HandleState = { slot, numTokens: T, pairRow: plan.pairRow, weights, splits, carriers };
    const handle = this.sequence.issue(call, T, state);
    let recv: SourceMajorRecv<HostTensor> | null = null;
    if (options.returnRecv)
      recv = this.dispatchPath === 'direct' ? this.viewFromExpertX(splits) : this.copyRecv(slot, splits);
    return {
      expertX: this.expertXTensor(),
      expertScales: this.expertScales ? hostTensor('f32', expertShape(c, G), this.expertScales) : null,
      expertCounts: hostTensor('i32', [epr], this.expertCounts),
      expertOffsets: hostTensor('i32', [epr], this.expertOffsets),
      handle,
      recv,
    };
  }

  /** Writes `bytes` at `off` in rank d's heap: in place where the transport maps it, else a put. */
  private putTo(peers: (Uint8Array | null)[], d: number, off: number, bytes: Uint8Array): void {
    const peer = peers[d];
    if (peer) peer.set(bytes, off);
    else this.shmem.put(d, off, bytes);
  }

  /** Staged send, without dedup: each row and its scales into its owner's stage, at its row for that owner. */
  private sendStaged(
    src: Uint8Array,
    T: number,
    idxData: Int32Array,
    plan: ReturnType<typeof planRouting>,
    slot: number,
    peers: (Uint8Array | null)[],
  ): void {
    const c = this.config;
    const k = c.topk;
    const epr = c.expertsPerRank;
    const rowBytes = c.dispatchRowBytes;
    const G = c.groupsPerRow;
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
        this.putTo(peers, d, stageRowOffset(this.layout, c, slot, this.rank, r), rowSrc);
        if (sc) this.putTo(peers, d, stageScaleOffset(this.layout, c, slot, this.rank, r), sc);
      }
    }
  }

  /**
   * Direct send (the cuda transport's ep_route + ep_dispatch): this rank's per-expert counts to every
   * rank (counts[slot][me], then countSignal), and once every rank's counts are in, each row straight
   * into its final place in its owner's expertX: in local expert le's rows of owner d (whose start the
   * counts give), after the rows of the sources before this rank, in this rank's order. Rows of an expert over capacity are not stored (its
   * owner fails the call). Then dispatchSignal to every rank and a wait for every rank's. Returns the
   * split records the staged protocol would have received (per source: rows per local expert, m_st).
   */
  private sendDirect(
    src: Uint8Array,
    T: number,
    idxData: Int32Array,
    plan: ReturnType<typeof planRouting>,
    slot: number,
    call: number,
    peers: (Uint8Array | null)[],
  ): Int32Array {
    const c = this.config;
    const { numExperts: E, world: W, topk: k, expertsPerRank: epr, expertCapacity: cap } = c;
    const rowBytes = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    const L = this.layout;
    const countsAt = (s: number) => L.counts.offset + slot * L.counts.slotBytes + s * E * 4;
    const mine = new Uint8Array(plan.expertCounts.buffer, plan.expertCounts.byteOffset, E * 4);
    for (let i = 1; i <= W; i++) {
      const d = (this.rank + i) % W;
      this.shmem.putWithSignal(
        d,
        countsAt(this.rank),
        mine,
        signalOffset(L.countSignal, slot, this.rank),
        BigInt(call),
      );
    }
    this.waitAll('countSignal', call);
    const counts = this.heapI32.slice(countsAt(0) / 4, countsAt(0) / 4 + W * E); // [W][E]
    const before = new Int32Array(E); // rows of each expert from the sources before this rank
    const total = new Int32Array(E);
    for (let s = 0; s < W; s++) {
      for (let e = 0; e < E; e++) {
        if (s < this.rank) before[e] += counts[s * E + e];
        total[e] += counts[s * E + e];
      }
    }
    // where each expert's rows start in its owner's expertX
    const start = new Int32Array(E);
    for (let d = 0; d < W; d++)
      start.set(expertOffsetsOf(c, total.subarray(d * epr, (d + 1) * epr)), d * epr);
    const put = (d: number, off: number, bytes: Uint8Array) => this.putTo(peers, d, off, bytes);
    for (let t = 0; t < T; t++) {
      const rowSrc = src.subarray(t * rowBytes, (t + 1) * rowBytes);
      const sc = c.fp8 ? new Uint8Array(this.quantScales.buffer, t * G * 4, G * 4) : null;
      for (let j = 0; j < k; j++) {
        const p = t * k + j;
        const row = plan.pairRow[p];
        const e = idxData[p];
        if (row < 0 || total[e] > cap) continue;
        const d = (e / epr) | 0;
        const r = start[e] + before[e] + (row - plan.expertOffsets[e]);
        put(d, L.expertX.offset + r * rowBytes, rowSrc);
        if (sc) put(d, L.expertScales.offset + r * G * 4, sc);
      }
    }
    this.shmem.fence();
    for (let i = 1; i <= W; i++) {
      const d = (this.rank + i) % W;
      this.shmem.signal(d, signalOffset(L.dispatchSignal, slot, this.rank), BigInt(call));
    }
    this.waitAll('dispatchSignal', call);
    const spp = L.splitsPerPeer;
    const splits = new Int32Array(W * spp);
    const first = this.rank * epr; // this rank's first expert
    for (let s = 0; s < W; s++) {
      for (let le = 0; le < epr; le++) splits[s * spp + le] = counts[s * E + first + le];
      let mSt = 0; // s's rows for experts before this rank's: where its rows for me start in its order
      for (let e = 0; e < first; e++) mSt += counts[s * E + e];
      splits[s * spp + epr] = mSt;
    }
    return splits;
  }

  /** expertCounts from the split records, and from them where each expert's rows start. */
  private countRows(splits: Int32Array): void {
    const c = this.config;
    const spp = this.layout.splitsPerPeer;
    this.expertCounts.fill(0);
    for (let s = 0; s < c.world; s++)
      for (let e = 0; e < c.expertsPerRank; e++) this.expertCounts[e] += splits[s * spp + e];
    this.expertOffsets.set(expertOffsetsOf(c, this.expertCounts));
  }

  /**
   * Direct: the source-major view [W][maxRowsPerPeer] rebuilt from expertX (what ep_recv_view does):
   * row m of source s is its m-th row for this rank in its own (expert-sorted) order.
   */
  private viewFromExpertX(splits: Int32Array): SourceMajorRecv<HostTensor> {
    const c = this.config;
    const { world: W, expertsPerRank: epr, maxRowsPerPeer: M } = c;
    const rb = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    const spp = this.layout.splitsPerPeer;
    const { bytes, scaleData } = this.emptyView();
    const base = new Int32Array(epr); // rows of each expert taken by sources before s
    for (let s = 0; s < W; s++) {
      let m = 0;
      for (let e = 0; e < epr; e++) {
        const n = splits[s * spp + e];
        const from = this.expertOffsets[e] + base[e];
        bytes.set(this.expertX.subarray(from * rb, (from + n) * rb), (s * M + m) * rb);
        if (scaleData && this.expertScales)
          scaleData.set(this.expertScales.subarray(from * G, (from + n) * G), (s * M + m) * G);
        base[e] += n;
        m += n;
      }
    }
    return this.viewTensors(bytes, scaleData, splits);
  }

  /** Zeroed buffers for the source-major view: rows [W][maxRowsPerPeer] and (FP8) their scales. */
  private emptyView(): { bytes: Uint8Array; scaleData: Float32Array | null } {
    const c = this.config;
    const rows = c.world * c.maxRowsPerPeer;
    return {
      bytes: new Uint8Array(rows * c.dispatchRowBytes),
      scaleData: c.fp8 ? new Float32Array(rows * c.groupsPerRow) : null,
    };
  }

  /** The source-major view's tensors over filled buffers, with a copy of the split records. */
  private viewTensors(
    bytes: Uint8Array,
    scaleData: Float32Array | null,
    splits: Int32Array,
  ): SourceMajorRecv<HostTensor> {
    const c = this.config;
    const shape = [c.world, c.maxRowsPerPeer, c.hidden];
    const x = c.fp8
      ? hostTensor('fp8_e4m3', shape, bytes)
      : hostTensor('bf16', shape, new Uint16Array(bytes.buffer));
    const scales = scaleData
      ? hostTensor('f32', [c.world, c.maxRowsPerPeer, c.groupsPerRow], scaleData)
      : null;
    return { x, scales, splits: hostTensor('i32', [c.world, this.layout.splitsPerPeer], splits.slice()) };
  }

  /**
   * Dedup send (s -> d for every owner d): per (token, owner) the row and its scales once, at the
   * carrier row r0 (the row of the token's first slot on d); the record at r0 (back = t * k + j0, the
   * row of each slot on d or -1, its weight or 0); then every row's carrier index, one block per
   * owner. Returns the carrier-slot mask the origin reduces over in combine.
   */
  private sendDedup(
    src: Uint8Array,
    T: number,
    idxData: Int32Array,
    weights: Float32Array,
    plan: ReturnType<typeof planRouting>,
    slot: number,
    peers: (Uint8Array | null)[],
  ): Uint8Array {
    const c = this.config;
    const k = c.topk;
    const epr = c.expertsPerRank;
    const rowBytes = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    const carriers = new Uint8Array(T * k);
    const carrierOf = new Int32Array(plan.numRows); // per row in send order: its carrier's row r0
    const owner = new Int32Array(k);
    const record = new ArrayBuffer(recordBytes(c));
    const recI32 = new Int32Array(record);
    const recF32 = new Float32Array(record);
    const recBytes = new Uint8Array(record);
    const put = (d: number, off: number, bytes: Uint8Array) => this.putTo(peers, d, off, bytes);
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < k; j++) {
        owner[j] = plan.pairRow[t * k + j] < 0 ? -1 : (idxData[t * k + j] / epr) | 0;
      }
      for (let j0 = 0; j0 < k; j0++) {
        const d = owner[j0];
        if (d < 0) continue;
        let first = true; // j0 is t's first slot on d: its carrier slot
        for (let q = 0; q < j0 && first; q++) first = owner[q] !== d;
        if (!first) continue;
        carriers[t * k + j0] = 1;
        const start = plan.destRowStart[d];
        const r0 = plan.pairRow[t * k + j0] - start;
        recI32[0] = t * k + j0;
        for (let j = 0; j < k; j++) {
          if (owner[j] === d) {
            const row = plan.pairRow[t * k + j];
            carrierOf[row] = r0;
            recI32[1 + j] = row - start;
            recF32[1 + k + j] = weights[t * k + j];
          } else {
            recI32[1 + j] = -1;
            recF32[1 + k + j] = 0;
          }
        }
        put(
          d,
          stageRowOffset(this.layout, c, slot, this.rank, r0),
          src.subarray(t * rowBytes, (t + 1) * rowBytes),
        );
        if (c.fp8) {
          const sc = new Uint8Array(this.quantScales.buffer, t * G * 4, G * 4);
          put(d, stageScaleOffset(this.layout, c, slot, this.rank, r0), sc);
        }
        put(d, stageRecordOffset(this.layout, c, slot, this.rank, r0), recBytes);
      }
    }
    for (let d = 0; d < c.world; d++) {
      const block = carrierOf.subarray(plan.destRowStart[d], plan.destRowStart[d + 1]);
      if (block.length === 0) continue;
      const bytes = new Uint8Array(block.buffer, block.byteOffset, block.byteLength);
      put(d, stageCarrierOffset(this.layout, slot, this.rank, 0), bytes);
    }
    return carriers;
  }

  /** dedup: i32 [count] carrier index of each row of block [slot][s] (a view of this rank's heap). */
  private carrierBlock(slot: number, s: number, splits: Int32Array): Int32Array {
    const spp = this.layout.splitsPerPeer;
    let count = 0; // the rows s sent this rank: its split record's counts
    for (let e = 0; e < this.config.expertsPerRank; e++) count += splits[s * spp + e];
    const start = stageCarrierOffset(this.layout, slot, s, 0) / 4;
    return this.heapI32.subarray(start, start + count);
  }

  private expertScalesBytes(): Uint8Array {
    const sc = this.expertScales as Float32Array;
    return new Uint8Array(sc.buffer, sc.byteOffset, sc.byteLength);
  }

  private expertXTensor(): HostTensor {
    const c = this.config;
    const shape = expertShape(c, c.hidden);
    if (c.fp8) return hostTensor('fp8_e4m3', shape, this.expertX);
    const x = this.expertX;
    return hostTensor('bf16', shape, new Uint16Array(x.buffer, x.byteOffset, x.byteLength / 2));
  }

  private readSplits(slot: number): Int32Array {
    const c = this.config;
    const n = c.world * this.layout.splitsPerPeer;
    const start = splitsOffset(this.layout, slot, 0) / 4;
    return this.heapI32.slice(start, start + n);
  }

  /**
   * Source-major receive slot -> expert-major output: rows of (expert e, source s) after those of
   * sources < s. With dedup each row is copied from its carrier (the row that holds its token's data).
   */
  private repack(slot: number, splits: Int32Array): void {
    const c = this.config;
    const epr = c.expertsPerRank;
    const spp = this.layout.splitsPerPeer;
    const filled = new Int32Array(epr); // rows of each expert taken by sources before s
    for (let s = 0; s < c.world; s++) {
      const carrier = c.dedup ? this.carrierBlock(slot, s, splits) : null;
      let row = 0;
      for (let e = 0; e < epr; e++) {
        const n = splits[s * spp + e];
        const dstRow = this.expertOffsets[e] + filled[e];
        if (!carrier) this.copyRows(slot, s, row, dstRow, n);
        else for (let i = 0; i < n; i++) this.copyRows(slot, s, carrier[row + i], dstRow + i, 1);
        filled[e] += n;
        row += n;
      }
    }
  }

  /** `n` received rows of source s from row `from` on (and their scales) into expertX from row `to` on. */
  private copyRows(slot: number, s: number, from: number, to: number, n: number): void {
    const c = this.config;
    const rowBytes = c.dispatchRowBytes;
    const at = stageRowOffset(this.layout, c, slot, s, from);
    this.expertX.set(this.shmem.local().subarray(at, at + n * rowBytes), to * rowBytes);
    if (this.expertScales) {
      const G = c.groupsPerRow;
      const sAt = stageScaleOffset(this.layout, c, slot, s, from) / 4;
      this.expertScales.set(this.heapF32.subarray(sAt, sAt + n * G), to * G);
    }
  }

  /**
   * The source-major view [W][maxRowsPerPeer] from the stage ([W][stageRows], stageRows <= maxRowsPerPeer):
   * each source's block copied to its place.
   */
  private copyRecv(slot: number, splits: Int32Array): SourceMajorRecv<HostTensor> {
    const c = this.config;
    const local = this.shmem.local();
    const M = c.maxRowsPerPeer;
    const n = this.layout.stageRows;
    const rb = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    const { bytes, scaleData } = this.emptyView();
    for (let s = 0; s < c.world; s++) {
      const from = stageRowOffset(this.layout, c, slot, s, 0);
      bytes.set(local.subarray(from, from + n * rb), s * M * rb);
      if (scaleData) {
        const sFrom = stageScaleOffset(this.layout, c, slot, s, 0) / 4;
        scaleData.set(this.heapF32.subarray(sFrom, sFrom + n * G), s * M * G);
      }
    }
    if (c.dedup) this.fillFromCarriers(slot, splits, bytes, scaleData ?? undefined);
    return this.viewTensors(bytes, scaleData, splits);
  }

  /**
   * dedup: makes the copied source-major view show, at row r of block s, the data of s's carrier row
   * carrier[r] (only carrier rows were written), so that it equals the view without dedup.
   */
  private fillFromCarriers(
    slot: number,
    splits: Int32Array,
    bytes: Uint8Array,
    scales: Float32Array | undefined,
  ): void {
    const c = this.config;
    const local = this.shmem.local();
    const rb = c.dispatchRowBytes;
    const G = c.groupsPerRow;
    for (let s = 0; s < c.world; s++) {
      const carrier = this.carrierBlock(slot, s, splits);
      for (let r = 0; r < carrier.length; r++) {
        if (carrier[r] === r) continue;
        const to = s * c.maxRowsPerPeer + r;
        const from = stageRowOffset(this.layout, c, slot, s, carrier[r]);
        bytes.set(local.subarray(from, from + rb), to * rb);
        if (scales) {
          const sFrom = stageScaleOffset(this.layout, c, slot, s, carrier[r]) / 4;
          scales.set(this.heapF32.subarray(sFrom, sFrom + G), to * G);
        }
      }
    }
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
    const weights = from === 'given' ? (options.topkWeights?.data as Float32Array) : st.weights;
    const slot = st.slot;
    const epr = c.expertsPerRank;
    const spp = this.layout.splitsPerPeer;
    const out = expertOut.data as Uint16Array;
    if (c.dedup) {
      this.sendPartials(st, out, call);
      this.waitAll('combineSignal', call);
      return this.reduceDedup(st);
    }
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
        const from = (this.expertOffsets[e] + expertBase[e]) * rowBytes;
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
    return this.reduce(st, weights as Float32Array);
  }

  /**
   * dedup combine, owner side: for each source s (in rank order) and each of its carrier rows r0, the
   * partial bf16(sum over the record's slots j with rows[j] >= 0, in j order, of f32(w[j] * out row of
   * (s, rows[j]))), written to s's combineRecv at row `back`; then fence and signal s.
   */
  private sendPartials(st: HandleState, out: Uint16Array, call: number): void {
    const c = this.config;
    const k = c.topk;
    const H = c.hidden;
    const epr = c.expertsPerRank;
    const spp = this.layout.splitsPerPeer;
    const expertBase = new Int32Array(epr); // rows of each expert taken by sources before s
    const packed = new Int32Array(c.maxRowsPerPeer); // expert-major row of each row of s
    const partial = new Uint16Array(H);
    const partialBytes = new Uint8Array(partial.buffer);
    const rows: Uint16Array[] = [];
    const offs: number[] = [];
    const ws: number[] = [];
    for (let s = 0; s < c.world; s++) {
      let count = 0;
      for (let e = 0; e < epr; e++) {
        const n = st.splits[s * spp + e];
        for (let i = 0; i < n; i++) packed[count++] = this.expertOffsets[e] + expertBase[e] + i;
        expertBase[e] += n;
      }
      const carrier = this.carrierBlock(st.slot, s, st.splits);
      const peer = this.shmem.mapped(s);
      const peer16 =
        peer && peer.byteOffset % 2 === 0
          ? new Uint16Array(peer.buffer, peer.byteOffset, peer.byteLength >> 1)
          : null;
      for (let r0 = 0; r0 < count; r0++) {
        if (carrier[r0] !== r0) continue;
        const rec = stageRecordOffset(this.layout, c, st.slot, s, r0) / 4;
        rows.length = 0;
        offs.length = 0;
        ws.length = 0;
        for (let j = 0; j < k; j++) {
          const r = this.heapI32[rec + 1 + j];
          if (r < 0) continue;
          rows.push(out);
          offs.push(packed[r] * H);
          ws.push(this.heapF32[rec + 1 + k + j]);
        }
        const off = combineRowOffset(this.layout, c, st.slot, this.heapI32[rec]);
        if (peer16) {
          weightedSumBf16(rows, offs, ws, H, peer16, off / 2);
        } else {
          weightedSumBf16(rows, offs, ws, H, partial, 0);
          this.shmem.put(s, off, partialBytes);
        }
      }
      this.shmem.fence();
      this.shmem.signal(s, signalOffset(this.layout.combineSignal, st.slot, this.rank), BigInt(call));
    }
  }

  /**
   * dedup combine, origin side: y[t] = bf16(S), S = the partial at t's first carrier slot, then
   * S = f32(S + partial) for each next carrier slot in increasing j; +0 for a token with none.
   */
  private reduceDedup(st: HandleState): HostTensor {
    const c = this.config;
    const k = c.topk;
    const H = c.hidden;
    const carriers = st.carriers as Uint8Array;
    const local = this.shmem.local();
    const base = combineRowOffset(this.layout, c, st.slot, 0);
    const recv = new Uint16Array(local.buffer, local.byteOffset + base, this.layout.combineRows * H);
    const y = new Uint16Array(st.numTokens * H);
    const acc = new Float32Array(H); // a store into it rounds the double sum of two f32 to f32 once
    const bits = new Uint32Array(acc.buffer);
    for (let t = 0; t < st.numTokens; t++) {
      let first = true;
      for (let j = 0; j < k; j++) {
        if (!carriers[t * k + j]) continue;
        const from = (t * k + j) * H;
        if (first) for (let h = 0; h < H; h++) acc[h] = BF16_DECODE[recv[from + h]];
        else for (let h = 0; h < H; h++) acc[h] += BF16_DECODE[recv[from + h]];
        first = false;
      }
      if (!first) for (let h = 0; h < H; h++) y[t * H + h] = f32BitsToBf16(bits[h]);
    }
    return hostTensor('bf16', [st.numTokens, H], y);
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
    this.expertX.fill(byte);
    if (this.expertScales) this.expertScalesBytes().fill(byte);
    new Uint8Array(this.expertCounts.buffer).fill(byte);
    new Uint8Array(this.expertOffsets.buffer).fill(byte);
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
