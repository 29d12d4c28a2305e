import { ConfigError } from '../errors.js';
import type { EpConfig } from './config.js';

/**
 * The symmetric heap, one layout for both transports: one allocation per rank, the same layout on every
 * rank, so a peer's region is its base plus the same offset. Every offset and size here is derived from
 * the config (and the rows per source of the stage), in bytes, aligned to ALIGN so that 16-byte vector
 * copies (and 128-byte lines) never straddle regions. Nobody else computes an offset.
 *
 * Two-slot regions are indexed [slot][...] with slot = call_count % 2: a call writes its own slot, so it
 * never overwrites what a peer may still read from the call before.
 *
 * The staged protocol (the cpu transport, and the cuda transport's staged path and dedup) uses the stage:
 * per source, its rows for this rank (expert-sorted), their scales and split record, and with dedup the
 * carrier index of every row and a record per carrier row. The outputs expertX and expertScales live in
 * the heap (one copy) because the cuda transport's direct path stores rows straight into the owner's
 * expertX; that path also all-gathers per-expert counts (countSignal, counts), which a staged group
 * leaves unused.
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

export function alignUp(n: number, a = ALIGN): number {
  return Math.ceil(n / a) * a;
}

export interface HeapLayout {
  /** u64 [2][W]: countSignal[slot][src] == call_count once src's counts have landed (direct path). */
  readonly countSignal: Region;
  /** u64 [2][W]: dispatchSignal[slot][src] == call_count once src's rows (and split record) have landed. */
  readonly dispatchSignal: Region;
  /** u64 [2][W]: combineSignal[slot][src] == call_count once src's combine rows have landed. */
  readonly combineSignal: Region;
  /** i32 [2][W][E]: counts[slot][src][e] = pairs src sends to expert e this call (direct path). */
  readonly counts: Region;
  /**
   * bf16 [2][maxTokensPerRank * k][H]: expert outputs returned to me, in my expert-sorted row order;
   * with dedup, each owner's partial for token t at row t * k + j0 (j0: t's first slot on that owner).
   */
  readonly combineRecv: Region;
  /** u8 [expertRows][dispatchRowBytes]: the dispatch output (slotBytes = bytes: one copy; src/ep/expert-layout.ts). */
  readonly expertX: Region;
  /** f32 [expertRows][H/G]: its scales (FP8 only; zero bytes otherwise). */
  readonly expertScales: Region;
  /** u64 [W]: barrierSignal[src] = the count of src's latest device barrier (one copy). */
  readonly barrierSignal: Region;
  /** i32 [2][W][EPR + 1]: from src, its rows per local expert, then its m_st (staged; else empty). */
  readonly stageSplits: Region;
  /** u8 [2][W][stageRows][dispatchRowBytes]: the rows src staged for me, expert-sorted. */
  readonly stageData: Region;
  /** f32 [2][W][stageRows][H/G]: their scales (FP8 only). */
  readonly stageScales: Region;
  /**
   * dedup only (zero bytes otherwise): i32 [2][W][stageRows]: for each row src staged for me, the row
   * of the same token that carries its data (the token's first row for this rank).
   */
  readonly stageCarrier: Region;
  /**
   * dedup only (zero bytes otherwise): [2][W][stageRows][recordBytes]: at each carrier row, the token's
   * record: i32 back (= t * k + j0, where my partial goes), i32 rows[k] (row of each slot on me, or
   * -1), f32 w[k] (its weight, or 0).
   */
  readonly stageRecords: Region;
  /**
   * dedup only, W > 1 (zero bytes otherwise): u32 [2][min(maxTokensPerRank, flaggedMaxTokens(W)) * k][H]:
   * flagged partials (the cuda transport on one host, small batches; README, "Flagged partials"): at row
   * t * k + j0, as in combineRecv, each 4 bytes of the partial followed by the call's flag. (Allocated on
   * every transport and host count alike, so that the heaps of one config lay out the same; only the cuda
   * transport on one host uses it.)
   */
  readonly flaggedRecv: Region;
  /**
   * Between hosts (config.nodes > 1; zero bytes otherwise): u8 [2][nodes][railMessageBytes]: the dispatch
   * message from this rank's rail peer on each other host (railMessageLayout).
   */
  readonly railInbox: Region;
  /** u64 [2][nodes]: railInboxSignal[slot][host] == call_count once that host's message has landed. */
  readonly railInboxSignal: Region;
  /**
   * bf16 [2][nodes][maxTokensPerRank * k][H]: combine rows (or dedup partials) this host's owners return
   * to the rail peer on each other host, at that peer's combineRecv rows, for this rank to send on.
   */
  readonly railOutbox: Region;
  /** u64 [2][nodes][ranksPerNode]: [slot][host][local owner] == call_count once that owner's rows are in. */
  readonly railOutboxSignal: Region;
  /** Rows per source in the stage: 0 for a group that does not stage. */
  readonly stageRows: number;
  /** Elements per split record (EPR + 1). */
  readonly splitsPerPeer: number;
  /** Total bytes of one rank's heap. */
  readonly totalBytes: number;
  /** Rows of the combine receive buffer per slot (maxTokensPerRank * k). */
  readonly combineRows: number;
}

