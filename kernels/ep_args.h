// The one argument every kernel takes: EpArgs, passed by value (__grid_constant__). Its bytes are
// packed on the host by src/shmem/cuda/args.ts, which mirrors this struct field for field; a test
// compiles this header on the host and checks every size and offset against that mirror.
// Only fixed-width types, explicit padding, 8-byte alignment: the layout is the same for nvcc and g++.
#pragma once
#include <stdint.h>

// Error codes written into EpError.code (0 = no error). The host turns them into named errors.
#define EP_ERR_NONE 0u
#define EP_ERR_TIMEOUT_DISPATCH 1u  // peer, slot, callCount: a dispatch (count or row) signal did not arrive in time
#define EP_ERR_TIMEOUT_COMBINE 2u   // peer, slot, callCount: a combine signal did not arrive in time
#define EP_ERR_CAPACITY 3u          // aux 0: a = destination rank, b = rows (> maxRowsPerPeer); aux 1: a = expert, b = rows (> capacity)
#define EP_ERR_EXPERT_ID 4u         // a = token, b = slot, aux = the bad id (as uint32)
#define EP_ERR_DUPLICATE 5u         // a = token, b = slot, aux = the expert named twice
#define EP_ERR_PEER_ABORT_DISPATCH 6u  // peer: that rank aborted this dispatch (its own input was invalid)
#define EP_ERR_PEER_ABORT_COMBINE 7u   // peer: that rank aborted this combine
#define EP_ERR_TIMEOUT_BARRIER 8u      // peer, callCount (the barrier's count): ep_barrier did not see that rank in time

// A signal word holds the call count; a rank that aborts a call writes callCount | EP_ABORT_BIT.
#define EP_ABORT_BIT (1ull << 63)

// Timestamps (%globaltimer, ns) the kernels write into EpArgs.stamps[] when it is set (benchmarks only):
// where a call's time goes. "Begin" stamps are block 0's, "end" stamps the latest block's (atomicMax).
#define EP_STAMP_DISPATCH_BEGIN 0    // the first dispatch kernel starts (ep_route, ep_stage_send)
#define EP_STAMP_COUNTS_SENT 1       // ep_route: this rank's counts are on their way to every peer
#define EP_STAMP_COUNTS_ARRIVED 2    // ep_route: every peer's counts have arrived
#define EP_STAMP_ROUTE_END 3         // ep_route: every pair's destination row is known
#define EP_STAMP_ROWS_BEGIN 4        // dispatch block 0 starts storing rows
#define EP_STAMP_DISPATCH_TAIL 5     // the last dispatch block: every row of this rank stored and fenced
#define EP_STAMP_DISPATCH_ARRIVED 6  // ... and every peer's rows have arrived
#define EP_STAMP_PACK_BEGIN 7        // ep_stage_pack starts (after the send kernel)
#define EP_STAMP_PACK_END 8          // ep_stage_pack: the last block ends
#define EP_STAMP_COMBINE_BEGIN 9     // ep_combine_send starts
#define EP_STAMP_COMBINE_TAIL 10     // ep_combine_send: every row sent back and fenced
#define EP_STAMP_COMBINE_ARRIVED 11  // ep_combine_send: every peer's rows have come back
#define EP_STAMP_REDUCE_BEGIN 12     // ep_combine_reduce starts
#define EP_STAMP_REDUCE_END 13       // ep_combine_reduce: the last block ends
#define EP_STAMP_BARRIER_END 14      // ep_barrier returns (every rank arrived)
#define EP_STAMPS 16                 // slots in the stamps array

// First error of a call, written by the device (first writer wins via atomicCAS on code).
struct EpError {
  uint32_t code;
  uint32_t peer;
  uint32_t slot;
  uint32_t aux;
  uint64_t callCount;
  int64_t a;
  int64_t b;
};  // 40 bytes

// Per-group device state that survives between launches (device memory, zeroed at creation).
// Kept on the device so that a captured CUDA graph replays correctly: no host value goes stale.
struct EpState {
  uint64_t dispatchCalls;  // dispatches begun; the current call's call_count (1, 2, ...); slot = count & 1
  uint32_t doneBlocks[4];  // last-block-done counters: [0] dispatch, [2] combine send; reset by the last block
  uint64_t barrierCalls;   // ep_barrier calls on this rank (the value it signals)
  uint32_t ownAbort;       // 1: this rank's own input failed the current dispatch (ep_stage_send's tail; between hosts)
  uint32_t ownLate;        // own_direct: 1 + a source a row block gave up waiting for (a timeout), else 0; the
                           // send's tail reports it and resets it (ep_own_direct.cuh own_tables)
  EpError err;             // this call's first error (device copy; mirrored to errHost)
};

