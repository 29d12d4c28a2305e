// Between hosts (EpArgs.nodes > 1; README, "Between hosts"): 9 ep_rail_plan, 10 ep_rail_rows,
// 11 ep_rail_forward, 12 ep_rail_combine, 13 ep_rail_land.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
//
// Rank r is (host r / G, local r % G); its rail peer on host h is (h, local r). Only this host's heaps are
// mapped. A rank sends each other host one dispatch message per call, to its rail peer there, and gets
// one back per combine; the host moves them with NCCL between these kernels, each a fixed number of
// bytes (src/ep/layout.ts: railMessageLayout, railCombineLayout), so a step stays capturable in a graph:
//   dispatch: ep_stage_send (this host's owners) -> ep_rail_plan -> ep_rail_rows -> [NCCL: messages to
//             and from every other host] -> ep_rail_forward -> ep_stage_pack
//   combine:  ep_combine_send (this host's sources; rows for a source on another host go to the outbox
//             of its rail peer here) -> ep_rail_combine (with dedup it sums this host's partials for each
//             token) -> [NCCL] -> ep_rail_land -> ep_combine_reduce_dedup (or ep_combine_reduce)
// The messages are the cpu transport's (src/shmem/cpu/rail.ts): every output is the same bytes. A message
// carries its call in its header, so a message that did not come (the host aborted NCCL after its
// timeout) is told from this call's and the wait for it names the rank that did not send it.
// Buffer reuse needs no signal: each message buffer is written and read on this rank's own stream, in
// order; an owner's stage slot is reused as on one host (ep_stage_send's wait on this host's ranks).
#pragma once

namespace {

__device__ __forceinline__ int my_host(const EpArgs& a) { return host_of(a, a.rank); }
__device__ __forceinline__ int my_local(const EpArgs& a) { return a.rank - my_host(a) * a.ranksPerNode; }
// Dispatch message h in a [nodes][railMsgBytes] buffer, and combine message h in a [nodes][railCombBytes] one.
__device__ __forceinline__ char* rail_msg(uint64_t buf, const EpArgs& a, int h) {
  return (char*)buf + (uint64_t)h * a.railMsgBytes;
}
__device__ __forceinline__ char* rail_comb(uint64_t buf, const EpArgs& a, int h) {
  return (char*)buf + (uint64_t)h * a.railCombBytes;
}
// A message's call word (dispatch: bytes 8..15; combine: bytes 0..7), written before the sender's NCCL send.
__device__ __forceinline__ uint64_t msg_call(const char* msg, int at) { return *(const volatile uint64_t*)(msg + at); }
// Owner g's split record in dispatch message `msg` (EPR counts, then m_st).
__device__ __forceinline__ const int* msg_splits(const EpArgs& a, const char* msg, int g) {
  return (const int*)(msg + a.railMsgSplits) + (uint64_t)g * (a.expertsPerRank + 1);
}
__device__ __forceinline__ int split_rows(const EpArgs& a, const int* split) {
  int n = 0;
  for (int le = 0; le < a.expertsPerRank; ++le) n += split[le];
  return n;
}
__device__ __forceinline__ int row_segments(uint64_t rowBytes, uint64_t vb) {
  return (int)((rowBytes + 32u * SEG_VECS * vb - 1) / (32u * SEG_VECS * vb));
}

}  // namespace

