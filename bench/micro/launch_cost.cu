// Host cost of the driver calls an eager dispatch makes, in C without the FFI: the floor under
// `moe-a2a bench`'s host table. Each row is the CPU time of one call (or one pair of calls), median /
// p10 / p90 over many calls after warm-up; the stream is synchronised every 16 calls so the launch
// queue stays short, as in the bench. Build and run on a GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90a -I kernels bench/micro/launch_cost.cu -lcuda -o launch_cost && ./launch_cost
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>
#include "ep_args.h"

#define CK(x)                                                            \
  do {                                                                   \
    CUresult r_ = (x);                                                   \
    if (r_ != CUDA_SUCCESS) {                                            \
      fprintf(stderr, "%s:%d %s: error %d\n", __FILE__, __LINE__, #x, r_); \
      exit(1);                                                           \
    }                                                                    \
  } while (0)

struct Small {
  uint64_t a, b, c;
};

extern "C" __global__ void empty_small(const __grid_constant__ Small s) {
  if (s.a == 1 && threadIdx.x == 0) *(int*)s.b = 0;
}
// As our kernels: EpArgs by value, a dependent-launch wait, and the early trigger.
extern "C" __global__ void empty_args(const __grid_constant__ EpArgs a) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
  if (a.rank == -7 && threadIdx.x == 0) *(int*)a.y = 0;
}
extern "C" __global__ void spin(long long ns) {
  long long t0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  for (;;) {
    long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (t - t0 > ns) break;
  }
}

static CUstream stream;

// CPU microseconds of fn(), median/p10/p90 over n calls after 200 of warm-up. `busy`: before each
// group of 16 calls, queue a 200 us kernel, so the calls are made while the GPU is working.
static void row(const char* name, int n, bool busy, const std::function<void()>& fn) {
  std::vector<double> t;
  CUfunction spinFn;
  CK((CUresult)cudaGetFuncBySymbol((cudaFunction_t*)&spinFn, (const void*)spin));
  for (int i = -200; i < n; ++i) {
    if (busy && (i & 15) == 0) {
      long long ns = 200000;
      void* p[] = {&ns};
      CK(cuLaunchKernel(spinFn, 1, 1, 1, 32, 1, 1, 0, stream, p, nullptr));
    }
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= 0) t.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    if ((i & 15) == 15) CK(cuStreamSynchronize(stream));
  }
  CK(cuStreamSynchronize(stream));
  std::sort(t.begin(), t.end());
  printf("%-58s %7.2f %7.2f %7.2f\n", name, t[t.size() / 2], t[t.size() / 10], t[t.size() * 9 / 10]);
}

