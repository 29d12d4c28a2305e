/**
 * The TypeScript mirror of kernels/ep_args.h: the byte layout of EpArgs (the one by-value argument of
 * every kernel), EpError and EpState, the error codes, and a writer that packs EpArgs into one
 * reused buffer. test/kernel-args.test.ts compiles the header on the host and checks every size,
 * offset and type here against it, and every constant against the header's #defines.
 *
 * All values are little-endian. Device pointers and 64-bit sizes are `bigint`; 32-bit fields `number`.
 */

/** A field's C type: fixed-width integers, a fixed array of them, or a nested struct. */
export type CType = 'i32' | 'u32' | 'i64' | 'u64' | 'u32[4]' | 'u32[2]' | 'EpError';

export interface FieldSpec {
  readonly name: string;
  /** Byte offset from the start of the struct. */
  readonly offset: number;
  readonly type: CType;
  /** Bytes the field occupies. */
  readonly bytes: number;
}

import { CudaError } from '../../errors.js';

const TYPE_BYTES: Record<Exclude<CType, 'EpError'>, { size: number; align: number }> = {
  i32: { size: 4, align: 4 },
  u32: { size: 4, align: 4 },
  i64: { size: 8, align: 8 },
  u64: { size: 8, align: 8 },
  'u32[4]': { size: 16, align: 4 },
  'u32[2]': { size: 8, align: 4 },
};

/** Lays fields out in order with C's natural alignment (every type here is its own alignment). */
function layout(
  fields: ReadonlyArray<readonly [string, CType]>,
  nested: Record<string, { size: number; align: number }> = {},
): { fields: readonly FieldSpec[]; bytes: number } {
  let offset = 0;
  let maxAlign = 1;
  const out: FieldSpec[] = [];
  for (const [name, type] of fields) {
    const t = type in TYPE_BYTES ? TYPE_BYTES[type as keyof typeof TYPE_BYTES] : nested[type];
    offset = Math.ceil(offset / t.align) * t.align;
    out.push(Object.freeze({ name, offset, type, bytes: t.size }));
    offset += t.size;
    maxAlign = Math.max(maxAlign, t.align);
  }
  return { fields: Object.freeze(out), bytes: Math.ceil(offset / maxAlign) * maxAlign };
}

const epError = layout([
  ['code', 'u32'],
  ['peer', 'u32'],
  ['slot', 'u32'],
  ['aux', 'u32'],
  ['callCount', 'u64'],
  ['a', 'i64'],
  ['b', 'i64'],
]);
/** struct EpError: the first error of a call (device copy in EpState, mirrored to errHost). */
export const EP_ERROR_FIELDS: readonly FieldSpec[] = epError.fields;
export const EP_ERROR_BYTES: number = epError.bytes; // 40

const epState = layout(
  [
    ['dispatchCalls', 'u64'],
    ['doneBlocks', 'u32[4]'],
    ['barrierCalls', 'u64'],
    ['ownAbort', 'u32'],
    ['ownLate', 'u32'],
    ['err', 'EpError'],
  ],
  { EpError: { size: EP_ERROR_BYTES, align: 8 } },
);
/** struct EpState: per-group device state (zero it at creation). */
export const EP_STATE_FIELDS: readonly FieldSpec[] = epState.fields;
export const EP_STATE_BYTES: number = epState.bytes; // 80

