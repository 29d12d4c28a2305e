// Block-wide device helpers: phase stamps, the host's abort, block_exclusive_scan, stage_ids,
// match_keys / load_chunks (ep_route's lane matching), finish_block ("the last block finishes").
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// Phase timestamps for benchmarks (EpArgs.stamps, see EP_STAMP_* in ep_args.h); one branch when off.
// stamp(): one thread's time (call it from one thread); stamp_latest(): the latest of every caller's.
__device__ __forceinline__ void stamp(const EpArgs& a, int i) {
  if (a.stamps != 0) ((volatile uint64_t*)a.stamps)[i] = globaltimer();
}
__device__ __forceinline__ void stamp_latest(const EpArgs& a, int i) {
  if (a.stamps != 0) atomicMax((unsigned long long*)a.stamps + i, (unsigned long long)globaltimer());
}

// Diagnostic point n (EP_DIAG, ep_limits.cuh): the latest of its callers' times into stamp `slot`.
#define EP_DIAG_AT(n, slot)                          \
  do {                                               \
    if (EP_DIAG == (n)) stamp_latest(a, (slot));     \
  } while (0)
// As EP_DIAG_AT, with the clock read ordered before the memory accesses that follow it in the source.
#define EP_DIAG_AT_FENCED(n, slot)                          \
  do {                                                      \
    EP_DIAG_AT(n, slot);                                    \
    if (EP_DIAG == (n)) asm volatile("" ::: "memory");      \
  } while (0)

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

// The i with pre[i] <= g < pre[i + 1] (pre: an exclusive scan of n entries, pre[n] the total; 0 <= g <
// pre[n]): the entry whose run holds item g.
__device__ __forceinline__ int find_run(const int* pre, int n, int g) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (pre[mid] <= g) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Each lane's inclusive prefix over its warp (lanes in order) of inc[i], in place, for N sums at once.
template <int N>
__device__ __forceinline__ void warp_inclusive_scan(int (&inc)[N]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int y = __shfl_up_sync(FULL_MASK, inc[i], o);
      if (lane >= o) inc[i] += y;
    }
  }
}

// Every thread's exclusive prefix over the block (threads in order) of its v[i], into v[i], for N sums at
// once, with one barrier: each warp scans with shuffles and stores its totals; after the
// barrier every warp adds up the totals of the warps before it (no warp-0 pass, so no second barrier).
// scratch: 32 * N ints of shared memory, written before the barrier: the caller orders every earlier read of
// it (a barrier after it; block_exclusive_scan's last barrier is one).
template <int N>
__device__ __forceinline__ void block_prefix(int (&v)[N], int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inc[N];
#pragma unroll
  for (int i = 0; i < N; ++i) inc[i] = v[i];
  warp_inclusive_scan(inc);
  if (lane == 31) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[32 * i + warp] = inc[i];
  }
  __syncthreads();  // the warps' totals
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int before = lane < warp ? scratch[32 * i + lane] : 0;
    v[i] = inc[i] - v[i] + __reduce_add_sync(FULL_MASK, before);
  }
}

// In-place exclusive scan of data[0..n) (shared memory), data[n] = the total. Every thread of the block
// calls it; it ends with a barrier, and begins with one unless Lead is false: then the caller's last barrier
// must follow every write of data[0..n) and every read of scratch (reads of data before the call need none:
// the write-back follows the scan's own barrier). scratch: 32 ints of shared memory.
template <bool Lead = true>
__device__ void block_exclusive_scan(int* data, int n, int* scratch) {
  if (Lead) __syncthreads();
  const int B = blockDim.x, tid = threadIdx.x;
  const int per = (n + B - 1) / B;
  const int lo = min(n, tid * per), hi = min(n, lo + per);
  int run[1] = {0};
  for (int i = lo; i < hi; ++i) run[0] += data[i];
  block_prefix<1>(run, scratch);
  for (int i = lo; i < hi; ++i) {
    const int c = data[i];
    data[i] = run[0];
    run[0] += c;
  }
  if (tid == B - 1) data[n] = run[0];  // (the last thread's chunk ends at n)
  __syncthreads();
}

// block_exclusive_scan of two arrays of n at once (a[n], b[n] their totals): one set of barriers for both,
// where two calls would take twice the barriers. scratch: 64 ints of shared memory.
__device__ void block_exclusive_scan2(int* a, int* b, int n, int* scratch) {
  __syncthreads();
  const int B = blockDim.x, tid = threadIdx.x;
  const int per = (n + B - 1) / B;
  const int lo = min(n, tid * per), hi = min(n, lo + per);
  int run[2] = {0, 0};
  for (int i = lo; i < hi; ++i) {
    run[0] += a[i];
    run[1] += b[i];
  }
  block_prefix<2>(run, scratch);
  for (int i = lo; i < hi; ++i) {
    const int ca = a[i], cb = b[i];
    a[i] = run[0];
    b[i] = run[1];
    run[0] += ca;
    run[1] += cb;
  }
  if (tid == B - 1) {  // (the last thread's entries end at n)
    a[n] = run[0];
    b[n] = run[1];
  }
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

}  // namespace