// =============================================================================================
// 9. ep_rail_plan (after ep_stage_send; grid = nodes, one block per other host; block <= 1024): the books of
// this rank's message to host h, from pairRow (the row of each pair in this rank's expert-sorted order):
// per owner there its split record; which tokens go there (each once, in token order: railTokenOf), and
// per token its books: its token here, the mask of its carrier slots on host h, and per slot the owner
// there and the row of this rank's stage for it (with dedup, and the slot's weight). The header:
// the number of tokens and the call (with the abort bit when this rank's own input failed it: then only
// the header). ep_rail_rows stores the rows.
extern "C" __global__ void __launch_bounds__(1024) ep_rail_plan(const __grid_constant__ EpArgs a) {
  __shared__ int hist[EP_MAX_EXPERTS + 1];
  __shared__ int flags[1024 + 1];
  __shared__ int scratch[33];
  allow_dependents();
  wait_for_prior();  // ep_stage_send: pairRow, the call count, ownAbort
  host_requires(a.nodes > 1 && (int)gridDim.x == a.nodes && blockDim.x <= 1024 && a.topk <= EP_MAX_TOPK,
                "ep_rail_plan: nodes > 1, grid = nodes, block <= 1024");
  const int h = blockIdx.x, tid = threadIdx.x, B = blockDim.x;
  if (h == my_host(a)) return;
  const EpState* st = state_of(a);
  const uint64_t call = read_calls(st);
  char* msg = rail_msg(a.railSend, a, h);
  if (*(const volatile uint32_t*)&st->ownAbort != 0) {
    if (tid == 0) {
      *(uint32_t*)msg = 0u;
      *(uint64_t*)(msg + 8) = call | EP_ABORT_BIT;
    }
    return;
  }
  const int E = a.numExperts, K = a.topk, T = a.numTokens, EPR = a.expertsPerRank, G = a.ranksPerNode;
  const int* topk = (const int*)a.topkIdx;
  const int* pairRow = (const int*)a.pairRow;
  const float* weights = (const float*)a.topkWeights;
  // where each expert's rows start in this rank's order (as ep_stage_send's bookkeeping counts them)
  for (int e = tid; e <= E; e += B) hist[e] = 0;
  __syncthreads();
  for (int p = tid; p < T * K; p += B) {
    const int e = __ldg(topk + p);
    if (e >= 0) atomicAdd(&hist[e], 1);
  }
  block_exclusive_scan(hist, E, scratch);
  int* splits = (int*)(msg + a.railMsgSplits);
  for (int i = tid; i < G * (EPR + 1); i += B) {
    const int g = i / (EPR + 1), le = i % (EPR + 1), e0 = (h * G + g) * EPR;
    splits[i] = le < EPR ? hist[e0 + le + 1] - hist[e0 + le] : hist[e0];
  }
  int* tokenOf = (int*)a.railTokenOf + (uint64_t)h * a.maxTokensPerRank;
  // the owner of pair p on host h, local index, or -1
  auto ownerHere = [&](int p) {
    const int e = __ldg(topk + p);
    if (e < 0 || __ldg(pairRow + p) < 0) return -1;
    const int d = e / EPR;
    return host_of(a, d) == h ? d - h * G : -1;
  };
  int n = 0;  // tokens so far (every thread holds the same)
  for (int t0 = 0; t0 < T; t0 += B) {
    const int t = t0 + tid;
    bool goes = false;
    for (int j = 0; t < T && j < K && !goes; ++j) goes = ownerHere(t * K + j) >= 0;
    flags[tid] = goes ? 1 : 0;
    block_exclusive_scan(flags, B, scratch);
    const int mine = goes ? n + flags[tid] : -1;
    n += flags[B];
    if (t >= T) continue;
    tokenOf[t] = mine;
    if (!goes) continue;
    int* books = (int*)(msg + a.railMsgTokens + (uint64_t)mine * a.railMsgTokenBytes);
    uint32_t mask = 0;  // the token's carrier slots on host h (each owner's first; dedup has k <= 32)
    for (int j = 0; j < K; ++j) {
      const int g = ownerHere(t * K + j);
      books[2 + 2 * j] = g;
      books[3 + 2 * j] = g >= 0 ? __ldg(pairRow + t * K + j) - hist[(h * G + g) * EPR] : -1;
      if (a.dedup) books[2 + 2 * K + j] = __float_as_int(g >= 0 ? __ldg(weights + t * K + j) : 0.0f);
      bool first = g >= 0 && j < 32;
      for (int q = 0; q < j && first; ++q) first = ownerHere(t * K + q) != g;
      if (first) mask |= 1u << j;
    }
    books[0] = t;
    books[1] = (int)mask;
  }
  if (tid == 0) {
    *(uint32_t*)msg = (uint32_t)n;
    *(uint64_t*)(msg + 8) = call;
  }
}

