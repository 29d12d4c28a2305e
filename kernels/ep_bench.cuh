// Benchmark kernels: 6 ep_copy_bench, 7 ep_barrier, 8 the floors (ep_floor_*), with CopyArgs and FloorArgs.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

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
// 7. ep_barrier: every rank of the group (between hosts: of this rank's host) meets on the device (benchmarks align ranks with it before a
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
    if (same_host(a, d)) signal((uint64_t*)(__ldg(peer + d) + a.barrierSignalOff + (uint64_t)me * 8u), n);
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.barrierSignalOff);
  const uint64_t deadline = deadline_after(a.timeoutNs);
  for (int s = threadIdx.x; s < W; s += blockDim.x) {
    if (!same_host(a, s)) continue;
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
