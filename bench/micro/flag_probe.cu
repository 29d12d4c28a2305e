// Two GPUs of one host, peer access: what a fenced message costs against a flagged one, and what a block's
// tail costs after it stored into the peer (the questions of the dispatch half of the flags, bench/NOTES.md
// next step 3). Not part of the library. Build and run on a machine with two GPUs:
//   nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/flag_probe.cu -o flag_probe && ./flag_probe
//
// 1. One way, by ping-pong: GPU 0 and GPU 1 each run one kernel of B blocks for R rounds; in round r one
//    side stores S bytes into the other's buffer and the other waits for them, then the roles swap. Per
//    message (total / 2R):
//      fenced:  weak 16-byte stores, each block fence.sys and a sys-scope count, the last block a release
//               signal; the receiver's blocks poll the signal (as ep_stage_send and ep_combine_send do);
//      flagged: the bytes as {data, flag} pairs (2S on the wire), no fence, no count, no signal; each
//               receiving block polls its own share's pairs (as ep_combine_reduce_flagged does).
// 2. A block's tail after it stored S bytes into the peer: the time of one fence.sys, of one
//    atom.add.acq_rel at sys and at gpu scope, and of a relaxed gpu atom, mean over blocks (does a gpu-scope
//    count wait for NVLink's acknowledgements?).
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_check.h"

constexpr int B = 32, THREADS = 256, ROUNDS = 2000;

__device__ __forceinline__ uint64_t now() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ uint64_t ld_acquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint4 ld_volatile(const void* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

struct Side {
  char* peerData;   // the other GPU's receive buffer
  char* myData;     // this GPU's receive buffer
  uint64_t* peerSignal;
  uint64_t* mySignal;
  unsigned* count;  // this GPU's last-block count
  uint64_t bytes;   // S: payload bytes a message
  int first;        // 1: this side sends in round 0
  int flagged;
};

// One side of the ping-pong: in the rounds it sends, its blocks store their share and publish; in the
// others they wait for the peer's message. Both kernels run at once (B blocks each fit on any GPU).
__global__ void __launch_bounds__(THREADS) pingpong(Side s, uint64_t* elapsed) {
  const uint64_t vecs = s.bytes / 16, share = (vecs + B - 1) / B;
  const uint64_t lo = blockIdx.x * share, hi = lo + share < vecs ? lo + share : vecs;
  __shared__ int last;
  const uint64_t t0 = now();
  for (int r = 0; r < ROUNDS; ++r) {
    const uint32_t f = (uint32_t)r + 1u;
    const bool send = ((r & 1) == 0) == (s.first != 0);
    if (send && s.flagged) {
      for (uint64_t v = lo + threadIdx.x; v < hi; v += THREADS)
        asm volatile("st.volatile.global.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(s.peerData + v * 32), "r"((uint32_t)v), "r"(f),
                     "r"(f), "r"(f)
                     : "memory");
    } else if (send) {
      for (uint64_t v = lo + threadIdx.x; v < hi; v += THREADS)
        *(uint4*)(s.peerData + v * 16) = make_uint4((uint32_t)v, f, f, f);
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence_system();
        unsigned old;
        asm volatile("atom.add.acq_rel.sys.global.u32 %0, [%1], 1;" : "=r"(old) : "l"(s.count) : "memory");
        last = old == (unsigned)((r / 2 + 1) * B - 1);
      }
      __syncthreads();
      if (last && threadIdx.x == 0) asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(s.peerSignal), "l"((uint64_t)f) : "memory");
    } else if (s.flagged) {
      for (uint64_t v = lo + threadIdx.x; v < hi; v += THREADS)
        while (ld_volatile(s.myData + v * 32).y != f) {
        }
      __syncthreads();
    } else {
      if (threadIdx.x == 0)
        while (ld_acquire(s.mySignal) != f) {
        }
      __syncthreads();
    }
    // an empty flagged message still needs the turn to pass: one pair
    if (s.bytes == 0 && s.flagged) {
      if (blockIdx.x == 0 && threadIdx.x == 0) {
        if (send) asm volatile("st.volatile.global.u64 [%0], %1;" ::"l"(s.peerSignal), "l"((uint64_t)f) : "memory");
        else
          while (*(volatile uint64_t*)s.mySignal != f) {
          }
      }
      __syncthreads();
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *elapsed = now() - t0;
}

// The tail: each block stores its share of S bytes into the peer, then thread 0 times one operation.
__global__ void __launch_bounds__(THREADS) tail(char* peerData, uint64_t bytes, unsigned* count, int op, uint64_t* ns) {
  const uint64_t vecs = bytes / 16, share = (vecs + gridDim.x - 1) / gridDim.x;
  const uint64_t lo = blockIdx.x * share, hi = lo + share < vecs ? lo + share : vecs;
  for (uint64_t v = lo + threadIdx.x; v < hi; v += THREADS) *(uint4*)(peerData + v * 16) = make_uint4(1u, 2u, 3u, 4u);
  __syncthreads();
  if (threadIdx.x != 0) return;
  unsigned old = 0;
  const uint64_t t0 = now();
  if (op == 0) asm volatile("fence.acq_rel.sys;" ::: "memory");
  if (op == 1) asm volatile("atom.add.acq_rel.sys.global.u32 %0, [%1], 1;" : "=r"(old) : "l"(count) : "memory");
  if (op == 2) asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(old) : "l"(count) : "memory");
  if (op == 3) asm volatile("atom.add.relaxed.gpu.global.u32 %0, [%1], 1;" : "=r"(old) : "l"(count) : "memory");
  const uint64_t t1 = now();
  atomicAdd((unsigned long long*)ns, (unsigned long long)(t1 - t0 + (old & 0u)));
}

