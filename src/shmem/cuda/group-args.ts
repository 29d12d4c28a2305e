import type { EpConfig } from '../../ep/config.js';
import { type HeapLayout, recordBytes } from '../../ep/layout.js';
import type { EpArgsWriter } from './args.js';
import { dedupOn, type GroupBuffers } from './group-buffers.js';
import type { CudaRail } from './rail.js';

/**
 * Writes every EpArgs field that stays the same for the group's life: sizes from the config, heap
 * offsets from the layout, pointers to the group's buffers. The per-call fields (numTokens, the input
 * pointers, hostAbort, the view and stamp buffers) are the launches' to set.
 */
export function fillGroupArgs(
  a: EpArgsWriter,
  c: EpConfig,
  L: HeapLayout,
  group: {
    rank: number;
    timeoutMs: number;
    errHost: bigint;
    buffers: GroupBuffers;
    localBase: bigint;
    rail: CudaRail | null;
  },
): void {
  const b = group.buffers;
  a.rank = group.rank;
  a.world = c.world;
  a.numExperts = c.numExperts;
  a.expertsPerRank = c.expertsPerRank;
  a.hidden = c.hidden;
  a.topk = c.topk;
  a.maxRowsPerPeer = c.maxRowsPerPeer;
  a.expertCapacity = c.expertCapacity;
  a.groupSize = c.fp8GroupSize;
  a.groupsPerRow = c.groupsPerRow;
  a.set('fp8', c.fp8 ? 1 : 0);
  a.set('splitsPerPeer', c.expertsPerRank + 1);
  a.set('timeoutNs', BigInt(Math.round(group.timeoutMs * 1e6)));
  a.set('countSignalOff', L.countSignal.offset).set('countSignalSlot', L.countSignal.slotBytes);
  a.set('dispatchSignalOff', L.dispatchSignal.offset).set('dispatchSignalSlot', L.dispatchSignal.slotBytes);
  a.set('combineSignalOff', L.combineSignal.offset).set('combineSignalSlot', L.combineSignal.slotBytes);
  a.set('countsOff', L.counts.offset).set('countsSlot', L.counts.slotBytes);
  a.set('combineRecvOff', L.combineRecv.offset).set('combineRecvSlot', L.combineRecv.slotBytes);
  a.set('expertXOff', L.expertX.offset).set('expertScalesOff', L.expertScales.offset);
  a.set('dispatchRowBytes', c.dispatchRowBytes).set('combineRowBytes', c.combineRowBytes);
  a.set('peerBases', b.peerBases);
  a.set('localBase', group.localBase);
  a.set('expertCounts', b.expertCounts.devicePtr);
  a.set('expertOffsets', b.expertOffsets.devicePtr);
  a.set('packedExperts', c.expertLayout === 'packed' ? 1 : 0);
  a.set('y', b.y);
  a.set('pairRow', b.pairRow);
  a.set('pairDest', b.pairDest);
  a.set('recvSplits', b.recvSplits);
  a.set('state', b.state);
  a.set('errHost', group.errHost);
  a.set('stageSplitsOff', L.stageSplits.offset).set('stageSplitsSlot', L.stageSplits.slotBytes);
  a.set('stageDataOff', L.stageData.offset).set('stageDataSlot', L.stageData.slotBytes);
  a.set('stageScalesOff', L.stageScales.offset).set('stageScalesSlot', L.stageScales.slotBytes);
  a.set('barrierSignalOff', L.barrierSignal.offset);
  a.set('stageRows', L.stageRows);
  a.set('selfPairs', b.selfPairs);
  const dedup = dedupOn(L);
  a.set('dedup', dedup ? 1 : 0);
  a.set('stageCarrierOff', L.stageCarrier.offset).set('stageCarrierSlot', L.stageCarrier.slotBytes);
  a.set('stageRecordsOff', L.stageRecords.offset).set('stageRecordsSlot', L.stageRecords.slotBytes);
  a.set('flaggedRecvOff', L.flaggedRecv.offset).set('flaggedRecvSlot', L.flaggedRecv.slotBytes);
  a.set('recordBytes', dedup ? recordBytes(c) : 0);
  a.set('carrierPlans', b.carrierPlans);
  a.set('nodes', c.nodes).set('ranksPerNode', c.ranksPerNode).set('maxTokensPerRank', c.maxTokensPerRank);
  const rail = group.rail;
  if (rail === null) return;
  a.set('railOutboxOff', L.railOutbox.offset).set('railOutboxSlot', L.railOutbox.slotBytes);
  a.set('railOutboxHostBytes', L.combineRows * c.combineRowBytes); // (as railOutboxRowOffset lays it out)
  a.set('railOutboxSignalOff', L.railOutboxSignal.offset).set(
    'railOutboxSignalSlot',
    L.railOutboxSignal.slotBytes,
  );
  for (const [field, ptr] of Object.entries(rail.buffers)) a.set(field as keyof typeof rail.buffers, ptr);
  const m = rail.msg;
  a.set('railMsgBytes', m.bytes).set('railMsgSplits', m.splits).set('railMsgTokens', m.tokens);
  a.set('railMsgTokenBytes', m.tokenBytes).set('railMsgRows', m.rows).set('railMsgScales', m.scales);
  const k = rail.comb;
  a.set('railCombBytes', k.bytes).set('railCombStatus', k.status).set('railCombCount', k.count);
  a.set('railCombIndex', k.index).set('railCombRows', k.rows).set('railCombCap', k.cap);
}
