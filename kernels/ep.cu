// moe-a2a kernels: routing with the count exchange, dispatch, the source-major view, combine (send + reduce), and a copy benchmark.
// The protocol is described below and in the README ("The protocol"); src/ep/*.ts is the bit-exact
// cpu reference every value here must equal (routing.ts, codec.ts, oracle.ts).
// Every kernel takes exactly one argument, `const __grid_constant__ EpArgs a` (kernels/ep_args.h),
// except ep_copy_bench (CopyArgs). Build: scripts/build-kernels.mjs (-O3 -fmad=false, sm_90/sm_90a).
//
// ============================== LAUNCH CONFIGURATION (the host follows this) ==============================
// src/shmem/cuda/launch-sizes.ts computes these sizes for the group (test/launch-sizes.test.ts holds it to
// them); bench/micro/kernel_probe.cu repeats them for its host-free timings.
// Notation: T = numTokens of the call, k = topk, E = numExperts, W = world, EPR = E / W, H = hidden,
// G = groupSize, SMs = multiprocessor count, roundup32(n) = n rounded up to a multiple of 32.
// All kernels run on one stream, in this order, with the same EpArgs bytes (numTokens and the tensor
// pointers of the call filled in; combine kernels need x/topkIdx/topkWeights/expertOut/y as relevant):
//   dispatch, one of three sequences, fixed per group (every rank of a group uses the same one):
//     direct:  ep_route -> ep_dispatch [-> ep_recv_view]           (counts all-gathered, rows stored in place)
//     staged:  ep_stage_send -> ep_stage_pack [-> ep_recv_view]    (W > 1)
//     local:   ep_dispatch_local [-> ep_recv_view]                 (W = 1 and T*k <= EP_LOCAL_MAX_PAIRS)
//   combine:  [ep_combine_send ->] ep_combine_reduce
// ep_recv_view runs only when the caller asks for the source-major receive buffer (viewX/viewScales set).
// ep_combine_send moves rows between ranks only: with W = 1 the host may leave it out.
// Programmatic dependent launch (sm_90): ep_dispatch, ep_stage_pack, ep_recv_view, ep_combine_send and
// ep_combine_reduce may be launched with programmatic stream serialization after the kernel before them in
// this order (each waits with griddepcontrol.wait before it touches that kernel's memory; every kernel lets
// its dependents start early). Never launch one so after other work: the wait covers only the kernel before.
// Every kernel is correct for any grid >= 1 (ep_dispatch_local and ep_stage_send: >= 2; they grid-stride;
// launch at least 1 block even when T = 0) and any block that is a multiple of 32 up to its maximum.
// The grids below are for speed only.
// ep_dispatch and ep_stage_send (W > 1) and ep_combine_send end with "the last block to finish publishes and
// waits": no cooperative launch, no co-residency needed.
//
//  ep_route           grid 1, block 1024 (EP_ROUTE_THREADS; the host uses 512 when T*k <= 4096: faster),
//                     dynamic smem = 4 * ((block/32) * E + E + 1) + 2 * T*k bytes; pass it for
//                     T = maxTokensPerRank so one value serves every call (and a captured graph).
//  ep_dispatch        block B = roundup32(ceil(U / ceil(U / 256))) with U = H/16  (H = 7168 -> 224);
//                     grid = min(8 * SMs, max(1, T * ceil(H / (16 * B))));  dynamic smem 0.  B <= 512.
//  ep_dispatch_local  block as ep_dispatch, grid = ep_dispatch's + 1 (the last block keeps the books and
//                     stores no rows; grid >= 2); W = 1 and T*k <= EP_LOCAL_MAX_PAIRS only (it stops with a device assert naming the requirement otherwise).
//  ep_stage_send      block and grid as ep_dispatch_local; W > 1 (it stops with a device assert otherwise).
//  ep_stage_pack      block 256, grid = min(4 * SMs, max(1, ceil(W * stageRows * ceil(rowBytes / 2048) / 8))).
//  ep_recv_view       block 256, grid 4 * SMs;  dynamic smem 0.  B <= 512.
//  ep_combine_send    block 256, grid 4 * SMs;  dynamic smem 0.  B <= 512.
//  ep_combine_reduce  block B = roundup32(ceil(V / ceil(V / 256))) with V = H/8   (H = 7168 -> 224);
//                     grid = min(8 * SMs, max(1, T * ceil(V / B)));  dynamic smem 0.  B <= 512.
//  ep_barrier         grid 1, block 32 (any multiple of 32): every rank of the group, between calls only.
//  ep_copy_bench      block 256, grid 8 * SMs (CopyArgs by value: dst, src, bytes).  B <= 1024.
//  ep_floor_*         benchmark floors (FloorArgs by value), see section 9.
//
// ep_route needs cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes) whenever its
// dynamic plus its ~12.2 KiB of static shared memory exceed 48 KiB (the host always sets it). Dynamic:
// T*k = 32768, E = 256: 99,332 bytes; E = 1024: 200,708 bytes; an H100 block may opt into 232,448. It checks %dynamic_smem_size itself and stops with a device assert if given too little.
//
// LIMITS: E <= 1024 (EP_MAX_EXPERTS), k <= 64 (EP_MAX_TOPK), T*k <= 32768 (EP_MAX_PAIRS: ep_route keeps the
// ids in shared memory; a larger batch needs a multi-block router), W <= E. Sizes as src/ep/config.ts
// allows: H a multiple of 8; G a multiple of 8, <= 1024, dividing H. The FP8 fast path covers G = 16, 32,
// 64, 128, 256, 512 (G/16 a power of two <= 32); any other G takes a slower per-thread-group path with the
// same arithmetic. Pointers 16-byte aligned (x, y, expertOut, viewX, viewScales, heap bases).
//
// HOST DUTIES: zero EpState once at creation (dispatchCalls, doneBlocks, barrierCalls, err) and the whole
// symmetric heap (signal words must start below any call count); peerBases[] in device memory,
// peerBases[rank] = the local heap; one call of a group in flight at a time, on one stream (a handle's
// combine must come before the next dispatch: combine reads pairRow/pairDest/recvSplits of its dispatch,
// and expertX is rewritten by the next dispatch). After each collective, read errHost (host-mapped): the
// device writes it only when an error happens and never clears it, so the host clears errHost->code after
// handling one. EP_ERR_CAPACITY: aux = 0 (a = destination, b = rows > maxRowsPerPeer: this rank's routing),
// aux = 1 (a = global expert id of this rank, b = rows > expertCapacity: that rank has already sent
// combine aborts, so peers' combines fail with EP_ERR_PEER_ABORT_COMBINE instead of timing out; its
// own rows still went to its peers). On a timeout (EP_ERR_TIMEOUT_*) late writes may still land: treat
// the group as broken. To abort a call for a host-side reason (a bad shape): set hostAbort to 1 and
// launch the first kernel of the group's dispatch sequence (ep_route, or ep_stage_send with grid 2; T = 0
// is fine), or ep_combine_send alone: no data is sent, every peer gets call | EP_ABORT_BIT, and errHost is
// not written; set it back to 0.
// ===========================================================================================================
//
// The protocol (README, "The protocol"). Two ways to move a dispatch's rows between ranks, chosen per group:
//
// direct: ep_route counts this rank's pairs per expert and all-gathers the counts (E ints to every peer, then
// a count signal). From every rank's counts each rank computes, for each of its pairs, the final row in the
// owner's expert-major expertX (sources in rank order, each source's rows in its token order), so
// ep_dispatch stores every row once, straight into its final place in the owner's heap: no receive buffer
// and no repack. The count exchange also orders calls: a rank sends its counts for call n + 1 only after
// its combine of call n, so no peer writes into its expertX while it may still read the previous call's.
// It costs a signal round trip before the first row moves, and one block routes the whole batch.
//
// staged (the cpu transport's protocol, src/shmem/cpu/group.ts): no count exchange before the rows move.
// Every ep_stage_send block routes its own tokens from all of this rank's ids (a block-wide histogram
// gives where each destination's rows start in this rank's expert-sorted order), and stores each row into
// the owner's stage, source-major: row r of source s at stage[s][r], r = its place among this rank's rows
// for that owner (expert-sorted, token order within an expert). The last block of the grid keeps the books:
// it validates the ids, checks maxRowsPerPeer and writes each owner's split record (rows per local expert,
// then m_st, where that owner's rows start in this rank's own order) into the owner's heap. The last block
// to finish signals every peer (the abort bit when this rank's input was rejected) and waits for every
// peer. ep_stage_pack then copies the staged rows into expert-major expertX (sources in rank order), checks
// maxRowsPerExpert and writes the counts. The stage has two copies, by call parity: a source writes
// slot (n + 2) & 1 only after its call n + 1 saw this rank's signal of n + 1, which follows this rank's pack
// of call n (a source whose own dispatch n failed may skip its combine n, so the combine does not order it).
//
// Combine is the same for both: ep_combine_send returns each row to its origin at m_st + its index in the
// origin's rows for this rank (the origin's own expert-sorted order), and ep_combine_reduce sums them.
//
// dedup (EpArgs.dedup, staged only, k <= 32; README, "De-duplication"): a token's row goes to each owner
// once, at its carrier row (the row of its first slot naming that owner); the sender also writes, for every
// row, its carrier (stageCarrier) and, per carrier, a record (the origin's combine row t*k + carrier slot,
// then per slot the row for this owner or -1, and the weight). ep_stage_pack copies each row from its
// carrier and writes one plan per carrier (carrierPlans, by source: the source, the origin's row, and per
// slot the expertOut row or -1 and the weight); ep_combine_send sums each carrier's
// token over this rank's experts (f32, slot order, weighted), rounds once to bf16 and returns that one
// partial to the origin's row t*k + carrier slot; ep_combine_reduce adds the partials in slot order.
//
// Call numbering: ep_route (and ep_dispatch_local's bookkeeping block) increments state->dispatchCalls
// (call = the new value, slot = call & 1) and clears state->err; ep_stage_send's blocks all compute
// call = dispatchCalls + 1 at their start (its row blocks need the slot) and its last block stores it
// (its bookkeeping block clears err). Every later kernel of that dispatch and of the matching combine reads
// dispatchCalls. Signals hold call (or
// call | EP_ABORT_BIT) and are never cleared: a stale value can never equal a later call. A rank whose
// routing failed signals with the abort bit (direct: its counts; staged: its row signal), so every rank
// learns that the call is off.
#include <assert.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include "ep_args.h"
#include "shmem.cuh"

#define EP_MAX_EXPERTS 1024
#define EP_MAX_TOPK 64
#define EP_MAX_PAIRS 32768
#define EP_LOCAL_MAX_PAIRS 2048  // ep_dispatch_local: T*k it routes inside each block
#define EP_STAGE_SMEM_PAIRS 4096  // in-block routing keeps T*k ids up to this in shared memory (beyond: read from L2)
#define EP_ROUTE_THREADS 1024
#define EP_MAX_THREADS 512

// EP_ERR_CAPACITY has two sources, told apart by EpError.aux (the header defines one code for both):
//   aux = EP_CAPACITY_AUX_SEND (0):   ep_route, a = destination rank, b = rows it would get (> maxRowsPerPeer)
//   aux = EP_CAPACITY_AUX_EXPERT (1): ep_route, a = global expert id of this rank, b = rows it would hold (> expertCapacity)
#define EP_CAPACITY_AUX_SEND 0u
#define EP_CAPACITY_AUX_EXPERT 1u

// A launch the host must never make (a programming error of the host, not a user's input): say which
// requirement failed, then stop the kernel. Device-side assert prints the message (with this file and
// line) when the kernel ends, and the host then sees CUDA_ERROR_ASSERT.
#define host_requires(cond, what) assert((cond) && what)

// Device-internal err.code for a call the host aborted (see host_abort): set in state->err only, never
// mirrored to errHost (the host already knows), and it makes every later kernel of the call abort.
#define EP_INTERNAL_HOST_ABORT 0xffffffffu

using namespace ep;

// Phase timestamps of ep_route for bench/micro/kernel_probe.cu (built with -DEP_PROBE); nothing otherwise.
#ifdef EP_PROBE
__device__ long long ep_probe[16];
#define EP_PROBE_AT(i)                                 \
  do {                                                 \
    if (threadIdx.x == 0) ep_probe[i] = clock64();     \
  } while (0)
#else
#define EP_PROBE_AT(i) \
  do {                 \
  } while (0)
#endif

namespace {

// Phase timestamps for benchmarks (EpArgs.stamps, see EP_STAMP_* in ep_args.h); one branch when off.
// stamp(): one thread's time (call it from one thread); stamp_latest(): the latest of every caller's.
__device__ __forceinline__ void stamp(const EpArgs& a, int i) {
  if (a.stamps != 0) ((volatile uint64_t*)a.stamps)[i] = globaltimer();
}
__device__ __forceinline__ void stamp_latest(const EpArgs& a, int i) {
  if (a.stamps != 0) atomicMax((unsigned long long*)a.stamps + i, (unsigned long long)globaltimer());
}

// EpArgs.hostAbort: when non-zero, ep_route marks the call aborted without routing and sends
// call | EP_ABORT_BIT as its count signal to every peer (ep_dispatch then does nothing), and
// ep_combine_send does the same for a combine.
__device__ __forceinline__ int32_t host_abort(const EpArgs& a) { return a.hostAbort; }

// Marks this call aborted in the device copy of the error only (first writer wins, like report_error).
__device__ __forceinline__ void mark_host_abort(const EpArgs& a) {
  atomicCAS(&state_of(a)->err.code, 0u, EP_INTERNAL_HOST_ABORT);
}

// ---------------------------------------------------------------------------------------------
// Block-wide helpers

// In-place exclusive scan of data[0..n) (shared memory), data[n] = the total. Every thread of the
// block calls it; it begins and ends with a barrier. scratch: 33 ints of shared memory.
__device__ void block_exclusive_scan(int* data, int n, int* scratch) {
  __syncthreads();
  const int B = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = (n + B - 1) / B;
  const int lo = min(n, tid * per), hi = min(n, lo + per);
  int sum = 0;
  for (int i = lo; i < hi; ++i) sum += data[i];
  int inc = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(FULL_MASK, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const int nw = B >> 5;
    const int v = lane < nw ? scratch[lane] : 0;
    int vi = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(FULL_MASK, vi, o);
      if (lane >= o) vi += y;
    }
    if (lane < nw) scratch[lane] = vi - v;
    if (lane == 31) scratch[32] = vi;
  }
  __syncthreads();
  int run = scratch[warp] + inc - sum;
  for (int i = lo; i < hi; ++i) {
    const int c = data[i];
    data[i] = run;
    run += c;
  }
  if (tid == 0) data[n] = scratch[32];
  __syncthreads();
}

