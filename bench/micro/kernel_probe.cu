// Device time of each kernel of one rank (W = 1) at the DeepSeek-V3 shape, without the TypeScript
// host: for tuning a kernel between full runs of `moe-a2a bench`. Times ep_route + ep_dispatch and, where
// T*k allows, ep_dispatch_local, each with ordinary and programmatic dependent launches. Also prints where ep_route spends
// its time (clock64 stamps at its phases, EP_PROBE). Correctness is not checked here: `moe-a2a verify`
// does that. Build and run on a GPU machine:
//   nvcc -O3 -fmad=false -std=c++17 -arch=sm_90a -DEP_PROBE -I kernels bench/micro/kernel_probe.cu -o probe
//   ./probe [T=128] [iters=500] [route threads=1024]
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "../../kernels/ep.cu"

#include "cuda_check.h"

static uint64_t align256(uint64_t n) { return (n + 255) & ~255ull; }

int main(int argc, char** argv) {
  const int T = argc > 1 ? atoi(argv[1]) : 128, iters = argc > 2 ? atoi(argv[2]) : 500;
  const int RT = argc > 3 ? atoi(argv[3]) : 1024;
  const int E = 256, K = 8, H = 7168, G = 128, W = 1, cap = T;
  const int B_D = 224, B_R = 224;  // the host's rowBlock for H = 7168
  int sms = 0, clockKhz = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaDeviceGetAttribute(&clockKhz, cudaDevAttrClockRate, 0));

  // heap: countSignal, dispatchSignal, combineSignal, counts, combineRecv, expertX, expertScales
  uint64_t off = 0, o[7];
  const uint64_t sizes[7] = {2 * align256(W * 8),          2 * align256(W * 8), 2 * align256(W * 8),
                             2 * align256(W * E * 4),      2 * align256((uint64_t)T * K * 2 * H),
                             align256((uint64_t)E * cap * H), align256((uint64_t)E * cap * (H / G) * 4)};
  for (int i = 0; i < 7; ++i) o[i] = off, off += sizes[i];
  char* heap;
  CK(cudaMalloc(&heap, off));
  CK(cudaMemset(heap, 0, off));

  std::vector<uint16_t> x((size_t)T * H), out((size_t)E * cap * H);
  std::vector<int> idx((size_t)T * K);
  std::vector<float> w((size_t)T * K, 0.125f);
  srand(1);
  for (auto& v : x) v = (uint16_t)(0x3c00 + rand() % 0x0800 + (rand() & 1) * 0x8000);
  for (auto& v : out) v = (uint16_t)(0x3c00 + rand() % 0x0800);
  for (int t = 0; t < T; ++t) {
    std::vector<int> perm(E);
    for (int e = 0; e < E; ++e) perm[e] = e;
    for (int j = 0; j < K; ++j) std::swap(perm[j], perm[j + rand() % (E - j)]), idx[t * K + j] = perm[j];
  }
  auto up = [](const void* h, size_t bytes) {
    void* d;
    CK(cudaMalloc(&d, std::max<size_t>(bytes, 16)));
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return (uint64_t)d;
  };
  auto zeros = [](size_t bytes) {
    void* d;
    CK(cudaMalloc(&d, std::max<size_t>(bytes, 16)));
    CK(cudaMemset(d, 0, bytes));
    return (uint64_t)d;
  };
  const uint64_t base = (uint64_t)heap;

  EpArgs a{};
  a.rank = 0, a.world = W, a.numExperts = E, a.expertsPerRank = E / W, a.hidden = H, a.topk = K;
  a.numTokens = T, a.maxRowsPerPeer = T * K, a.expertCapacity = cap, a.groupSize = G, a.groupsPerRow = H / G;
  a.fp8 = 1, a.splitsPerPeer = E / W + 1, a.hostAbort = 0, a.timeoutNs = 10000000000ll;
  a.countSignalOff = o[0], a.countSignalSlot = sizes[0] / 2, a.dispatchSignalOff = o[1];
  a.dispatchSignalSlot = sizes[1] / 2, a.combineSignalOff = o[2], a.combineSignalSlot = sizes[2] / 2;
  a.countsOff = o[3], a.countsSlot = sizes[3] / 2, a.combineRecvOff = o[4], a.combineRecvSlot = sizes[4] / 2;
  a.expertXOff = o[5], a.expertScalesOff = o[6], a.dispatchRowBytes = H, a.combineRowBytes = 2 * H;
  a.peerBases = up(&base, 8), a.localBase = base;
  a.x = up(x.data(), x.size() * 2), a.topkIdx = up(idx.data(), idx.size() * 4);
  a.topkWeights = up(w.data(), w.size() * 4), a.expertOut = up(out.data(), out.size() * 2);
  a.expertCounts = zeros(E * 4), a.expertOffsets = zeros(E * 4), a.y = zeros((size_t)T * H * 2);
  a.pairRow = zeros((size_t)T * K * 4);
  a.pairDest = zeros((size_t)T * K * 4), a.recvSplits = zeros(W * (E / W + 1) * 4);
  a.state = zeros(sizeof(EpState)), a.errHost = 0;

  const int smem = 4 * (32 * E + E + 1) + 2 * T * K;
  CK(cudaFuncSetAttribute(ep_route, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int gridD = std::min(8 * sms, std::max(1, T * ((H / 16 + B_D - 1) / B_D)));
  const int gridR = std::min(8 * sms, std::max(1, T * ((H / 8 + B_R - 1) / B_R)));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto route = [&] { ep_route<<<1, RT, smem, s>>>(a); };
  auto dispatch = [&] { ep_dispatch<<<gridD, B_D, 0, s>>>(a); };
  auto reduce = [&] { ep_combine_reduce<<<gridR, B_R, 0, s>>>(a); };
  // programmatic dependent launches, as the host makes them between a call's own kernels
  auto dependent = [&](void (*k)(EpArgs), int grid, int block) {
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3(grid), c.blockDim = dim3(block), c.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at, c.numAttrs = 1;
    CK(cudaLaunchKernelEx(&c, k, a));
  };
  auto dispatchAfterRoute = [&] { dependent(ep_dispatch, gridD, B_D); };
  const bool local = T * K <= EP_LOCAL_MAX_PAIRS;
  auto dispatchLocal = [&] { ep_dispatch_local<<<gridD + 1, B_D, 0, s>>>(a); };
  auto reduceAfter = [&] { dependent(ep_combine_reduce, gridR, B_R); };
  auto all = [&] { route(), dispatchAfterRoute(), reduce(); };
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto time = [&](const char* name, auto fn) {
    for (int i = 0; i < 20; ++i) all();  // warm-up; keeps route -> dispatch -> reduce state consistent
    CK(cudaEventRecord(e0, s));
    for (int i = 0; i < iters; ++i) fn();
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    printf("%-34s %8.2f us per launch (back to back, %d launches)\n", name, ms * 1000 / iters, iters);
  };
  printf("T=%d E=%d k=%d H=%d fp8 G=%d W=1, %d SMs at %d MHz, route block %d\n", T, E, K, H, G, sms,
         clockKhz / 1000, RT);
  time("ep_route", route);
  time("ep_dispatch", dispatch);
  time("ep_combine_reduce", reduce);
  time("route + dispatch", [&] { route(), dispatch(); });
  time("route + dispatch (overlapped)", [&] { route(), dispatchAfterRoute(); });
  time("route + dispatch (overl.) + reduce", all);
  if (local) {
    time("ep_dispatch_local", dispatchLocal);
    time("dispatch_local + reduce", [&] { dispatchLocal(), reduce(); });
    time("dispatch_local + reduce (overl.)", [&] { dispatchLocal(), reduceAfter(); });
    // the two routings agree (verify checks every byte; this is a quick look)
    std::vector<int> viaRoute((size_t)T * K), viaLocal((size_t)T * K);
    route(), dispatch();
    CK(cudaMemcpyAsync(viaRoute.data(), (void*)a.pairDest, viaRoute.size() * 4, cudaMemcpyDeviceToHost, s));
    CK(cudaMemsetAsync((void*)a.pairDest, 0xff, viaLocal.size() * 4, s));
    dispatchLocal();
    CK(cudaMemcpyAsync(viaLocal.data(), (void*)a.pairDest, viaLocal.size() * 4, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    printf("pairDest of ep_route and ep_dispatch_local %s\n", viaRoute == viaLocal ? "agree" : "DIFFER");
  }
  CK(cudaGetLastError());

  // where ep_route's time goes: one launch after an idle gap
  CK(cudaStreamSynchronize(s));
  route();
  CK(cudaStreamSynchronize(s));
  long long p[16];
  CK(cudaMemcpyFromSymbol(p, ep_probe, sizeof p));
  const char* names[] = {"init + phase 1 ids", "segments",          "phase 2 hist",  "phase 3 scan",
                         "exchange + phase 4", "waits + err check", "phase 5 bases", "phase 6 pairDest"};
  for (int i = 1; i <= 8; ++i)
    printf("  route %-20s %7.2f us\n", names[i - 1], (p[i] - p[i - 1]) * 1000.0 / clockKhz);
  EpState st;
  CK(cudaMemcpy(&st, (void*)a.state, sizeof st, cudaMemcpyDeviceToHost));
  printf("calls %llu, err code %u\n", (unsigned long long)st.dispatchCalls, st.err.code);
  return st.err.code == 0 ? 0 : 1;
}