// =============================================================================================
// 10. ep_rail_rows (after ep_rail_plan; sizes as ep_dispatch): each token's row, FP8-quantised or bf16 as
// ep_stage_send stores it, into this rank's message to every other host it goes to, at its index there.
namespace {
struct RailDests {
  int state = -1;  // -1: not asked yet; 1: rows go; 0: this rank's own input failed the call
  __device__ __forceinline__ ItemSpan span(int n) const { return strided_items(n, gridDim.x); }
  __device__ __forceinline__ bool go(const EpArgs& a, int /*firstToken*/) {
    if (state < 0) {
      wait_for_prior();  // ep_rail_plan's railTokenOf
      state = *(const volatile uint32_t*)&state_of(a)->ownAbort == 0 ? 1 : 0;
    }
    return state != 0;
  }
  __device__ __forceinline__ void dests(const EpArgs& a, int t, bool /*firstChunk*/, DestList& L, int buf) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    int n = 0;
    for (int h0 = 0; h0 < a.nodes; h0 += 32) {
      const int h = h0 + lane;
      const int tok = h < a.nodes && h != my_host(a) ? ((const int*)a.railTokenOf)[(uint64_t)h * a.maxTokensPerRank + t] : -1;
      const bool valid = tok >= 0;
      const char* msg = rail_msg(a.railSend, a, h);
      const uint64_t row = valid ? (uint64_t)(msg + a.railMsgRows + (uint64_t)tok * a.dispatchRowBytes) : 0;
      const uint64_t sc = valid ? (uint64_t)(msg + a.railMsgScales + (uint64_t)tok * a.groupsPerRow * 4u) : 0;
      n = push_dest(L, buf, n, valid, row, sc);
    }
    if (lane == 0) L.n[buf] = n;
  }
};
}  // namespace

extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_rail_rows(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  allow_dependents();
  host_requires(a.nodes > 1 && a.nodes <= EP_MAX_TOPK, "ep_rail_rows: 1 < nodes <= EP_MAX_TOPK");
  RailDests D;
  dispatch_rows(a, L, D);
}