// topkIdx[0..N) into dst as int16 (ids out of range as -1), 8 loads in flight per thread (every thread
// of the block calls it). Returns this thread's first pair out of range (INT_MAX if none) and adds its
// pairs that name an expert to *rows.
__device__ __forceinline__ int stage_ids(const int* topk, int N, int E, int16_t* dst, int* rows) {
  const int B = blockDim.x, tid = threadIdx.x;
  int bad = INT_MAX, n = 0;
  for (int p0 = 0; p0 < N; p0 += 8 * B) {
    int v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int p = p0 + u * B + tid;
      v[u] = p < N ? __ldg(topk + p) : -1;
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int p = p0 + u * B + tid;
      if (p < N) {
        const bool valid = v[u] >= -1 && v[u] < E;
        if (!valid) bad = min(bad, p);
        if (dst != nullptr) dst[p] = (int16_t)(valid ? v[u] : -1);
        n += valid && v[u] >= 0;
      }
    }
  }
  *rows += n;
  return bad;
}

// The lanes of this warp whose `key` equals mine (what __match_any_sync returns), from one ballot per
// key bit: on Hopper match.any costs hundreds of cycles, this a few dozen. N chunks at once for ILP.
template <int N>
__device__ __forceinline__ void match_keys(const uint32_t (&key)[N], uint32_t (&m)[N], int bits) {
#pragma unroll
  for (int u = 0; u < N; ++u) m[u] = FULL_MASK;
  for (int b = 0; b < bits; ++b) {
#pragma unroll
    for (int u = 0; u < N; ++u) {
      const bool bit = (key[u] >> b) & 1u;
      const uint32_t bal = __ballot_sync(FULL_MASK, bit);
      m[u] &= bit ? bal : ~bal;
    }
  }
}

// ep_route's step over a warp's segment: the experts of pairs c0 + u*32 + lane (u < 4; -2 past segHi)
// and, for each, the lanes holding the same expert.
__device__ __forceinline__ void load_chunks(const int16_t* idx, int c0, int segHi, int lane, int keyBits,
                                            int (&e)[4], uint32_t (&m)[4]) {
  uint32_t key[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int p = c0 + u * 32 + lane;
    e[u] = p < segHi ? idx[p] : -2;
    key[u] = (uint32_t)(e[u] + 2);
  }
  match_keys(key, m, keyBits);
}

// The end of a "last block finishes" kernel: every block orders its stores (local and peer) before
// incrementing a local counter; the block that brings it to gridDim.x does the tail. Returns true
// in every thread of that block. The counter is reset there for the next launch (stream order).
__device__ bool finish_block(uint32_t* counter, int* sFlag) {
  __syncthreads();  // all threads' stores of this block happen-before thread 0's atomic (cta barrier)
  if (threadIdx.x == 0) {
    // Release: this block's stores (made or observed via the barrier) are ordered before the
    // increment, for any GPU (sys scope: they may target a peer's memory). Acquire: in the last
    // block, every other block's stores are ordered before its signals. One atomic does both.
    const uint32_t old = atom_add_acq_rel_sys(counter, 1u);
    const bool last = old == gridDim.x - 1;
    if (last) *(volatile uint32_t*)counter = 0u;
    *sFlag = last ? 1 : 0;
  }
  __syncthreads();
  return *(volatile int*)sFlag != 0;
}

// ---------------------------------------------------------------------------------------------
// Number formats (must match src/ep/codec.ts bit for bit)

// 8 bf16 (one 16-byte vector) -> 8 f32, exact.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 w, float* v) {
  v[0] = __uint_as_float(w.x << 16);
  v[1] = __uint_as_float(w.x & 0xffff0000u);
  v[2] = __uint_as_float(w.y << 16);
  v[3] = __uint_as_float(w.y & 0xffff0000u);
  v[4] = __uint_as_float(w.z << 16);
  v[5] = __uint_as_float(w.z & 0xffff0000u);
  v[6] = __uint_as_float(w.w << 16);
  v[7] = __uint_as_float(w.w & 0xffff0000u);
}

// f32 -> e4m3fn, round to nearest even, saturating to +-448 (Inf too), NaN -> 0x7f: the hardware
// cvt.rn.satfinite.e4m3x2.f32, which made the golden vectors. First value in the low byte.
__device__ __forceinline__ uint32_t fp8x2(float lo, float hi) {
  return (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ uint32_t fp8x4(float a, float b, float c, float d) {
  return fp8x2(a, b) | (fp8x2(c, d) << 16);
}

// Group scale: f32(amax / 448) with IEEE division; 1 for an all-zero group.
__device__ __forceinline__ float group_scale(float amax) {
  return amax == 0.0f ? 1.0f : __fdiv_rn(amax, 448.0f);
}

// |x| max ignoring NaN: fmaxf returns the other operand when one is NaN (as codec.ts groupAmax).
__device__ __forceinline__ float amax8(const float* v, float m) {
#pragma unroll
  for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
  return m;
}

// f32 -> bf16 bits, round to nearest even, NaN -> 0x7fff (cvt.rn.bf16x2.f32), packed low first.
__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// 8 f32 -> 8 bf16 in one 16-byte vector, first value in the low half of .x.
__device__ __forceinline__ uint4 pack_bf16x8(const float (&v)[8]) {
  uint4 o;
  o.x = bf16x2_bits(v[0], v[1]);
  o.y = bf16x2_bits(v[2], v[3]);
  o.z = bf16x2_bits(v[4], v[5]);
  o.w = bf16x2_bits(v[6], v[7]);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Waiting for peers

// Every thread of the block waits for its share of the W signal words at `mine` (one per source,
// `skip` excluded: -1 for none) to hold `call`, within the group's timeout; an abort or a timeout is
// reported with `abortCode` / `timeoutCode`. Returns true in a thread that saw either.
__device__ __forceinline__ bool wait_for_sources(const EpArgs& a, const uint64_t* mine, int skip, uint64_t call,
                                                 uint32_t slot, uint32_t abortCode, uint32_t timeoutCode) {
  const uint64_t deadline = deadline_after(a.timeoutNs);
  bool failed = false;
  for (int s = threadIdx.x; s < a.world; s += blockDim.x) {
    if (s == skip) continue;
    uint64_t seen = 0;
    const int r = wait_until(mine + s, call, deadline, &seen);
    failed |= r != WAIT_ARRIVED;
    if (r == WAIT_ABORTED) report_error(a, abortCode, (uint32_t)s, slot, call, 0, 0, 0u);
    else if (r == WAIT_TIMED_OUT) report_error(a, timeoutCode, (uint32_t)s, slot, call, (int64_t)seen, 0, 0u);
  }
  return failed;
}

// The last block of a dispatch kernel (W > 1): `value` into every peer's row-signal word for this rank,
// then every peer's word of this call awaited (an abort or a timeout is reported); stamps the end.
__device__ void signal_and_wait_rows(const EpArgs& a, uint64_t call, uint64_t value) {
  const uint64_t slot = call & 1u;
  const int W = a.world, me = a.rank;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int d = threadIdx.x; d < W; d += blockDim.x)
    if (d != me)
      signal((uint64_t*)(__ldg(peer + d) + a.dispatchSignalOff + slot * a.dispatchSignalSlot + (uint64_t)me * 8u),
             value);
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  wait_for_sources(a, mine, me, call, (uint32_t)slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH);
  __syncthreads();
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_ARRIVED);
}

// This call's error cleared (the device copy; errHost is the host's to clear). One thread.
__device__ __forceinline__ void clear_error(EpState* st) {
  volatile EpError* e = &st->err;
  e->code = 0;
  e->peer = 0;
  e->slot = 0;
  e->aux = 0;
  e->callCount = 0;
  e->a = 0;
  e->b = 0;
}

// One thread of the kernel that begins a dispatch: the next call count, and this call's error cleared.
// Returns the call.
__device__ __forceinline__ uint64_t begin_call(EpState* st) {
  const uint64_t call = read_calls(st) + 1;
  st->dispatchCalls = call;
  clear_error(st);
  return call;
}

// This call's error is this rank's own expert over capacity: its dispatch failed, but its rows went
// to its peers and its peers go on to combine.
__device__ __forceinline__ bool own_expert_over_capacity(const EpState* st, uint32_t code) {
  return code == EP_ERR_CAPACITY && *(const volatile uint32_t*)&st->err.aux == EP_CAPACITY_AUX_EXPERT;
}

// ---------------------------------------------------------------------------------------------
// Dispatch helpers

struct DestList {
  uint64_t row[2][EP_MAX_TOPK];    // destination row address (peer heap) per valid slot
  uint64_t scale[2][EP_MAX_TOPK];  // destination scales address (FP8)
  int n[2];
};

// Warp 0 collects the destinations of token t into buffer `buf`: for slot j with a row to store
// (pairDest[t*k+j] = r >= 0, owner d = e / EPR), the address of row r of d's expertX and of its scales.
// Order does not matter here.
__device__ __forceinline__ void gather_dests(const EpArgs& a, int t, DestList& L, int buf) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const int* topk = (const int*)a.topkIdx;
  const int* pairDest = (const int*)a.pairDest;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const int k = a.topk, W = a.world;
  // lane l holds rank l's heap base (loaded with the pair data below, not after it)
  const uint64_t laneBase = lane < W ? __ldg(peer + lane) : 0;
  int n = 0;
  for (int j0 = 0; j0 < k; j0 += 32) {
    const int j = j0 + lane;
    bool valid = false;
    uint64_t row = 0, sc = 0;
    const int p = t * k + j;
    const int r = j < k ? __ldg(pairDest + p) : -1;
    const int d = j < k ? __ldg(topk + p) / a.expertsPerRank : 0;
    const uint64_t fromLane = __shfl_sync(FULL_MASK, laneBase, d & 31);
    if (r >= 0) {
      const uint64_t base = d < 32 ? fromLane : __ldg(peer + d);
      row = base + a.expertXOff + (uint64_t)r * a.dispatchRowBytes;
      sc = base + a.expertScalesOff + (uint64_t)r * (uint64_t)a.groupsPerRow * 4u;
      valid = true;
    }
    const uint32_t bal = __ballot_sync(FULL_MASK, valid);
    if (valid) {
      const int pos = n + __popc(bal & lanemask_lt());
      L.row[buf][pos] = row;
      L.scale[buf][pos] = sc;
    }
    n += __popc(bal);
  }
  if (lane == 0) L.n[buf] = n;
}

// Waits for ep_route (see wait_for_prior) and says whether this rank stores rows this call. Any error
// but its own expert over capacity means the call is off here: a routing failure is seen by every
// rank in the count exchange (no rows, no signals anywhere); after a timed-out count wait the peers
// that did not time out go on and time out waiting for this rank's rows (the group is broken). With its own expert over capacity a rank still sends its rows
// to its peers, which expect them. Every thread of a block gets the same answer.
__device__ __forceinline__ bool routed(const EpArgs& a) {
  wait_for_prior();
  const EpState* st = state_of(a);
  const uint32_t code = read_err_code(st);
  return code == 0 || own_expert_over_capacity(st, code);
}

// Where a dispatch block learns the destinations of its tokens. Two policies, one copy loop each
// (dispatch_rows below): PlannedDests reads what ep_route wrote; InBlockDests (ep_dispatch_local,
// ep_stage_send) routes inside the block. Blocks blockIdx.x, + stride(), ... take the items. go(a, first token) is called by
// every thread of the block before its first destinations (and by a block with no items at the end);
// dests() by every thread for each item (it may use barriers).
struct PlannedDests {
  int state = -1;  // -1: not asked yet; then routed()'s answer
  __device__ __forceinline__ int stride() const { return gridDim.x; }
  __device__ __forceinline__ bool go(const EpArgs& a, int /*firstToken*/) {
    if (state < 0) {
      state = routed(a) ? 1 : 0;
      if (blockIdx.x == 0 && threadIdx.x == 0 && state) stamp(a, EP_STAMP_ROWS_BEGIN);
    }
    return state != 0;
  }
  __device__ __forceinline__ void dests(const EpArgs& a, int t, bool /*firstChunk*/, DestList& L, int buf) {
    gather_dests(a, t, L, buf);
  }
};

// bf16 rows: item = (token, chunk of 2*B vectors of 8 values); two 16-byte loads per thread in flight.
template <class Dests>
__device__ void dispatch_bf16(const EpArgs& a, DestList& L, Dests& D) {
  const int B = blockDim.x, tid = threadIdx.x;
  const int V = a.hidden / 8;
  const int chunks = (V + 2 * B - 1) / (2 * B);
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  for (int it = blockIdx.x; it < items; it += D.stride(), buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int v0 = c * 2 * B + tid, v1 = v0 + B;
    const char* src = x + (uint64_t)t * a.hidden * 2u;
    uint4 r0 = make_uint4(0, 0, 0, 0), r1 = r0;
    if (v0 < V) r0 = ld_nc_v4(src + (uint64_t)v0 * 16u);
    if (v1 < V) r1 = ld_nc_v4(src + (uint64_t)v1 * 16u);
    if (!D.go(a, t)) return;  // the first item's loads overlapped the routing
    D.dests(a, t, c == 0, L, buf);
    // Double-buffered list: this barrier also orders the previous item's reads of buffer buf^1
    // before the next item's gather overwrites it.
    __syncthreads();
    const int n = L.n[buf];
    for (int i = 0; i < n; ++i) {
      char* dst = (char*)L.row[buf][i];
      if (v0 < V) st_v4(dst + (uint64_t)v0 * 16u, r0);
      if (v1 < V) st_v4(dst + (uint64_t)v1 * 16u, r1);
    }
  }
}

