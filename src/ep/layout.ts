import { ConfigError } from '../errors.js';
import type { EpConfig } from './config.js';

/**
 * The symmetric heap of the cpu transport (computeLayout) and of the cuda transport
 * (computeDirectLayout): one allocation per rank, the same layout on every rank, so a peer's region is
 * its base plus the same offset. Every offset and size here is derived from the config, in bytes,
 * aligned to ALIGN so that 16-byte vector copies (and 128-byte lines) never straddle regions.
 * Nobody else computes an offset.
 *
 * All arrays are indexed [slot][...] with slot = act_pos (0 or 1): a call writes slot
 * call_count % 2, so a call never overwrites what a peer may still read from the call before.
 */
export const ALIGN = 256;

export interface Region {
  /** Byte offset from the heap base. */
  readonly offset: number;
  /** Bytes of one slot (act_pos). */
  readonly slotBytes: number;
  /** Bytes of both slots. */
  readonly bytes: number;
}

export interface HeapLayout {
  /** u64 [2][W]: dispatchSignal[slot][src] == call_count once src's dispatch rows have landed. */
  readonly dispatchSignal: Region;
  /** u64 [2][W]: combineSignal[slot][src] == call_count once src's combine rows have landed. */
  readonly combineSignal: Region;
  /** i32 [2][W][EPR + 1]: per-local-expert row counts from src, then src's start offset m_st. */
  readonly recvSplits: Region;
  /** u8 [2][W][MAX_M][dispatchRowBytes]: rows src sent me (FP8 or bf16), expert-sorted. */
  readonly recvData: Region;
  /** f32 [2][W][MAX_M][H/G]: scales of those rows (FP8 only; zero bytes otherwise). */
  readonly recvScales: Region;
  /**
   * bf16 [2][maxTokensPerRank * k][H]: expert outputs returned to me, in my expert-sorted row order;
   * with dedup, each owner's partial for token t at row t * k + j0 (j0: t's first slot on that owner).
   */
  readonly combineRecv: Region;
  /**
   * dedup only (zero bytes otherwise): i32 [2][W][MAX_M]: for each row src sent me, the row of the
   * same token that carries its data (the token's first row for this rank).
   */
  readonly recvCarrier: Region;
  /**
   * dedup only (zero bytes otherwise): [2][W][MAX_M][recordBytes]: at each carrier row, the token's
   * record: i32 back (= t * k + j0, where my partial goes), i32 rows[k] (row of each slot on me, or
   * -1), f32 w[k] (its weight, or 0).
   */
  readonly recvRecords: Region;
  /** Total bytes of one rank's heap. */
  readonly totalBytes: number;
  /** Elements per split record (EPR + 1). */
  readonly splitsPerPeer: number;
  /** Rows of the combine receive buffer per slot (maxTokensPerRank * k). */
  readonly combineRows: number;
}

export function alignUp(n: number, a = ALIGN): number {
  return Math.ceil(n / a) * a;
}

export function computeLayout(cfg: EpConfig): HeapLayout {
  const heap = new RegionCursor();
  const W = cfg.world;
  const splitsPerPeer = cfg.expertsPerRank + 1;
  const combineRows = cfg.maxTokensPerRank * cfg.topk;
  const dispatchSignal = heap.region(W * 8);
  const combineSignal = heap.region(W * 8);
  const recvSplits = heap.region(W * splitsPerPeer * 4);
  const recvData = heap.region(W * cfg.maxRowsPerPeer * cfg.dispatchRowBytes);
  const recvScales = heap.region(cfg.fp8 ? W * cfg.maxRowsPerPeer * cfg.groupsPerRow * 4 : 0);
  const combineRecv = heap.region(combineRows * cfg.combineRowBytes);
  // last, so that a heap without dedup is laid out (and sized) exactly as before dedup existed
  const recvCarrier = heap.region(cfg.dedup ? W * cfg.maxRowsPerPeer * 4 : 0);
  const recvRecords = heap.region(cfg.dedup ? W * cfg.maxRowsPerPeer * recordBytes(cfg) : 0);
  checkHeapSize(heap.end);
  return {
    dispatchSignal,
    combineSignal,
    recvSplits,
    recvData,
    recvScales,
    combineRecv,
    recvCarrier,
    recvRecords,
    totalBytes: heap.end,
    splitsPerPeer,
    combineRows,
  };
}

/** Byte offset of signal word [slot][src] in a signal region. */
export function signalOffset(r: Region, slot: number, src: number): number {
  return r.offset + slot * r.slotBytes + src * 8;
}