// =============================================================================================
// 11. ep_rail_forward (after the messages came, as rail peer; block 256, any grid): each other host's
// message, from source s = (that host, this rank's local index), into the stages of this host's owners on
// s's behalf (split record; from each token's books its rows and scales, with dedup carriers and records),
// then s's signal to each owner (with the abort bit when s aborted; none when the message is not this
// call's: the owners' waits name s).
// The last block then waits for every source on another host (their rail peers here signal this rank).
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_rail_forward(const __grid_constant__ EpArgs a) {
  __shared__ int pre[EP_MAX_TOPK + 1];     // per host: its message's (token, slot) pairs, then their exclusive scan
  __shared__ uint64_t word[EP_MAX_TOPK];   // per host: its message's call word
  __shared__ int scratch[33];
  __shared__ int sLast;
  allow_dependents();
  host_requires(a.nodes > 1 && a.nodes <= EP_MAX_TOPK && a.world <= EP_MAX_EXPERTS, "ep_rail_forward: 1 < nodes <= EP_MAX_TOPK");
  EpState* st = state_of(a);
  const uint64_t call = read_calls(st), slot = call & 1u;
  const int tid = threadIdx.x, B = blockDim.x, W = a.world, G = a.ranksPerNode, EPR = a.expertsPerRank, S = a.stageRows;
  const int K = a.topk, me = my_host(a), lane = tid & 31;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int h = tid; h < a.nodes; h += B) {
    const char* msg = rail_msg(a.railRecv, a, h);
    word[h] = h == me ? 0u : msg_call(msg, 8);
    // (a message from a peer with another config could name more tokens than fit: never past them)
    pre[h] = h != me && word[h] == call ? (int)min(*(const uint32_t*)msg, (uint32_t)a.maxTokensPerRank) * K : 0;
  }
  block_exclusive_scan(pre, a.nodes, scratch);
  // split records (block 0)
  if (blockIdx.x == 0)
    for (int i = tid; i < W; i += B) {
      const int h = i / G, g = i % G;
      if (h == me || word[h] != call) continue;
      const int s = rank_at(a, h, my_local(a));
      const int* split = msg_splits(a, rail_msg(a.railRecv, a, h), g);
      int* dst = (int*)(__ldg(peer + rank_at(a, me, g)) + a.stageSplitsOff + slot * a.stageSplitsSlot) + (uint64_t)s * (EPR + 1);
      for (int le = 0; le <= EPR; ++le) st_u32(dst + le, (uint32_t)split[le]);
    }
  const uint64_t rb = a.dispatchRowBytes, VB = rb % 16u == 0 ? 16u : 8u;
  const int segs = row_segments(rb, VB);
  const uint64_t gpr = a.fp8 ? (uint64_t)a.groupsPerRow : 0u;
  // per (token, slot): its row's segments (the slot's owner stores it: every slot without dedup, the
  // owner's first slot with it), then its books
  const uint32_t items = (uint32_t)pre[a.nodes] * (uint32_t)(segs + 1);
  const int warpsPerBlock = B >> 5;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (tid >> 5); it < items; it += gridDim.x * warpsPerBlock) {
    const int gi = (int)(it / (uint32_t)(segs + 1)), seg = (int)(it % (uint32_t)(segs + 1));
    const int h = find_run(pre, a.nodes, gi), n = (gi - pre[h]) / K, j = (gi - pre[h]) % K;
    const int s = rank_at(a, h, my_local(a));
    const char* msg = rail_msg(a.railRecv, a, h);
    const int* books = (const int*)(msg + a.railMsgTokens + (uint64_t)n * a.railMsgTokenBytes);
    const int g = books[2 + 2 * j], r = books[3 + 2 * j], t = books[0];
    // no owner here; or (a message from a peer with another config) a row, token or owner past the buffers:
    // never follow those, nor write them where other kernels would
    if (g < 0 || g >= G || r < 0 || r >= S || t < 0 || t >= a.maxTokensPerRank) continue;
    const uint32_t mask = (uint32_t)books[1];
    const bool carrier = !a.dedup || (j < 32 && (mask >> j & 1u));
    const uint64_t base = __ldg(peer + rank_at(a, me, g));
    const uint64_t row = (uint64_t)s * S + r;  // in the owner's stage
    if (seg < segs) {
      if (!carrier) continue;  // (dedup: only a token's carrier row holds its data)
      char* dst = (char*)(base + a.stageDataOff + slot * a.stageDataSlot + row * rb);
      const char* src = msg + a.railMsgRows + (uint64_t)n * rb;
      if (VB == 16) copy_segment<16, false>(dst, src, rb, seg, lane);
      else copy_segment<8, false>(dst, src, rb, seg, lane);
      continue;
    }
    if (carrier)
      for (uint64_t q = lane; q < gpr; q += 32)
        st_u32((char*)(base + a.stageScalesOff + slot * a.stageScalesSlot) + (row * gpr + q) * 4u,
               ((const uint32_t*)(msg + a.railMsgScales))[(uint64_t)n * gpr + q]);
    if (!a.dedup) continue;
    // this slot's row's carrier (the row of the owner's first slot), and the carrier's record: where the
    // partial goes, then per slot the row on this owner (or -1) and the weight
    int q0 = 0;
    while (q0 < j && books[2 + 2 * q0] != g) ++q0;
    const int r0 = books[3 + 2 * q0];
    if (lane == 0)
      st_u32((char*)(base + a.stageCarrierOff + slot * a.stageCarrierSlot) + row * 4u, (uint32_t)(r0 >= 0 && r0 < S ? r0 : r));
    if (!carrier) continue;
    char* rec = (char*)(base + a.stageRecordsOff + slot * a.stageRecordsSlot + row * (uint64_t)a.recordBytes);
    if (lane == 0) st_u32(rec, (uint32_t)(t * K + j));
    for (int q = lane; q < K; q += 32) {
      const int rq = books[3 + 2 * q];
      const bool ours = books[2 + 2 * q] == g && rq >= 0 && rq < S;
      st_u32(rec + 4u + 4u * q, (uint32_t)(ours ? rq : -1));
      st_u32(rec + 4u + 4u * (K + q), ours ? (uint32_t)books[2 + 2 * K + q] : 0u);
    }
  }
  if (!finish_block(&st->doneBlocks[1], &sLast)) return;
  // (finish_block's atomic ordered every block's stores before these signals)
  for (int i = tid; i < W; i += B) {
    const int h = i / G;
    if (h == me || (word[h] & ~EP_ABORT_BIT) != call) continue;
    signal((uint64_t*)(__ldg(peer + rank_at(a, me, i % G)) + a.dispatchSignalOff + slot * a.dispatchSignalSlot +
                       (uint64_t)rank_at(a, h, my_local(a)) * 8u),
           word[h]);
  }
  const uint64_t* mine = (const uint64_t*)(a.localBase + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  wait_for_sources(a, mine, -1, call, (uint32_t)slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH,
                   WAIT_OTHER_HOSTS);
  __syncthreads();
  if (tid == 0) stamp(a, EP_STAMP_DISPATCH_ARRIVED);
}