// FP8, G/16 = lanesPerGroup a power of two <= 32: item = (token, chunk of B units of 16 values); a
// thread loads 32 bytes of bf16, the lanesPerGroup consecutive lanes of a group reduce amax with
// shuffles, and each thread stores 16 FP8 bytes (one vector) per destination.
template <class Dests>
__device__ void dispatch_fp8_fast(const EpArgs& a, DestList& L, Dests& D, int lanesPerGroup) {
  const int B = blockDim.x, tid = threadIdx.x, lane = tid & 31;
  const int U = a.hidden / 16;
  const int chunks = (U + B - 1) / B;
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  for (int it = blockIdx.x; it < items; it += D.stride(), buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int u = c * B + tid;
    const bool active = u < U;  // whole groups are active or not: U and B are multiples of lanesPerGroup
    const char* src = x + (uint64_t)t * a.hidden * 2u + (uint64_t)u * 32u;
    uint4 w0 = make_uint4(0, 0, 0, 0), w1 = w0;
    if (active) {
      w0 = ld_nc_v4(src);
      w1 = ld_nc_v4(src + 16);
    }
    if (!D.go(a, t)) return;  // the first item's loads are in flight during the routing's
    float v[16];
    bf16x8_to_f32(w0, v);
    bf16x8_to_f32(w1, v + 8);
    float amax = amax8(v + 8, amax8(v, 0.0f));
    for (int o = lanesPerGroup >> 1; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
    const float scale = group_scale(amax);
    D.dests(a, t, c == 0, L, buf);
    uint4 q;
    q.x = fp8x4(__fdiv_rn(v[0], scale), __fdiv_rn(v[1], scale), __fdiv_rn(v[2], scale), __fdiv_rn(v[3], scale));
    q.y = fp8x4(__fdiv_rn(v[4], scale), __fdiv_rn(v[5], scale), __fdiv_rn(v[6], scale), __fdiv_rn(v[7], scale));
    q.z = fp8x4(__fdiv_rn(v[8], scale), __fdiv_rn(v[9], scale), __fdiv_rn(v[10], scale),
                __fdiv_rn(v[11], scale));
    q.w = fp8x4(__fdiv_rn(v[12], scale), __fdiv_rn(v[13], scale), __fdiv_rn(v[14], scale),
                __fdiv_rn(v[15], scale));
    __syncthreads();  // destination list ready (and previous item done with the other buffer)
    const int n = L.n[buf];
    const bool leader = (lane & (lanesPerGroup - 1)) == 0;
    const uint64_t g = (uint64_t)(u / lanesPerGroup);
    if (active) {
      for (int i = 0; i < n; ++i) {
        st_v4((char*)L.row[buf][i] + (uint64_t)u * 16u, q);
        if (leader) st_u32((char*)L.scale[buf][i] + g * 4u, __float_as_uint(scale));
      }
    }
  }
}

// FP8, any other G (a multiple of 8): item = (token, chunk of B groups); a thread owns a whole group:
// one pass for amax, a second (L1/L2-hot) pass quantising 8 values per 8-byte store.
template <class Dests>
__device__ void dispatch_fp8_general(const EpArgs& a, DestList& L, Dests& D) {
  const int B = blockDim.x, tid = threadIdx.x;
  const int G = a.groupSize, NG = a.groupsPerRow, VG = G / 8;
  const int chunks = (NG + B - 1) / B;
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  for (int it = blockIdx.x; it < items; it += D.stride(), buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int g = c * B + tid;
    if (!D.go(a, t)) return;
    D.dests(a, t, c == 0, L, buf);
    __syncthreads();
    if (g >= NG) continue;
    const char* src = x + (uint64_t)t * a.hidden * 2u + (uint64_t)g * G * 2u;
    float amax = 0.0f;
    for (int i = 0; i < VG; ++i) {
      float v[8];
      bf16x8_to_f32(*(const uint4*)(src + i * 16), v);
      amax = amax8(v, amax);
    }
    const float scale = group_scale(amax);
    const int n = L.n[buf];
    for (int i = 0; i < VG; ++i) {
      float v[8];
      bf16x8_to_f32(*(const uint4*)(src + i * 16), v);
      uint2 q;
      q.x = fp8x4(__fdiv_rn(v[0], scale), __fdiv_rn(v[1], scale), __fdiv_rn(v[2], scale), __fdiv_rn(v[3], scale));
      q.y = fp8x4(__fdiv_rn(v[4], scale), __fdiv_rn(v[5], scale), __fdiv_rn(v[6], scale), __fdiv_rn(v[7], scale));
      for (int d = 0; d < n; ++d) st_v2((char*)L.row[buf][d] + (uint64_t)g * G + (uint64_t)i * 8u, q);
    }
    for (int d = 0; d < n; ++d) st_u32((char*)L.scale[buf][d] + (uint64_t)g * 4u, __float_as_uint(scale));
  }
}

// The copy loops with either policy: bf16 rows, or FP8 through the fast or the general path.
template <class Dests>
__device__ void dispatch_rows(const EpArgs& a, DestList& L, Dests& D) {
  if (!a.fp8) {
    dispatch_bf16(a, L, D);
  } else {
    const int G = a.groupSize, lpg = G / 16;
    if (G % 16 == 0 && lpg <= 32 && (lpg & (lpg - 1)) == 0) dispatch_fp8_fast(a, L, D, lpg);
    else dispatch_fp8_general(a, L, D);
  }
}

// Where local expert le's rows start in expertX (and expertOut): its own block (padded), or right after the
// rows of the experts before it (packed: `rowsBefore`, an exclusive prefix of the experts' counts).
__device__ __forceinline__ uint64_t expert_start(const EpArgs& a, int le, int rowsBefore) {
  return a.packedExperts ? (uint64_t)rowsBefore : (uint64_t)le * (uint64_t)a.expertCapacity;
}

// ---------------------------------------------------------------------------------------------
// Routing inside each block: ep_dispatch_local (one rank, T*k <= EP_LOCAL_MAX_PAIRS) and ep_stage_send
// (W > 1, T*k <= EP_MAX_PAIRS). Every row block reads all T*k ids (at most 128 KiB, from L2 after the first
// block; kept in shared memory up to EP_STAGE_SMEM_PAIRS) and counts, for its own tokens, the pairs of each
// of their experts in earlier tokens (local: per token, against its marked slots; staged: a running
// per-expert count the block advances from one of its tokens to the next, so it reads each id twice in
// all, once for the histogram and once for the counts, however many tokens it takes); the last block
// of the grid stores no rows and keeps the books alone (validation and the error report, and the counts),
// off the rows' critical path. Row blocks do not wait for its verdict: a call that fails may leave rows
// behind (every store stays inside its region: bad ids never match, a repeated expert keeps one slot,
// rows past a capacity are dropped), and a failed dispatch leaves its outputs unspecified, as the API says.
//   local:  the row of pair p of expert e is expert_start(e) + (pairs of e before p), in expertX: the
//           stable order of planRouting and ep_route (packed: the start from a block-wide histogram).
//   staged: the row of pair p in its owner d's stage is r = (this rank's pairs of experts in
//           [d*EPR, e)) + (pairs of e before p), from a block-wide histogram of the ids; its place in this
//           rank's own expert-sorted order (pairRow, where combine returns it) is (pairs of experts < e) +
//           (pairs of e before p).
struct LocalTables {
  int16_t ids[EP_STAGE_SMEM_PAIRS];  // topkIdx (T*k <= EP_STAGE_SMEM_PAIRS only); ids out of range as -1
  int8_t slotOf[EP_MAX_EXPERTS];     // local: the current token's slot naming each expert, or -1
  int hist[EP_MAX_EXPERTS + 1];      // pairs per expert (bookkeeping), or their exclusive prefix (staged, packed rows)
  int run[EP_MAX_EXPERTS];           // staged: pairs per expert in the tokens before InBlockDests::cursor
  int before[EP_MAX_TOPK];          // per slot of the current token: pairs of its expert in earlier tokens
  int from[EP_MAX_TOPK];            // ... and from this token on (the pair itself included)
  int scratch[33];                  // block_exclusive_scan
  int bad;                          // bookkeeping: first pair with a bad or repeated id, INT_MAX if none
  int rows;                         // bookkeeping: pairs with an expert
  int capE;                         // bookkeeping: first expert (one rank) or destination (staged) over capacity
  uint64_t base;                    // this rank's heap
};

// Whether this call's ids live in S.ids (T*k <= EP_STAGE_SMEM_PAIRS); larger batches read topkIdx each
// time (L1/L2-resident: T*k <= EP_MAX_PAIRS is at most 128 KiB).
__device__ __forceinline__ bool ids_in_smem(const EpArgs& a) { return a.numTokens * a.topk <= EP_STAGE_SMEM_PAIRS; }

// Pair p's expert, -1 for none or an id out of range (S.ids' convention).
__device__ __forceinline__ int pair_expert(const EpArgs& a, const LocalTables& S, int p) {
  if (ids_in_smem(a)) return S.ids[p];
  const int v = __ldg((const int*)a.topkIdx + p);
  return v >= 0 && v < a.numExperts ? v : -1;
}

// f(p, e) for every pair p in [lo, hi) with an expert e, the block's threads striding (8 loads in flight).
template <class F>
__device__ __forceinline__ void each_pair_expert(const EpArgs& a, const LocalTables& S, int lo, int hi, F f) {
  const int B = blockDim.x;
  for (int p0 = lo + threadIdx.x; p0 < hi; p0 += 8 * B) {
    int e[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) e[u] = p0 + u * B < hi ? pair_expert(a, S, p0 + u * B) : -1;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (e[u] >= 0) f(p0 + u * B, e[u]);
  }
}

// topkIdx into S.ids when they fit (8 loads in flight per thread); returns this thread's first pair out of
// range (INT_MAX if none) and counts its pairs with an expert into *rows. The caller's barrier publishes S.
__device__ int load_ids(const EpArgs& a, LocalTables& S, int* rows) {
  const int N = a.numTokens * a.topk;
  host_requires(N <= EP_MAX_PAIRS && a.numExperts <= EP_MAX_EXPERTS && a.topk <= EP_MAX_TOPK,
                "load_ids: T*k <= EP_MAX_PAIRS, E <= EP_MAX_EXPERTS, k <= EP_MAX_TOPK");
  if (threadIdx.x == 0) S.base = __ldg((const uint64_t*)a.peerBases + a.rank);
  *rows = 0;
  return stage_ids((const int*)a.topkIdx, N, a.numExperts, ids_in_smem(a) ? S.ids : nullptr, rows);
}

// The per-expert pair counts of the call's ids, into S.hist[0..E) (every thread calls it; it ends with a
// barrier). S.hist must have been zeroed before the barrier that published S.ids.
__device__ __forceinline__ void count_experts(const EpArgs& a, LocalTables& S) {
  each_pair_expert(a, S, 0, a.numTokens * a.topk, [&](int, int e) { atomicAdd(&S.hist[e], 1); });
  __syncthreads();
}

// The bookkeeping block's first half, shared by both: loads and validates the ids (planRouting's order:
// the first pair out of range, or naming an expert an earlier slot of its token named, decides) and reports
// a bad one as the call's error. `call` is the call's count; begin: also begin it (begin_call: one rank).
// Returns true in every thread when the call goes on (ids valid, the host did not abort it); then S.rows
// holds the pairs with an expert and S.hist is zero, ready for count_experts.
__device__ bool check_ids(const EpArgs& a, LocalTables& S, uint64_t* call, bool begin) {
  wait_for_prior();  // (a no-op unless launched as a programmatic dependent)
  const int tid = threadIdx.x, B = blockDim.x, lane = tid & 31;
  const int E = a.numExperts, K = a.topk, N = a.numTokens * K;
  if (tid == 0) {
    S.bad = INT_MAX;
    S.rows = 0;
    S.capE = INT_MAX;
  }
  for (int e = tid; e <= E; e += B) S.hist[e] = 0;
  int rows = 0;
  int bad = load_ids(a, S, &rows);
  __syncthreads();
  for (int p = tid; p < N; p += B) {  // an expert an earlier slot of the same token named
    const int e = pair_expert(a, S, p);
    if (e < 0) continue;
    for (int q = p - p % K; q < p; ++q)
      if (pair_expert(a, S, q) == e) {
        bad = min(bad, p);
        break;
      }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    bad = min(bad, __shfl_xor_sync(FULL_MASK, bad, o));
    rows += __shfl_xor_sync(FULL_MASK, rows, o);
  }
  if (lane == 0) {
    if (bad != INT_MAX) atomicMin(&S.bad, bad);
    atomicAdd(&S.rows, rows);
  }
  __syncthreads();
  bad = S.bad;
  EpState* st = state_of(a);
  if (tid == 0) {
    if (begin) *call = begin_call(st);
    const uint32_t slot = (uint32_t)(*call & 1u);
    if (host_abort(a) != 0) {
      mark_host_abort(a);
    } else if (bad != INT_MAX) {
      const int v = __ldg((const int*)a.topkIdx + bad);
      const uint32_t code = (v < -1 || v >= E) ? EP_ERR_EXPERT_ID : EP_ERR_DUPLICATE;
      report_error(a, code, (uint32_t)a.rank, slot, *call, bad / K, bad % K, (uint32_t)v);
    }
  }
  return host_abort(a) == 0 && bad == INT_MAX;
}

// ep_dispatch_local's bookkeeping block: what ep_route does for one rank, in planRouting's order of errors
// (ids, then the rows for the destination, then expert capacity).
__device__ void local_bookkeeping(const EpArgs& a, LocalTables& S) {
  const int tid = threadIdx.x, B = blockDim.x;
  const int E = a.numExperts;
  uint64_t call = 0;
  if (!check_ids(a, S, &call, true)) return;  // the call is off
  if (S.rows > a.maxRowsPerPeer) {
    if (tid == 0) report_error(a, EP_ERR_CAPACITY, 0u, (uint32_t)(call & 1u), call, 0, S.rows, EP_CAPACITY_AUX_SEND);
    return;
  }
  count_experts(a, S);
  int* counts = (int*)a.expertCounts;
  int* splits = (int*)a.recvSplits;  // [1][E + 1]: rows per expert, then m_st = 0
  for (int e = tid; e < E; e += B) {
    const int c = S.hist[e];
    counts[e] = c;
    splits[e] = c;
    if (c > a.expertCapacity) atomicMin(&S.capE, e);
  }
  if (tid == 0) splits[E] = 0;
  __syncthreads();
  if (tid == 0 && S.capE != INT_MAX) {
    // its rows are not stored (the row blocks drop them) and the combine of this call aborts
    report_error(a, EP_ERR_CAPACITY, 0u, (uint32_t)(call & 1u), call, S.capE, S.hist[S.capE], EP_CAPACITY_AUX_EXPERT);
  }
  block_exclusive_scan(S.hist, E, S.scratch);  // (its first barrier orders the read of S.hist above)
  for (int e = tid; e < E; e += B) ((int*)a.expertOffsets)[e] = (int)expert_start(a, e, S.hist[e]);
}

// ep_stage_send's bookkeeping block: the ids, then maxRowsPerPeer for every destination (the first one over
// it is reported, as ep_route does), then each destination's split record (its local experts' counts, then
// m_st) into its stage. On any error nothing is written to peers: the last block's signal carries the abort.
__device__ void stage_bookkeeping(const EpArgs& a, LocalTables& S, uint64_t call) {
  const int tid = threadIdx.x, B = blockDim.x, lane = tid & 31, warp = tid >> 5;
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  if (tid == 0) clear_error(state_of(a));  // (no other block reports before the last block's wait)
  __syncthreads();
  if (!check_ids(a, S, &call, false)) return;
  count_experts(a, S);
  block_exclusive_scan(S.hist, E, S.scratch);  // hist[e] = pairs of experts < e
  for (int d = tid; d < W; d += B)
    if (S.hist[(d + 1) * EPR] - S.hist[d * EPR] > a.maxRowsPerPeer) atomicMin(&S.capE, d);
  __syncthreads();
  const uint64_t slot = call & 1u;
  if (S.capE != INT_MAX) {
    if (tid == 0) {
      const int d = S.capE;
      report_error(a, EP_ERR_CAPACITY, (uint32_t)d, (uint32_t)slot, call, d, S.hist[(d + 1) * EPR] - S.hist[d * EPR],
                   EP_CAPACITY_AUX_SEND);
    }
    return;
  }
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const uint64_t recBytes = (uint64_t)(EPR + 1) * 4u;
  for (int d = warp; d < W; d += B >> 5) {
    char* rec = (char*)(__ldg(peer + d) + a.stageSplitsOff + slot * a.stageSplitsSlot + (uint64_t)a.rank * recBytes);
    for (int le = lane; le <= EPR; le += 32) {
      const int e = d * EPR + le;
      st_u32(rec + (uint64_t)le * 4u, (uint32_t)(le < EPR ? S.hist[e + 1] - S.hist[e] : S.hist[d * EPR]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// De-duplication (EpArgs.dedup, staged only, k <= 32): a token crosses to each owner once. Of a token's
// slots naming experts of one owner, the first (its carrier slot) carries the row; the owner's stage
// learns, for every row, the row that carries its data (stageCarrier) and, for every carrier row, a
// record: the origin's combine row (t*k + carrier slot), then per slot the row in this rank's order for
// that owner (or -1) and the router weight, from which the owner pre-reduces the token's outputs.

// The lowest lane (< k) whose key equals mine: the carrier slot of my owner. Keys of lanes without a row
// are unique (-1 - lane), so such a lane leads itself. Every lane of the warp must call it (it shuffles
// over the full warp: a lane that skips it leaves the others waiting forever).
__device__ __forceinline__ int carrier_lane(int key, int k) {
  int lead = threadIdx.x & 31;
  for (int u = 0; u < k; ++u) {
    const int other = __shfl_sync(FULL_MASK, key, u);
    if (other == key && u < lead) lead = u;
  }
  return lead;
}

// Warp 0 of a staged row block, once per token (lane = slot j): every stored row's carrier, and every
// carrier's record, into the owners' stages. `base` is owner d's heap, r my row for d, r0 its carrier's.
__device__ __forceinline__ void dedup_books(const EpArgs& a, int t0, uint64_t slot, uint64_t base, int d, int r,
                                            int r0, bool valid, bool carrier) {
  const int lane = threadIdx.x & 31, K = a.topk;
  const uint64_t me = (uint64_t)a.rank * a.stageRows;
  const float w = lane < K ? __ldg((const float*)a.topkWeights + t0 + lane) : 0.0f;
  if (valid) st_u32((char*)(base + a.stageCarrierOff + slot * a.stageCarrierSlot + (me + r) * 4u), (uint32_t)r0);
  for (uint32_t cars = __ballot_sync(FULL_MASK, valid && carrier); cars != 0; cars &= cars - 1) {
    const int c = __ffs(cars) - 1;
    const int dc = __shfl_sync(FULL_MASK, d, c);
    const uint64_t rec = __shfl_sync(FULL_MASK, base, c) + a.stageRecordsOff + slot * a.stageRecordsSlot +
                         (me + (uint64_t)__shfl_sync(FULL_MASK, r0, c)) * (uint64_t)a.recordBytes;
    const bool ours = valid && d == dc;
    if (lane == c) st_u32((char*)rec, (uint32_t)(t0 + c));
    if (lane < K) {
      st_u32((char*)rec + 4u + 4u * lane, (uint32_t)(ours ? r : -1));
      st_u32((char*)rec + 4u + 4u * (K + lane), __float_as_uint(ours ? w : 0.0f));
    }
  }
}

// Where a row block learns the destinations of its tokens by routing them itself (see above). Staged:
// the block's histogram prefix is built once, in go(), which also reads the call count (the stage slot).
template <bool Staged>
struct InBlockDests {
  LocalTables& S;
  uint64_t call;  // staged: this call's count (its parity is the stage slot), from go()
  int state;      // -1: ids not loaded yet; then 1 (rows are stored) or 0 (the host aborted the call)
  int marked;     // local: the token whose slots slotOf holds, or -1
  int counted;    // the token whose pairs before/from (local) or run (staged) hold, or -1 (a block may take
                  // several chunks of one token)
  int cursor;     // staged: S.run counts the pairs of the tokens before this one (a block's tokens only grow)
  __device__ explicit InBlockDests(LocalTables& s)
      : S(s), call(0), state(-1), marked(-1), counted(-1), cursor(0) {}
  __device__ __forceinline__ int stride() const { return gridDim.x - 1; }  // the last block keeps the books
  // Slots 0..7 of token t straight from topkIdx (the same bytes in every thread: L1 broadcasts), -1 past k.
  __device__ __forceinline__ static void first_ids(const EpArgs& a, int t, int (&v)[8]) {
    const int* tok = (const int*)a.topkIdx + (uint64_t)t * a.topk;
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = u < a.topk ? __ldg(tok + u) : -1;
  }
  // Every entry of slotOf rewritten for token t by the thread that owns it (e = tid + i*B): the slot of
  // t naming e, the last one if t repeats e (the call then fails as DUPLICATE), else -1. No entry has
  // two writers, so marking needs no barrier of its own; the caller's barrier publishes it. `first`
  // holds slots 0..7 (first_ids, loaded by the caller); later slots are read 8 at a time.
  __device__ __forceinline__ void mark(const EpArgs& a, int t, const int (&first)[8]) {
    const int K = a.topk, E = a.numExperts;
    const int* tok = (const int*)a.topkIdx + (uint64_t)t * K;
    for (int j0 = 0; j0 < K; j0 += 8) {
      int v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = j0 == 0 ? first[u] : j0 + u < K ? __ldg(tok + j0 + u) : -1;
      for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int slot = j0 == 0 ? -1 : S.slotOf[e];
#pragma unroll
        for (int u = 0; u < 8; ++u) slot = v[u] == e ? j0 + u : slot;
        S.slotOf[e] = (int8_t)slot;
      }
    }
    for (int j = threadIdx.x; j < K; j += blockDim.x) S.before[j] = S.from[j] = 0;
    marked = t;
  }
  __device__ __forceinline__ bool go(const EpArgs& a, int t) {
    if (state < 0) {
      wait_for_prior();  // (a no-op unless launched as a programmatic dependent)
      if (Staged) call = read_calls(state_of(a)) + 1;
      int first[8];
      if (!Staged) first_ids(a, t, first);  // these loads and load_ids' go out together; one barrier publishes both
      // staged, and one rank's packed experts: where each expert's rows start, from a histogram
      const bool prefix = Staged || a.packedExperts;
      if (prefix)
        for (int e = threadIdx.x; e <= a.numExperts; e += blockDim.x) S.hist[e] = 0;
      if (Staged)
        for (int e = threadIdx.x; e < a.numExperts; e += blockDim.x) S.run[e] = 0;
      if (ids_in_smem(a)) {
        int rows;
        load_ids(a, S, &rows);
      } else if (threadIdx.x == 0) {  // (the ids stay in L2; the bookkeeping block validates them)
        S.base = __ldg((const uint64_t*)a.peerBases + a.rank);
      }
      if (!Staged) mark(a, t, first);
      __syncthreads();
      if (prefix) {
        count_experts(a, S);
        block_exclusive_scan(S.hist, a.numExperts, S.scratch);
      }
      state = host_abort(a) == 0 ? 1 : 0;
      if (blockIdx.x == 0 && threadIdx.x == 0 && state) stamp(a, EP_STAMP_ROWS_BEGIN);
    }
    return state != 0;
  }
  // Token t's rows, then warp 0 turns the counts into rows (and pairDest or pairRow, by the block of the
  // first chunk). Local: every pair of the call counted against t's marked slots (one shared atomic per
  // match). Staged: S.run brought up to t, adding the pairs since the block's last token (the loop's
  // barrier ordered warp 0's reads of the last token's counts), so a block reads each id once.
  __device__ void dests(const EpArgs& a, int t, bool firstChunk, DestList& L, int buf) {
    const int tid = threadIdx.x, K = a.topk, N = a.numTokens * K, t0 = t * K;
    if (Staged && counted != t) {
      each_pair_expert(a, S, cursor * K, t0, [&](int, int e) { atomicAdd(&S.run[e], 1); });
      __syncthreads();
      cursor = counted = t;
    }
    if (!Staged && counted != t) {
      if (marked != t) {  // a later token of this block (the loop's barrier ordered the last one's reads)
        int first[8];
        first_ids(a, t, first);
        mark(a, t, first);
        __syncthreads();
      }
      for (int p = tid; p < N; p += blockDim.x) {
        const int e = S.ids[p];
        const int j = e >= 0 ? S.slotOf[e] : -1;
        if (j >= 0) atomicAdd(p < t0 ? &S.before[j] : &S.from[j], 1);
      }
      __syncthreads();
      counted = t;
    }  // (another chunk of the token counted last: its counts stand)
    if (tid >= 32) return;
    const int lane = tid;
    int n = 0;
    for (int j0 = 0; j0 < K; j0 += 32) {
      const int j = j0 + lane;
      const int e = j < K ? pair_expert(a, S, t0 + j) : -1;
      // local: a slot repeating an expert stores nothing; staged: such a call fails (the bookkeeping block
      // reports it), and both slots' rows land in the same place, inside the stage
      const bool mine = e >= 0 && (Staged || S.slotOf[e] == j);
      uint64_t row = 0, sc = 0;
      bool valid = false;  // this slot's row is stored (dedup: only the token's carrier row for its owner)
      if (!Staged) {
        int r = -1;
        if (mine && S.before[j] + S.from[j] <= a.expertCapacity) r = (int)expert_start(a, e, a.packedExperts ? S.hist[e] : 0) + S.before[j];
        if (firstChunk && j < K) ((int*)a.pairDest)[t0 + j] = r;
        valid = r >= 0;
        row = S.base + a.expertXOff + (uint64_t)r * a.dispatchRowBytes;
        sc = S.base + a.expertScalesOff + (uint64_t)r * (uint64_t)a.groupsPerRow * 4u;
      } else {
        const int d = mine ? e / a.expertsPerRank : 0;
        const int before = mine ? S.run[e] : 0;
        int r = mine ? S.hist[e] - S.hist[d * a.expertsPerRank] + before : -1;
        valid = mine && r < a.stageRows;
        const uint64_t slot = call & 1u;
        const uint64_t base = __ldg((const uint64_t*)a.peerBases + d);
        if (firstChunk && j < K) {
          ((int*)a.pairRow)[t0 + j] = valid ? S.hist[e] + before : -1;
          if (valid && d == a.rank && !a.dedup) ((int*)a.selfPairs)[r] = t0 + j;
        }
        if (a.dedup) {  // (k <= 32: this is the only pass)
          const int lead = carrier_lane(valid ? d : -1 - lane, K);
          const int r0 = __shfl_sync(FULL_MASK, r, lead);
          if (firstChunk) dedup_books(a, t0, slot, base, d, r, r0, valid, lead == lane);
          valid = valid && lead == lane;
        }
        if (valid) {
          const uint64_t src = (uint64_t)a.rank * a.stageRows + r;
          row = base + a.stageDataOff + slot * a.stageDataSlot + src * a.dispatchRowBytes;
          sc = base + a.stageScalesOff + slot * a.stageScalesSlot + src * (uint64_t)a.groupsPerRow * 4u;
        }
      }
      const uint32_t bal = __ballot_sync(FULL_MASK, valid);
      if (valid) {
        const int pos = n + __popc(bal & lanemask_lt());
        L.row[buf][pos] = row;
        L.scale[buf][pos] = sc;
      }
      n += __popc(bal);
    }
    if (lane == 0) L.n[buf] = n;
  }
};

// ---------------------------------------------------------------------------------------------
// Receive-side tables (ep_recv_view, ep_combine_send), built by every block from recvSplits (the split
// records ep_route derived from every rank's counts):
//   pre[q]  (q = s*EPR + le): exclusive prefix of counts in source-major order; pre[E] = rows received.
//           Rows from s are the flat range [pre[s*EPR], pre[(s+1)*EPR]), expert-sorted.
//   preT[le*W + s]: exclusive prefix in expert-major order; the expert-major position of row i of
//           (s, le) is preT[le*W + s] - preT[le*W] + i, and expertCounts[le] = preT[(le+1)*W] - preT[le*W].
//   mst[s]: m_st of s (where its rows for me start in its own send order), computed by ep_route.
struct RecvTables {
  int pre[EP_MAX_EXPERTS + 1];
  int preT[EP_MAX_EXPERTS + 1];
  int mst[EP_MAX_EXPERTS];
  int scratch[33];
  int flag;
};

// From split records [W][splitsPerPeer] at `splits`: written by an earlier kernel of this rank on the
// stream (recvSplits: plain loads), or by peers before the signals this rank acquired (the stage: `peerWritten`,
// read at L2).
__device__ void build_tables_from(const EpArgs& a, RecvTables& R, const int* splits, bool peerWritten) {
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  auto load = [&](int i) { return peerWritten ? (int)ld_cg_u32(splits + i) : splits[i]; };
  for (int q = threadIdx.x; q < E; q += blockDim.x) {
    const int s = q / EPR, le = q - s * EPR;
    const int c = load(s * a.splitsPerPeer + le);
    R.pre[q] = c;
    R.preT[le * W + s] = c;
  }
  for (int s = threadIdx.x; s < W; s += blockDim.x) R.mst[s] = load(s * a.splitsPerPeer + EPR);
  block_exclusive_scan(R.pre, E, R.scratch);
  block_exclusive_scan(R.preT, E, R.scratch);
}

// From recvSplits, written by this call's ep_route or ep_stage_pack (an earlier kernel on the stream).
__device__ void build_tables(const EpArgs& a, RecvTables& R) {
  build_tables_from(a, R, (const int*)a.recvSplits, false);
}

// Row g of the flat received order -> (source s, local expert le, index within s's rows, its row in expertX).
struct RowLoc {
  int s, le, iSrc;
  uint64_t row;
};
__device__ __forceinline__ RowLoc locate(const RecvTables& R, const EpArgs& a, int g) {
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  int lo = 0, hi = E;  // pre[lo] <= g < pre[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (R.pre[mid] <= g) lo = mid;
    else hi = mid;
  }
  RowLoc r;
  r.s = lo / EPR;
  r.le = lo - r.s * EPR;
  r.iSrc = g - R.pre[r.s * EPR];
  r.row = expert_start(a, r.le, R.preT[r.le * W]) + (R.preT[r.le * W + r.s] - R.preT[r.le * W]) + (g - R.pre[lo]);
  return r;
}

// One warp copies segment `seg` (32 lanes x SEG_VECS vectors) of a row; all loads before all stores.
constexpr int SEG_VECS = 4;
template <int VB, bool Coherent>
__device__ __forceinline__ void copy_segment(char* dst, const char* src, uint64_t rowBytes, int seg, int lane) {
  using V = Vec<VB>;
  typename V::T v[SEG_VECS];
  const uint64_t base = (uint64_t)seg * 32u * SEG_VECS * VB;
#pragma unroll
  for (int u = 0; u < SEG_VECS; ++u) {
    const uint64_t off = base + (uint64_t)(u * 32 + lane) * VB;
    if (off < rowBytes) v[u] = Coherent ? V::ld_cg(src + off) : V::ld_nc(src + off);
  }
#pragma unroll
  for (int u = 0; u < SEG_VECS; ++u) {
    const uint64_t off = base + (uint64_t)(u * 32 + lane) * VB;
    if (off < rowBytes) V::st(dst + off, v[u]);
  }
}

template <int VB>
__device__ void combine_send_rows(const EpArgs& a, uint64_t slot, const RecvTables& R) {
  const int E = a.numExperts, EPR = a.expertsPerRank;
  const int lane = threadIdx.x & 31;
  const int warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.combineRowBytes;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  // Rows that came from this rank itself are not copied: ep_combine_reduce reads them straight from
  // expertOut (same values, so the same result), which saves a round trip through HBM.
  const int selfLo = R.pre[a.rank * EPR], selfRows = R.pre[(a.rank + 1) * EPR] - selfLo;
  const int rows = R.pre[E] - selfRows;
  // 32-bit: items <= rows received * segments, far below 2^31 for any heap that fits a GPU.
  const uint32_t items = (uint32_t)rows * (uint32_t)segs;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const char* expertOut = (const char*)a.expertOut;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it < items;
       it += gridDim.x * warpsPerBlock) {
    // from source rank + 1 on (the rows after this rank's own), so the ranks write to different peers at once
    int g = (int)(it / (uint32_t)segs) + selfLo;
    if (g >= rows) g -= rows;
    const int seg = (int)(it % (uint32_t)segs);
    if (g >= selfLo) g += selfRows;
    const RowLoc l = locate(R, a, g);
    const uint64_t srcRow = l.row;
    const uint64_t dstRow = (uint64_t)R.mst[l.s] + l.iSrc;  // the row in s's own expert-sorted order
    char* dst = (char*)(__ldg(peer + l.s) + a.combineRecvOff + slot * a.combineRecvSlot);
    copy_segment<VB, false>(dst + dstRow * rowBytes, expertOut + srcRow * rowBytes, rowBytes, seg, lane);
  }
}

// carrierPlans (dedup): u32 counts[W] (padded to 16 bytes; ep_stage_send's tail zeroes them, ep_stage_pack
// counts), then [W][stageRows] plans of recordBytes: source s's carriers in region s, in any order.
// A plan takes 4 * (2 + 2k) bytes, at most recordBytes = alignUp(4 * (1 + 2k), 16): plans use that stride.
__device__ __forceinline__ uint32_t* plan_counts(const EpArgs& a) { return (uint32_t*)a.carrierPlans; }
__device__ __forceinline__ char* plan_at(const EpArgs& a, int s, uint32_t i) {
  const uint64_t head = ((uint64_t)a.world * 4u + 15u) & ~(uint64_t)15u;
  return (char*)a.carrierPlans + head + ((uint64_t)s * a.stageRows + i) * (uint64_t)a.recordBytes;
}

// dedup, ep_stage_pack (one warp, every lane): carrier row `row` of source s (in this call's stage slot)
// gets the next plan of s for ep_combine_send: s, the origin's row, then per slot the expertOut row of the
// token's row for this rank (its expertX row: locate() through this call's tables), or -1, and the weight.
__device__ void write_plan(const EpArgs& a, const RecvTables& R, uint64_t own, int s, uint64_t row, uint64_t slot) {
  const int lane = threadIdx.x & 31, K = a.topk, EPR = a.expertsPerRank;
  const char* rec = (const char*)(own + a.stageRecordsOff + slot * a.stageRecordsSlot) + row * (uint64_t)a.recordBytes;
  uint32_t ci = 0;
  if (lane == 0) ci = atomicAdd(plan_counts(a) + s, 1u);
  ci = __shfl_sync(FULL_MASK, ci, 0);
  char* plan = plan_at(a, s, ci);
  if (lane < K) {  // (k <= 32 with dedup)
    const int r = (int)ld_cg_u32(rec + 4u + 4u * lane);  // the sender's record: read at L2
    const uint32_t w = ld_cg_u32(rec + 4u + 4u * (K + lane));
    int x = -1;
    if (r >= 0) {
      x = (int)locate(R, a, R.pre[s * EPR] + r).row;
    }
    ((int*)(plan + 8u))[lane] = x;
    ((uint32_t*)(plan + 8u))[K + lane] = w;
  }
  if (lane == 0) {
    ((int*)plan)[0] = s;
    ((int*)plan)[1] = (int)ld_cg_u32(rec);
  }
}

// dedup: for each carrier plan the pack wrote, the token's outputs from this rank's experts, weighted and
// summed in f32 in slot order (the plan's rows and weights), rounded to bf16 once and stored into the
// source's combine buffer at the origin's row (t*k + carrier slot); a token from this rank itself included
// (stored locally). One warp per (carrier, 2 KiB segment of the output row); the plan names expertOut rows
// directly, so a warp's loads wait on one load of the plan, and up to four rows' loads are in flight.
// Sources are taken from this rank + 1 on (this rank last), so that the ranks write to different peers at
// any moment instead of all to source 0 first. Every thread of the block calls it (R.pre: scratch).
__device__ void combine_send_partials(const EpArgs& a, uint64_t slot, RecvTables& R) {
  const int K = a.topk, W = a.world;
  const int lane = threadIdx.x & 31;
  // R.pre[i]: where the carriers of source (rank + 1 + i) % W start in the order this rank sends them
  for (int i = threadIdx.x; i < W; i += blockDim.x) R.pre[i] = (int)plan_counts(a)[(a.rank + 1 + i) % W];
  block_exclusive_scan(R.pre, W, R.scratch);
  const uint32_t carriers = (uint32_t)R.pre[W];
  const int warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.combineRowBytes;
  constexpr uint64_t SEG = 32u * SEG_VECS * 16u;
  const int segs = (int)((rowBytes + SEG - 1) / SEG);
  const uint32_t items = carriers * (uint32_t)segs;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const char* expertOut = (const char*)a.expertOut;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it < items;
       it += gridDim.x * warpsPerBlock) {
    const int ci = (int)(it / (uint32_t)segs), seg = (int)(it % (uint32_t)segs);
    int lo = 0, hi = W;  // R.pre[lo] <= ci < R.pre[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (R.pre[mid] <= ci) lo = mid;
      else hi = mid;
    }
    const char* plan = plan_at(a, (a.rank + 1 + lo) % W, (uint32_t)(ci - R.pre[lo]));
    // lane j: slot j's expertOut row (or -1) and its weight; lane 0 also the source, lane 1 the origin's row
    int rj = -1, head = 0;
    float wj = 0.0f;
    if (lane < K) {
      rj = __ldg((const int*)(plan + 8u + 4u * lane));
      wj = __ldg((const float*)(plan + 8u + 4u * (K + lane)));
    }
    if (lane < 2) head = __ldg((const int*)plan + lane);
    const int s = __shfl_sync(FULL_MASK, head, 0), back = __shfl_sync(FULL_MASK, head, 1);
    const uint64_t src = rj >= 0 ? (uint64_t)expertOut + (uint64_t)rj * rowBytes : 0u;
    const uint64_t base = (uint64_t)seg * SEG;
    float acc[SEG_VECS][8];
#pragma unroll
    for (int u = 0; u < SEG_VECS; ++u)
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[u][i] = 0.0f;
    // the slots in order (the reduction order), four rows' loads in flight
    constexpr int ROWS = 4;
    for (uint32_t left = __ballot_sync(FULL_MASK, rj >= 0); left != 0;) {
      uint4 v[ROWS][SEG_VECS];
      float w[ROWS];
      uint32_t has = 0;
#pragma unroll
      for (int q = 0; q < ROWS; ++q) {
        const int j = left ? __ffs(left) - 1 : 0;
        const uint64_t p = __shfl_sync(FULL_MASK, src, j);
        w[q] = __shfl_sync(FULL_MASK, wj, j);
        if (left) {
          has |= 1u << q;
#pragma unroll
          for (int u = 0; u < SEG_VECS; ++u) {
            const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
            if (off < rowBytes) v[q][u] = ld_nc_v4((const char*)p + off);
          }
        }
        left &= left - 1;
      }
#pragma unroll
      for (int q = 0; q < ROWS; ++q) {
        if (!(has >> q & 1u)) continue;
#pragma unroll
        for (int u = 0; u < SEG_VECS; ++u) {
          const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
          if (off >= rowBytes) continue;
          float x[8];
          bf16x8_to_f32(v[q][u], x);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[u][i] = __fadd_rn(acc[u][i], __fmul_rn(w[q], x[i]));
        }
      }
    }
    char* dst = (char*)(__ldg(peer + s) + a.combineRecvOff + slot * a.combineRecvSlot) + (uint64_t)back * rowBytes;
#pragma unroll
    for (int u = 0; u < SEG_VECS; ++u) {
      const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
      if (off < rowBytes) st_v4(dst + off, pack_bf16x8(acc[u]));
    }
  }
}

}  // namespace