/** Byte offset of the split record [slot][src] (EPR counts then m_st, i32). */
export function splitsOffset(l: HeapLayout, slot: number, src: number): number {
  return l.recvSplits.offset + slot * l.recvSplits.slotBytes + src * l.splitsPerPeer * 4;
}

/**
 * Byte offset of entry `row` of block [slot][src] in a region laid out [2][W][maxRowsPerPeer] entries of
 * `entryBytes` each: the receive buffer's rows, their scales, carriers and records.
 */
function sourceRowOffset(
  r: Region,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
  entryBytes: number,
) {
  return r.offset + slot * r.slotBytes + (src * cfg.maxRowsPerPeer + row) * entryBytes;
}

/** Byte offset of row `row` of block [slot][src] in the dispatch receive buffer. */
export function recvRowOffset(l: HeapLayout, cfg: EpConfig, slot: number, src: number, row: number): number {
  return sourceRowOffset(l.recvData, cfg, slot, src, row, cfg.dispatchRowBytes);
}

/** Byte offset of the scales of row `row` of block [slot][src] (FP8 only). */
export function recvScaleOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
): number {
  return sourceRowOffset(l.recvScales, cfg, slot, src, row, cfg.groupsPerRow * 4);
}

/** Byte offset of row `row` (my expert-sorted order) in the combine receive buffer. */
export function combineRowOffset(l: HeapLayout, cfg: EpConfig, slot: number, row: number): number {
  return l.combineRecv.offset + slot * l.combineRecv.slotBytes + row * cfg.combineRowBytes;
}

/** Byte offset of the carrier index (i32) of row `row` of block [slot][src] (dedup only). */
export function recvCarrierOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
): number {
  return sourceRowOffset(l.recvCarrier, cfg, slot, src, row, 4);
}

/**
 * Byte offset of the token record at row `row` of block [slot][src] (dedup only; written at carrier
 * rows). Inside it: back at +0, rows[j] at +4 + 4j, w[j] at +4 + 4k + 4j.
 */
export function recvRecordOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
): number {
  return sourceRowOffset(l.recvRecords, cfg, slot, src, row, recordBytes(cfg));
}

/**
 * The cuda transport's heap. Its direct dispatch stores every row straight into its final place in the
 * owner's expertX, which therefore lives in the heap (one copy: the count exchange of the next call
 * orders a rank's reads of it before any peer writes it again). Instead of receive buffers there is
 * an all-gather of per-expert counts, from which every rank computes where each of its rows goes.
 * A group that stages (W > 1, small batches: the cpu transport's protocol, no count exchange) also has
 * the stage: per source, its rows for this rank and their split record, [2] slots like the cpu's
 * receive slots.
 */
export interface DirectHeapLayout {
  /** u64 [2][W]: countSignal[slot][src] == call_count once src's counts have landed. */
  readonly countSignal: Region;
  /** u64 [2][W]: dispatchSignal[slot][src] == call_count once src's rows have landed in expertX. */
  readonly dispatchSignal: Region;
  /** u64 [2][W]: combineSignal[slot][src] == call_count once src's combine rows have landed. */
  readonly combineSignal: Region;
  /** i32 [2][W][E]: counts[slot][src][e] = pairs src sends to expert e this call. */
  readonly counts: Region;
  /** bf16 [2][maxTokensPerRank * k][H]: expert outputs returned to me, in my expert-sorted row order. */
  readonly combineRecv: Region;
  /** u8 [EPR][expertCapacity][dispatchRowBytes]: the dispatch output (slotBytes = bytes: one copy). */
  readonly expertX: Region;
  /** f32 [EPR][expertCapacity][H/G]: its scales (FP8 only; zero bytes otherwise). */
  readonly expertScales: Region;
  /** u64 [W]: barrierSignal[src] = the count of src's latest device barrier (one copy). */
  readonly barrierSignal: Region;
  /** i32 [2][W][EPR + 1]: from src, its rows per local expert, then its m_st (staged groups; else empty). */
  readonly stageSplits: Region;
  /** u8 [2][W][stageRows][dispatchRowBytes]: the rows src staged for me, expert-sorted. */
  readonly stageData: Region;
  /** f32 [2][W][stageRows][H/G]: their scales (FP8 only). */
  readonly stageScales: Region;
  /** dedup: i32 [2][W][stageRows]: the carrier row (the one holding the data) of each staged row. */
  readonly stageCarrier: Region;
  /** dedup: [2][W][stageRows][recordBytes]: per carrier row, its token's record (recordBytes). */
  readonly stageRecords: Region;
  /** Rows per source in the stage: 0 for a group that does not stage. */
  readonly stageRows: number;
  /** Total bytes of one rank's heap. */
  readonly totalBytes: number;
  /** Rows of the combine receive buffer per slot (maxTokensPerRank * k). */
  readonly combineRows: number;
}