// =============================================================================================
// 12. ep_rail_combine (after ep_combine_send, as rail peer; block 256, any grid): for each other host's
// source s (this call's message from it still in railRecv), waits for every owner of this host to have
// put its rows for s in this rank's outbox (or its abort), then builds the combine message to s: the call,
// each owner's signal, the number of positions, and per position the row of s it goes to and the row
// (railCombineLayout). Without dedup the positions are the owners' rows; with dedup one per token of s's
// message: the partials of the token's carrier slots on this host, summed in slot order (f32, the first
// taken as it is) and rounded to bf16 once (README, "Between hosts").
namespace {
// One warp: segment `seg` of the f32 sum, in slot order, of the bf16 rows of `box` at t * K + j for each
// bit j of `mask` (the first taken as it is), rounded to bf16 into `dst`.
__device__ __forceinline__ void sum_partials_segment(char* dst, const char* box, int t, int K, uint32_t mask,
                                                     uint64_t rb, int seg, int lane) {
  float acc[SEG_VECS][8];
  const uint64_t base = (uint64_t)seg * 32u * SEG_VECS * 16u;
  for (uint32_t left = mask, first = 1; left != 0; left &= left - 1, first = 0) {
    const char* row = box + (uint64_t)(t * K + __ffs(left) - 1) * rb;
    uint4 v[SEG_VECS];
#pragma unroll
    for (int u = 0; u < SEG_VECS; ++u) {
      const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
      if (off < rb) v[u] = ld_cg_v4(row + off);  // (owners on this host wrote it)
    }
#pragma unroll
    for (int u = 0; u < SEG_VECS; ++u) {
      if (base + (uint64_t)(u * 32 + lane) * 16u >= rb) continue;
      float x[8];
      bf16x8_to_f32(v[u], x);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[u][i] = first ? x[i] : __fadd_rn(acc[u][i], x[i]);
    }
  }
#pragma unroll
  for (int u = 0; u < SEG_VECS; ++u) {
    const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
    if (off < rb) st_v4(dst + off, pack_bf16x8(acc[u]));
  }
}
}  // namespace

extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_rail_combine(const __grid_constant__ EpArgs a) {
  __shared__ int pre[EP_MAX_EXPERTS + 1];    // per (host, owner): its positions, then their exclusive scan
  __shared__ uint64_t seen[EP_MAX_EXPERTS];  // per (host, owner): the signal its rows came with
  __shared__ uint64_t word[EP_MAX_TOPK];
  __shared__ uint64_t before[EP_MAX_TOPK];  // block 0: each combine message's call word as it found it
  __shared__ int refused[EP_MAX_TOPK];      // other blocks: the message to that host is refused whole
  __shared__ int scratch[33];
  allow_dependents();
  wait_for_prior();  // ep_combine_send
  host_requires(a.nodes > 1 && a.nodes <= EP_MAX_TOPK && a.world <= EP_MAX_EXPERTS, "ep_rail_combine: 1 < nodes <= EP_MAX_TOPK");
  const EpState* st = state_of(a);
  const uint64_t call = read_calls(st), slot = call & 1u;
  const int tid = threadIdx.x, B = blockDim.x, W = a.world, G = a.ranksPerNode, K = a.topk;
  const int me = my_host(a), lane = tid & 31;
  for (int h = tid; h < a.nodes; h += B) word[h] = h == me ? 0u : msg_call(rail_msg(a.railRecv, a, h), 8);
  // Block 0 alone waits for the owners and writes what came into each message's header (each owner's signal,
  // then the count), then the header's call word; the other blocks read it there. With a deadline of its own
  // in every block, a signal landing between two blocks' deadlines would let block 0 announce rows another
  // block did not write. Block 0 sets the call word only from the value it found (a compare-and-swap); a
  // block that gave up waiting for it (block 0 not running for a timeout and a second) swaps in an abort
  // instead, and the message is refused whole (ep_rail_land names this rank).
  uint64_t deadline = deadline_after(a.timeoutNs);
  if (blockIdx.x == 0) {
    for (int h = tid; h < a.nodes; h += B)
      before[h] = h == me ? 0u : *(const volatile uint64_t*)rail_comb(a.railCombSend, a, h);
    const uint64_t* outSig = (const uint64_t*)(a.localBase + a.railOutboxSignalOff + slot * a.railOutboxSignalSlot);
    for (int i = tid; i < W; i += B) {
      seen[i] = 0;
      if (i / G == me) continue;
      uint64_t v = 0;
      if (wait_until(outSig + i, call, deadline, &v) == WAIT_TIMED_OUT)
        report_error(a, EP_ERR_TIMEOUT_COMBINE, (uint32_t)rank_at(a, me, i % G), (uint32_t)slot, call, (int64_t)v, 0, 0u);
      seen[i] = v;
    }
  } else {
    deadline += (uint64_t)max(a.timeoutNs, (int64_t)0) + 1000000000ull;  // (block 0's waits end by its deadline)
    for (int h = tid; h < a.nodes; h += B) {
      refused[h] = 0;
      if (h == me) continue;
      uint64_t* w = (uint64_t*)rail_comb(a.railCombSend, a, h);
      uint64_t v = 0;
      if (wait_until(w, call, deadline, &v) == WAIT_ARRIVED) continue;
      const uint64_t old = atomicCAS((unsigned long long*)w, (unsigned long long)v, (unsigned long long)(call | EP_ABORT_BIT));
      refused[h] = old != call;  // (block 0 may have set it just now: then its statuses stand)
      if (refused[h] && old == v)
        report_error(a, EP_ERR_TIMEOUT_COMBINE, (uint32_t)a.rank, (uint32_t)slot, call, (int64_t)v, 0, 0u);
      __threadfence();
    }
    __syncthreads();
    for (int i = tid; i < W; i += B) {
      const int h = i / G;
      seen[i] = h == me || refused[h] ? 0u : ((const volatile uint64_t*)(rail_comb(a.railCombSend, a, h) + a.railCombStatus))[i % G];
    }
  }
  __syncthreads();
  for (int i = tid; i < W; i += B) {
    const int h = i / G, g = i % G;
    const char* msg = rail_msg(a.railRecv, a, h);
    pre[i] = 0;
    if (h == me || word[h] != call) continue;
    if (!a.dedup) {
      if (seen[i] == call) pre[i] = split_rows(a, msg_splits(a, msg, g));
      continue;
    }
    bool all = true;  // (a host's partial needs every owner's)
    for (int q = 0; q < G; ++q) all = all && seen[h * G + q] == call;
    if (g == 0 && all) pre[i] = max(0, min((int)*(const uint32_t*)msg, a.railCombCap));
  }
  block_exclusive_scan(pre, W, scratch);
  if (blockIdx.x == 0) {
    for (int i = tid; i < W; i += B) {
      const int h = i / G, g = i % G;
      if (h == me) continue;
      char* out = rail_comb(a.railCombSend, a, h);
      if (g == 0) *(int*)(out + a.railCombCount) = pre[(h + 1) * G] - pre[h * G];
      ((uint64_t*)(out + a.railCombStatus))[g] = seen[i];
    }
    __syncthreads();
    if (tid == 0) {
      __threadfence();  // (every thread's header stores, ordered by the barrier, before the call words)
      for (int h = 0; h < a.nodes; ++h)
        if (h != me && before[h] != (call | EP_ABORT_BIT))  // (refused before block 0 even began: it stays so)
          atomicCAS((unsigned long long*)rail_comb(a.railCombSend, a, h), (unsigned long long)before[h], (unsigned long long)call);
    }
  }
  const uint64_t rb = a.combineRowBytes;
  const uint64_t outboxRows = a.railOutboxHostBytes / rb;
  const int segs = row_segments(rb, 16u);
  const uint32_t items = (uint32_t)pre[W] * (uint32_t)(segs + 1);
  const int warpsPerBlock = B >> 5;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (tid >> 5); it < items; it += gridDim.x * warpsPerBlock) {
    const int gi = (int)(it / (uint32_t)(segs + 1)), seg = (int)(it % (uint32_t)(segs + 1));
    const int i = find_run(pre, W, gi), h = i / G, g = i % G, r = gi - pre[i];
    const char* msg = rail_msg(a.railRecv, a, h);
    const char* box = (const char*)(a.localBase + a.railOutboxOff + slot * a.railOutboxSlot + h * a.railOutboxHostBytes);
    char* out = rail_comb(a.railCombSend, a, h);
    const uint64_t pos = (uint64_t)(gi - pre[h * G]);
    int back;  // the source's combine row of this position
    int t = 0;
    uint32_t mask = 0;
    if (a.dedup) {  // the token's first carrier slot on this host
      const int* books = (const int*)(msg + a.railMsgTokens + pos * a.railMsgTokenBytes);
      t = books[0];
      mask = (uint32_t)books[1];
      if (K < 32) mask &= (1u << K) - 1u;
      back = mask != 0 && t >= 0 && t < a.maxTokensPerRank ? t * K + __ffs(mask) - 1 : -1;
    } else {  // m_st + r
      back = msg_splits(a, msg, g)[a.expertsPerRank] + r;
    }
    if (back >= 0 && (uint64_t)back >= outboxRows) back = -1;  // (never past the outbox)
    if (seg == segs) {
      if (lane == 0) ((int*)(out + a.railCombIndex))[pos] = back;
      continue;
    }
    if (back < 0) continue;
    if (a.dedup) sum_partials_segment(out + a.railCombRows + pos * rb, box, t, K, mask, rb, seg, lane);
    else copy_segment<16, true>(out + a.railCombRows + pos * rb, box + (uint64_t)back * rb, rb, seg, lane);
  }
}