// =============================================================================================
// 1. ep_route: validate topkIdx, count pairs per expert, prefix-sum, stable pair -> row, capacity; send
// the counts to every peer and receive theirs; from all counts, each pair's row in its owner's expertX.
//
// One block of up to EP_ROUTE_THREADS (1024) threads. Dynamic shared memory (4*(NW*E + E + 1) + 2*N
// bytes, NW = blockDim/32, N = T*k), and static sDelta[E], sMst[W]:
//   hist[NW][E]  per-warp histograms, later per-warp running row bases
//   off[E+1]     exclusive prefix sum of the counts
//   idx[N]       topkIdx as int16 (ids are < 1024), invalid ids stored as -1
// Warp w owns the contiguous pair segment [w*S, (w+1)*S), S a multiple of 128, so "pairs of expert e in
// increasing p" = warps in order, and inside a warp 32-pair chunks in order, and inside a chunk lanes in
// order (lanes of the same expert found with ballots, match_keys, + popc of the lower lanes). Row of pair p = off[e] + pairs of e in earlier
// warps + pairs of e earlier in this warp: exactly planRouting's stable order.
extern "C" __global__ void __launch_bounds__(EP_ROUTE_THREADS, 1) ep_route(const __grid_constant__ EpArgs a) {
  extern __shared__ __align__(16) int dyn[];
  __shared__ int sScratch[33];
  __shared__ int sBad;   // first offending pair (ids), INT_MAX if none
  __shared__ int sCap;   // first destination over capacity
  __shared__ int sCapE;  // first local expert over capacity
  __shared__ int sPeerErr;  // a count wait failed (and was reported): the call is off
  __shared__ int sMst[EP_MAX_EXPERTS];    // m_st of each source (W <= E)
  __shared__ int sDelta[EP_MAX_EXPERTS];  // per expert: destination row minus send row, or INT_MIN
  __shared__ int sStart[EP_MAX_EXPERTS + 1];  // packed: rows of all experts before each one (its start, + the owner's)
  __shared__ unsigned long long sCall;
  EP_PROBE_AT(0);
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  // an ep_dispatch launched with programmatic serialization (bench/micro/kernel_probe.cu does) may
  // start loading and quantising its rows
  // now; it waits for this kernel before it reads anything written here.
  allow_dependents();

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int B = blockDim.x, NW = B >> 5;
  const int E = a.numExperts, K = a.topk, W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const int N = a.numTokens * K;
  const int* topk = (const int*)a.topkIdx;
  EpState* st = state_of(a);
  const uint64_t* peer = (const uint64_t*)a.peerBases;

  // A host that passed too little shared memory, or sizes beyond the limits, is a programming
  // error of the host, not a user input error: stop loudly instead of corrupting memory.
  const uint64_t need = 4ull * ((uint64_t)NW * E + E + 1) + 2ull * (uint64_t)N;
  host_requires(need <= dynamic_smem_bytes() && E <= EP_MAX_EXPERTS && K <= EP_MAX_TOPK && N <= EP_MAX_PAIRS && !(B & 31),
                "ep_route: dynamic smem >= the ids and histograms, E, k, T*k within limits, block a multiple of 32");

  int* hist = dyn;
  int* off = hist + NW * E;
  int16_t* idx = (int16_t*)(off + E + 1);

  if (tid == 0) {
    // Only this thread touches dispatchCalls in this kernel; the others get the call from sCall.
    const uint64_t call = begin_call(st);
    sCall = call;
    sBad = INT_MAX;
    sCap = INT_MAX;
    sCapE = INT_MAX;
    sPeerErr = 0;
    if (host_abort(a) != 0) mark_host_abort(a);  // after the clear above (same thread)
  }
  for (int i = tid; i < NW * E; i += B) hist[i] = 0;
  for (int s = tid; s < W; s += B) sMst[s] = 0;
  bool ok = host_abort(a) == 0;

  // Phase 1 (overlapping the set-up above): load ids (8 loads in flight per thread), check the range;
  // the first bad pair of this thread joins sBad after the barrier that initialises it.
  int myBad = INT_MAX, myRows = 0;
  if (ok) myBad = stage_ids(topk, N, E, idx, &myRows);
  __syncthreads();  // set-up, hist zeroes and idx visible to all
  EP_PROBE_AT(1);
  const uint64_t call = sCall;
  const uint32_t slot = (uint32_t)(call & 1u);
  if (myBad != INT_MAX) atomicMin(&sBad, myBad);

  // Segments: S pairs per warp, a multiple of 128 (the 4 x 32 pairs one loop step takes), NWu warps in
  // use: fewer warps for small N keeps the per-expert loops over warps below short.
  const int S = N > 0 ? (((N + NW - 1) / NW + 127) & ~127) : 128;
  const int NWu = (N + S - 1) / S;
  const int segLo = warp * S, segHi = min(N, segLo + S);
  const uint32_t lt = lanemask_lt();
  const int keyBits = 32 - __clz(E + 1);  // keys e + 2 in [0, E + 2): e = -2 past the segment, -1 dropped
  EP_PROBE_AT(2);

  if (ok) {
    // Phase 2: per-warp histograms and the duplicate check, 4 chunks of 32 pairs at a time.
    if (warp < NWu) {
      for (int c0 = segLo; c0 < segHi; c0 += 128) {
        int e[4];
        uint32_t m[4];
        load_chunks(idx, c0, segHi, lane, keyBits, e, m);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (e[u] >= 0) {
            const int c = c0 + u * 32, p = c + lane;
            const int tokStart = p - p % K;
            // same expert in a lower lane of this chunk that belongs to my token?
            const uint32_t tokLanes = tokStart > c ? ~((1u << (tokStart - c)) - 1u) : FULL_MASK;
            bool dup = (m[u] & lt & tokLanes) != 0;
            for (int q = tokStart; !dup && q < c; ++q) dup = idx[q] == e[u];  // token began in an earlier chunk
            if (dup) atomicMin(&sBad, p);
            if (lane == __ffs(m[u]) - 1) atomicAdd(&hist[warp * E + e[u]], __popc(m[u]));
          }
        }
      }
    }
    __syncthreads();
    if (sBad != INT_MAX) {
      // planRouting's order: the first pair p that is out of range, or names an expert an earlier
      // slot of its token named, decides; range is checked before duplicates for that pair.
      if (tid == 0) {
        const int p = sBad, e = __ldg(topk + p);
        const uint32_t code = (e < -1 || e >= E) ? EP_ERR_EXPERT_ID : EP_ERR_DUPLICATE;
        report_error(a, code, (uint32_t)me, slot, call, p / K, p % K, (uint32_t)e);
      }
      ok = false;
    }
  }

  if (ok) {
    // Phase 3: totals, prefix sum, per-warp bases, capacity per destination.
  EP_PROBE_AT(3);
    for (int e = tid; e < E; e += B) {
      int s = 0;
#pragma unroll 8
      for (int w = 0; w < NWu; ++w) s += hist[w * E + e];
      off[e] = s;
    }
    block_exclusive_scan(off, E, sScratch);
    for (int e = tid; e < E; e += B) {
      int run = off[e];
      for (int w = 0; w < NWu; ++w) {
        const int c = hist[w * E + e];
        hist[w * E + e] = run;
        run += c;
      }
    }
    for (int d = tid; d < W; d += B)
      if (off[(d + 1) * EPR] - off[d * EPR] > a.maxRowsPerPeer) atomicMin(&sCap, d);
    __syncthreads();
    if (sCap != INT_MAX) {
      if (tid == 0) {
        const int d = sCap;
        report_error(a, EP_ERR_CAPACITY, (uint32_t)d, slot, call, d, off[(d + 1) * EPR] - off[d * EPR],
                     EP_CAPACITY_AUX_SEND);
      }
      ok = false;
    }
  }

  // Exchange: my E counts to every peer (counts[slot][me] in their heap), then the count signal; with
  // the abort bit and no counts when this call is off here. Sent as early as possible: the ranks
  // below run while the signals travel.
  EP_PROBE_AT(4);
  for (int d = warp; d < W; d += NW) {
    if (d == me) continue;  // my own counts stay in shared memory
    const uint64_t base = __ldg(peer + d);
    if (ok) {
      char* rec = (char*)(base + a.countsOff + slot * a.countsSlot + (uint64_t)me * E * 4u);
      for (int e = lane; e < E; e += 32) st_u32(rec + (uint64_t)e * 4u, (uint32_t)(off[e + 1] - off[e]));
    }
    __syncwarp();  // the lanes' count stores happen-before lane 0's fence
    if (lane == 0) {
      fence_sys();
      signal((uint64_t*)(base + a.countSignalOff + slot * a.countSignalSlot + (uint64_t)me * 8u),
             ok ? call : (call | EP_ABORT_BIT));
    }
  }

  if (ok) {
    // Phase 4: stable ranks. Each warp walks its chunks in order; the lanes of one expert in a chunk
    // take consecutive rows from the warp's running base, and the lowest of them advances it.
    int* pairRow = (int*)a.pairRow;
    if (warp < NWu) {
      for (int c0 = segLo; c0 < segHi; c0 += 128) {
        int e[4];
        uint32_t m[4];
        load_chunks(idx, c0, segHi, lane, keyBits, e, m);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int p = c0 + u * 32 + lane;
          int b = 0;
          if (e[u] >= 0) {
            b = hist[warp * E + e[u]];
            pairRow[p] = b + __popc(m[u] & lt);
          } else if (p < segHi) {
            pairRow[p] = -1;
          }
          __syncwarp();  // every lane of this chunk has read its base before it moves
          if (e[u] >= 0 && lane == __ffs(m[u]) - 1) hist[warp * E + e[u]] = b + __popc(m[u]);
          __syncwarp();  // the new base is visible to the next chunk's lanes
        }
      }
    }
  }

  EP_PROBE_AT(5);
  if (tid == 0) stamp(a, EP_STAMP_COUNTS_SENT);
  // Wait for every peer's counts (bounded). Even a rank whose call is off waits, so that no count
  // store into this slot is still in flight when the call ends here.
  {
    const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.countSignalOff + slot * a.countSignalSlot);
    if (wait_for_sources(a, mine, me, call, slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH))
      sPeerErr = 1;
  }
  __syncthreads();  // every wait done (and phase 4's pairRow stores visible to the block)
  // The call is off here when any rank's routing failed (every rank saw the abort) or a wait timed out
  // (see routed()); this block made every such report itself, so shared memory tells (no global read).
  if (!ok || sPeerErr) return;
  EP_PROBE_AT(6);
  if (tid == 0) stamp(a, EP_STAMP_COUNTS_ARRIVED);

  // Phase 5: from every rank's counts, for each expert e: where my rows of e start in its owner's
  // expertX (delta[e] = that row minus my send row of e's first pair), or INT_MIN when e holds more
  // than expertCapacity rows (its owner fails the call; nothing is stored there).
  int* delta = sDelta;
  int* mst = sMst;
  const char* counts = (const char*)(__ldg(peer + me) + a.countsOff + slot * a.countsSlot);
  // rows of expert e from every source (written by peers before their release signal, which the waits
  // above acquired: read at L2)
  auto rowsFrom = [&](int s, int e) {
    return s == me ? off[e + 1] - off[e] : (int)ld_cg_u32(counts + ((uint64_t)s * E + e) * 4u);
  };
  if (a.packedExperts) {  // each owner's experts back to back: a prefix of the totals
    for (int e = tid; e < E; e += B) {
      int total = 0;
      for (int s = 0; s < W; ++s) total += rowsFrom(s, e);
      sStart[e] = total;
    }
    block_exclusive_scan(sStart, E, sScratch);
  }
  for (int e = tid; e < E; e += B) {
    const int owner = e / EPR, le = e - owner * EPR;
    int before = 0, total = 0;
    for (int s = 0; s < W; ++s) {
      const int c = rowsFrom(s, e);
      before += s < me ? c : 0;
      total += c;
      if (owner == me) ((int*)a.recvSplits)[s * a.splitsPerPeer + le] = c;
      if (e < me * EPR && c != 0) atomicAdd(&mst[s], c);  // m_st of source s: its rows before my experts
    }
    const bool over = total > a.expertCapacity;
    const int start = (int)expert_start(a, le, a.packedExperts ? sStart[e] - sStart[owner * EPR] : 0);
    delta[e] = over ? INT_MIN : start + before - off[e];
    if (owner == me) {
      ((int*)a.expertCounts)[le] = total;
      ((int*)a.expertOffsets)[le] = start;
      if (over) atomicMin(&sCapE, le);
    }
  }
  __syncthreads();
  for (int s = tid; s < W; s += B) ((int*)a.recvSplits)[s * a.splitsPerPeer + EPR] = mst[s];
  EP_PROBE_AT(7);
  if (sCapE != INT_MAX && tid == 0) {
    // Receive-side capacity (as routing.ts checkExpertCapacity), known to every rank from the counts:
    // senders skip the expert, and this rank fails its dispatch and tells every peer now that it
    // will not combine this call (as the cpu transport does). Its own rows still go to its peers.
    const int le = sCapE, e = me * EPR + le;
    int total = 0;
    for (int s = 0; s < W; ++s)
      total += s == me ? off[e + 1] - off[e] : (int)ld_cg_u32(counts + ((uint64_t)s * E + e) * 4u);
    report_error(a, EP_ERR_CAPACITY, (uint32_t)me, slot, call, e, total, EP_CAPACITY_AUX_EXPERT);
    for (int d = 0; d < W; ++d)
      if (d != me)
        signal((uint64_t*)(__ldg(peer + d) + a.combineSignalOff + slot * a.combineSignalSlot + (uint64_t)me * 8u),
               call | EP_ABORT_BIT);
  }

  // Phase 6: the destination row of every pair.
  const int* pairRow = (const int*)a.pairRow;
  int* pairDest = (int*)a.pairDest;
  for (int p0 = tid; p0 < N; p0 += 4 * B) {
    int r[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) r[u] = p0 + u * B < N ? pairRow[p0 + u * B] : 0;  // 4 loads in flight
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int p = p0 + u * B;
      if (p >= N) break;
      const int e = idx[p];
      const int d = e >= 0 ? delta[e] : INT_MIN;
      pairDest[p] = d == INT_MIN ? -1 : r[u] + d;
    }
  }
  EP_PROBE_AT(8);
  if (tid == 0) stamp(a, EP_STAMP_ROUTE_END);
}