int main() {
  int n = 0;
  CK(cudaGetDeviceCount(&n));
  if (n < 2) {
    fprintf(stderr, "flag_probe: needs two GPUs, found %d\n", n);
    return 1;
  }
  const uint64_t cap = 2ull << 20;  // 2 MiB: a flagged 1 MiB message
  char* data[2];
  uint64_t* sig[2];
  unsigned* count[2];
  uint64_t* out[2];
  for (int d = 0; d < 2; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    CK(cudaMalloc(&data[d], cap));
    CK(cudaMalloc(&sig[d], 8));
    CK(cudaMalloc(&count[d], 4));
    CK(cudaMalloc(&out[d], 8));
  }
  printf("one way, ping-pong of %d rounds, %d blocks a side: us a message\n", ROUNDS, B);
  printf("%10s  %8s  %8s\n", "bytes", "fenced", "flagged");
  const uint64_t sizes[] = {0, 16384, 65536, 262144, 1048576};
  for (uint64_t bytes : sizes) {
    double us[2];
    for (int flagged = 0; flagged < 2; ++flagged) {
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        CK(cudaMemset(data[d], 0, cap));
        CK(cudaMemset(sig[d], 0, 8));
        CK(cudaMemset(count[d], 0, 4));
        CK(cudaDeviceSynchronize());
      }
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        Side s{data[1 - d], data[d], sig[1 - d], sig[d], count[d], bytes, d == 0, flagged};
        pingpong<<<B, THREADS>>>(s, out[d]);
        CK(cudaGetLastError());
      }
      uint64_t ns = 0;
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        CK(cudaDeviceSynchronize());
      }
      CK(cudaSetDevice(0));
      CK(cudaMemcpy(&ns, out[0], 8, cudaMemcpyDeviceToHost));
      us[flagged] = ns / 1e3 / ROUNDS;  // two messages a round trip, ROUNDS messages in all
    }
    printf("%10llu  %8.2f  %8.2f\n", (unsigned long long)bytes, us[0], us[1]);
  }
  const char* ops[] = {"fence.acq_rel.sys", "atom.acq_rel.sys", "atom.acq_rel.gpu", "atom.relaxed.gpu"};
  printf("\na block's tail after storing its share into the peer (GPU 0 -> 1, %d blocks): ns, mean over blocks\n", B);
  printf("%10s", "bytes");
  for (const char* o : ops) printf("  %18s", o);
  printf("\n");
  CK(cudaSetDevice(0));
  for (uint64_t bytes : sizes) {
    printf("%10llu", (unsigned long long)bytes);
    for (int op = 0; op < 4; ++op) {
      uint64_t total = 0;
      const int reps = 50;
      for (int i = 0; i < reps; ++i) {
        CK(cudaMemset(out[0], 0, 8));
        tail<<<B, THREADS>>>(data[1], bytes, count[0], op, out[0]);
        uint64_t ns = 0;
        CK(cudaMemcpy(&ns, out[0], 8, cudaMemcpyDeviceToHost));
        if (i >= 5) total += ns;  // after warm-up
      }
      printf("  %18.0f", (double)total / (reps - 5) / B);
    }
    printf("\n");
  }
  return 0;
}