struct EpArgs {
  // sizes (see src/ep/config.ts)
  int32_t rank;
  int32_t world;
  int32_t numExperts;
  int32_t expertsPerRank;
  int32_t hidden;
  int32_t topk;
  int32_t numTokens;       // T of this call (<= maxTokensPerRank)
  int32_t maxRowsPerPeer;  // MAX_M
  int32_t expertCapacity;  // rows per local expert at most (padded: each expert's block in expertX / expertOut)
  int32_t groupSize;       // FP8 group size G
  int32_t groupsPerRow;    // H / G (0 when fp8 is off)
  int32_t fp8;             // 1: quantise dispatched rows to e4m3 + f32 scales
  int32_t splitsPerPeer;   // EPR + 1: the stride of recvSplits
  int32_t hostAbort;       // 1: the host rejected this call's input: send no data, signal aborts to every peer
  int64_t timeoutNs;       // a wait gives up after this long (globaltimer), writing EP_ERR_TIMEOUT_*
  // symmetric heap layout (bytes from a heap base; see computeLayout in src/ep/layout.ts).
  // Regions with a Slot stride are [2 slots]; expertX and expertScales have one copy.
  uint64_t countSignalOff, countSignalSlot;        // u64 [2][W]: counts from src arrived
  uint64_t dispatchSignalOff, dispatchSignalSlot;  // u64 [2][W]: rows from src landed
  uint64_t combineSignalOff, combineSignalSlot;    // u64 [2][W]: combine rows from src landed
  uint64_t countsOff, countsSlot;                  // i32 [2][W][E]: every rank's per-expert pair counts
  uint64_t combineRecvOff, combineRecvSlot;        // bf16 [2][maxTokensPerRank * k][H]
  uint64_t expertXOff;       // u8 [expertRows][dispatchRowBytes]: the dispatch output (see expert_start in ep_rows.cuh)
  uint64_t expertScalesOff;  // f32 [expertRows][H/G] (fp8 only)
  uint64_t dispatchRowBytes;  // H (fp8) or 2H
  uint64_t combineRowBytes;   // 2H
  // heap bases: peerBases[r] is rank r's heap as mapped in this process (own rank: the local base)
  uint64_t peerBases;  // const uint64_t* [world]
  // inputs
  uint64_t x;            // const uint16_t* bf16 [T, H]
  uint64_t topkIdx;      // const int32_t* [T, k]
  uint64_t topkWeights;  // const float* [T, k]
  uint64_t expertOut;    // const uint16_t* bf16 [expertRows][H] (combine input, rows as expertX's)
  // outputs (expertX and expertScales are heap regions, above)
  uint64_t expertCounts;  // int32_t* [EPR]
  uint64_t y;             // uint16_t* bf16 [T, H] (combine output)
  uint64_t viewX;         // ep_recv_view only: uint8_t* [W][maxRowsPerPeer][dispatchRowBytes]
  uint64_t viewScales;    // ep_recv_view only: float* [W][maxRowsPerPeer][H/G] (fp8 only)
  // local workspace (device memory, this rank only)
  uint64_t pairRow;      // int32_t* [maxTokensPerRank * k]: send row of pair t*k+j, or -1 (dropped)
  uint64_t pairDest;     // int32_t* [maxTokensPerRank * k]: row of pair t*k+j in its owner's expertX, or -1
  uint64_t recvSplits;   // int32_t* [W][EPR + 1]: rows each source sent me per local expert, then its m_st
  uint64_t state;        // EpState*
  uint64_t errHost;      // EpError* in host-mapped memory (device pointer), mirror of state->err
  // the staged protocol (ep_stage_send / ep_stage_pack; W > 1 and small batches): heap regions [2 slots]
  uint64_t stageSplitsOff, stageSplitsSlot;  // i32 [2][W][EPR + 1]: from each source, rows per local expert, then its m_st
  uint64_t stageDataOff, stageDataSlot;      // u8 [2][W][stageRows][dispatchRowBytes]: rows each source sent me, expert-sorted
  uint64_t stageScalesOff, stageScalesSlot;  // f32 [2][W][stageRows][H/G] (fp8 only)
  uint64_t barrierSignalOff;  // u64 [W]: ep_barrier's words, one per source
  uint64_t selfPairs;         // int32_t* [stageRows]: the pair (t*k+j) of each row this rank staged for itself (not with dedup)
  uint64_t stamps;            // uint64_t* [EP_STAMPS] or 0: phase timestamps (benchmarks)
  int32_t stageRows;          // rows per source in the stage (0 when the group does not stage)
  int32_t dedup;              // 1: the de-duplicated staged protocol (a token crosses to each rank once)
  // dedup only (heap regions [2 slots], zero bytes otherwise):
  uint64_t stageCarrierOff, stageCarrierSlot;  // i32 [2][W][stageRows]: the carrier row of each staged row
  uint64_t stageRecordsOff, stageRecordsSlot;  // [2][W][stageRows][recordBytes]: per carrier row: back, rows[k], w[k]
  int32_t recordBytes;        // bytes of one record: alignUp(4 * (1 + 2k), 16)
  int32_t packedExperts;      // 1: expertX / expertOut hold the experts' rows back to back (expertLayout 'packed')
  uint64_t carrierPlans;      // dedup: u32 counts[W] (16-byte padded), then [W][stageRows][recordBytes]: per carrier
                              // row received, by source, what ep_combine_send reads: source, origin's row, per slot
                              // the expertOut row (or -1) and the weight (ep_recv.cuh, plan_at)
  uint64_t expertOffsets;     // int32_t* [EPR]: where each local expert's rows start in expertX (written with expertCounts)
  uint64_t localBase;         // this rank's heap, = peerBases[rank] (a kernel's first loads need not wait for it)
  // between hosts (nodes > 1; README, "Between hosts"; kernels/ep_rail.cuh). With nodes = 1 nothing below is read.
  // peerBases[r] is 0 for a rank r on another host: nothing there is mapped.
  int32_t nodes;              // hosts the ranks span; ranks h*G .. h*G + G - 1 are host h
  int32_t ranksPerNode;       // G = world / nodes
  uint64_t railOutboxOff, railOutboxSlot;              // bf16 [2][nodes][combineRows][H] (heap): rows for sources on other hosts
  uint64_t railOutboxSignalOff, railOutboxSignalSlot;  // u64 [2][nodes][G] (heap): owner g's rows for host h are in
  uint64_t railSend;          // u8* [nodes][railMsgBytes]: this rank's dispatch message to each other host (local)
  uint64_t railRecv;          // u8* [nodes][railMsgBytes]: each other host's message to this rank (NCCL receives it)
  uint64_t railTokenOf;       // int32_t* [nodes][maxTokensPerRank]: a token's index in the message to that host, or -1
  uint64_t railCombSend;      // u8* [nodes][railCombBytes]: the combine message to each other host's rail peer
  uint64_t railCombRecv;      // u8* [nodes][railCombBytes]: the combine message from each other host
  uint64_t railMsgBytes;      // one dispatch message (src/ep/layout.ts railMessageLayout), and its parts' offsets:
  uint64_t railMsgSplits, railMsgTokens, railMsgTokenBytes, railMsgRows, railMsgScales;
  uint64_t railCombBytes;     // one combine message (railCombineLayout), and its parts' offsets:
  uint64_t railCombStatus, railCombCount, railCombIndex, railCombRows;
  int32_t railCombCap;        // rows a combine message holds
  int32_t maxTokensPerRank;   // the stride of railTokenOf
  uint64_t railOutboxHostBytes;  // one host's part of an outbox slot: combineRows * combineRowBytes
  // 1: this call's combine partials come back flagged (small batches, dedup, one host; README "Flagged
  // partials"): each 4 bytes of a partial travel with a flag of the call beside them (flag_of), and the
  // reduction polls the rows themselves; the owners' signals, unfenced when they sent only flagged partials,
  // it awaits only at its end. Set for dispatch and combine.
  int32_t combineFlagged;
  int32_t spare;                          // (keeps the struct a multiple of 8 bytes)
  uint64_t flaggedRecvOff, flaggedRecvSlot;  // u32 [2][min(maxT, flaggedMaxTokens(W)) * k][H] (heap): flagged partials
};