const EP_ARGS_SPEC = [
  ['rank', 'i32'],
  ['world', 'i32'],
  ['numExperts', 'i32'],
  ['expertsPerRank', 'i32'],
  ['hidden', 'i32'],
  ['topk', 'i32'],
  ['numTokens', 'i32'],
  ['maxRowsPerPeer', 'i32'],
  ['expertCapacity', 'i32'],
  ['groupSize', 'i32'],
  ['groupsPerRow', 'i32'],
  ['fp8', 'i32'],
  ['splitsPerPeer', 'i32'],
  // the kernels read this word as hostAbort: non-zero makes ep_route / ep_combine_send abort the call
  ['hostAbort', 'i32'],
  ['timeoutNs', 'i64'],
  ['countSignalOff', 'u64'],
  ['countSignalSlot', 'u64'],
  ['dispatchSignalOff', 'u64'],
  ['dispatchSignalSlot', 'u64'],
  ['combineSignalOff', 'u64'],
  ['combineSignalSlot', 'u64'],
  ['countsOff', 'u64'],
  ['countsSlot', 'u64'],
  ['combineRecvOff', 'u64'],
  ['combineRecvSlot', 'u64'],
  ['expertXOff', 'u64'],
  ['expertScalesOff', 'u64'],
  ['dispatchRowBytes', 'u64'],
  ['combineRowBytes', 'u64'],
  ['peerBases', 'u64'],
  ['x', 'u64'],
  ['topkIdx', 'u64'],
  ['topkWeights', 'u64'],
  ['expertOut', 'u64'],
  ['expertCounts', 'u64'],
  ['y', 'u64'],
  ['viewX', 'u64'],
  ['viewScales', 'u64'],
  ['pairRow', 'u64'],
  ['pairDest', 'u64'],
  ['recvSplits', 'u64'],
  ['state', 'u64'],
  ['errHost', 'u64'],
  ['stageSplitsOff', 'u64'],
  ['stageSplitsSlot', 'u64'],
  ['stageDataOff', 'u64'],
  ['stageDataSlot', 'u64'],
  ['stageScalesOff', 'u64'],
  ['stageScalesSlot', 'u64'],
  ['barrierSignalOff', 'u64'],
  ['selfPairs', 'u64'],
  ['stamps', 'u64'],
  ['stageRows', 'i32'],
  ['dedup', 'i32'],
  ['stageCarrierOff', 'u64'],
  ['stageCarrierSlot', 'u64'],
  ['stageRecordsOff', 'u64'],
  ['stageRecordsSlot', 'u64'],
  ['recordBytes', 'i32'],
  ['packedExperts', 'i32'],
  ['carrierPlans', 'u64'],
  ['expertOffsets', 'u64'],
  ['localBase', 'u64'],
  ['nodes', 'i32'],
  ['ranksPerNode', 'i32'],
  ['railOutboxOff', 'u64'],
  ['railOutboxSlot', 'u64'],
  ['railOutboxSignalOff', 'u64'],
  ['railOutboxSignalSlot', 'u64'],
  ['railSend', 'u64'],
  ['railRecv', 'u64'],
  ['railTokenOf', 'u64'],
  ['railCombSend', 'u64'],
  ['railCombRecv', 'u64'],
  ['railMsgBytes', 'u64'],
  ['railMsgSplits', 'u64'],
  ['railMsgTokens', 'u64'],
  ['railMsgTokenBytes', 'u64'],
  ['railMsgRows', 'u64'],
  ['railMsgScales', 'u64'],
  ['railCombBytes', 'u64'],
  ['railCombStatus', 'u64'],
  ['railCombCount', 'u64'],
  ['railCombIndex', 'u64'],
  ['railCombRows', 'u64'],
  ['railCombCap', 'i32'],
  ['maxTokensPerRank', 'i32'],
  ['railOutboxHostBytes', 'u64'],
  ['combineFlagged', 'i32'],
  ['spare', 'i32'],
  ['flaggedRecvOff', 'u64'],
  ['flaggedRecvSlot', 'u64'],
] as const;
const epArgs = layout(EP_ARGS_SPEC);

/** struct EpArgs: the single by-value argument of every kernel. */
export const EP_ARGS_FIELDS: readonly FieldSpec[] = epArgs.fields;
export const EP_ARGS_BYTES: number = epArgs.bytes; // 640

function offsets<N extends string>(fields: readonly FieldSpec[]): Readonly<Record<N, number>> {
  return Object.freeze(Object.fromEntries(fields.map((f) => [f.name, f.offset]))) as Record<N, number>;
}

/** The name of an EpArgs field. */
export type EpArgsField = (typeof EP_ARGS_SPEC)[number][0];

/** Byte offset of each EpArgs field. */
export const EP_ARGS_OFFSET: Readonly<Record<EpArgsField, number>> = offsets<EpArgsField>(EP_ARGS_FIELDS);
/** Byte offset of each EpError field. */
export const EP_ERROR_OFFSET = offsets<'code' | 'peer' | 'slot' | 'aux' | 'callCount' | 'a' | 'b'>(
  EP_ERROR_FIELDS,
);
/** Byte offset of each EpState field (err is an EpError at EP_STATE_OFFSET.err). */
export const EP_STATE_OFFSET = offsets<
  'dispatchCalls' | 'doneBlocks' | 'barrierCalls' | 'ownAbort' | 'ownLate' | 'err'
>(EP_STATE_FIELDS);