/**
 * The largest batch whose dedup partials may come back flagged (the cuda transport with one host; README,
 * "Flagged partials"): each 4 bytes of a partial travel with a 4-byte call flag, in flaggedRecv. Past it
 * the bytes cost more than the fence and the signal they save.
 */
export const FLAGGED_MAX_TOKENS = 32;

/**
 * The most partial rows a rank may get back flagged in one call, T * (W - 1) (each other rank may return one
 * per token): the doubled bytes come in from every owner at once, so the batch that still gains shrinks as
 * the group grows (4 x H200: at W = 4, T = 16 gains 1.1 us and T = 32 loses 5.8; bench/NOTES.md v24).
 */
export const FLAGGED_MAX_ROWS_IN = 48;

/** The largest batch of a group of `world` ranks whose partials come back flagged: 0 for one rank. */
export function flaggedMaxTokens(world: number): number {
  return world > 1 ? Math.min(FLAGGED_MAX_TOKENS, Math.floor(FLAGGED_MAX_ROWS_IN / (world - 1))) : 0;
}

/**
 * `stageRows`: rows per source in the stage, 0 for a group that does not stage (stagedRowsFor gives
 * the rows a staged group needs).
 */
export function computeLayout(cfg: EpConfig, stageRows: number): HeapLayout {
  const heap = new RegionCursor();
  const W = cfg.world;
  const rows = cfg.expertRows;
  const combineRows = cfg.maxTokensPerRank * cfg.topk;
  const splitsPerPeer = cfg.expertsPerRank + 1;
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
    stageSplits: heap.region(staged ? W * splitsPerPeer * 4 : 0),
    stageData: heap.region(W * stageRows * cfg.dispatchRowBytes),
    stageScales: heap.region(cfg.fp8 ? W * stageRows * cfg.groupsPerRow * 4 : 0),
    stageCarrier: heap.region(dedup ? W * stageRows * 4 : 0),
    stageRecords: heap.region(dedup ? W * stageRows * recordBytes(cfg) : 0),
    flaggedRecv: heap.region(
      dedup ? Math.min(cfg.maxTokensPerRank, flaggedMaxTokens(W)) * cfg.topk * 2 * cfg.combineRowBytes : 0,
    ),
    ...railRegions(heap, cfg, staged && cfg.nodes > 1 ? stageRows : 0, combineRows),
  };
  checkHeapSize(heap.end);
  return { ...out, stageRows, splitsPerPeer, totalBytes: heap.end, combineRows };
}