// =============================================================================================
// 13. ep_rail_land (after the combine messages came; block 256, any grid): each other host's rows into
// this rank's combine buffer at their rows, and that host's owners' signals checked: an abort fails the
// combine naming the owner; a missing signal, or a message that is not this call's, names the owner, or
// the rail peer that did not send it, as a timeout.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_rail_land(const __grid_constant__ EpArgs a) {
  __shared__ int pre[EP_MAX_EXPERTS + 1];
  __shared__ uint64_t word[EP_MAX_TOPK];
  __shared__ int scratch[33];
  allow_dependents();
  host_requires(a.nodes > 1 && a.nodes <= EP_MAX_TOPK && a.world <= EP_MAX_EXPERTS, "ep_rail_land: 1 < nodes <= EP_MAX_TOPK");
  const EpState* st = state_of(a);
  const uint64_t call = read_calls(st), slot = call & 1u;
  const int tid = threadIdx.x, B = blockDim.x, W = a.world, G = a.ranksPerNode;
  const int me = my_host(a), lane = tid & 31;
  for (int h = tid; h < a.nodes; h += B) word[h] = h == me ? 0u : msg_call(rail_comb(a.railCombRecv, a, h), 0);
  __syncthreads();
  for (int i = tid; i < W; i += B) {
    const int h = i / G, g = i % G;
    pre[i] = 0;
    if (h == me) continue;
    const char* msg = rail_comb(a.railCombRecv, a, h);
    const uint64_t v = ((const volatile uint64_t*)(msg + a.railCombStatus))[g];
    if (word[h] == call && g == 0) pre[i] = max(0, min(*(const int*)(msg + a.railCombCount), a.railCombCap));  // (per host)
    if (blockIdx.x != 0) continue;
    if (word[h] != call)
      report_error(a, EP_ERR_TIMEOUT_COMBINE, (uint32_t)rank_at(a, h, my_local(a)), (uint32_t)slot, call, (int64_t)word[h], 0, 0u);
    else if (v == (call | EP_ABORT_BIT))
      report_error(a, EP_ERR_PEER_ABORT_COMBINE, (uint32_t)i, (uint32_t)slot, call, 0, 0, 0u);
    else if (v != call)
      report_error(a, EP_ERR_TIMEOUT_COMBINE, (uint32_t)i, (uint32_t)slot, call, (int64_t)v, 0, 0u);
  }
  block_exclusive_scan(pre, W, scratch);
  const uint64_t rb = a.combineRowBytes;
  const int segs = row_segments(rb, 16u);
  const uint32_t items = (uint32_t)pre[W] * (uint32_t)segs;
  const int warpsPerBlock = B >> 5;
  char* recv = (char*)(a.localBase + a.combineRecvOff + slot * a.combineRecvSlot);
  for (uint32_t it = blockIdx.x * warpsPerBlock + (tid >> 5); it < items; it += gridDim.x * warpsPerBlock) {
    const int gi = (int)(it / (uint32_t)segs), seg = (int)(it % (uint32_t)segs);
    const int i = find_run(pre, W, gi), h = i / G;
    const char* msg = rail_comb(a.railCombRecv, a, h);
    const uint64_t pos = (uint64_t)(gi - pre[h * G]);
    // (a message from a peer with another config could name rows past the buffers: never follow those)
    if (pos >= (uint64_t)a.railCombCap) continue;
    const int back = ((const int*)(msg + a.railCombIndex))[pos];
    if (back < 0 || (uint64_t)back >= a.railOutboxHostBytes / rb) continue;
    copy_segment<16, false>(recv + (uint64_t)back * rb, msg + a.railCombRows + pos * rb, rb, seg, lane);
  }
}