// ---------------------------------------------------------------------------------------------
// Error codes (kernels/ep_args.h) and the kernels' own constants (kernels/ep_limits.cuh)
// ---------------------------------------------------------------------------------------------

export const EP_ERR_NONE = 0;
/** peer, slot, callCount: a dispatch (count or row) signal did not arrive in time (a = the last value seen). */
export const EP_ERR_TIMEOUT_DISPATCH = 1;
/** peer, slot, callCount: a combine signal did not arrive in time (a = the last value seen). */
export const EP_ERR_TIMEOUT_COMBINE = 2;
/**
 * Capacity. aux = EP_CAPACITY_AUX_SEND: a = destination rank, b = rows it would get (limit maxRowsPerPeer).
 * aux = EP_CAPACITY_AUX_EXPERT: a = global expert id, b = rows it received (limit maxRowsPerExpert).
 */
export const EP_ERR_CAPACITY = 3;
/** a = token, b = slot, aux = the bad id (as uint32). */
export const EP_ERR_EXPERT_ID = 4;
/** a = token, b = slot, aux = the expert named twice. */
export const EP_ERR_DUPLICATE = 5;
/** peer: that rank aborted this dispatch. */
export const EP_ERR_PEER_ABORT_DISPATCH = 6;
/** peer: that rank aborted this combine. */
export const EP_ERR_PEER_ABORT_COMBINE = 7;
/** peer, callCount (the barrier's count): ep_barrier did not see that rank in time (a = the last value seen). */
export const EP_ERR_TIMEOUT_BARRIER = 8;
/** A signal word holds the call count; an aborting rank writes callCount | EP_ABORT_BIT. */
export const EP_ABORT_BIT = 1n << 63n;

/**
 * Where the kernels write %globaltimer stamps (ns) into EpArgs.stamps[] (benchmarks only): see
 * EP_STAMP_* in kernels/ep_args.h. "Begin" stamps are block 0's, "end" stamps the latest block's.
 */
export const EP_STAMP = Object.freeze({
  DISPATCH_BEGIN: 0,
  COUNTS_SENT: 1,
  COUNTS_ARRIVED: 2,
  ROUTE_END: 3,
  ROWS_BEGIN: 4,
  DISPATCH_TAIL: 5,
  DISPATCH_ARRIVED: 6,
  PACK_BEGIN: 7,
  PACK_END: 8,
  COMBINE_BEGIN: 9,
  COMBINE_TAIL: 10,
  COMBINE_ARRIVED: 11,
  REDUCE_BEGIN: 12,
  REDUCE_END: 13,
  BARRIER_END: 14,
});
export type StampName = keyof typeof EP_STAMP;
/** Slots in the stamps array. */
export const EP_STAMPS = 16;

/** EpError.aux of EP_ERR_CAPACITY raised by ep_route (send side, per destination rank). */
export const EP_CAPACITY_AUX_SEND = 0;
/** EpError.aux of EP_ERR_CAPACITY for this rank's own expert over capacity (receive side, found by ep_route). */
export const EP_CAPACITY_AUX_EXPERT = 1;

/** Kernel limits (kernels/ep_limits.cuh): numExperts, topk, maxTokensPerRank * topk, route block size. */
export const EP_MAX_EXPERTS = 1024;
export const EP_MAX_TOPK = 64;
export const EP_MAX_PAIRS = 32768;
export const EP_ROUTE_THREADS = 1024;
/** Largest T * topk that ep_dispatch_local routes inside each block (one rank only). */
export const EP_LOCAL_MAX_PAIRS = 2048;
/** Largest T * topk whose ids ep_stage_send keeps in shared memory; past it, ep_stage_send_large. */
export const EP_STAGE_SMEM_PAIRS = 4096;
/** Largest block the other kernels accept (__launch_bounds__). */
export const EP_MAX_THREADS = 512;

/** Dynamic shared memory of ep_route in bytes: 4 * ((block / 32) * E + E + 1) + 2 * pairs. */
export function routeSharedBytes(numExperts: number, maxPairs: number, block = EP_ROUTE_THREADS): number {
  return 4 * ((block / 32) * numExperts + numExperts + 1) + 2 * maxPairs;
}

// ---------------------------------------------------------------------------------------------
// Writer and reader
// ---------------------------------------------------------------------------------------------