int main() {
  cudaFree(nullptr);  // the primary context, current on this thread
  CK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  CUfunction fSmall, fArgs;
  CK((CUresult)cudaGetFuncBySymbol((cudaFunction_t*)&fSmall, (const void*)empty_small));
  CK((CUresult)cudaGetFuncBySymbol((cudaFunction_t*)&fArgs, (const void*)empty_args));
  Small s{};
  EpArgs a{};
  void* ps[] = {&s};
  void* pa[] = {&a};
  const int n = 4000;
  char cpu[256] = "?";
  if (FILE* f = popen("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", "r")) {
    if (fgets(cpu, sizeof cpu, f)) cpu[strcspn(cpu, "\n")] = 0;
    pclose(f);
  }
  printf("CPU:%s   EpArgs %zu bytes\n", cpu, sizeof(EpArgs));
  printf("%-58s %7s %7s %7s\n", "call (host us)", "median", "p10", "p90");

  CUlaunchAttribute pdl{};
  pdl.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  pdl.value.programmaticStreamSerializationAllowed = 1;
  auto cfg = [&](unsigned grid, unsigned block, bool dependent) {
    CUlaunchConfig c{};
    c.gridDimX = grid, c.gridDimY = 1, c.gridDimZ = 1;
    c.blockDimX = block, c.blockDimY = 1, c.blockDimZ = 1;
    c.hStream = stream;
    c.attrs = dependent ? &pdl : nullptr;
    c.numAttrs = dependent ? 1 : 0;
    return c;
  };
  const CUlaunchConfig cPlain = cfg(1057, 224, false), cDep = cfg(1057, 224, true);

  row("cuLaunchKernel, 24-byte args, grid 1", n, false,
      [&] { CK(cuLaunchKernel(fSmall, 1, 1, 1, 32, 1, 1, 0, stream, ps, nullptr)); });
  row("cuLaunchKernel, EpArgs, grid 1", n, false,
      [&] { CK(cuLaunchKernel(fArgs, 1, 1, 1, 32, 1, 1, 0, stream, pa, nullptr)); });
  row("cuLaunchKernel, EpArgs, grid 1057x224", n, false,
      [&] { CK(cuLaunchKernel(fArgs, 1057, 1, 1, 224, 1, 1, 0, stream, pa, nullptr)); });
  row("cuLaunchKernelEx, EpArgs, grid 1057x224, no attribute", n, false,
      [&] { CK(cuLaunchKernelEx(&cPlain, fArgs, pa, nullptr)); });
  row("cuLaunchKernelEx, EpArgs, grid 1057x224, dependent", n, false,
      [&] { CK(cuLaunchKernelEx(&cDep, fArgs, pa, nullptr)); });
  // route (one block) then dispatch, as an eager route + dispatch makes them
  auto pairPlain = [&] {
    CK(cuLaunchKernel(fArgs, 1, 1, 1, 512, 1, 1, 0, stream, pa, nullptr));
    CK(cuLaunchKernel(fArgs, 1057, 1, 1, 224, 1, 1, 0, stream, pa, nullptr));
  };
  auto pairDependent = [&] {
    CK(cuLaunchKernel(fArgs, 1, 1, 1, 512, 1, 1, 0, stream, pa, nullptr));
    CK(cuLaunchKernelEx(&cDep, fArgs, pa, nullptr));
  };
  row("pair: cuLaunchKernel + cuLaunchKernel", n, false, pairPlain);
  row("pair: cuLaunchKernel + cuLaunchKernelEx dependent", n, false, pairDependent);
  row("pair, GPU busy: cuLaunchKernel + cuLaunchKernel", n, true, pairPlain);
  row("pair, GPU busy: cuLaunchKernel + cuLaunchKernelEx dependent", n, true, pairDependent);

  // the pair as a graph: replay, and replay after rewriting both nodes' arguments (what an eager call
  // through a cached graph would cost)
  CUgraph graph;
  CUgraphExec exec;
  CK(cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  pairDependent();
  CK(cuStreamEndCapture(stream, &graph));
  CK(cuGraphInstantiate(&exec, graph, 0));
  size_t count = 0;
  CK(cuGraphGetNodes(graph, nullptr, &count));
  std::vector<CUgraphNode> nodes(count);
  CK(cuGraphGetNodes(graph, nodes.data(), &count));
  std::vector<CUDA_KERNEL_NODE_PARAMS> params(count);
  for (size_t i = 0; i < count; ++i) CK(cuGraphKernelNodeGetParams(nodes[i], &params[i]));
  auto replay = [&] { CK(cuGraphLaunch(exec, stream)); };
  auto updateAndReplay = [&] {
    a.numTokens++;
    for (size_t i = 0; i < count; ++i) {
      params[i].kernelParams = pa;
      CK(cuGraphExecKernelNodeSetParams(exec, nodes[i], &params[i]));
    }
    replay();
  };
  row("cuGraphLaunch (the pair)", n, false, replay);
  row("cuGraphExecKernelNodeSetParams x2 + cuGraphLaunch", n, false, updateAndReplay);
  row("cuGraphLaunch, GPU busy", n, true, replay);
  row("cuGraphExecKernelNodeSetParams x2 + cuGraphLaunch, GPU busy", n, true, updateAndReplay);
  row("nothing (the clock's own cost)", n, false, [] {});
  return 0;
}
