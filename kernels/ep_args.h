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

// A signal word holds the call count; a rank that aborts a call writes callCount | EP_ABORT_BIT.
#define EP_ABORT_BIT (1ull << 63)

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
  uint32_t pad[2];
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
  int32_t expertCapacity;  // rows per local expert in expertX / expertOut
  int32_t groupSize;       // FP8 group size G
  int32_t groupsPerRow;    // H / G (0 when fp8 is off)
  int32_t fp8;             // 1: quantise dispatched rows to e4m3 + f32 scales
  int32_t splitsPerPeer;   // EPR + 1: the stride of recvSplits
  int32_t hostAbort;       // 1: the host rejected this call's input: send no data, signal aborts to every peer
  int64_t timeoutNs;       // a wait gives up after this long (globaltimer), writing EP_ERR_TIMEOUT_*
  // symmetric heap layout (bytes from a heap base; see computeDirectLayout in src/ep/layout.ts).
  // Regions with a Slot stride are [2 slots]; expertX and expertScales have one copy.
  uint64_t countSignalOff, countSignalSlot;        // u64 [2][W]: counts from src arrived
  uint64_t dispatchSignalOff, dispatchSignalSlot;  // u64 [2][W]: rows from src landed
  uint64_t combineSignalOff, combineSignalSlot;    // u64 [2][W]: combine rows from src landed
  uint64_t countsOff, countsSlot;                  // i32 [2][W][E]: every rank's per-expert pair counts
  uint64_t combineRecvOff, combineRecvSlot;        // bf16 [2][maxTokensPerRank * k][H]
  uint64_t expertXOff;       // u8 [EPR][expertCapacity][dispatchRowBytes]: the dispatch output
  uint64_t expertScalesOff;  // f32 [EPR][expertCapacity][H/G] (fp8 only)
  uint64_t dispatchRowBytes;  // H (fp8) or 2H
  uint64_t combineRowBytes;   // 2H
  // heap bases: peerBases[r] is rank r's heap as mapped in this process (own rank: the local base)
  uint64_t peerBases;  // const uint64_t* [world]
  // inputs
  uint64_t x;            // const uint16_t* bf16 [T, H]
  uint64_t topkIdx;      // const int32_t* [T, k]
  uint64_t topkWeights;  // const float* [T, k]
  uint64_t expertOut;    // const uint16_t* bf16 [EPR][expertCapacity][H] (combine input)
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
};
