import type { SourceMajorRecv } from '../../ep/api.js';
import { stageRowOffset, stageScaleOffset } from '../../ep/layout.js';
import { type HostTensor, hostTensor } from '../../ep/tensor.js';
import type { RankHeap } from './rank-heap.js';

/**
 * The receive side of a dispatch on host memory: the stage unpacked into expert-major expertX (what
 * ep_stage_pack does), and the source-major view a caller may ask for (what ep_recv_view does).
 */

/**
 * Source-major stage -> expert-major output: rows of (expert e, source s) after those of sources < s,
 * from the expert's start (h.rowStarts, set from the same splits). With dedup each row is copied
 * from its carrier (the row that holds its token's data).
 */
export function repack(h: RankHeap, slot: number, splits: Int32Array): void {
  const c = h.config;
  const epr = c.expertsPerRank;
  const spp = h.layout.splitsPerPeer;
  const filled = new Int32Array(epr); // rows of each expert taken by sources before s
  for (let s = 0; s < c.world; s++) {
    const carrier = c.dedup ? h.carrierBlock(slot, s, splits) : null;
    let row = 0;
    for (let e = 0; e < epr; e++) {
      const n = splits[s * spp + e];
      const dstRow = h.rowStarts[e] + filled[e];
      if (!carrier) h.copyRows(slot, s, row, dstRow, n);
      else for (let i = 0; i < n; i++) h.copyRows(slot, s, carrier[row + i], dstRow + i, 1);
      filled[e] += n;
      row += n;
    }
  }
}

/**
 * Direct: the source-major view [W][maxRowsPerPeer] rebuilt from expertX (what ep_recv_view does):
 * row m of source s is its m-th row for this rank in its own (expert-sorted) order.
 */
export function viewFromExpertX(h: RankHeap, splits: Int32Array): SourceMajorRecv<HostTensor> {
  const c = h.config;
  const { world: W, expertsPerRank: epr, maxRowsPerPeer: M } = c;
  const rb = c.dispatchRowBytes;
  const G = c.groupsPerRow;
  const spp = h.layout.splitsPerPeer;
  const { bytes, scaleData } = emptyView(h);
  const base = new Int32Array(epr); // rows of each expert taken by sources before s
  for (let s = 0; s < W; s++) {
    let m = 0;
    for (let e = 0; e < epr; e++) {
      const n = splits[s * spp + e];
      const from = h.rowStarts[e] + base[e];
      bytes.set(h.expertX.subarray(from * rb, (from + n) * rb), (s * M + m) * rb);
      if (scaleData && h.expertScales)
        scaleData.set(h.expertScales.subarray(from * G, (from + n) * G), (s * M + m) * G);
      base[e] += n;
      m += n;
    }
  }
  return viewTensors(h, bytes, scaleData, splits);
}

/**
 * Staged: the source-major view [W][maxRowsPerPeer] from the stage ([W][stageRows], stageRows <=
 * maxRowsPerPeer): each source's block copied to its place (with dedup, each row from its carrier).
 */
export function copyRecv(h: RankHeap, slot: number, splits: Int32Array): SourceMajorRecv<HostTensor> {
  const c = h.config;
  const local = h.shmem.local();
  const M = c.maxRowsPerPeer;
  const n = h.layout.stageRows;
  const rb = c.dispatchRowBytes;
  const G = c.groupsPerRow;
  const { bytes, scaleData } = emptyView(h);
  for (let s = 0; s < c.world; s++) {
    const from = stageRowOffset(h.layout, c, slot, s, 0);
    bytes.set(local.subarray(from, from + n * rb), s * M * rb);
    if (scaleData) {
      const sFrom = stageScaleOffset(h.layout, c, slot, s, 0) / 4;
      scaleData.set(h.f32.subarray(sFrom, sFrom + n * G), s * M * G);
    }
  }
  if (c.dedup) fillFromCarriers(h, slot, splits, bytes, scaleData ?? undefined);
  return viewTensors(h, bytes, scaleData, splits);
}

/**
 * dedup: makes the copied source-major view show, at row r of block s, the data of s's carrier row
 * carrier[r] (only carrier rows were written), so that it equals the view without dedup.
 */
function fillFromCarriers(
  h: RankHeap,
  slot: number,
  splits: Int32Array,
  bytes: Uint8Array,
  scales: Float32Array | undefined,
): void {
  const c = h.config;
  const local = h.shmem.local();
  const rb = c.dispatchRowBytes;
  const G = c.groupsPerRow;
  for (let s = 0; s < c.world; s++) {
    const carrier = h.carrierBlock(slot, s, splits);
    for (let r = 0; r < carrier.length; r++) {
      if (carrier[r] === r) continue;
      const to = s * c.maxRowsPerPeer + r;
      const from = stageRowOffset(h.layout, c, slot, s, carrier[r]);
      bytes.set(local.subarray(from, from + rb), to * rb);
      if (scales) {
        const sFrom = stageScaleOffset(h.layout, c, slot, s, carrier[r]) / 4;
        scales.set(h.f32.subarray(sFrom, sFrom + G), to * G);
      }
    }
  }
}

/** Zeroed buffers for the source-major view: rows [W][maxRowsPerPeer] and (FP8) their scales. */
function emptyView(h: RankHeap): { bytes: Uint8Array; scaleData: Float32Array | null } {
  const c = h.config;
  const rows = c.world * c.maxRowsPerPeer;
  return {
    bytes: new Uint8Array(rows * c.dispatchRowBytes),
    scaleData: c.fp8 ? new Float32Array(rows * c.groupsPerRow) : null,
  };
}

/** The source-major view's tensors over filled buffers, with a copy of the split records. */
function viewTensors(
  h: RankHeap,
  bytes: Uint8Array,
  scaleData: Float32Array | null,
  splits: Int32Array,
): SourceMajorRecv<HostTensor> {
  const c = h.config;
  const shape = [c.world, c.maxRowsPerPeer, c.hidden];
  const x = c.fp8
    ? hostTensor('fp8_e4m3', shape, bytes)
    : hostTensor('bf16', shape, new Uint16Array(bytes.buffer));
  const scales = scaleData ? hostTensor('f32', [c.world, c.maxRowsPerPeer, c.groupsPerRow], scaleData) : null;
  return { x, scales, splits: hostTensor('i32', [c.world, h.layout.splitsPerPeer], splits.slice()) };
}