type I32Field = Extract<(typeof EP_ARGS_SPEC)[number], readonly [string, 'i32']>[0];
const EP_ARGS_TYPE = Object.fromEntries(EP_ARGS_SPEC) as Record<EpArgsField, CType>;

/** Typed-array stores use the machine's byte order; EpArgs is little-endian (as every CUDA host). */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Owns one Buffer of EP_ARGS_BYTES holding an EpArgs, reused for every launch: the setters write
 * in place at fixed offsets and allocate nothing (pass bigints for 64-bit fields on hot paths; a
 * number is converted, which is fine at setup). The driver copies the bytes at each launch, so the
 * buffer may be changed between launches. Stores go through typed-array views of the same memory
 * (every field is aligned to its size): a few nanoseconds each, against hundreds for Buffer's
 * writeBigUInt64LE.
 */
export class EpArgsWriter {
  /** In an explicitly allocated ArrayBuffer: its address never moves (launches pass it by address). */
  readonly bytes: Buffer = Buffer.from(new ArrayBuffer(EP_ARGS_BYTES));
  private readonly i32v = new Int32Array(this.bytes.buffer);
  private readonly i64v = new BigInt64Array(this.bytes.buffer);
  private readonly u64v = new BigUint64Array(this.bytes.buffer);

  constructor() {
    if (!LITTLE_ENDIAN) throw new CudaError('EpArgs is laid out for a little-endian host');
  }

  /** Sets any field by name: 32-bit fields take a number, 64-bit fields a bigint or a safe integer. */
  set(field: EpArgsField, value: number | bigint): this {
    const off = EP_ARGS_OFFSET[field];
    const type = EP_ARGS_TYPE[field];
    if (type === 'i32') this.i32v[off >> 2] = Number(value);
    else if (type === 'i64') this.i64v[off >> 3] = BigInt(value);
    else this.u64v[off >> 3] = BigInt(value);
    return this;
  }

  /** Reads a field back (tests, debugging). */
  get(field: EpArgsField): number | bigint {
    const off = EP_ARGS_OFFSET[field];
    const type = EP_ARGS_TYPE[field];
    if (type === 'i32') return this.bytes.readInt32LE(off);
    if (type === 'i64') return this.bytes.readBigInt64LE(off);
    return this.bytes.readBigUInt64LE(off);
  }

  private i32(field: I32Field, v: number): void {
    this.i32v[EP_ARGS_OFFSET[field] >> 2] = v;
  }
  private u64(field: EpArgsField, v: bigint | number): void {
    this.u64v[EP_ARGS_OFFSET[field] >> 3] = typeof v === 'bigint' ? v : BigInt(v);
  }