// =============================================================================================
// 2. ep_dispatch: quantise (FP8) or copy (bf16) each token row once and store it straight into its row
// of expertX (and expertScales) in the heap of every rank that owns one of its experts. With W > 1 the
// last block signals every peer and waits for every peer's rows.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_dispatch(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  __shared__ int sLast;
  allow_dependents();  // a kernel launched after this one as a programmatic dependent waits for it itself
  // Nothing ep_route writes is read before D.go() (inside each path, after the first row's loads).
  PlannedDests D;
  dispatch_rows(a, L, D);
  // Every block waits for ep_route (go() here too: a block without rows has not asked yet), so that a
  // kernel launched as this one's programmatic dependent also finds ep_route's outputs. One rank: every
  // row is local, and the kernel boundary orders it before the next kernel.
  if (!D.go(a, 0) || a.world == 1) return;
  EpState* st = state_of(a);
  if (!finish_block(&st->doneBlocks[0], &sLast)) return;

  // Tail (one block): tell every peer my rows have landed, then wait for theirs.
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_TAIL);
  // (finish_block's atomic ordered every block's rows before these signals)
  const uint64_t call = read_calls(st);
  signal_and_wait_rows(a, call, call);
}

// =============================================================================================
// 2b. ep_dispatch_local: ep_route and ep_dispatch in one kernel, for one rank (W = 1) and small batches
// (T*k <= EP_LOCAL_MAX_PAIRS): each block routes its own tokens from all ids (InBlockDests above) instead
// of waiting for a single routing block; the last block keeps the books. Same outputs as ep_route +
// ep_dispatch, bit for bit, for a call that succeeds.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_dispatch_local(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  __shared__ LocalTables S;
  allow_dependents();
  // host errors: one block would keep the books and store no rows; the tables hold EP_LOCAL_MAX_PAIRS
  host_requires(gridDim.x >= 2 && a.world == 1 && a.numTokens * a.topk <= EP_LOCAL_MAX_PAIRS,
                "ep_dispatch_local: grid >= 2, W = 1, T*k <= EP_LOCAL_MAX_PAIRS");
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  if (blockIdx.x == gridDim.x - 1) {
    local_bookkeeping(a, S);
    return;
  }
  InBlockDests<false> D(S);
  dispatch_rows(a, L, D);
}

