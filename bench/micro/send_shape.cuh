// The combine send's shape at the DeepSeek-V3 size, without the library: what plan_probe.cu and send_probe.cu
// share. A carrier's plan (as ep_stage_pack's write_plan lays it out: a head of two ints, then per slot j < K
// its expertOut row or -1, then per slot its weight), a warp's item = (carrier, 2 KiB segment of its 14 KiB
// bf16 partial), the rows' weighted sum with four rows' loads in flight (as combine_send_partials).
#pragma once
#include <stdint.h>
#include <stdlib.h>

#include <vector>

#include "../../kernels/shmem.cuh"  // (ld_nc_v4: the library's own)

constexpr int K = 8, ROW_BYTES = 14336, SEG = 2048, SEGS = ROW_BYTES / SEG, PLAN_BYTES = 80;

// Each slot taken with probability 1/2 (at least one a carrier), its row a random one (write_plans folds it
// into the packed rows).
inline std::vector<int> random_slot_rows(int carriers) {
  std::vector<int> h((size_t)carriers * K);
  srand(1);
  for (int c = 0; c < carriers; ++c) {
    int taken = 0;
    for (int j = 0; j < K; ++j) {
      const bool take = (rand() & 1) || (j == K - 1 && taken == 0);
      h[c * K + j] = take ? rand() : -1;
      taken += take;
    }
  }
  return h;
}

// One warp a plan: lane j < K writes slot j's row (or -1) and weight, lanes 0-1 the head (as write_plan). The
// rows fall among the first 4P, as the packed layout keeps them (about 4 a carrier).
__global__ void write_plans(char* plans, const int* slotRows, int P) {
  const int c = blockIdx.x, lane = threadIdx.x;
  if (c >= P) return;
  char* plan = plans + (uint64_t)c * PLAN_BYTES;
  if (lane < K) {
    const int r = slotRows[c * K + lane];
    ((int*)(plan + 8))[lane] = r < 0 ? -1 : r % (4 * P);
    ((float*)(plan + 8))[K + lane] = 0.125f * (float)(lane + 1);
  }
  if (lane < 2) ((int*)plan)[lane] = lane == 0 ? 1 : c;
}

// Carrier c's plan, every lane of the warp: lane j < K gets slot j's row and weight; returns the head's first
// int (the source), so that the caller's next instruction waits for the loads.
__device__ __forceinline__ int load_plan(const char* plans, int c, int lane, int& rj, float& wj) {
  const char* plan = plans + (uint64_t)c * PLAN_BYTES;
  int head = 0;
  rj = -1;
  wj = 0.0f;
  if (lane < K) {
    rj = __ldg((const int*)(plan + 8) + lane);
    wj = __ldg((const float*)(plan + 8) + K + lane);
  }
  if (lane < 2) head = __ldg((const int*)plan + lane);
  return __shfl_sync(~0u, head, 0);
}

// The weighted sum of segment `seg` of the plan's rows into acc (lane: 4 vectors of 8 values), in slot order.
__device__ __forceinline__ void sum_rows(const char* expertOut, int rj, float wj, int seg, int lane,
                                         float (&acc)[4][8]) {
  const uint64_t src = rj >= 0 ? (uint64_t)expertOut + (uint64_t)rj * ROW_BYTES : 0;
  for (uint32_t left = __ballot_sync(~0u, rj >= 0); left != 0;) {
    uint4 v[4][4];
    float wq[4];
    uint32_t has = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int j = left ? __ffs(left) - 1 : 0;
      const uint64_t p = __shfl_sync(~0u, src, j);
      wq[q] = __shfl_sync(~0u, wj, j);
      if (left) {
        has |= 1u << q;
#pragma unroll
        for (int u = 0; u < 4; ++u) v[q][u] = ep::ld_nc_v4((const char*)p + seg * SEG + (u * 32 + lane) * 16);
      }
      left &= left - 1;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (!(has >> q & 1u)) continue;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const uint32_t x[4] = {v[q][u].x, v[q][u].y, v[q][u].z, v[q][u].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[u][2 * i] += wq[q] * __uint_as_float(x[i] << 16);
          acc[u][2 * i + 1] += wq[q] * __uint_as_float(x[i] & 0xffff0000u);
        }
      }
    }
  }
}

// A warp's item: carrier c's plan, then (loadRows) segment seg of its rows summed into acc, zeroed first. Returns
// the plan's source, with the %globaltimer at which the plan was in (tPlan) and the sum done (tRows).
__device__ __forceinline__ int plan_then_sum(const char* plans, const char* expertOut, int c, int seg, int lane,
                                             bool loadRows, float (&acc)[4][8], uint64_t& tPlan, uint64_t& tRows) {
  int rj;
  float wj;
  const int s = load_plan(plans, c, lane, rj, wj);
  tPlan = ep::globaltimer();
  for (int u = 0; u < 4; ++u)
    for (int i = 0; i < 8; ++i) acc[u][i] = 0.0f;
  if (loadRows) sum_rows(expertOut, rj, wj, seg, lane, acc);
  tRows = ep::globaltimer() + (acc[0][0] == 12345.0f ? 1 : 0);  // (waits for the sum)
  return s;
}

// A lane's 64 bytes of the partial (the sums folded so that every one counts, and the source).
__device__ __forceinline__ void fold_partial(const float (&acc)[4][8], int s, uint4 (&r)[4]) {
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    r[u].x = __float_as_uint(acc[u][0]) ^ __float_as_uint(acc[u][1]);
    r[u].y = __float_as_uint(acc[u][2]) ^ __float_as_uint(acc[u][3]);
    r[u].z = __float_as_uint(acc[u][4]) ^ __float_as_uint(acc[u][5]);
    r[u].w = __float_as_uint(acc[u][6]) ^ __float_as_uint(acc[u][7]) ^ (uint32_t)s;
  }
}
