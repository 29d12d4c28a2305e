// A small device library for the symmetric heap: vector puts into peer memory, signals, bounded
// waits, fences and error reporting. Peer memory is reached through plain pointers (the peer's heap
// mapped into this process by CUDA IPC, or the local heap for our own rank), so a "put" is an
// ordinary 16-byte store and a "signal" an ordinary 64-bit store with release semantics.
//
// Memory-ordering rules used by every kernel (PTX memory model, .sys scope because the reader is a
// thread on another GPU):
//   data stores (weak)  ->  fence.acq_rel.sys  ->  signal: st.release.sys.u64  ==>  peer: ld.acquire.sys.u64
// `.gpu` scope would be wrong: it orders only for threads of this GPU. The one exception, flagged
// partials (ep_flagged.cuh), orders nothing: each 8-byte store carries its own call flag, and the reader polls it.
#pragma once
#include <stdint.h>
#include "ep_args.h"

namespace ep {

constexpr unsigned FULL_MASK = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Special registers and fences

// Nanoseconds since some epoch, the same clock on every SM (resolution about 32 ns to 1 us).
__device__ __forceinline__ uint64_t globaltimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t lanemask_lt() {
  uint32_t m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

__device__ __forceinline__ uint32_t dynamic_smem_bytes() {
  uint32_t n;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
  return n;
}

// Orders every memory operation of this thread (and, cumulatively, those it has observed, e.g.
// through a barrier) before every later one, for observers on any GPU or the host.
__device__ __forceinline__ void fence_sys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }

// Atomic add with acquire and release semantics at system scope; returns the old value. The release
// orders every store this thread made or observed (through a barrier) before the add, for observers on
// any GPU; the acquire orders what other threads released through this word before what follows.
__device__ __forceinline__ uint32_t atom_add_acq_rel_sys(uint32_t* p, uint32_t v) {
  uint32_t old;
  asm volatile("atom.acq_rel.sys.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// Programmatic dependent launch (sm_90): a kernel launched with the programmatic-serialization
// attribute may start while the kernel before it on the stream still runs, once every block of that
// kernel has called allow_dependents(). It must call wait_for_prior() before it reads anything the
// earlier kernel writes: that returns when the earlier kernel has finished and its memory is visible.
// Without the attribute (MOE_A2A_DEPENDENT_LAUNCH=0; bench/micro/kernel_probe.cu times both),
// wait_for_prior() returns at once and allow_dependents() does nothing.
__device__ __forceinline__ void wait_for_prior() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void allow_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// ---------------------------------------------------------------------------------------------
// Signals

// Raise a signal word: a release store, so every store this thread made or observed before it
// is visible to a thread that reads `value` with an acquire load.
__device__ __forceinline__ void signal(uint64_t* p, uint64_t value) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(value) : "memory");
}

// A signal with nothing to order before it (no data of this thread's for the reader): no fence to wait for.
__device__ __forceinline__ void signal_unordered(uint64_t* p, uint64_t value) {
  asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(value) : "memory");
}

__device__ __forceinline__ uint64_t ld_relaxed_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

enum WaitStatus : int { WAIT_ARRIVED = 0, WAIT_ABORTED = 1, WAIT_TIMED_OUT = 2 };

// Polls *p until it equals `expected` (arrived) or `expected | EP_ABORT_BIT` (the sender aborted this
// call), or until %globaltimer passes `deadlineNs` (timed out). Never spins forever. The acquire
// load makes the sender's data (ordered before its release signal) visible to this thread, and,
// through the kernel boundary, to the kernels that follow on the stream. `*seen` gets the last value.
__device__ __forceinline__ int wait_until(const uint64_t* p, uint64_t expected, uint64_t deadlineNs,
                                          uint64_t* seen) {
  uint32_t sleepNs = 0;
  for (;;) {
    const uint64_t v = ld_acquire_sys(p);
    *seen = v;
    if (v == expected) return WAIT_ARRIVED;
    if (v == (expected | EP_ABORT_BIT)) return WAIT_ABORTED;
    if (globaltimer() > deadlineNs) return WAIT_TIMED_OUT;
    // Poll hot first (the signal is usually microseconds away), then back off so that many
    // waiting threads do not flood the memory system; cap small to keep wake-up latency low.
    if (sleepNs) __nanosleep(sleepNs);
    sleepNs = sleepNs ? (sleepNs < 256 ? sleepNs * 2 : 256) : 32;
  }
}

// A deadline `timeoutNs` from now. A non-positive timeout would mean "already expired"; treat it as
// 10 s instead so that a missing host setting cannot turn every wait into an error (never infinite).
__device__ __forceinline__ uint64_t deadline_after(int64_t timeoutNs) {
  const uint64_t t = timeoutNs > 0 ? (uint64_t)timeoutNs : 10000000000ull;
  return globaltimer() + t;
}

// ---------------------------------------------------------------------------------------------
// Vector loads and stores (16 bytes; 8 bytes where a row is only 8-byte aligned)