// =============================================================================================
// 2c. ep_stage_send (the staged protocol, W > 1): each row block routes its own
// tokens and stores their rows (FP8-quantised or bf16) into the owners' stages, source-major; the last
// block keeps the books (validation, maxRowsPerPeer, the split records). The last block to finish signals
// every peer (call, or call | EP_ABORT_BIT when this rank's input was rejected) and waits for every peer.
// Every block takes the call count as dispatchCalls + 1 (nothing changes it before the end of this
// kernel), and the finishing block stores it.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_send(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  __shared__ LocalTables S;
  __shared__ int sLast;
  allow_dependents();
  // (the row blocks of a large batch skip load_ids, whose own check covers k and E)
  host_requires(gridDim.x >= 2 && a.world >= 2 && a.numTokens * a.topk <= EP_MAX_PAIRS &&
                    a.topk <= EP_MAX_TOPK && a.numExperts <= EP_MAX_EXPERTS &&
                    (a.numTokens == 0 || a.stageRows >= 1) && (!a.dedup || a.topk <= 32),
                "ep_stage_send: grid >= 2, W > 1, T*k <= EP_MAX_PAIRS, k <= EP_MAX_TOPK, E <= EP_MAX_EXPERTS, a stage, "
                "k <= 32 with dedup");
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  EpState* st = state_of(a);
  if (blockIdx.x == gridDim.x - 1) {
    stage_bookkeeping(a, S, read_calls(st) + 1);
  } else {
    InBlockDests<true> D(S);  // reads the call count with the ids, after the rows' first loads
    dispatch_rows(a, L, D);
  }
  if (!finish_block(&st->doneBlocks[0], &sLast)) return;

  // Tail (one block): every block's rows and the split records are fenced (finish_block).
  const uint64_t call = read_calls(st) + 1;  // (unchanged until the store below)
  if (threadIdx.x == 0) {
    st->dispatchCalls = call;
    stamp(a, EP_STAMP_DISPATCH_TAIL);
  }
  if (a.dedup)  // ep_stage_pack counts this call's carriers per source
    for (int s = threadIdx.x; s < a.world; s += blockDim.x) plan_counts(a)[s] = 0u;
  // Wait even when this rank's call is off: when this returns, no peer writes into this slot any more.
  signal_and_wait_rows(a, call, read_err_code(st) != 0 ? (call | EP_ABORT_BIT) : call);
}