/**
 * `stageRows`: rows per source in the stage, 0 for a group that does not stage (stagedRowsFor gives
 * the rows a staged group needs).
 */
export function computeDirectLayout(cfg: EpConfig, stageRows = 0): DirectHeapLayout {
  const heap = new RegionCursor();
  const W = cfg.world;
  const rows = cfg.expertsPerRank * cfg.expertCapacity;
  const combineRows = cfg.maxTokensPerRank * cfg.topk;
  const staged = stageRows > 0;
  const dedup = staged && cfg.dedup === true; // (de-duplication rides on the stage)
  const out = {
    countSignal: heap.region(W * 8),
    dispatchSignal: heap.region(W * 8),
    combineSignal: heap.region(W * 8),
    counts: heap.region(W * cfg.numExperts * 4),
    combineRecv: heap.region(combineRows * cfg.combineRowBytes),
    expertX: heap.region(rows * cfg.dispatchRowBytes, 1),
    expertScales: heap.region(cfg.fp8 ? rows * cfg.groupsPerRow * 4 : 0, 1),
    barrierSignal: heap.region(W * 8, 1),
    stageSplits: heap.region(staged ? W * (cfg.expertsPerRank + 1) * 4 : 0),
    stageData: heap.region(W * stageRows * cfg.dispatchRowBytes),
    stageScales: heap.region(cfg.fp8 ? W * stageRows * cfg.groupsPerRow * 4 : 0),
    stageCarrier: heap.region(dedup ? W * stageRows * 4 : 0),
    stageRecords: heap.region(dedup ? W * stageRows * recordBytes(cfg) : 0),
  };
  checkHeapSize(heap.end);
  return { ...out, stageRows, totalBytes: heap.end, combineRows };
}

/**
 * Bytes of one dedup record (see the README's protocol): the origin's combine row (i32), then per slot
 * the row in the source's order for this owner (i32, -1 for none) and the router weight (f32), padded
 * to 16 bytes.
 */
export function recordBytes(cfg: EpConfig): number {
  return alignUp(4 * (1 + 2 * cfg.topk), 16);
}

/**
 * Rows per source a staged group's stage holds: what one source may send one rank in a call,
 * min(maxRowsPerPeer, maxTokensPerRank * topk).
 */
export function stagedRowsFor(cfg: EpConfig): number {
  return Math.min(cfg.maxRowsPerPeer, cfg.maxTokensPerRank * cfg.topk);
}

/** Lays regions out one after another from offset 0, every slot a multiple of ALIGN. */
class RegionCursor {
  end = 0;
  region(slotBytes: number, slots: 1 | 2 = 2): Region {
    const slot = alignUp(slotBytes);
    const r = { offset: this.end, slotBytes: slot, bytes: slots * slot };
    this.end += r.bytes;
    return r;
  }
}

function checkHeapSize(bytes: number): void {
  if (!Number.isSafeInteger(bytes)) {
    throw new ConfigError('the symmetric heap would be larger than 2^53 bytes; reduce the sizes', {
      fields: 'maxRowsPerPeer,maxRowsPerExpert,hidden,world',
    });
  }
}

/** All regions of a cuda heap in heap order, for bounds and overlap checks. */
export function directRegionsOf(l: DirectHeapLayout): Array<[string, Region]> {
  return [
    ['countSignal', l.countSignal],
    ['dispatchSignal', l.dispatchSignal],
    ['combineSignal', l.combineSignal],
    ['counts', l.counts],
    ['combineRecv', l.combineRecv],
    ['expertX', l.expertX],
    ['expertScales', l.expertScales],
    ['barrierSignal', l.barrierSignal],
    ['stageSplits', l.stageSplits],
    ['stageData', l.stageData],
    ['stageScales', l.stageScales],
    ['stageCarrier', l.stageCarrier],
    ['stageRecords', l.stageRecords],
  ];
}

/** All regions in heap order, for bounds and overlap checks. */
export function regionsOf(l: HeapLayout): Array<[string, Region]> {
  return [
    ['dispatchSignal', l.dispatchSignal],
    ['combineSignal', l.combineSignal],
    ['recvSplits', l.recvSplits],
    ['recvData', l.recvData],
    ['recvScales', l.recvScales],
    ['combineRecv', l.combineRecv],
    ['recvCarrier', l.recvCarrier],
    ['recvRecords', l.recvRecords],
  ];
}
