// One GPU: how long a kernel's first load of a word every block reads takes when many blocks load it at once
// (bench/NOTES.md next step 29: ep_combine_reduce's error word and call count are in 0.25 us after its start at
// T = 1 (4 blocks) but 2.9 us at T = 128 (512 blocks), on one GPU too). Not part of the library. Build and run:
//   nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/state_probe.cu -o state_probe && ./state_probe
//
// A "writer" kernel (one block) spins about 5 us, then stores the word and the call count the way a send's last block
// does (a system-scope release store); a "reader" kernel of G blocks of 224 threads, launched as its programmatic
// dependent (its blocks start early and wait in griddepcontrol.wait, as ep_combine_reduce does), has thread 0 of every
// block (or every thread, as the library's kernels read their state) load the word once after the wait and stamp
// %globaltimer when the value is in. The writer may first store MB megabytes from 528 blocks, each then adding to a
// counter on the word's line (a dispatch's rows, then finish_block). Printed per case, medians over repetitions: the
// latest block's value after the earliest block's wait ended (the span), and the median and slowest block's own load
// time. Cases: G = 4, 132, 512, 1024; how the word is loaded (volatile as read_calls, relaxed at GPU scope, .cg, a
// plain load, .nc, or two words as the library reads its state), all blocks on one word, or on R replicas, one 128-byte
// line each (block b reads replica b % R).
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#include <algorithm>
#include <vector>

#include "../../kernels/shmem.cuh"  // (globaltimer: the library's own)
#include "cuda_check.h"

using ep::globaltimer;

constexpr int REPS = 40, THREADS = 224, LINE_WORDS = 16;  // (u64 words a 128-byte line)

// %globaltimer once v is in (the operand makes the read wait for the load)
__device__ __forceinline__ uint64_t timer_after(uint64_t v) {
  uint64_t t;
  asm volatile("{ .reg .u64 d; mov.u64 d, %1; mov.u64 %0, %%globaltimer; }" : "=l"(t) : "l"(v));
  return t;
}

// traffic: bytes the writer's blocks store first (as a dispatch writes its rows), each block then adding one to a
// counter on the word's line (as finish_block does); block 0 stores the word(s)
__global__ void writer(uint64_t* words, int replicas, uint64_t call, uint4* traffic, uint64_t trafficVecs) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const uint64_t t0 = globaltimer();
  while (globaltimer() - t0 < 5000) {
  }
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < trafficVecs; i += (uint64_t)gridDim.x * blockDim.x)
    traffic[i] = make_uint4((uint32_t)call, (uint32_t)i, 0u, 0u);
  if (trafficVecs != 0 && threadIdx.x == 0) atomicAdd((unsigned long long*)words + 1, 1ull);
  if (blockIdx.x != 0) return;
  for (int r = threadIdx.x; r < replicas; r += blockDim.x)
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(words + (uint64_t)r * LINE_WORDS), "l"(call) : "memory");
}

// STATE2: as the library's kernels read EpState: the call count (u64 at +0) and the error word (u32 at +0x28, zero
// here), two volatile loads of the one line
enum Mode { VOLATILE, RELAXED_GPU, CG, PLAIN, NC, STATE2, MODES };
const char* modeName[MODES] = {"volatile", "relaxed.gpu", "ld.cg", "plain", "ld.nc", "state2"};