  // sizes
  set rank(v: number) {
    this.i32('rank', v);
  }
  set world(v: number) {
    this.i32('world', v);
  }
  set numExperts(v: number) {
    this.i32('numExperts', v);
  }
  set expertsPerRank(v: number) {
    this.i32('expertsPerRank', v);
  }
  set hidden(v: number) {
    this.i32('hidden', v);
  }
  set topk(v: number) {
    this.i32('topk', v);
  }
  set numTokens(v: number) {
    this.i32('numTokens', v);
  }
  set maxRowsPerPeer(v: number) {
    this.i32('maxRowsPerPeer', v);
  }
  set expertCapacity(v: number) {
    this.i32('expertCapacity', v);
  }
  set groupSize(v: number) {
    this.i32('groupSize', v);
  }
  set groupsPerRow(v: number) {
    this.i32('groupsPerRow', v);
  }
  set fp8(v: number) {
    this.i32('fp8', v);
  }
  set splitsPerPeer(v: number) {
    this.i32('splitsPerPeer', v);
  }
  set hostAbort(v: number) {
    this.i32('hostAbort', v);
  }
  /** Nanoseconds a wait may take before EP_ERR_TIMEOUT_* (> 0). */
  set timeoutNs(v: bigint | number) {
    this.i64v[EP_ARGS_OFFSET.timeoutNs >> 3] = typeof v === 'bigint' ? v : BigInt(v);
  }
  // heap layout (bytes from a heap base)
  set countSignalOff(v: bigint | number) {
    this.u64('countSignalOff', v);
  }
  set countSignalSlot(v: bigint | number) {
    this.u64('countSignalSlot', v);
  }
  set dispatchSignalOff(v: bigint | number) {
    this.u64('dispatchSignalOff', v);
  }
  set dispatchSignalSlot(v: bigint | number) {
    this.u64('dispatchSignalSlot', v);
  }
  set combineSignalOff(v: bigint | number) {
    this.u64('combineSignalOff', v);
  }
  set combineSignalSlot(v: bigint | number) {
    this.u64('combineSignalSlot', v);
  }
  set countsOff(v: bigint | number) {
    this.u64('countsOff', v);
  }
  set countsSlot(v: bigint | number) {
    this.u64('countsSlot', v);
  }
  set combineRecvOff(v: bigint | number) {
    this.u64('combineRecvOff', v);
  }
  set combineRecvSlot(v: bigint | number) {
    this.u64('combineRecvSlot', v);
  }
  set expertXOff(v: bigint | number) {
    this.u64('expertXOff', v);
  }
  set expertScalesOff(v: bigint | number) {
    this.u64('expertScalesOff', v);
  }
  // bytes per row, then device pointers
  set dispatchRowBytes(v: bigint | number) {
    this.u64('dispatchRowBytes', v);
  }
  set combineRowBytes(v: bigint | number) {
    this.u64('combineRowBytes', v);
  }
  set peerBases(v: bigint) {
    this.u64('peerBases', v);
  }
  set x(v: bigint) {
    this.u64('x', v);
  }
  set topkIdx(v: bigint) {
    this.u64('topkIdx', v);
  }
  set topkWeights(v: bigint) {
    this.u64('topkWeights', v);
  }
  set expertOut(v: bigint) {
    this.u64('expertOut', v);
  }
  set expertCounts(v: bigint) {
    this.u64('expertCounts', v);
  }
  set y(v: bigint) {
    this.u64('y', v);
  }
  set viewX(v: bigint) {
    this.u64('viewX', v);
  }
  set viewScales(v: bigint) {
    this.u64('viewScales', v);
  }
  set pairRow(v: bigint) {
    this.u64('pairRow', v);
  }
  set pairDest(v: bigint) {
    this.u64('pairDest', v);
  }
  set recvSplits(v: bigint) {
    this.u64('recvSplits', v);
  }
  set state(v: bigint) {
    this.u64('state', v);
  }
  set errHost(v: bigint) {
    this.u64('errHost', v);
  }
  set stageSplitsOff(v: bigint | number) {
    this.u64('stageSplitsOff', v);
  }
  set stageSplitsSlot(v: bigint | number) {
    this.u64('stageSplitsSlot', v);
  }
  set stageDataOff(v: bigint | number) {
    this.u64('stageDataOff', v);
  }
  set stageDataSlot(v: bigint | number) {
    this.u64('stageDataSlot', v);
  }
  set stageScalesOff(v: bigint | number) {
    this.u64('stageScalesOff', v);
  }
  set stageScalesSlot(v: bigint | number) {
    this.u64('stageScalesSlot', v);
  }
  set barrierSignalOff(v: bigint | number) {
    this.u64('barrierSignalOff', v);
  }
  set selfPairs(v: bigint) {
    this.u64('selfPairs', v);
  }
  /** Device pointer to EP_STAMPS u64 timestamps, or 0n (off). */
  set stamps(v: bigint) {
    this.u64('stamps', v);
  }
  set stageRows(v: number) {
    this.i32('stageRows', v);
  }
  /** 1: the de-duplicated staged protocol. */
  set dedup(v: number) {
    this.i32('dedup', v);
  }
  set stageCarrierOff(v: bigint | number) {
    this.u64('stageCarrierOff', v);
  }
  set stageCarrierSlot(v: bigint | number) {
    this.u64('stageCarrierSlot', v);
  }
  set stageRecordsOff(v: bigint | number) {
    this.u64('stageRecordsOff', v);
  }
  set stageRecordsSlot(v: bigint | number) {
    this.u64('stageRecordsSlot', v);
  }
  /** dedup: device u32 counts[W] (16-byte padded), then [W][stageRows][recordBytes] plans (ep_stage_pack -> ep_combine_send). */
  set carrierPlans(v: bigint) {
    this.u64('carrierPlans', v);
  }
  set recordBytes(v: number) {
    this.i32('recordBytes', v);
  }
  /** 1: expertX packs the experts' rows back to back (expertLayout 'packed'); 0: padded blocks. */
  set packedExperts(v: number) {
    this.i32('packedExperts', v);
  }
  /** Device i32 [EPR]: where each local expert's rows start in expertX (written with expertCounts). */
  set expertOffsets(v: bigint) {
    this.u64('expertOffsets', v);
  }
  /** This rank's heap (peerBases[rank]), so that a kernel's first loads need not wait for it. */
  set localBase(v: bigint) {
    this.u64('localBase', v);
  }
  // between hosts (kernels/ep_rail.cuh; ep_args.h says what each holds)
  set nodes(v: number) {
    this.i32('nodes', v);
  }
  set ranksPerNode(v: number) {
    this.i32('ranksPerNode', v);
  }
  set railOutboxOff(v: bigint | number) {
    this.u64('railOutboxOff', v);
  }
  set railOutboxSlot(v: bigint | number) {
    this.u64('railOutboxSlot', v);
  }
  set railOutboxSignalOff(v: bigint | number) {
    this.u64('railOutboxSignalOff', v);
  }
  set railOutboxSignalSlot(v: bigint | number) {
    this.u64('railOutboxSignalSlot', v);
  }
  set railSend(v: bigint | number) {
    this.u64('railSend', v);
  }
  set railRecv(v: bigint | number) {
    this.u64('railRecv', v);
  }
  set railTokenOf(v: bigint | number) {
    this.u64('railTokenOf', v);
  }
  set railCombSend(v: bigint | number) {
    this.u64('railCombSend', v);
  }
  set railCombRecv(v: bigint | number) {
    this.u64('railCombRecv', v);
  }
  set railMsgBytes(v: bigint | number) {
    this.u64('railMsgBytes', v);
  }
  set railMsgSplits(v: bigint | number) {
    this.u64('railMsgSplits', v);
  }
  set railMsgTokens(v: bigint | number) {
    this.u64('railMsgTokens', v);
  }
  set railMsgTokenBytes(v: bigint | number) {
    this.u64('railMsgTokenBytes', v);
  }
  set railMsgRows(v: bigint | number) {
    this.u64('railMsgRows', v);
  }
  set railMsgScales(v: bigint | number) {
    this.u64('railMsgScales', v);
  }
  set railCombBytes(v: bigint | number) {
    this.u64('railCombBytes', v);
  }
  set railCombStatus(v: bigint | number) {
    this.u64('railCombStatus', v);
  }
  set railCombCount(v: bigint | number) {
    this.u64('railCombCount', v);
  }
  set railCombIndex(v: bigint | number) {
    this.u64('railCombIndex', v);
  }
  set railCombRows(v: bigint | number) {
    this.u64('railCombRows', v);
  }
  set railCombCap(v: number) {
    this.i32('railCombCap', v);
  }
  set maxTokensPerRank(v: number) {
    this.i32('maxTokensPerRank', v);
  }
  set railOutboxHostBytes(v: bigint | number) {
    this.u64('railOutboxHostBytes', v);
  }
  set combineFlagged(v: number) {
    this.i32('combineFlagged', v);
  }
  set spare(v: number) {
    this.i32('spare', v);
  }
  set flaggedRecvOff(v: bigint | number) {
    this.u64('flaggedRecvOff', v);
  }
  set flaggedRecvSlot(v: bigint | number) {
    this.u64('flaggedRecvSlot', v);
  }
}

/** An EpError as read from errHost or from EpState.err. */
export interface EpErrorRecord {
  code: number;
  peer: number;
  slot: number;
  aux: number;
  callCount: bigint;
  a: bigint;
  b: bigint;
}

/**
 * Decodes an EpError (40 bytes) at the start of `view`: a DataView or a byte array over errHost's
 * memory, or over the bytes of EpState.err (offset EP_STATE_OFFSET.err).
 */
export function readEpError(view: DataView | Uint8Array): EpErrorRecord {
  const dv = view instanceof DataView ? view : new DataView(view.buffer, view.byteOffset, view.byteLength);
  if (dv.byteLength < EP_ERROR_BYTES) {
    throw new RangeError(`an EpError needs ${EP_ERROR_BYTES} bytes, got ${dv.byteLength}`);
  }
  const o = EP_ERROR_OFFSET;
  return {
    code: dv.getUint32(o.code, true),
    peer: dv.getUint32(o.peer, true),
    slot: dv.getUint32(o.slot, true),
    aux: dv.getUint32(o.aux, true),
    callCount: dv.getBigUint64(o.callCount, true),
    a: dv.getBigInt64(o.a, true),
    b: dv.getBigInt64(o.b, true),
  };
}
