// Dispatch's row stores: DestList, gather_dests, routed, PlannedDests, the bf16 / FP8 copy loops
// (dispatch_rows), and expert_start (where a local expert's rows start in expertX).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Dispatch helpers

struct DestList {
  uint64_t row[2][EP_MAX_TOPK];    // destination row address (peer heap) per valid slot
  uint64_t scale[2][EP_MAX_TOPK];  // destination scales address (FP8)
  int n[2];
};

// Warp 0, every lane (it ballots): this lane's destination, when `valid`, appended to list `buf` after the
// `n` entries there (in lane order); returns the list's new length.
__device__ __forceinline__ int push_dest(DestList& L, int buf, int n, bool valid, uint64_t row, uint64_t sc) {
  const uint32_t bal = __ballot_sync(FULL_MASK, valid);
  if (valid) {
    const int pos = n + __popc(bal & lanemask_lt());
    L.row[buf][pos] = row;
    L.scale[buf][pos] = sc;
  }
  return n + __popc(bal);
}

// Warp 0 collects the destinations of token t into buffer `buf`: for slot j with a row to store
// (pairDest[t*k+j] = r >= 0, owner d = e / EPR), the address of row r of d's expertX and of its scales.
// Order does not matter here.
__device__ __forceinline__ void gather_dests(const EpArgs& a, int t, DestList& L, int buf) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const int* topk = (const int*)a.topkIdx;
  const int* pairDest = (const int*)a.pairDest;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const int k = a.topk, W = a.world;
  // lane l holds rank l's heap base (loaded with the pair data below, not after it)
  const uint64_t laneBase = lane < W ? __ldg(peer + lane) : 0;
  int n = 0;
  for (int j0 = 0; j0 < k; j0 += 32) {
    const int j = j0 + lane;
    bool valid = false;
    uint64_t row = 0, sc = 0;
    const int p = t * k + j;
    const int r = j < k ? __ldg(pairDest + p) : -1;
    const int d = j < k ? __ldg(topk + p) / a.expertsPerRank : 0;
    const uint64_t fromLane = __shfl_sync(FULL_MASK, laneBase, d & 31);
    if (r >= 0) {
      const uint64_t base = d < 32 ? fromLane : __ldg(peer + d);
      row = base + a.expertXOff + (uint64_t)r * a.dispatchRowBytes;
      sc = base + a.expertScalesOff + (uint64_t)r * (uint64_t)a.groupsPerRow * 4u;
      valid = true;
    }
    n = push_dest(L, buf, n, valid, row, sc);
  }
  if (lane == 0) L.n[buf] = n;
}

// Waits for ep_route (see wait_for_prior) and says whether this rank stores rows this call. Any error
// but its own expert over capacity means the call is off here: a routing failure is seen by every
// rank in the count exchange (no rows, no signals anywhere); after a timed-out count wait the peers
// that did not time out go on and time out waiting for this rank's rows (the group is broken). With its own expert over capacity a rank still sends its rows
// to its peers, which expect them. Every thread of a block gets the same answer.
__device__ __forceinline__ bool routed(const EpArgs& a) {
  wait_for_prior();
  const EpState* st = state_of(a);
  const uint32_t code = read_err_code(st);
  return code == 0 || own_expert_over_capacity(st, code);
}

// The items (token, chunk) a row block takes: first, first + step, ... below end.
struct ItemSpan {
  int first, end, step;
};
// Strided over `blocks` row blocks: blockIdx.x, + blocks, ...
__device__ __forceinline__ ItemSpan strided_items(int n, int blocks) { return {(int)blockIdx.x, n, blocks}; }
// One run of consecutive items a block (so consecutive tokens: a staged block advances its running counts by
// its own tokens' pairs only, instead of every pair in between).
__device__ __forceinline__ ItemSpan contiguous_items(int n, int blocks) {
  const int per = (n + blocks - 1) / blocks, first = min(n, (int)blockIdx.x * per);
  return {first, min(n, first + per), 1};
}

