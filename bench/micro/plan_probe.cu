// One GPU: how long ep_combine_send's first loads take when many warps start at once (bench/NOTES.md v31,
// next step 21: at T = 128 the last warp's 72-byte plan came 8 us after its block was ready, at T = 1 0.6 us).
// Not part of the library: a copy of the send's shape without its kernels, the peers or NVLink. Build and run
// on a machine with one GPU:
//   nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/plan_probe.cu -o plan_probe && ./plan_probe
//
// A "pack" kernel writes P carrier plans (as ep_stage_pack does: the slots' expertOut rows, about half of k = 8
// taken, among the first 4P rows as in the packed layout, and their weights); then a "send" kernel of 2 blocks of 256 threads an SM (as ep_combine_send: 128
// registers) gives each warp one (carrier, 2 KiB segment) item of the 7 of a 14 KiB bf16 row: the plan's loads,
// then the rows' (4 in flight), their weighted sum, and a 2 KiB store. Each warp stamps %globaltimer when it
// starts, when its plan is in, when its rows are summed, and when its stores are issued. Printed per case, the
// median over repetitions of: the latest warp's plan, rows and stores after the first warp's start, and the
// median warp's plan. Cases: P = 2 (T = 1 at W = 2), 255 (T = 128) and 1020 (T = 512); plans written by the
// kernel just before (fresh) or long before (static: the send runs twice and the second is timed); the rows
// loaded or not (plan only).
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#include "../../kernels/shmem.cuh"  // (globaltimer: the library's own)
#include "cuda_check.h"
#include "send_shape.cuh"

using ep::globaltimer;

constexpr int REPS = 30;

// stamps[w] = {start, plan in, rows summed, stores issued} of warp w's first item (0: no item).
__global__ void __launch_bounds__(256, 2)
    send(const char* plans, const char* expertOut, char* out, int P, bool loadRows, uint64_t* stamps) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const uint32_t w = blockIdx.x * warps + (threadIdx.x >> 5), items = (uint32_t)P * SEGS;
  const uint64_t t0 = globaltimer();
  bool first = true;
  for (uint32_t it = w; it < items; it += gridDim.x * warps) {
    const int c = (int)(it / SEGS), seg = (int)(it % SEGS);
    float acc[4][8];
    uint64_t tPlan, tRows;
    const int s = plan_then_sum(plans, expertOut, c, seg, lane, loadRows, acc, tPlan, tRows);
    char* dst = out + (uint64_t)it * SEG;
    uint4 r[4];
    fold_partial(acc, s, r);
#pragma unroll
    for (int u = 0; u < 4; ++u) *(uint4*)(dst + (u * 32 + lane) * 16) = r[u];
    const uint64_t tStore = globaltimer();
    if (first && lane == 0) {
      uint64_t* m = stamps + (uint64_t)w * 4;
      m[0] = t0;
      m[1] = tPlan;
      m[2] = tRows;
      m[3] = tStore;
    }
    first = false;
  }
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int grid = 2 * sms, warps = grid * 8;
  const int maxP = 1020, rows = maxP * K;
  char *plans, *expertOut, *out;
  int* slotRows;
  uint64_t* stamps;
  CK(cudaMalloc(&plans, (size_t)maxP * PLAN_BYTES));
  CK(cudaMalloc(&expertOut, (size_t)rows * ROW_BYTES));
  CK(cudaMalloc(&out, (size_t)maxP * SEGS * SEG));
  CK(cudaMalloc(&slotRows, (size_t)maxP * K * sizeof(int)));
  CK(cudaMalloc(&stamps, (size_t)warps * 4 * sizeof(uint64_t)));
  CK(cudaMemset(expertOut, 0x3f, (size_t)rows * ROW_BYTES));
  const std::vector<int> h = random_slot_rows(maxP);
  CK(cudaMemcpy(slotRows, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice));
  printf("plan_probe: %d SMs, send grid %d x 256 (2 blocks an SM), items = carriers x %d segments; us after the\n", sms,
         grid, SEGS);
  printf("first warp's start, median of %d repetitions\n\n", REPS);
  printf("%9s  %6s  %5s  %10s  %10s  %10s  %10s  %10s\n", "carriers", "plans", "rows", "plan med", "plan last",
         "rows last", "store last", "warps");
  std::vector<uint64_t> m((size_t)warps * 4);
  for (int P : {2, 255, 1020}) {
    for (int fresh = 1; fresh >= 0; --fresh) {
      for (int loadRows = 1; loadRows >= 0; --loadRows) {
        std::vector<double> planMed, planLast, rowsLast, storeLast;
        int busy = 0;
        for (int r = 0; r < REPS; ++r) {
          // (other work between repetitions, as a layer's other kernels: the rows and plans leave L2)
          CK(cudaMemset(out, r & 0xff, (size_t)maxP * SEGS * SEG));
          CK(cudaMemset(stamps, 0, (size_t)warps * 4 * sizeof(uint64_t)));
          if (fresh) {
            write_plans<<<P, 32>>>(plans, slotRows, P);
          } else {
            write_plans<<<P, 32>>>(plans, slotRows, P);
            send<<<grid, 256>>>(plans, expertOut, out, P, loadRows != 0, stamps);
            CK(cudaMemset(stamps, 0, (size_t)warps * 4 * sizeof(uint64_t)));
          }
          send<<<grid, 256>>>(plans, expertOut, out, P, loadRows != 0, stamps);
          CK(cudaGetLastError());
          CK(cudaDeviceSynchronize());
          CK(cudaMemcpy(m.data(), stamps, m.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
          uint64_t start = UINT64_MAX;
          std::vector<double> plan;
          double pl = 0, rl = 0, sl = 0;
          busy = 0;
          for (int w = 0; w < warps; ++w)
            if (m[w * 4] != 0) start = std::min(start, m[w * 4]);
          for (int w = 0; w < warps; ++w) {
            if (m[w * 4] == 0) continue;
            ++busy;
            const double p = (m[w * 4 + 1] - start) / 1e3, q = (m[w * 4 + 2] - start) / 1e3,
                         s = (m[w * 4 + 3] - start) / 1e3;
            plan.push_back(p);
            pl = std::max(pl, p);
            rl = std::max(rl, q);
            sl = std::max(sl, s);
          }
          planMed.push_back(median(plan));
          planLast.push_back(pl);
          rowsLast.push_back(rl);
          storeLast.push_back(sl);
        }
        printf("%9d  %6s  %5s  %10.2f  %10.2f  %10.2f  %10.2f  %10d\n", P, fresh ? "fresh" : "static",
               loadRows ? "yes" : "no", median(planMed), median(planLast), median(rowsLast), median(storeLast), busy);
      }
    }
  }
  return 0;
}
