import type { EpConfig } from '../../ep/config.js';
import { expertShape } from '../../ep/expert-layout.js';
import { type HeapLayout, recordBytes } from '../../ep/layout.js';
import type { DType } from '../../ep/tensor.js';
import { EP_STATE_BYTES } from './args.js';
import { DeviceTensor } from './device-tensor.js';
import type { CudaDriver } from './driver.js';
import type { CudaHeap } from './heap.js';

/**
 * The device memory a group's kernels work in: the dispatch outputs it hands to callers, and the
 * private buffers EpArgs points to (kernels/ep_args.h says what each holds).
 */
export interface GroupBuffers {
  /** In the heap: peers store their rows straight into them. */
  readonly expertX: DeviceTensor;
  readonly expertScales: DeviceTensor | null;
  readonly expertCounts: DeviceTensor;
  readonly expertOffsets: DeviceTensor;
  readonly recvSplits: bigint;
  readonly y: bigint;
  /** Every rank's heap as mapped here (u64 per rank). */
  readonly peerBases: bigint;
  /** EpState, zeroed. */
  readonly state: bigint;
  readonly pairRow: bigint;
  readonly pairDest: bigint;
  readonly selfPairs: bigint;
  /** 0n without de-duplication. */
  readonly carrierPlans: bigint;
}

/**
 * De-duplication rides on the stage (a one-rank group has nothing to de-duplicate: its one partial per
 * token is the whole sum, the same result).
 */
export function dedupOn(layout: HeapLayout): boolean {
  return layout.stageRecords.bytes > 0;
}

/**
 * Allocates a group's buffers through `alloc` (which records them for freeing) and fills those the
 * kernels expect filled; returns when the fills are done.
 */
export function allocGroupBuffers(
  drv: CudaDriver,
  c: EpConfig,
  layout: HeapLayout,
  heap: CudaHeap,
  alloc: (bytes: number) => bigint,
): GroupBuffers {
  const epr = c.expertsPerRank;
  const xDtype: DType = c.fp8 ? 'fp8_e4m3' : 'bf16';
  const inHeap = (offset: number) => heap.local + BigInt(offset);
  const expertX = new DeviceTensor(xDtype, expertShape(c, c.hidden), inHeap(layout.expertX.offset), null);
  const expertScales = c.fp8
    ? new DeviceTensor('f32', expertShape(c, c.groupsPerRow), inHeap(layout.expertScales.offset), null)
    : null;
  const recvSplits = alloc(c.world * (epr + 1) * 4);
  const expertCounts = new DeviceTensor('i32', [epr], alloc(epr * 4), null);
  const expertOffsets = new DeviceTensor('i32', [epr], alloc(epr * 4), null);
  const y = alloc(c.maxTokensPerRank * c.hidden * 2);
  const peerBases = alloc(8 * c.world);
  drv.memcpyHtoD(peerBases, BigUint64Array.from(heap.peers));
  const state = alloc(EP_STATE_BYTES);
  drv.memsetD8(state, 0, EP_STATE_BYTES);
  // the copy and memset above run on the legacy stream, which does not order with this group's
  // non-blocking stream: finish them before any kernel reads them
  drv.synchronizeContext();
  const pairRow = alloc(c.maxTokensPerRank * c.topk * 4);
  const pairDest = alloc(c.maxTokensPerRank * c.topk * 4);
  const selfPairs = alloc(Math.max(1, layout.stageRows) * 4);
  // per source: a count, then its carriers' plans (kernels/ep_args.h)
  const plansBytes = Math.ceil((c.world * 4) / 16) * 16 + c.world * layout.stageRows * recordBytes(c);
  const carrierPlans = dedupOn(layout) ? alloc(plansBytes) : 0n;
  return {
    expertX,
    expertScales,
    expertCounts,
    expertOffsets,
    recvSplits,
    y,
    peerBases,
    state,
    pairRow,
    pairDest,
    selfPairs,
    carrierPlans,
  };
}