/** Byte offset of signal word [slot][src] in a signal region. */
export function signalOffset(r: Region, slot: number, src: number): number {
  return r.offset + slot * r.slotBytes + src * 8;
}

/** Byte offset of the split record [slot][src] in the stage (EPR counts then m_st, i32). */
export function splitsOffset(l: HeapLayout, slot: number, src: number): number {
  return l.stageSplits.offset + slot * l.stageSplits.slotBytes + src * l.splitsPerPeer * 4;
}

/**
 * Byte offset of entry `row` of block [slot][src] in a stage region laid out [2][W][stageRows] entries
 * of `entryBytes` each: the staged rows, their scales, carriers and records.
 */
function stageEntryOffset(
  r: Region,
  l: HeapLayout,
  slot: number,
  src: number,
  row: number,
  entryBytes: number,
) {
  return r.offset + slot * r.slotBytes + (src * l.stageRows + row) * entryBytes;
}

/** Byte offset of row `row` of block [slot][src] in the stage. */
export function stageRowOffset(l: HeapLayout, cfg: EpConfig, slot: number, src: number, row: number): number {
  return stageEntryOffset(l.stageData, l, slot, src, row, cfg.dispatchRowBytes);
}

/** Byte offset of the scales of row `row` of block [slot][src] (FP8 only). */
export function stageScaleOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
): number {
  return stageEntryOffset(l.stageScales, l, slot, src, row, cfg.groupsPerRow * 4);
}

/** Byte offset of the carrier index (i32) of row `row` of block [slot][src] (dedup only). */
export function stageCarrierOffset(l: HeapLayout, slot: number, src: number, row: number): number {
  return stageEntryOffset(l.stageCarrier, l, slot, src, row, 4);
}

/**
 * Byte offset of the token record at row `row` of block [slot][src] (dedup only; written at carrier
 * rows). Inside it: back at +0, rows[j] at +4 + 4j, w[j] at +4 + 4k + 4j.
 */
export function stageRecordOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  src: number,
  row: number,
): number {
  return stageEntryOffset(l.stageRecords, l, slot, src, row, recordBytes(cfg));
}