// =============================================================================================
// 2d. ep_stage_pack (after ep_stage_send): the staged rows of every source into expert-major expertX (for
// each local expert, sources in rank order, each source's rows in its order) with their scales; expertCounts
// and recvSplits (for ep_combine_send and ep_recv_view); and, for the rows this rank staged for itself,
// pairDest (the expertX row ep_combine_reduce reads in place; with dedup instead each row is copied from its
// carrier and the carriers are listed for ep_combine_send). An expert over maxRowsPerExpert fails the
// call here, as ep_route does: nothing is copied, and every peer learns at once that this rank will not
// combine. One warp per (row, 2 KiB segment), as ep_recv_view.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_pack(const __grid_constant__ EpArgs a) {
  __shared__ RecvTables R;
  __shared__ int sOver;
  wait_for_prior();  // the send kernel, whose last block waited for every peer's rows
  allow_dependents();
  EpState* st = state_of(a);
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank, me = a.rank, tid = threadIdx.x;
  // three independent loads in one round trip
  const uint32_t code = read_err_code(st);
  const uint64_t call = read_calls(st), slot = call & 1u;
  const uint64_t own = __ldg((const uint64_t*)a.peerBases + me);
  if (code != 0) return;  // the call is off here (an abort, a timeout, or this rank's input)
  if (blockIdx.x == 0 && tid == 0) stamp(a, EP_STAMP_PACK_BEGIN);
  build_tables_from(a, R, (const int*)(own + a.stageSplitsOff + slot * a.stageSplitsSlot), true);
  if (tid == 0) sOver = INT_MAX;
  __syncthreads();
  for (int le = tid; le < EPR; le += blockDim.x)
    if (R.preT[(le + 1) * W] - R.preT[le * W] > a.expertCapacity) atomicMin(&sOver, le);
  __syncthreads();
  if (sOver != INT_MAX) {
    if (blockIdx.x == 0 && tid == 0) {
      const int le = sOver;
      report_error(a, EP_ERR_CAPACITY, (uint32_t)me, (uint32_t)slot, call, me * EPR + le,
                   R.preT[(le + 1) * W] - R.preT[le * W], EP_CAPACITY_AUX_EXPERT);
      const uint64_t* peer = (const uint64_t*)a.peerBases;
      for (int d = 0; d < W; ++d)
        if (d != me)
          signal((uint64_t*)(__ldg(peer + d) + a.combineSignalOff + slot * a.combineSignalSlot + (uint64_t)me * 8u),
                 call | EP_ABORT_BIT);
    }
    return;
  }
  if (blockIdx.x == 0) {
    int* splits = (int*)a.recvSplits;
    for (int le = tid; le < EPR; le += blockDim.x) {
      ((int*)a.expertCounts)[le] = R.preT[(le + 1) * W] - R.preT[le * W];
      ((int*)a.expertOffsets)[le] = (int)expert_start(a, le, R.preT[le * W]);
    }
    for (int q = tid; q < E; q += blockDim.x) {
      const int s = q / EPR;
      splits[s * a.splitsPerPeer + (q - s * EPR)] = R.pre[q + 1] - R.pre[q];
    }
    for (int s = tid; s < W; s += blockDim.x) splits[s * a.splitsPerPeer + EPR] = R.mst[s];
  }
  const int lane = tid & 31, warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.dispatchRowBytes;
  const uint64_t VB = rowBytes % 16u == 0 ? 16u : 8u;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  // per row: its segments, then one more item for its scales and (own rows) its pairDest
  const uint32_t items = (uint32_t)R.pre[E] * (uint32_t)(segs + 1);
  const char* inX = (const char*)(own + a.stageDataOff + slot * a.stageDataSlot);
  const char* inS = (const char*)(own + a.stageScalesOff + slot * a.stageScalesSlot);
  char* outX = (char*)(own + a.expertXOff);
  char* outS = (char*)(own + a.expertScalesOff);
  const uint64_t gpr = a.fp8 ? (uint64_t)a.groupsPerRow : 0u;
  const char* carrierOf = (const char*)(own + a.stageCarrierOff + slot * a.stageCarrierSlot);
  for (uint32_t it = blockIdx.x * warpsPerBlock + (tid >> 5); it < items; it += gridDim.x * warpsPerBlock) {
    const int g = (int)(it / (uint32_t)(segs + 1)), seg = (int)(it % (uint32_t)(segs + 1));
    const RowLoc l = locate(R, a, g);
    const uint64_t row = (uint64_t)l.s * a.stageRows + l.iSrc;
    // dedup: the row's data sits at its carrier row (the token's first row for this rank)
    const uint64_t srcRow = a.dedup ? (uint64_t)l.s * a.stageRows + ld_cg_u32(carrierOf + row * 4u) : row;
    const uint64_t dstRow = l.row;
    if (seg < segs) {
      if (VB == 16) copy_segment<16, true>(outX + dstRow * rowBytes, inX + srcRow * rowBytes, rowBytes, seg, lane);
      else copy_segment<8, true>(outX + dstRow * rowBytes, inX + srcRow * rowBytes, rowBytes, seg, lane);
      continue;
    }
    if (a.dedup && srcRow == row) write_plan(a, R, own, l.s, row, slot);  // (srcRow, row: the same in every lane)
    int self = -1;
    if (l.s == me && lane == 0 && !a.dedup) self = ((const int*)a.selfPairs)[l.iSrc];  // loaded with the scales
    for (uint64_t i0 = 0; i0 < gpr; i0 += 64) {  // two loads in flight per lane
      const uint64_t i = i0 + lane, j = i + 32;
      const uint32_t v0 = i < gpr ? ld_cg_u32(inS + (srcRow * gpr + i) * 4u) : 0u;
      const uint32_t v1 = j < gpr ? ld_cg_u32(inS + (srcRow * gpr + j) * 4u) : 0u;
      if (i < gpr) st_u32(outS + (dstRow * gpr + i) * 4u, v0);
      if (j < gpr) st_u32(outS + (dstRow * gpr + j) * 4u, v1);
    }
    if (self >= 0) ((int*)a.pairDest)[self] = (int)dstRow;
  }
  __syncthreads();
  if (tid == 0) stamp_latest(a, EP_STAMP_PACK_END);
}

// =============================================================================================
// 3. ep_recv_view (only when the caller asks for it): the source-major view of what this rank
// received, rebuilt from expertX: viewX[s][i] = row i of the rows s sent me (in s's order, which is
// expert-sorted), viewScales likewise. One warp per (row, 2 KiB segment).
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_recv_view(const __grid_constant__ EpArgs a) {
  __shared__ RecvTables R;
  wait_for_prior();  // launched as a programmatic dependent of the dispatch
  EpState* st = state_of(a);
  if (read_err_code(st) != 0) return;  // this rank's dispatch failed: nothing to show
  build_tables(a, R);
  const int E = a.numExperts;
  const int lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.dispatchRowBytes;
  const uint64_t VB = rowBytes % 16u == 0 ? 16u : 8u;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  const uint32_t items = (uint32_t)R.pre[E] * (uint32_t)segs;
  const uint64_t own = ((const uint64_t*)a.peerBases)[a.rank];
  const char* inX = (const char*)(own + a.expertXOff);
  const char* inS = (const char*)(own + a.expertScalesOff);
  const uint64_t gpr = a.fp8 ? (uint64_t)a.groupsPerRow : 0u;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it < items;
       it += gridDim.x * warpsPerBlock) {
    const int g = (int)(it / (uint32_t)segs), seg = (int)(it % (uint32_t)segs);
    const RowLoc l = locate(R, a, g);
    const uint64_t srcRow = l.row;
    const uint64_t dstRow = (uint64_t)l.s * a.maxRowsPerPeer + l.iSrc;
    char* dst = (char*)a.viewX + dstRow * rowBytes;
    if (VB == 16) copy_segment<16, true>(dst, inX + srcRow * rowBytes, rowBytes, seg, lane);
    else copy_segment<8, true>(dst, inX + srcRow * rowBytes, rowBytes, seg, lane);
    if (seg == 0 && gpr != 0) {
      for (uint64_t i = lane; i < gpr; i += 32)
        st_u32((char*)a.viewScales + (dstRow * gpr + i) * 4u, ld_cg_u32(inS + (srcRow * gpr + i) * 4u));
    }
  }
}

// =============================================================================================
// 4. ep_combine_send: expertOut rows go back to the rank that sent them, at m_st + their index in that
// rank's expert-sorted order; the last block signals every rank and waits for every rank.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_send(const __grid_constant__ EpArgs a) {
  __shared__ RecvTables R;
  allow_dependents();
  wait_for_prior();  // may be launched as a programmatic dependent of the dispatch (GraphCall.step)
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_COMBINE_BEGIN);
  EpState* st = state_of(a);
  const uint64_t call = read_calls(st);
  const uint32_t code0 = read_err_code(st);  // (issued with the load above: one round trip)
  const uint64_t slot = call & 1u;
  if (host_abort(a) != 0 && blockIdx.x == 0 && threadIdx.x == 0) mark_host_abort(a);
  if (code0 == 0 && host_abort(a) == 0) {
    if (a.dedup) {
      combine_send_partials(a, slot, R);
    } else {
      build_tables(a, R);
      combine_send_rows<16>(a, slot, R);  // combineRowBytes = 2H, a multiple of 16
    }
  }
  if (!finish_block(&st->doneBlocks[2], &R.flag)) return;
  if (threadIdx.x == 0) stamp(a, EP_STAMP_COMBINE_TAIL);

  const uint32_t code = read_err_code(st);
  const bool aborted = code != 0 || host_abort(a) != 0;
  const uint64_t value = aborted ? (call | EP_ABORT_BIT) : call;
  const int W = a.world;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int s = threadIdx.x; s < W; s += blockDim.x) {
    // No per-thread data to order here: finish_block's fences ordered every block's rows.
    signal((uint64_t*)(__ldg(peer + s) + a.combineSignalOff + slot * a.combineSignalSlot + (uint64_t)a.rank * 8u),
           value);
  }
  // The dispatch of this call failed here (its error is still in err): a routing failure every rank
  // saw (no rank sends combine rows for it, and the rank that caused it may never combine), or a
  // timeout (the group is broken; waiting again would only double the delay). Nothing to wait for.
  // With its own expert over capacity, or a combine the host refused, wait as usual.
  const bool refusedHere = code == EP_INTERNAL_HOST_ABORT && host_abort(a) != 0;
  if (code != 0 && !own_expert_over_capacity(st, code) && !refusedHere) return;
  // Otherwise wait even when aborting: when this returns, no peer writes into this slot any more.
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + a.rank) + a.combineSignalOff + slot * a.combineSignalSlot);
  wait_for_sources(a, mine, -1, call, (uint32_t)slot, EP_ERR_PEER_ABORT_COMBINE, EP_ERR_TIMEOUT_COMBINE);
  __syncthreads();
  if (threadIdx.x == 0) stamp(a, EP_STAMP_COMBINE_ARRIVED);
}

