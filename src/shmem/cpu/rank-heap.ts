import type { EpConfig } from '../../ep/config.js';
import { expertOffsetsOf, expertShape } from '../../ep/expert-layout.js';
import {
  type HeapLayout,
  splitsOffset,
  stageCarrierOffset,
  stageRowOffset,
  stageScaleOffset,
} from '../../ep/layout.js';
import { type HostTensor, hostTensor } from '../../ep/tensor.js';
import type { SymmetricTransport } from '../transport.js';

/**
 * One rank's side of the protocol on host memory: its heap (typed views of it, the stage's accessors,
 * writes into peers' heaps) and the dispatch outputs it owns. expertX and its scales live in the heap's
 * regions, as on cuda (peers never write them on the staged protocol; the direct one stores rows there);
 * the counts and offsets are host arrays. The senders (send.ts), the receive side (receive.ts) and
 * combine (combine.ts) all work through it.
 */
export class RankHeap {
  readonly rank: number;
  readonly expertX: Uint8Array;
  readonly expertScales: Float32Array | null;
  readonly expertCounts: Int32Array;
  /** Where each local expert's rows start in expertX (src/ep/expert-layout.ts): the output. */
  readonly expertOffsets: Int32Array;
  /** The same, for combine: a copy the caller cannot touch (poisonOutputs, or a caller writing the output). */
  readonly rowStarts: Int32Array;
  /** FP8: each token quantised once per call, then copied to each destination that wants it. */
  readonly quantRows: Uint8Array;
  readonly quantScales: Float32Array;
  i32: Int32Array;
  f32: Float32Array;

  constructor(
    readonly config: EpConfig,
    readonly layout: HeapLayout,
    readonly shmem: SymmetricTransport,
  ) {
    const c = config;
    this.rank = shmem.rank;
    const rows = c.expertRows;
    const local = shmem.local();
    const at = local.byteOffset + layout.expertX.offset;
    this.expertX = new Uint8Array(local.buffer, at, rows * c.dispatchRowBytes);
    const scalesAt = local.byteOffset + layout.expertScales.offset;
    this.expertScales = c.fp8 ? new Float32Array(local.buffer, scalesAt, rows * c.groupsPerRow) : null;
    this.expertCounts = new Int32Array(c.expertsPerRank);
    this.expertOffsets = new Int32Array(c.expertsPerRank);
    this.rowStarts = new Int32Array(c.expertsPerRank);
    this.quantRows = new Uint8Array(c.fp8 ? c.maxTokensPerRank * c.hidden : 0);
    this.quantScales = new Float32Array(c.fp8 ? c.maxTokensPerRank * c.groupsPerRow : 0);
    this.i32 = new Int32Array(local.buffer, local.byteOffset, local.byteLength / 4);
    this.f32 = new Float32Array(local.buffer, local.byteOffset, local.byteLength / 4);
  }

  /** Bytes of token t's scales in quantScales (FP8 only). */
  tokenScales(t: number): Uint8Array {
    const G = this.config.groupsPerRow;
    return new Uint8Array(this.quantScales.buffer, t * G * 4, G * 4);
  }

  /** Every peer's heap as this process maps it (null where the transport only puts). */
  peers(): (Uint8Array | null)[] {
    return Array.from({ length: this.config.world }, (_, d) => this.shmem.mapped(d));
  }

  /** Writes `bytes` at `off` in rank d's heap: in place where the transport maps it, else a put. */
  putTo(peers: (Uint8Array | null)[], d: number, off: number, bytes: Uint8Array): void {
    const peer = peers[d];
    if (peer) peer.set(bytes, off);
    else this.shmem.put(d, off, bytes);
  }

  /** The split records of call slot `slot` as they arrived: i32 [W][EPR + 1] (a copy). */
  readSplits(slot: number): Int32Array {
    const n = this.config.world * this.layout.splitsPerPeer;
    const start = splitsOffset(this.layout, slot, 0) / 4;
    return this.i32.slice(start, start + n);
  }

  /** dedup: i32 [count] carrier index of each row of block [slot][s] (a view of this rank's heap). */
  carrierBlock(slot: number, s: number, splits: Int32Array): Int32Array {
    const spp = this.layout.splitsPerPeer;
    let count = 0; // the rows s sent this rank: its split record's counts
    for (let e = 0; e < this.config.expertsPerRank; e++) count += splits[s * spp + e];
    const start = stageCarrierOffset(this.layout, slot, s, 0) / 4;
    return this.i32.subarray(start, start + count);
  }

  /** `n` received rows of source s from row `from` on (and their scales) into expertX from row `to` on. */
  copyRows(slot: number, s: number, from: number, to: number, n: number): void {
    const c = this.config;
    const rowBytes = c.dispatchRowBytes;
    const at = stageRowOffset(this.layout, c, slot, s, from);
    this.expertX.set(this.shmem.local().subarray(at, at + n * rowBytes), to * rowBytes);
    if (this.expertScales) {
      const G = c.groupsPerRow;
      const sAt = stageScaleOffset(this.layout, c, slot, s, from) / 4;
      this.expertScales.set(this.f32.subarray(sAt, sAt + n * G), to * G);
    }
  }

  /** expertCounts from the split records, and from them where each expert's rows start. */
  countRows(splits: Int32Array): void {
    const c = this.config;
    const spp = this.layout.splitsPerPeer;
    this.expertCounts.fill(0);
    for (let s = 0; s < c.world; s++)
      for (let e = 0; e < c.expertsPerRank; e++) this.expertCounts[e] += splits[s * spp + e];
    this.rowStarts.set(expertOffsetsOf(c, this.expertCounts));
    this.expertOffsets.set(this.rowStarts);
  }

  /** The dispatch outputs as tensors over the group's own buffers. */
  outputs(): Pick<HostDispatchOutputs, 'expertX' | 'expertScales' | 'expertCounts' | 'expertOffsets'> {
    const c = this.config;
    const epr = c.expertsPerRank;
    const shape = expertShape(c, c.hidden);
    const x = this.expertX;
    return {
      expertX: c.fp8
        ? hostTensor('fp8_e4m3', shape, x)
        : hostTensor('bf16', shape, new Uint16Array(x.buffer, x.byteOffset, x.byteLength / 2)),
      expertScales: this.expertScales
        ? hostTensor('f32', expertShape(c, c.groupsPerRow), this.expertScales)
        : null,
      expertCounts: hostTensor('i32', [epr], this.expertCounts),
      expertOffsets: hostTensor('i32', [epr], this.expertOffsets),
    };
  }

  /** Fills the outputs with `byte` (tests: an element no call wrote then shows). */
  poison(byte: number): void {
    this.expertX.fill(byte);
    const sc = this.expertScales;
    if (sc) new Uint8Array(sc.buffer, sc.byteOffset, sc.byteLength).fill(byte);
    new Uint8Array(this.expertCounts.buffer).fill(byte);
    new Uint8Array(this.expertOffsets.buffer).fill(byte);
  }

  /** Drops this rank's own views of the heap, so the memory goes when the last rank closes. */
  release(): void {
    this.i32 = new Int32Array(0);
    this.f32 = new Float32Array(0);
  }
}

interface HostDispatchOutputs {
  expertX: HostTensor;
  expertScales: HostTensor | null;
  expertCounts: HostTensor;
  expertOffsets: HostTensor;
}
