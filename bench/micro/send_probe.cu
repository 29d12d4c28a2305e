// Two GPUs: whether one warp's stores over NVLink hold up the loads of other warps on the same SM (bench/NOTES.md
// v32, next step 25). At W = 2, T = 128 ep_combine_send's first half of items (the peer's carriers, whose partials
// go over NVLink) have their plans in 0.6 us after the blocks are ready, the second half (this rank's own, stored
// locally) only 8 us later; on one GPU without NVLink (plan_probe.cu) every plan is in by 0.5 us. Not part of the
// library: a copy of the send's shape, run on both GPUs at once, each sending to the other. Build and run on a
// machine with two GPUs (peer access between them):
//   nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/send_probe.cu -o send_probe && ./send_probe
//
// Each GPU: P = 255 carrier plans (as ep_stage_pack writes them: the slots' expertOut rows, about half of k = 8
// taken, and their weights), then a send of 2 blocks of 256 threads an SM where each warp takes one (carrier, 2 KiB
// segment) item of 7: the plan's loads, the rows' (4 in flight), their weighted sum, a 2 KiB store, and at the end
// a system fence and a count (the last warp stamps when every store is fenced). Both GPUs start together (a
// host-mapped word). Which items store to the peer:
//   local        none (plan_probe's case, both GPUs running);
//   peer first   carriers c < P/2 (the library at W = 2: sources in order from rank + 1);
//   own first    carriers c >= P/2 (the rank's own carriers first);
//   interleaved  odd carriers (the remote stores spread over every SM);
//   peer bulk    as peer first, each remote 2 KiB through shared memory and one TMA bulk copy (cp.async.bulk).
// Printed per case, the median over repetitions of each GPU's times after its first warp's start (each column the
// larger of the two GPUs' values in a repetition, so one row may mix them): the last plan in among the remote items
// and among the local ones, the local ones split by whether their SM also runs a remote item, the last rows
// summed, the last stores issued, and every store fenced.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "../../kernels/shmem.cuh"  // (globaltimer: the library's own)
#include "cuda_check.h"
#include "send_shape.cuh"

using ep::globaltimer;

constexpr int REPS = 40, P = 255;
constexpr int ITEMS = P * SEGS, STAMP_WORDS = 8;
enum Mode { LOCAL, PEER_FIRST, OWN_FIRST, INTERLEAVED, PEER_BULK, MODES };
static const char* modeName[MODES] = {"local", "peer first", "own first", "interleaved", "peer bulk"};

__host__ __device__ inline bool is_remote(int mode, int c) {
  switch (mode) {
    case PEER_FIRST:
    case PEER_BULK: return c < P / 2;
    case OWN_FIRST: return c >= P / 2;
    case INTERLEAVED: return (c & 1) != 0;
    default: return false;
  }
}

__device__ __forceinline__ uint32_t smid() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(r));
  return r;
}