// Where a dispatch block learns the destinations of its tokens. Two policies, one copy loop each
// (dispatch_rows below): PlannedDests reads what ep_route wrote; InBlockDests (ep_dispatch_local,
// ep_stage_send) routes inside the block. span(items) says which items a block takes. go(a, first token) is called by
// every thread of the block before its first destinations (and by a block with no items at the end);
// dests() by every thread for each item (it may use barriers).
struct PlannedDests {
  int state = -1;  // -1: not asked yet; then routed()'s answer
  __device__ __forceinline__ ItemSpan span(int n) const { return strided_items(n, gridDim.x); }
  __device__ __forceinline__ bool go(const EpArgs& a, int /*firstToken*/) {
    if (state < 0) {
      state = routed(a) ? 1 : 0;
      if (blockIdx.x == 0 && threadIdx.x == 0 && state) stamp(a, EP_STAMP_ROWS_BEGIN);
    }
    return state != 0;
  }
  __device__ __forceinline__ void dests(const EpArgs& a, int t, bool /*firstChunk*/, DestList& L, int buf) {
    gather_dests(a, t, L, buf);
  }
};

// bf16 rows: item = (token, chunk of 2*B vectors of 8 values); two 16-byte loads per thread in flight.
template <class Dests>
__device__ void dispatch_bf16(const EpArgs& a, DestList& L, Dests& D) {
  const int B = blockDim.x, tid = threadIdx.x;
  const int V = a.hidden / 8;
  const int chunks = (V + 2 * B - 1) / (2 * B);
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  const ItemSpan span = D.span(items);
  for (int it = span.first; it < span.end; it += span.step, buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int v0 = c * 2 * B + tid, v1 = v0 + B;
    const char* src = x + (uint64_t)t * a.hidden * 2u;
    uint4 r0 = make_uint4(0, 0, 0, 0), r1 = r0;
    if (v0 < V) r0 = ld_nc_v4(src + (uint64_t)v0 * 16u);
    if (v1 < V) r1 = ld_nc_v4(src + (uint64_t)v1 * 16u);
    if (!D.go(a, t)) return;  // the first item's loads overlapped the routing
    D.dests(a, t, c == 0, L, buf);
    // Double-buffered list: this barrier also orders the previous item's reads of buffer buf^1
    // before the next item's gather overwrites it.
    __syncthreads();
    const int n = L.n[buf];
    for (int i = 0; i < n; ++i) {
      char* dst = (char*)L.row[buf][i];
      if (v0 < V) st_v4(dst + (uint64_t)v0 * 16u, r0);
      if (v1 < V) st_v4(dst + (uint64_t)v1 * 16u, r1);
    }
  }
}