/** Byte offset of row `row` (my expert-sorted order) in the combine receive buffer. */
export function combineRowOffset(l: HeapLayout, cfg: EpConfig, slot: number, row: number): number {
  return l.combineRecv.offset + slot * l.combineRecv.slotBytes + row * cfg.combineRowBytes;
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

/**
 * One dispatch message between hosts (README, "Between hosts"), from a source to its rail peer on host h,
 * for the ranksPerNode owners there (local order): per owner its split record; then every token going to
 * host h once, with its books (`tokenBytes` each): its token in the source (i32), the mask of its carrier
 * slots on host h (u32: bit j for each owner's first slot), and per slot j the owner there (local index,
 * i32, -1 for none) and the row of the source's stage for it that the slot fills (i32), with dedup then
 * per slot its router weight (f32); then the tokens' rows and scales. Byte offsets, each part 16-byte
 * aligned; `bytes` is the fixed size every message takes.
 */
export interface RailMessageLayout {
  readonly splits: number;
  readonly tokens: number;
  readonly tokenBytes: number;
  readonly rows: number;
  readonly scales: number;
  readonly bytes: number;
}

export function railMessageLayout(cfg: EpConfig): RailMessageLayout {
  const G = cfg.ranksPerNode;
  let at = 16; // u32 tokens in the message, u32 pad, u64 the call (call | abort bit: the network engine's)
  const part = (bytes: number) => {
    const start = at;
    at = alignUp(at + bytes, 16);
    return start;
  };
  const tokenBytes = alignUp(8 + cfg.topk * (cfg.dedup ? 12 : 8), 16);
  const splits = part(G * (cfg.expertsPerRank + 1) * 4);
  const tokens = part(cfg.maxTokensPerRank * tokenBytes);
  const rows = part(cfg.maxTokensPerRank * cfg.dispatchRowBytes);
  const scales = part(cfg.fp8 ? cfg.maxTokensPerRank * cfg.groupsPerRow * 4 : 0);
  return { splits, tokens, tokenBytes, rows, scales, bytes: at };
}

/**
 * One combine message between hosts, from a rail peer back to a source on another host (the network
 * engine; on the cpu transport the rows go straight into the source's combine buffer): the call it answers
 * (u64, call | abort bit), per owner of the rail peer's host (local order) the signal its rows came with
 * (u64), how many positions the message holds (i32), then per position the source's combine row it goes
 * to (i32, -1 for none) and the row. Without dedup the positions are the owners' rows, owner by owner:
 * `cap` = min(maxTokensPerRank * topk, G * stageRows), what one source can send to one host. With dedup
 * they are the message's tokens, each the host's pre-reduced partial (README, "Between hosts"): `cap` =
 * maxTokensPerRank.
 */
export interface RailCombineLayout {
  readonly status: number;
  readonly count: number;
  readonly index: number;
  readonly rows: number;
  readonly cap: number;
  readonly bytes: number;
}

export function railCombineLayout(cfg: EpConfig, stageRows: number): RailCombineLayout {
  const G = cfg.ranksPerNode;
  const cap = cfg.dedup ? cfg.maxTokensPerRank : Math.min(cfg.maxTokensPerRank * cfg.topk, G * stageRows);
  let at = 16; // u64 call, padded
  const part = (bytes: number) => {
    const start = at;
    at = alignUp(at + bytes, 16);
    return start;
  };
  const status = part(G * 8);
  const count = part(4);
  const index = part(cap * 4);
  const rows = part(cap * cfg.combineRowBytes);
  return { status, count, index, rows, cap, bytes: at };
}

/** The regions between hosts: zero bytes unless `stageRows` > 0 (a staged group over several hosts). */
function railRegions(heap: RegionCursor, cfg: EpConfig, stageRows: number, combineRows: number) {
  const on = stageRows > 0;
  const N = cfg.nodes;
  return {
    railInbox: heap.region(on ? N * railMessageLayout(cfg).bytes : 0),
    railInboxSignal: heap.region(on ? N * 8 : 0),
    railOutbox: heap.region(on ? N * combineRows * cfg.combineRowBytes : 0),
    railOutboxSignal: heap.region(on ? N * cfg.ranksPerNode * 8 : 0),
  };
}

/** Byte offset of the message from host `host` in railInbox slot `slot`. */
export function railInboxOffset(l: HeapLayout, cfg: EpConfig, slot: number, host: number): number {
  return l.railInbox.offset + slot * l.railInbox.slotBytes + host * railMessageLayout(cfg).bytes;
}

/** Byte offset of row `row` of the outbox for host `host`'s rail peer, slot `slot`. */
export function railOutboxRowOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  host: number,
  row: number,
): number {
  return (
    l.railOutbox.offset + slot * l.railOutbox.slotBytes + (host * l.combineRows + row) * cfg.combineRowBytes
  );
}

/** Byte offset of railOutboxSignal[slot][host][local owner]. */
export function railOutboxSignalOffset(
  l: HeapLayout,
  cfg: EpConfig,
  slot: number,
  host: number,
  local: number,
): number {
  return (
    l.railOutboxSignal.offset + slot * l.railOutboxSignal.slotBytes + (host * cfg.ranksPerNode + local) * 8
  );
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

/** All regions of a heap in heap order, for bounds and overlap checks. */
export function regionsOf(l: HeapLayout): Array<[string, Region]> {
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
    ['flaggedRecv', l.flaggedRecv],
    ['railInbox', l.railInbox],
    ['railInboxSignal', l.railInboxSignal],
    ['railOutbox', l.railOutbox],
    ['railOutboxSignal', l.railOutboxSignal],
  ];
}
