// The one argument every kernel takes: EpArgs, passed by value (__grid_constant__). Its bytes are
// packed on the host by src/shmem/cuda/args.ts, which mirrors this struct field for field; a test
// compiles this header on the host and checks every size and offset against that mirror.
// Only fixed-width types, explicit padding, 8-byte alignment: the layout is the same for nvcc and g++.
#pragma once
#include <stdint.h>

// Error codes written into EpError.code (0 = no error). The host turns them into named errors.
#define EP_ERR_NONE 0u
#define EP_ERR_TIMEOUT_DISPATCH 1u  // peer, slot, callCount: a dispatch signal did not arrive in time
#define EP_ERR_TIMEOUT_COMBINE 2u   // peer, slot, callCount: a combine signal did not arrive in time
#define EP_ERR_CAPACITY 3u          // a = destination rank, b = rows it would get (limit = maxRowsPerPeer)
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
  uint32_t doneBlocks[4];  // last-block-done counters: [0] dispatch, [1] repack, [2] combine; reset by the last block
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
  int32_t splitsPerPeer;   // EPR + 1
  int32_t hostAbort;       // 1: the host rejected this call's input: send no data, signal aborts to every peer
  int64_t timeoutNs;       // a wait gives up after this long (globaltimer), writing EP_ERR_TIMEOUT_*
  // symmetric heap layout (bytes from a heap base; see src/ep/layout.ts). Each region is [2 slots].
  uint64_t dispatchSignalOff, dispatchSignalSlot;
  uint64_t combineSignalOff, combineSignalSlot;
  uint64_t recvSplitsOff, recvSplitsSlot;
  uint64_t recvDataOff, recvDataSlot;
  uint64_t recvScalesOff, recvScalesSlot;
  uint64_t combineRecvOff, combineRecvSlot;
  uint64_t dispatchRowBytes;  // H (fp8) or 2H
  uint64_t combineRowBytes;   // 2H
  // heap bases: peerBases[r] is rank r's heap as mapped in this process (own rank: the local base)
  uint64_t peerBases;  // const uint64_t* [world]
  // inputs
  uint64_t x;            // const uint16_t* bf16 [T, H]
  uint64_t topkIdx;      // const int32_t* [T, k]
  uint64_t topkWeights;  // const float* [T, k]
  uint64_t expertOut;    // const uint16_t* bf16 [EPR][expertCapacity][H] (combine input)
  // outputs
  uint64_t expertX;       // uint8_t* [EPR][expertCapacity][dispatchRowBytes]
  uint64_t expertScales;  // float* [EPR][expertCapacity][H/G] (fp8 only)
  uint64_t expertCounts;  // int32_t* [EPR]
  uint64_t y;             // uint16_t* bf16 [T, H] (combine output)
  // local workspace (device memory, this rank only)
  uint64_t sendCounts;   // int32_t* [E]: pairs per expert this call
  uint64_t sendOffsets;  // int32_t* [E + 1]: exclusive prefix sum (send row of each expert's first pair)
  uint64_t pairRow;      // int32_t* [maxTokensPerRank * k]: send row of pair t*k+j, or -1 (dropped)
  uint64_t state;        // EpState*
  uint64_t errHost;      // EpError* in host-mapped memory (device pointer), mirror of state->err
};