// Read-only input that no one writes during the kernel (x, expertOut): non-coherent path, and no
// L1 allocation because every byte is read once.
__device__ __forceinline__ uint4 ld_nc_v4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 ld_nc_v2(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

// Data that a peer GPU wrote into our heap (counts, expertX rows, returned combine rows): read at L2, the point
// of coherence for NVLink writes, never from a possibly stale L1 or texture line.
__device__ __forceinline__ uint4 ld_cg_v4(const void* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 ld_cg_v2(const void* p) {
  uint2 v;
  asm volatile("ld.global.cg.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t ld_cg_u32(const void* p) {
  uint32_t v;
  asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// Plain (weak) stores: local or peer memory alike. Ordered before a signal by fence_sys().
__device__ __forceinline__ void st_v4(void* p, uint4 v) {
  asm volatile("st.global.L1::no_allocate.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ void st_v2(void* p, uint2 v) {
  asm volatile("st.global.L1::no_allocate.v2.u32 [%0], {%1,%2};" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}

__device__ __forceinline__ void st_u32(void* p, uint32_t v) {
  asm volatile("st.global.L1::no_allocate.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Vector traits for the copy loops: 16-byte vectors normally, 8-byte when a row is only 8-aligned.
template <int VB>
struct Vec;
template <>
struct Vec<16> {
  using T = uint4;
  static __device__ __forceinline__ T ld_nc(const void* p) { return ld_nc_v4(p); }
  static __device__ __forceinline__ T ld_cg(const void* p) { return ld_cg_v4(p); }
  static __device__ __forceinline__ void st(void* p, T v) { st_v4(p, v); }
};
template <>
struct Vec<8> {
  using T = uint2;
  static __device__ __forceinline__ T ld_nc(const void* p) { return ld_nc_v2(p); }
  static __device__ __forceinline__ T ld_cg(const void* p) { return ld_cg_v2(p); }
  static __device__ __forceinline__ void st(void* p, T v) { st_v2(p, v); }
};

// Put `bytes` (a multiple of VB, both pointers VB-aligned) from src to dst with all lanes of a warp:
// UNROLL vectors per lane loaded before any is stored, so UNROLL * 32 * VB bytes are in flight.
// `Coherent` selects ld.cg (peer-written source) instead of ld.nc (read-only source).
template <int VB, int UNROLL, bool Coherent>
__device__ __forceinline__ void put_warp(void* dst, const void* src, uint64_t bytes, int lane) {
  using V = Vec<VB>;
  using T = typename V::T;
  const uint64_t n = bytes / VB;
  char* d = (char*)dst;
  const char* s = (const char*)src;
  for (uint64_t i0 = 0; i0 < n; i0 += (uint64_t)UNROLL * 32) {
    T v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint64_t i = i0 + (uint64_t)u * 32 + lane;
      if (i < n) v[u] = Coherent ? V::ld_cg(s + i * VB) : V::ld_nc(s + i * VB);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint64_t i = i0 + (uint64_t)u * 32 + lane;
      if (i < n) V::st(d + i * VB, v[u]);
    }
  }
}

// The same with all threads of a block (call from every thread).
template <int VB, int UNROLL, bool Coherent>
__device__ __forceinline__ void put_block(void* dst, const void* src, uint64_t bytes) {
  using V = Vec<VB>;
  using T = typename V::T;
  const uint64_t n = bytes / VB;
  const uint64_t B = blockDim.x;
  char* d = (char*)dst;
  const char* s = (const char*)src;
  for (uint64_t i0 = 0; i0 < n; i0 += (uint64_t)UNROLL * B) {
    T v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint64_t i = i0 + (uint64_t)u * B + threadIdx.x;
      if (i < n) v[u] = Coherent ? V::ld_cg(s + i * VB) : V::ld_nc(s + i * VB);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint64_t i = i0 + (uint64_t)u * B + threadIdx.x;
      if (i < n) V::st(d + i * VB, v[u]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

__device__ __forceinline__ EpState* state_of(const EpArgs& a) { return (EpState*)a.state; }

// Volatile reads of state words written by an earlier kernel (or, for err.code, possibly by another
// block of this kernel): never cached in a register across the kernel.
__device__ __forceinline__ uint64_t read_calls(const EpState* st) {
  return *(const volatile uint64_t*)&st->dispatchCalls;
}
__device__ __forceinline__ uint32_t read_err_code(const EpState* st) {
  return *(const volatile uint32_t*)&st->err.code;
}

// The error word and the call count for a whole block: thread 0 loads them, a barrier shares them (every thread
// of the block calls it). Where every thread of hundreds of blocks loads the state's line itself, the last
// block waits microseconds for it (bench/NOTES.md v36); one load a block does not.
struct BlockState {
  uint64_t call;
  uint32_t code;
};
// Thread 0's loads alone, where the caller's own barrier shares them (read s after it).
__device__ __forceinline__ void load_block_state(const EpState* st, BlockState& s) {
  if (threadIdx.x == 0) {
    s.code = read_err_code(st);
    s.call = read_calls(st);
  }
}
__device__ __forceinline__ void block_state(const EpState* st, BlockState& s, uint32_t& code, uint64_t& call) {
  load_block_state(st, s);
  __syncthreads();
  code = s.code;
  call = s.call;
}

// Records the first error of this call: the CAS on err.code from 0 picks one winner, which fills the
// other fields and then mirrors the struct to errHost (host-mapped). There the code is written last,
// after a system fence, so a host that polls errHost->code sees complete fields. errHost is never
// cleared by the device: it holds the last reported error until the host clears it.
__device__ __noinline__ void report_error(const EpArgs& a, uint32_t code, uint32_t peer, uint32_t slot,
                                          uint64_t call, int64_t ea, int64_t eb, uint32_t aux) {
  EpState* st = state_of(a);
  if (atomicCAS(&st->err.code, 0u, code) != 0u) return;
  volatile EpError* e = &st->err;
  e->peer = peer;
  e->slot = slot;
  e->aux = aux;
  e->callCount = call;
  e->a = ea;
  e->b = eb;
  __threadfence();
  if (a.errHost != 0) {
    volatile EpError* h = (volatile EpError*)a.errHost;
    h->peer = peer;
    h->slot = slot;
    h->aux = aux;
    h->callCount = call;
    h->a = ea;
    h->b = eb;
    __threadfence_system();
    h->code = code;
    __threadfence_system();
  }
}

}  // namespace ep