// FP8, G/16 = lanesPerGroup a power of two <= 32: item = (token, chunk of B units of 16 values); a
// thread loads 32 bytes of bf16, the lanesPerGroup consecutive lanes of a group reduce amax with
// shuffles, and each thread stores 16 FP8 bytes (one vector) per destination.
template <class Dests>
__device__ void dispatch_fp8_fast(const EpArgs& a, DestList& L, Dests& D, int lanesPerGroup) {
  const int B = blockDim.x, tid = threadIdx.x, lane = tid & 31;
  const int U = a.hidden / 16;
  const int chunks = (U + B - 1) / B;
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  const ItemSpan span = D.span(items);
  for (int it = span.first; it < span.end; it += span.step, buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int u = c * B + tid;
    const bool active = u < U;  // whole groups are active or not: U and B are multiples of lanesPerGroup
    const char* src = x + (uint64_t)t * a.hidden * 2u + (uint64_t)u * 32u;
    uint4 w0 = make_uint4(0, 0, 0, 0), w1 = w0;
    if (active) {
      w0 = ld_nc_v4(src);
      w1 = ld_nc_v4(src + 16);
    }
    if (!D.go(a, t)) return;  // the first item's loads are in flight during the routing's
    float v[16];
    bf16x8_to_f32(w0, v);
    bf16x8_to_f32(w1, v + 8);
    float amax = amax8(v + 8, amax8(v, 0.0f));
    for (int o = lanesPerGroup >> 1; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
    const float scale = group_scale(amax);
    D.dests(a, t, c == 0, L, buf);
    uint4 q;
    q.x = fp8x4(__fdiv_rn(v[0], scale), __fdiv_rn(v[1], scale), __fdiv_rn(v[2], scale), __fdiv_rn(v[3], scale));
    q.y = fp8x4(__fdiv_rn(v[4], scale), __fdiv_rn(v[5], scale), __fdiv_rn(v[6], scale), __fdiv_rn(v[7], scale));
    q.z = fp8x4(__fdiv_rn(v[8], scale), __fdiv_rn(v[9], scale), __fdiv_rn(v[10], scale),
                __fdiv_rn(v[11], scale));
    q.w = fp8x4(__fdiv_rn(v[12], scale), __fdiv_rn(v[13], scale), __fdiv_rn(v[14], scale),
                __fdiv_rn(v[15], scale));
    __syncthreads();  // destination list ready (and previous item done with the other buffer)
    const int n = L.n[buf];
    const bool leader = (lane & (lanesPerGroup - 1)) == 0;
    const uint64_t g = (uint64_t)(u / lanesPerGroup);
    if (active) {
      for (int i = 0; i < n; ++i) {
        st_v4((char*)L.row[buf][i] + (uint64_t)u * 16u, q);
        if (leader) st_u32((char*)L.scale[buf][i] + g * 4u, __float_as_uint(scale));
      }
    }
  }
}

// FP8, any other G (a multiple of 8): item = (token, chunk of B groups); a thread owns a whole group:
// one pass for amax, a second (L1/L2-hot) pass quantising 8 values per 8-byte store.
template <class Dests>
__device__ void dispatch_fp8_general(const EpArgs& a, DestList& L, Dests& D) {
  const int B = blockDim.x, tid = threadIdx.x;
  const int G = a.groupSize, NG = a.groupsPerRow, VG = G / 8;
  const int chunks = (NG + B - 1) / B;
  const int items = a.numTokens * chunks;
  const char* x = (const char*)a.x;
  int buf = 0;
  const ItemSpan span = D.span(items);
  for (int it = span.first; it < span.end; it += span.step, buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    const int g = c * B + tid;
    if (!D.go(a, t)) return;
    D.dests(a, t, c == 0, L, buf);
    __syncthreads();
    if (g >= NG) continue;
    const char* src = x + (uint64_t)t * a.hidden * 2u + (uint64_t)g * G * 2u;
    float amax = 0.0f;
    for (int i = 0; i < VG; ++i) {
      float v[8];
      bf16x8_to_f32(*(const uint4*)(src + i * 16), v);
      amax = amax8(v, amax);
    }
    const float scale = group_scale(amax);
    const int n = L.n[buf];
    for (int i = 0; i < VG; ++i) {
      float v[8];
      bf16x8_to_f32(*(const uint4*)(src + i * 16), v);
      uint2 q;
      q.x = fp8x4(__fdiv_rn(v[0], scale), __fdiv_rn(v[1], scale), __fdiv_rn(v[2], scale), __fdiv_rn(v[3], scale));
      q.y = fp8x4(__fdiv_rn(v[4], scale), __fdiv_rn(v[5], scale), __fdiv_rn(v[6], scale), __fdiv_rn(v[7], scale));
      for (int d = 0; d < n; ++d) st_v2((char*)L.row[buf][d] + (uint64_t)g * G + (uint64_t)i * 8u, q);
    }
    for (int d = 0; d < n; ++d) st_u32((char*)L.scale[buf][d] + (uint64_t)g * 4u, __float_as_uint(scale));
  }
}

// The copy loops with either policy: bf16 rows, or FP8 through the fast or the general path.
template <class Dests>
__device__ void dispatch_rows(const EpArgs& a, DestList& L, Dests& D) {
  if (!a.fp8) {
    dispatch_bf16(a, L, D);
  } else {
    const int G = a.groupSize, lpg = G / 16;
    if (G % 16 == 0 && lpg <= 32 && (lpg & (lpg - 1)) == 0) dispatch_fp8_fast(a, L, D, lpg);
    else dispatch_fp8_general(a, L, D);
  }
}

// Where local expert le's rows start in expertX (and expertOut): its own block (padded), or right after the
// rows of the experts before it (packed: `rowsBefore`, an exclusive prefix of the experts' counts).
__device__ __forceinline__ uint64_t expert_start(const EpArgs& a, int le, int rowsBefore) {
  return a.packedExperts ? (uint64_t)rowsBefore : (uint64_t)le * (uint64_t)a.expertCapacity;
}

// Rows of expertX (src/ep/config.ts expertRows): padded, EPR * expertCapacity; packed, what can arrive.
__device__ __forceinline__ uint64_t expert_rows(const EpArgs& a) {
  const uint64_t padded = (uint64_t)a.expertsPerRank * (uint64_t)a.expertCapacity;
  const uint64_t arrive = (uint64_t)a.world * (uint64_t)a.maxRowsPerPeer;
  return a.packedExperts && arrive < padded ? arrive : padded;
}

}  // namespace