__global__ void __launch_bounds__(THREADS) reader(const uint64_t* words, int mode, int replicas, bool all,
                                                  uint64_t* stamps) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (threadIdx.x != 0 && !all) return;
  const uint64_t* w = words + (uint64_t)(blockIdx.x % replicas) * LINE_WORDS;
  const uint64_t t0 = globaltimer();
  uint64_t v;
  switch (mode) {
    case VOLATILE: v = *(const volatile uint64_t*)w; break;
    case RELAXED_GPU: asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(w) : "memory"); break;
    case CG: v = __ldcg(w); break;
    case PLAIN: v = *w; break;
    case NC: v = __ldg(w); break;
    default: v = *(const volatile uint64_t*)w + *(const volatile uint32_t*)((const char*)w + 0x28); break;
  }
  const uint64_t t1 = timer_after(v);
  if (threadIdx.x != 0) {
    if (v == 0) stamps[blockIdx.x * 3 + 2] = 0;  // (keeps the other threads' loads; never true after the writer)
    return;
  }
  stamps[blockIdx.x * 3] = t0;
  stamps[blockIdx.x * 3 + 1] = t1;
  stamps[blockIdx.x * 3 + 2] = v;
}

int main() {
  const int grids[] = {4, 132, 512, 1024};
  const int reps[] = {1, 16, 128, 1024};
  uint64_t *words, *stamps;
  CK(cudaMalloc(&words, 1024 * LINE_WORDS * 8));
  CK(cudaMemset(words, 0, 1024 * LINE_WORDS * 8));
  CK(cudaMalloc(&stamps, 1024 * 3 * 8));
  cudaLaunchAttribute pdl[1];
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  std::vector<uint64_t> h(1024 * 3);
  uint64_t call = 0;
  printf("%-12s %-7s %5s %5s %4s  %9s %9s %9s  (us, median of %d; every value read checked against the call)\n", "load", "loaders", "G", "R", "MB", "span", "blk p50", "blk max", REPS);
  const uint64_t trafficMB[] = {0, 4, 16};
  uint4* traffic;
  CK(cudaMalloc(&traffic, 16ull << 20));
  for (uint64_t mb : trafficMB)
  for (int all = 0; all < 2; ++all)
  for (int mode = 0; mode < MODES; ++mode)
    for (int G : grids)
      for (int R : reps) {
        if (R > G || (R > 1 && mode != VOLATILE && mode != RELAXED_GPU && mode != STATE2)) continue;
        if (all && R > 1 && R < G) continue;
        if (mb != 0 && ((mode > RELAXED_GPU && mode != STATE2) || (R != 1 && R != G) || G == 132)) continue;
        std::vector<double> span, p50, mx;
        long stale = 0;
        for (int rep = 0; rep < REPS + 3; ++rep) {
          ++call;
          writer<<<mb ? 528 : 1, 256>>>(words, R, call, traffic, (mb << 20) / 16);
          CK(cudaGetLastError());
          cudaLaunchConfig_t cfg = {};
          cfg.gridDim = dim3(G);
          cfg.blockDim = dim3(THREADS);
          cfg.attrs = pdl;
          cfg.numAttrs = 1;
          CK(cudaLaunchKernelEx(&cfg, reader, (const uint64_t*)words, mode, R, all != 0, stamps));
          CK(cudaDeviceSynchronize());
          CK(cudaMemcpy(h.data(), stamps, G * 3 * 8, cudaMemcpyDeviceToHost));
          if (rep < 3) continue;
          uint64_t first = UINT64_MAX, last = 0;
          std::vector<double> own(G);
          for (int b = 0; b < G; ++b) {
            stale += h[b * 3 + 2] != call;  // (a load that may read a line cached before the writer's store)
            first = std::min(first, h[b * 3]);
            last = std::max(last, h[b * 3 + 1]);
            own[b] = (h[b * 3 + 1] - h[b * 3]) / 1e3;
          }
          std::sort(own.begin(), own.end());
          span.push_back((last - first) / 1e3);
          p50.push_back(own[G / 2]);
          mx.push_back(own[G - 1]);
        }
        const auto med = [](std::vector<double>& v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        printf("%-12s %-7s %5d %5d %4d  %9.2f %9.2f %9.2f  %s\n", modeName[mode], all ? "all" : "thread0", G, R, (int)mb, med(span),
               med(p50), med(mx),
               stale ? "(stale values read)" : "");
      }
  return 0;
}