// stamps[w] = {start, plan in, rows summed, stores issued, SM, item + 1 (0: none), remote}; *done: the time the
// last warp's stores were fenced.
__global__ void __launch_bounds__(256, 2)
    send(const char* plans, const char* expertOut, char* localOut, char* peerIn, int mode,
         const volatile uint32_t* goHost, volatile uint32_t* goLocal, uint32_t rep, uint64_t* stamps,
         uint32_t* doneCount, uint64_t* done) {
  __shared__ __align__(128) uint4 stage[8][SEG / 16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const uint32_t w = blockIdx.x * warps + warp;
  // every warp starts when the host says so (block 0 polls the host's word, the others a word of this GPU)
  if (lane == 0) {
    if (blockIdx.x == 0 && warp == 0) {
      while (*goHost != rep) {
      }
      *goLocal = rep;
    } else {
      while (*goLocal != rep) {
      }
    }
  }
  __syncwarp();
  const uint64_t t0 = globaltimer();
  for (uint32_t it = w; it < (uint32_t)ITEMS; it += gridDim.x * warps) {
    const int c = (int)(it / SEGS), seg = (int)(it % SEGS);
    float acc[4][8];
    uint64_t tPlan, tRows;
    const int s = plan_then_sum(plans, expertOut, c, seg, lane, true, acc, tPlan, tRows);
    const bool remote = is_remote(mode, c);
    char* dst = (remote ? peerIn : localOut) + (uint64_t)it * SEG;
    uint4 r[4];
    fold_partial(acc, s, r);
    if (remote && mode == PEER_BULK) {
      // the segment into shared memory, then one bulk copy by the TMA unit (the generic stores must be made
      // visible to the async proxy before it reads them)
#pragma unroll
      for (int u = 0; u < 4; ++u) stage[warp][u * 32 + lane] = r[u];
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane == 0) {
        const uint32_t sa = (uint32_t)__cvta_generic_to_shared(&stage[warp][0]);
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(sa), "n"(SEG)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        // (the stage is reused by this warp's next item: its reads must be done)
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      }
      __syncwarp();
    } else {
#pragma unroll
      for (int u = 0; u < 4; ++u) *(uint4*)(dst + (u * 32 + lane) * 16) = r[u];
    }
    const uint64_t tStore = globaltimer();
    if (lane == 0 && it == w) {
      uint64_t* m = stamps + (uint64_t)w * STAMP_WORDS;
      m[0] = t0;
      m[1] = tPlan;
      m[2] = tRows;
      m[3] = tStore;
      m[4] = smid();
      m[5] = it + 1;
      m[6] = remote;
    }
  }
  if (lane == 0) {
    if (mode == PEER_BULK) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    __threadfence_system();
    if (atomicAdd(doneCount, 1u) == gridDim.x * warps - 1) *done = globaltimer();
  }
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Gpu {
  char *plans, *expertOut, *out, *in;
  int* slotRows;
  uint64_t *stamps, *done;
  uint32_t *doneCount, *goLocal;
  cudaStream_t stream;
};

int main() {
  int n = 0;
  CK(cudaGetDeviceCount(&n));
  if (n < 2) {
    fprintf(stderr, "send_probe: needs two GPUs with peer access (found %d)\n", n);
    return 2;
  }
  int sms = 0, can01 = 0, can10 = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaDeviceCanAccessPeer(&can01, 0, 1));
  CK(cudaDeviceCanAccessPeer(&can10, 1, 0));
  if (!can01 || !can10) {
    fprintf(stderr, "send_probe: GPUs 0 and 1 have no peer access\n");
    return 2;
  }
  const int grid = 2 * sms, warps = grid * 8, rows = 4 * P;
  const std::vector<int> h = random_slot_rows(P);
  Gpu g[2];
  for (int d = 0; d < 2; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    CK(cudaStreamCreateWithFlags(&g[d].stream, cudaStreamNonBlocking));
    CK(cudaMalloc(&g[d].plans, (size_t)P * PLAN_BYTES));
    CK(cudaMalloc(&g[d].expertOut, (size_t)rows * ROW_BYTES));
    CK(cudaMalloc(&g[d].out, (size_t)ITEMS * SEG));
    CK(cudaMalloc(&g[d].in, (size_t)ITEMS * SEG));
    CK(cudaMalloc(&g[d].slotRows, h.size() * sizeof(int)));
    CK(cudaMalloc(&g[d].stamps, (size_t)warps * STAMP_WORDS * sizeof(uint64_t)));
    CK(cudaMalloc(&g[d].done, sizeof(uint64_t)));
    CK(cudaMalloc(&g[d].doneCount, sizeof(uint32_t)));
    CK(cudaMalloc(&g[d].goLocal, sizeof(uint32_t)));
    CK(cudaMemset(g[d].goLocal, 0xff, sizeof(uint32_t)));
    CK(cudaMemset(g[d].expertOut, 0x3f, (size_t)rows * ROW_BYTES));
    CK(cudaMemcpy(g[d].slotRows, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice));
  }
  uint32_t* goHost;
  CK(cudaHostAlloc(&goHost, sizeof(uint32_t), cudaHostAllocMapped | cudaHostAllocPortable));
  *goHost = 0xffffffffu;
  uint32_t* goDev;
  CK(cudaHostGetDevicePointer(&goDev, goHost, 0));

  printf("send_probe: 2 GPUs, %d SMs, send grid %d x 256 (2 blocks an SM), %d carriers x %d segments = %d items\n", sms,
         grid, P, SEGS, ITEMS);
  printf("(W = 2, T = 128); us after each GPU's first warp's start, each column the later GPU's, median of %d\n", REPS);
  printf("repetitions\n\n");
  printf("%-12s  %8s  %8s  %14s  %14s  %9s  %10s  %8s\n", "case", "remote", "plan last", "local plan", "local plan",
         "rows last", "store last", "fenced");
  printf("%-12s  %8s  %8s  %14s  %14s  %9s  %10s  %8s\n", "", "items", "(remote)", "(SM w/ remote)", "(SM w/o)", "",
         "", "");
  std::vector<uint64_t> m((size_t)warps * STAMP_WORDS);
  uint32_t rep = 0;
  for (int mode = 0; mode < MODES; ++mode) {
    std::vector<double> cols[6];
    int remoteItems = 0;
    for (int r = 0; r < REPS; ++r, ++rep) {
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        // (other work between repetitions, as a layer's other kernels)
        CK(cudaMemsetAsync(g[d].out, r & 0xff, (size_t)ITEMS * SEG, g[d].stream));
        CK(cudaMemsetAsync(g[d].stamps, 0, (size_t)warps * STAMP_WORDS * sizeof(uint64_t), g[d].stream));
        CK(cudaMemsetAsync(g[d].doneCount, 0, sizeof(uint32_t), g[d].stream));
        write_plans<<<P, 32, 0, g[d].stream>>>(g[d].plans, g[d].slotRows, P);
        send<<<grid, 256, 0, g[d].stream>>>(g[d].plans, g[d].expertOut, g[d].out, g[1 - d].in, mode, goDev,
                                            g[d].goLocal, rep, g[d].stamps, g[d].doneCount, g[d].done);
        CK(cudaGetLastError());
      }
      usleep(2000);  // (both sends resident and polling)
      __atomic_store_n(goHost, rep, __ATOMIC_SEQ_CST);
      double worst[6] = {0, 0, 0, 0, 0, 0};
      for (int d = 0; d < 2; ++d) {
        CK(cudaSetDevice(d));
        CK(cudaStreamSynchronize(g[d].stream));
        uint64_t doneT = 0;
        CK(cudaMemcpy(m.data(), g[d].stamps, m.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(&doneT, g[d].done, sizeof(uint64_t), cudaMemcpyDeviceToHost));
        uint64_t start = UINT64_MAX;
        std::vector<char> smRemote(1024, 0);
        remoteItems = 0;
        for (int w = 0; w < warps; ++w) {
          const uint64_t* s = &m[(size_t)w * STAMP_WORDS];
          if (s[5] == 0) continue;
          start = std::min(start, s[0]);
          if (s[6]) smRemote[s[4] & 1023] = 1, ++remoteItems;
        }
        double v[6] = {0, 0, 0, 0, 0, (doneT - start) / 1e3};
        for (int w = 0; w < warps; ++w) {
          const uint64_t* s = &m[(size_t)w * STAMP_WORDS];
          if (s[5] == 0) continue;
          const double plan = (s[1] - start) / 1e3;
          if (s[6]) v[0] = std::max(v[0], plan);
          else if (smRemote[s[4] & 1023]) v[1] = std::max(v[1], plan);
          else v[2] = std::max(v[2], plan);
          v[3] = std::max(v[3], (s[2] - start) / 1e3);
          v[4] = std::max(v[4], (s[3] - start) / 1e3);
        }
        for (int i = 0; i < 6; ++i) worst[i] = std::max(worst[i], v[i]);
      }
      for (int i = 0; i < 6; ++i) cols[i].push_back(worst[i]);
    }
    printf("%-12s  %8d  %8.2f  %14.2f  %14.2f  %9.2f  %10.2f  %8.2f\n", modeName[mode], remoteItems, median(cols[0]),
           median(cols[1]), median(cols[2]), median(cols[3]), median(cols[4]), median(cols[5]));
  }
  return 0;
}