// =============================================================================================
// 5. ep_combine_reduce: y[t] = bf16(sum over valid j in order of f32(w[t,j] * out[t,j])), f32 accumulate,
// two roundings per step (__fmul_rn, __fadd_rn; the build also passes -fmad=false). dedup: y[t] = bf16 of
// the f32 sum, in slot order, of the partials at the token's carrier slots (the first taken as it is).
// Item = (token, chunk of blockDim vectors of 8 values); the k rows of a token are loaded 8 at a time.
// With k <= 32 every warp gathers its token's slots itself (shuffles), else warp 0 lists them in shared memory.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_reduce(const __grid_constant__ EpArgs a) {
  __shared__ uint64_t sRow[2][EP_MAX_TOPK];
  __shared__ float sW[2][EP_MAX_TOPK];
  __shared__ int sN[2];
  wait_for_prior();  // may be launched as a programmatic dependent of combine send or the dispatch
  EpState* st = state_of(a);
  const uint32_t code = read_err_code(st);
  const uint64_t slot = read_calls(st) & 1u;  // (issued with the load above: one round trip)
  if (code != 0) return;
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_REDUCE_BEGIN);
  const int B = blockDim.x, tid = threadIdx.x, k = a.topk;
  const int V = a.hidden / 8;
  const int chunks = (V + B - 1) / B;
  const int items = a.numTokens * chunks;
  const uint64_t recv = ((const uint64_t*)a.peerBases)[a.rank] + a.combineRecvOff + slot * a.combineRecvSlot;
  const int* topk = (const int*)a.topkIdx;
  const int* pairRow = (const int*)a.pairRow;
  const int* pairDest = (const int*)a.pairDest;
  const float* weights = (const float*)a.topkWeights;
  const int EPR = a.expertsPerRank;
  const bool dedup = a.dedup != 0 && a.world > 1;  // (one rank: the one partial is the whole sum, read in place)
  host_requires(!dedup || k <= 32, "ep_combine_reduce: k <= 32 with dedup");
  char* y = (char*)a.y;
  // A row of my own expert is still in expertOut, at the row routing gave its pair in my expertX; every
  // other row came back from its owner (ep_combine_send) to my send order.
  auto rowOf = [&](int e, int dest, int back) -> uint64_t {
    return e / EPR == a.rank ? (uint64_t)a.expertOut + (uint64_t)dest * a.combineRowBytes
                             : recv + (uint64_t)back * a.combineRowBytes;
  };
  if (k <= 32) {
    // Each warp reads token t's slots itself (lane j = slot j, the four loads in one round trip) and
    // hands row addresses and weights round with shuffles: no shared memory and no barrier.
    const int lane = tid & 31;
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
      const int t = it / chunks, c = it % chunks;
      const int p = t * k + lane;
      int e = -1, dest = 0, back = 0;
      float w = 0.0f;
      if (lane < k) {
        e = __ldg(topk + p);
        if (!dedup) {
          dest = __ldg(pairDest + p);
          back = a.world > 1 ? __ldg(pairRow + p) : 0;  // (one rank: unused, and ep_dispatch_local leaves it unwritten)
          w = __ldg(weights + p);
        }
      }
      uint64_t row = e >= 0 ? rowOf(e, dest, back) : 0;
      bool take = e >= 0;
      if (dedup) {  // the partials of the token's carrier slots, each owner's at its first slot
        const int lead = carrier_lane(e >= 0 ? e / EPR : -1 - lane, k);  // (every lane: it shuffles)
        take = take && lead == lane;
        row = recv + (uint64_t)p * a.combineRowBytes;
      }
      const int v = c * B + tid;
      const bool active = v < V;
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
      bool started = false;  // dedup: the first partial is taken as it is
      // valid slots in slot order (the reduction order), 8 loads in flight; `left` is warp-uniform
      for (uint32_t left = __ballot_sync(FULL_MASK, take); left != 0;) {
        uint4 r[8];
        float ws[8];
        uint32_t has = 0;
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int j = left ? __ffs(left) - 1 : 0;
          const uint64_t rj = __shfl_sync(FULL_MASK, row, j);
          ws[u] = __shfl_sync(FULL_MASK, w, j);
          if (left) {
            has |= 1u << u;
            if (active) r[u] = ld_cg_v4((const char*)rj + (uint64_t)v * 16u);
          }
          left &= left - 1;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          if (active && (has >> u & 1u)) {
            float x[8];
            bf16x8_to_f32(r[u], x);
            if (!dedup) {
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(ws[u], x[i]));
            } else {
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[i] = started ? __fadd_rn(acc[i], x[i]) : x[i];
              started = true;
            }
          }
        }
      }
      if (active) st_v4(y + ((uint64_t)t * V + v) * 16u, pack_bf16x8(acc));
    }
    if (tid == 0) stamp_latest(a, EP_STAMP_REDUCE_END);
    return;
  }
  int buf = 0;
  for (int it = blockIdx.x; it < items; it += gridDim.x, buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    if (tid < 32) {
      // Warp 0 (k > 32): the valid slots of token t in slot order (the reduction order), compacted.
      int n = 0;
      for (int j0 = 0; j0 < k; j0 += 32) {
        const int j = j0 + tid, p = t * k + j;
        // the three loads together: one round trip to memory instead of two
        const int e = j < k ? __ldg(topk + p) : -1;
        const int dest = j < k ? __ldg(pairDest + p) : 0;
        const int back = j < k && a.world > 1 ? __ldg(pairRow + p) : 0;  // (one rank: unused, and ep_dispatch_local leaves it unwritten)
        const bool valid = e >= 0;
        const uint64_t row = valid ? rowOf(e, dest, back) : 0;
        const uint32_t bal = __ballot_sync(FULL_MASK, valid);
        if (valid) {
          const int pos = n + __popc(bal & lanemask_lt());
          sRow[buf][pos] = row;
          sW[buf][pos] = __ldg(weights + p);
        }
        n += __popc(bal);
      }
      if (tid == 0) sN[buf] = n;
    }
    __syncthreads();  // list ready; double buffering makes one barrier per item enough
    const int v = c * B + tid;
    if (v >= V) continue;
    const int n = sN[buf];
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    for (int j0 = 0; j0 < n; j0 += 8) {
      uint4 r[8];
#pragma unroll
      for (int u = 0; u < 8; ++u)
        if (j0 + u < n) r[u] = ld_cg_v4((const char*)sRow[buf][j0 + u] + (uint64_t)v * 16u);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (j0 + u < n) {
          const float w = sW[buf][j0 + u];
          float x[8];
          bf16x8_to_f32(r[u], x);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(w, x[i]));
        }
      }
    }
    st_v4(y + ((uint64_t)t * V + v) * 16u, pack_bf16x8(acc));
  }
  if (tid == 0) stamp_latest(a, EP_STAMP_REDUCE_END);
}

// =============================================================================================
// 6. ep_copy_bench: dst[0..bytes) = src[0..bytes) with 16-byte vectors (4 in flight per thread), for the
// benchmark's copy-bandwidth reference. dst and src 16-byte aligned; either may be a peer pointer.
struct CopyArgs {
  uint64_t dst, src, bytes;
};

extern "C" __global__ void __launch_bounds__(1024) ep_copy_bench(const CopyArgs c) {
  const uint64_t n = c.bytes / 16u;
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
  const char* src = (const char*)c.src;
  char* dst = (char*)c.dst;
  for (uint64_t i0 = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < n; i0 += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (i0 + u * stride < n) v[u] = ld_nc_v4(src + (i0 + u * stride) * 16u);
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (i0 + u * stride < n) st_v4(dst + (i0 + u * stride) * 16u, v[u]);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (uint64_t b = n * 16u; b < c.bytes; ++b) dst[b] = src[b];
}

// =============================================================================================
// 7. ep_barrier: every rank of the group meets on the device (benchmarks align ranks with it before a
// timed call, so that no rank's time holds a late peer's launch). Rank r's n-th barrier stores n into
// every rank's word r (release), then waits until every word holds at least n (a peer may already be at
// n + 1; it cannot be further, since its n + 1 waits for this rank). Not inside a kernel sequence of a
// call (between calls, or between a dispatch and its combine): it shares no state with dispatch or
// combine except the error word (EP_ERR_TIMEOUT_BARRIER, peer = the rank missing; first writer wins, so
// after a call that already failed the barrier's timeout is not reported separately).
extern "C" __global__ void __launch_bounds__(1024) ep_barrier(const __grid_constant__ EpArgs a) {
  __shared__ unsigned long long sN;
  EpState* st = state_of(a);
  if (threadIdx.x == 0) {
    sN = *(volatile unsigned long long*)&st->barrierCalls + 1;
    st->barrierCalls = sN;
  }
  __syncthreads();
  const uint64_t n = sN;
  const int W = a.world, me = a.rank;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int d = threadIdx.x; d < W; d += blockDim.x)
    signal((uint64_t*)(__ldg(peer + d) + a.barrierSignalOff + (uint64_t)me * 8u), n);
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.barrierSignalOff);
  const uint64_t deadline = deadline_after(a.timeoutNs);
  for (int s = threadIdx.x; s < W; s += blockDim.x) {
    for (;;) {
      const uint64_t v = ld_acquire_sys(mine + s);
      if ((v & EP_ABORT_BIT) == 0 && v >= n) break;
      if (globaltimer() > deadline) {
        report_error(a, EP_ERR_TIMEOUT_BARRIER, (uint32_t)s, 0u, n, (int64_t)v, 0, 0u);
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) stamp(a, EP_STAMP_BARRIER_END);
}

// =============================================================================================
// 8. Floors for the benchmark (bench: "floors"), measured on the group's own heaps. FloorArgs by value.
//   ep_floor_alltoall  every rank writes bytesPerPeer to every peer at once (each block takes chunks of
//                      all peers in turn), into the peer's region at regionOff + rank * bytesPerPeer:
//                      the all-to-all NVLink write rate that dispatch and combine can reach.
//   ep_floor_pingpong  ranks 0 and 1, one thread each: `iters` round trips of a 64-bit flag (release store
//                      into the peer, acquire poll of one's own); result[0] = ns for the last iters - 16.
//   ep_floor_empty     does nothing: a graph of many of them gives the time between consecutive kernels.
struct FloorArgs {
  uint64_t peerBases;     // const uint64_t* [world]
  uint64_t src;           // bytesPerPeer of local device memory
  uint64_t regionOff;     // heap offset of a region of world * bytesPerPeer bytes
  uint64_t bytesPerPeer;  // a multiple of 16 * blockDim * 4
  uint64_t flagOff;       // heap offset of one u64 flag (pingpong)
  uint64_t result;        // uint64_t* (pingpong)
  uint64_t epoch;         // pingpong: flags hold epoch + i, so a run never sees an earlier run's value
  int32_t rank, world, iters, reserved;
};

extern "C" __global__ void __launch_bounds__(1024) ep_floor_alltoall(const FloorArgs f) {
  const int P = f.world - 1;
  if (P < 1) return;
  const uint64_t B = blockDim.x, chunkBytes = 16u * 4u * B;
  const uint64_t chunks = f.bytesPerPeer / chunkBytes;
  const uint64_t* peer = (const uint64_t*)f.peerBases;
  for (uint64_t it = blockIdx.x; it < chunks * (uint64_t)P; it += gridDim.x) {
    const int d = (f.rank + 1 + (int)(it % (uint64_t)P)) % f.world;
    const uint64_t off = (it / (uint64_t)P) * chunkBytes;
    const char* src = (const char*)f.src + off;
    char* dst = (char*)(__ldg(peer + d) + f.regionOff + (uint64_t)f.rank * f.bytesPerPeer + off);
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = ld_nc_v4(src + (u * B + threadIdx.x) * 16u);
#pragma unroll
    for (int u = 0; u < 4; ++u) st_v4(dst + (u * B + threadIdx.x) * 16u, v[u]);
  }
}

extern "C" __global__ void ep_floor_pingpong(const FloorArgs f) {
  if (threadIdx.x != 0 || blockIdx.x != 0 || f.rank > 1 || f.world < 2) return;
  const uint64_t* peer = (const uint64_t*)f.peerBases;
  uint64_t* theirs = (uint64_t*)(__ldg(peer + (f.rank ^ 1)) + f.flagOff);
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + f.rank) + f.flagOff);
  const uint64_t deadline = globaltimer() + 2000000000ull;
  uint64_t t0 = 0;
  for (int i = 1; i <= f.iters; ++i) {
    if (i == 17) t0 = globaltimer();  // the first round trips include the peer's late start
    const uint64_t v = f.epoch + (uint64_t)i;
    if (f.rank == 0) signal(theirs, v);
    while (ld_acquire_sys(mine) != v)
      if (globaltimer() > deadline) {
        if (f.rank == 0) *(volatile uint64_t*)f.result = ~0ull;
        return;
      }
    if (f.rank == 1) signal(theirs, v);
  }
  if (f.rank == 0) *(volatile uint64_t*)f.result = globaltimer() - t0;
}

extern "C" __global__ void ep_floor_empty(const FloorArgs) {
  allow_dependents();
  wait_for_prior();
}
