// Routing inside the blocks (ep_dispatch_local, ep_stage_send(_large)), first part: LocalTables, id loading and
// checks, the bookkeeping blocks (then ep_own_direct.cuh, then ep_inblock_dests.cuh: the books and InBlockDests).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Routing inside each block: ep_dispatch_local (one rank, T*k <= EP_LOCAL_MAX_PAIRS) and ep_stage_send
// (W > 1, T*k <= EP_MAX_PAIRS; ep_stage_send_large past EP_STAGE_SMEM_PAIRS). Every row block reads all T*k ids
// (at most 128 KiB, from L2 after the first block; kept in shared memory up to EP_STAGE_SMEM_PAIRS) and counts,
// for its own tokens, the pairs of each of their experts in earlier tokens (local: per token, against its
// marked slots; staged: a running per-expert count, started in the histogram's pass and advanced from one of
// the block's tokens to the next, so ep_stage_send, whose blocks' tokens are strided, reads the ids between
// a block's tokens again; ep_stage_send_large (InBlockDests' Large) gives each block consecutive tokens, so
// it reads each id once, 4 a load); the last block
// of the grid stores no rows and keeps the books alone (validation and the error report, and the counts),
// off the rows' critical path. Row blocks do not wait for its verdict: a call that fails may leave rows
// behind (every store stays inside its region: bad ids never match, a repeated expert keeps one slot,
// rows past a capacity are dropped), and a failed dispatch leaves its outputs unspecified, as the API says.
//   local:  the row of pair p of expert e is expert_start(e) + (pairs of e before p), in expertX: the
//           stable order of planRouting and ep_route (packed: the start from a block-wide histogram).
//   staged: the row of pair p in its owner d's stage is r = (this rank's pairs of experts in
//           [d*EPR, e)) + (pairs of e before p), from a block-wide histogram of the ids; its place in this
//           rank's own expert-sorted order (pairRow, where combine returns it) is (pairs of experts < e) +
//           (pairs of e before p).
struct LocalTables {
  int16_t ids[EP_STAGE_SMEM_PAIRS];  // topkIdx (T*k <= EP_STAGE_SMEM_PAIRS only); ids out of range as -1
  int8_t slotOf[EP_MAX_EXPERTS];     // local: the current token's slot naming each expert, or -1
  int hist[EP_MAX_EXPERTS + 1];      // pairs per expert (bookkeeping), or their exclusive prefix (staged, packed rows)
  int run[EP_MAX_EXPERTS];           // staged: pairs per expert in the tokens before InBlockDests::cursor
  int before[EP_MAX_TOPK];          // per slot of the current token: pairs of its expert in earlier tokens
  int from[EP_MAX_TOPK];            // ... and from this token on (the pair itself included)
  int scratch[33];                  // block_exclusive_scan
  int bad;                          // bookkeeping: first pair with a bad or repeated id, INT_MAX if none
  int rows;                         // bookkeeping: pairs with an expert
  int capE;                         // bookkeeping (one rank): first expert over capacity
  uint64_t base;                    // this rank's heap
  uint64_t call;                    // staged row blocks: this call's count, thread 0's (InBlockDests::go)
};

// Whether this call's ids live in S.ids (T*k <= EP_STAGE_SMEM_PAIRS); larger batches read topkIdx each
// time (L1/L2-resident: T*k <= EP_MAX_PAIRS is at most 128 KiB).
__device__ __forceinline__ bool ids_in_smem(const EpArgs& a) { return a.numTokens * a.topk <= EP_STAGE_SMEM_PAIRS; }

// Pair p's expert, -1 for none or an id out of range (S.ids' convention).
__device__ __forceinline__ int pair_expert(const EpArgs& a, const LocalTables& S, int p) {
  if (ids_in_smem(a)) return S.ids[p];
  const int v = __ldg((const int*)a.topkIdx + p);
  return v >= 0 && v < a.numExperts ? v : -1;
}

// Whether topkIdx can be read 4 ids at a time where it is read from L2: 16-byte aligned, and T*k a multiple
// of 4 (no quad reaches past its end).
__device__ __forceinline__ bool ids_by_quads(const EpArgs& a) {
  return (a.topkIdx & 15u) == 0 && (a.numTokens * a.topk) % 4 == 0;
}

// f(p, e) for every pair p in [lo, hi) with an expert e, the block's threads striding (8 loads in flight;
// from L2 and aligned, 4 quads of ids: a pass over 32768 ids takes 9 round trips a thread, not 19). MayReadL2:
// compile the quads' path (kernels whose ids may exceed shared memory; more quads in flight cost registers).
template <bool MayReadL2, class F>
__device__ __forceinline__ void each_pair_expert(const EpArgs& a, const LocalTables& S, int lo, int hi, F f) {
  const int B = blockDim.x;
  if (MayReadL2 && !ids_in_smem(a) && ids_by_quads(a)) {
    constexpr int QN = 4;
    const int4* quads = (const int4*)a.topkIdx;
    const int E = a.numExperts;
    for (int q0 = (lo >> 2) + threadIdx.x; q0 < (hi + 3) >> 2; q0 += QN * B) {
      int4 v[QN];
#pragma unroll
      for (int u = 0; u < QN; ++u) v[u] = q0 + u * B < (hi + 3) >> 2 ? __ldg(quads + q0 + u * B) : make_int4(-1, -1, -1, -1);
#pragma unroll
      for (int u = 0; u < QN; ++u) {
        const int p = (q0 + u * B) * 4;
        const int e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (p + i >= lo && p + i < hi && e[i] >= 0 && e[i] < E) f(p + i, e[i]);
      }
    }
    return;
  }
  for (int p0 = lo + threadIdx.x; p0 < hi; p0 += 8 * B) {
    int e[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) e[u] = p0 + u * B < hi ? pair_expert(a, S, p0 + u * B) : -1;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (e[u] >= 0) f(p0 + u * B, e[u]);
  }
}

// topkIdx into S.ids when they fit (8 loads in flight per thread); returns this thread's first pair out of
// range (INT_MAX if none) and counts its pairs with an expert into *rows. The caller's barrier publishes S.
__device__ int load_ids(const EpArgs& a, LocalTables& S, int* rows) {
  const int N = a.numTokens * a.topk;
  host_requires(N <= EP_MAX_PAIRS && a.numExperts <= EP_MAX_EXPERTS && a.topk <= EP_MAX_TOPK,
                "load_ids: T*k <= EP_MAX_PAIRS, E <= EP_MAX_EXPERTS, k <= EP_MAX_TOPK");
  if (threadIdx.x == 0) S.base = __ldg((const uint64_t*)a.peerBases + a.rank);
  *rows = 0;
  return stage_ids((const int*)a.topkIdx, N, a.numExperts, ids_in_smem(a) ? S.ids : nullptr, rows);
}

// The per-expert pair counts of the call's ids, into S.hist[0..E) (every thread calls it; it ends with a
// barrier). S.hist must have been zeroed before the barrier that published S.ids.
template <bool MayReadL2>
__device__ __forceinline__ void count_experts(const EpArgs& a, LocalTables& S) {
  each_pair_expert<MayReadL2>(a, S, 0, a.numTokens * a.topk, [&](int, int e) { atomicAdd(&S.hist[e], 1); });
  __syncthreads();
}

// check_ids' pass when the ids stay in L2 (T*k > EP_STAGE_SMEM_PAIRS) and k <= 8: this thread's tokens (t = tid,
// tid + B, ...), two tokens' slots in flight at once, so that it costs a round trip per two tokens a thread, not
// one per pair compared. Returns the first pair out of range or naming an expert an earlier slot of its token
// named (INT_MAX if none), and adds the pairs with an expert to *rows.
__device__ int scan_ids_l2(const EpArgs& a, int* rows) {
  const int K = a.topk, T = a.numTokens, E = a.numExperts, B = blockDim.x;
  const int* ids = (const int*)a.topkIdx;
  int bad = INT_MAX, n = 0;
  const auto check = [&](int p, int e, bool rep) {  // pair p names e; rep: an earlier slot named it too
    if (e < -1 || e >= E || (rep && e >= 0)) bad = min(bad, p);
    n += e >= 0 && e < E;
  };
  for (int t0 = threadIdx.x; t0 < T; t0 += 2 * B) {
    int v[2][8];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int u = 0; u < 8; ++u) v[r][u] = t0 + r * B < T && u < K ? __ldg(ids + (uint64_t)(t0 + r * B) * K + u) : -1;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int t = t0 + r * B;
      if (t >= T) break;
#pragma unroll
      for (int j = 0; j < 8; ++j) {  // (slots past K hold -1: neither bad nor counted)
        bool rep = false;
#pragma unroll
        for (int q = 0; q < j; ++q) rep |= v[r][q] == v[r][j];
        check(t * K + j, v[r][j], rep);
      }
    }
  }
  *rows += n;
  return bad;
}

// The bookkeeping block's first half, shared by both: loads and validates the ids (planRouting's order:
// the first pair out of range, or naming an expert an earlier slot of its token named, decides) and reports
// a bad one as the call's error. `call` is the call's count; begin: also begin it (begin_call: one rank).
// Returns true in every thread when the call goes on (ids valid, the host did not abort it); then S.rows
// holds the pairs with an expert and S.hist the pairs per expert (count_experts' histogram, counted in the same
// pass as the check, before its barrier; counted even when the call is off).
template <bool Begin, bool Large>
__device__ bool check_ids(const EpArgs& a, LocalTables& S, uint64_t* call) {
  wait_for_prior();  // (a no-op unless launched as a programmatic dependent)
  const int tid = threadIdx.x, B = blockDim.x, lane = tid & 31;
  const int E = a.numExperts, K = a.topk, N = a.numTokens * K;
  if (tid == 0) {
    S.bad = INT_MAX;
    S.rows = 0;
    S.capE = INT_MAX;
  }
  for (int e = tid; e <= E; e += B) S.hist[e] = 0;
  int rows = 0, bad;
  if (!Large || ids_in_smem(a) || K > 8) {  // (k > 8: a pair a thread, as it always was)
    bad = load_ids(a, S, &rows);
    __syncthreads();
    for (int p = tid; p < N; p += B) {  // an expert an earlier slot of the same token named
      const int e = pair_expert(a, S, p);
      if (e < 0) continue;
      atomicAdd(&S.hist[e], 1);
      for (int q = p - p % K; q < p; ++q)
        if (pair_expert(a, S, q) == e) {
          bad = min(bad, p);
          break;
        }
    }
  } else {
    bad = scan_ids_l2(a, &rows);
    __syncthreads();  // (thread 0's S.bad and S.rows, and the zeroed S.hist, before the atomics below)
    each_pair_expert<true>(a, S, 0, N, [&](int, int e) { atomicAdd(&S.hist[e], 1); });
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    bad = min(bad, __shfl_xor_sync(FULL_MASK, bad, o));
    rows += __shfl_xor_sync(FULL_MASK, rows, o);
  }
  if (lane == 0) {
    if (bad != INT_MAX) atomicMin(&S.bad, bad);
    atomicAdd(&S.rows, rows);
  }
  __syncthreads();  // (also the histogram's)
  bad = S.bad;
  EpState* st = state_of(a);
  if (tid == 0) {
    if (Begin) *call = begin_call(st);
    const uint32_t slot = (uint32_t)(*call & 1u);
    if (host_abort(a) != 0) {
      mark_host_abort(a);
    } else if (bad != INT_MAX) {
      const int v = __ldg((const int*)a.topkIdx + bad);
      const uint32_t code = (v < -1 || v >= E) ? EP_ERR_EXPERT_ID : EP_ERR_DUPLICATE;
      report_error(a, code, (uint32_t)a.rank, slot, *call, bad / K, bad % K, (uint32_t)v);
    }
  }
  return host_abort(a) == 0 && bad == INT_MAX;
}

// ep_dispatch_local's bookkeeping block: what ep_route does for one rank, in planRouting's order of errors
// (ids, then the rows for the destination, then expert capacity).
__device__ void local_bookkeeping(const EpArgs& a, LocalTables& S) {
  const int tid = threadIdx.x, B = blockDim.x;
  const int E = a.numExperts;
  uint64_t call = 0;
  if (!check_ids<true, false>(a, S, &call)) return;  // the call is off
  if (S.rows > a.maxRowsPerPeer) {
    if (tid == 0) report_error(a, EP_ERR_CAPACITY, 0u, (uint32_t)(call & 1u), call, 0, S.rows, EP_CAPACITY_AUX_SEND);
    return;
  }
  int* counts = (int*)a.expertCounts;
  int* splits = (int*)a.recvSplits;  // [1][E + 1]: rows per expert, then m_st = 0
  for (int e = tid; e < E; e += B) {
    const int c = S.hist[e];
    counts[e] = c;
    splits[e] = c;
    if (c > a.expertCapacity) atomicMin(&S.capE, e);
  }
  if (tid == 0) splits[E] = 0;
  __syncthreads();
  if (tid == 0 && S.capE != INT_MAX) {
    // its rows are not stored (the row blocks drop them) and the combine of this call aborts
    report_error(a, EP_ERR_CAPACITY, 0u, (uint32_t)(call & 1u), call, S.capE, S.hist[S.capE], EP_CAPACITY_AUX_EXPERT);
  }
  // (check_ids' barrier published the counts; the scan writes only after its own barrier, which orders the
  // reads of S.hist above)
  block_exclusive_scan<false>(S.hist, E, S.scratch);
  for (int e = tid; e < E; e += B) ((int*)a.expertOffsets)[e] = (int)expert_start(a, e, S.hist[e]);
}

// ep_stage_send's bookkeeping block: the ids, then maxRowsPerPeer for every destination (the first one over
// it is reported, as ep_route does), then each destination's split record (its local experts' counts, then
// m_st) into its stage. On any error nothing is written to peers: the last block's signal carries the abort.
template <bool Large>
__device__ void stage_bookkeeping(const EpArgs& a, LocalTables& S, uint64_t call) {
  const int tid = threadIdx.x, B = blockDim.x, lane = tid & 31, warp = tid >> 5;
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  // (no other block reports before the last block's wait, and in this block only thread 0 touches the error
  // before finish_block, whose barrier orders it for the tail: no barrier here)
  if (tid == 0) clear_error(state_of(a));
  if (!check_ids<false, Large>(a, S, &call)) return;  // (S.hist: the pairs per expert)
  block_exclusive_scan<false>(S.hist, E, S.scratch);  // hist[e] = pairs of experts < e (check_ids' last barrier)
  // the first destination over maxRowsPerPeer: every warp finds it itself (S.hist stays as scanned, so every
  // warp gets the same answer, and no barrier has to share it)
  int over = INT_MAX;
  for (int d = lane; d < W; d += 32)
    if (S.hist[(d + 1) * EPR] - S.hist[d * EPR] > a.maxRowsPerPeer) over = min(over, d);
  over = __reduce_min_sync(FULL_MASK, over);
  const uint64_t slot = call & 1u;
  if (over != INT_MAX) {
    if (tid == 0) {
      const int d = over;
      report_error(a, EP_ERR_CAPACITY, (uint32_t)d, (uint32_t)slot, call, d, S.hist[(d + 1) * EPR] - S.hist[d * EPR],
                   EP_CAPACITY_AUX_SEND);
    }
    return;
  }
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  const uint64_t recBytes = (uint64_t)(EPR + 1) * 4u;
  for (int d = warp; d < W; d += B >> 5) {
    if (!same_host(a, d)) continue;  // (another host's owners get theirs in this rank's message: ep_rail_plan)
    char* rec = (char*)(__ldg(peer + d) + a.stageSplitsOff + slot * a.stageSplitsSlot + (uint64_t)a.rank * recBytes);
    for (int le = lane; le <= EPR; le += 32) {
      const int e = d * EPR + le;
      st_u32(rec + (uint64_t)le * 4u, (uint32_t)(le < EPR ? S.hist[e + 1] - S.hist[e] : S.hist[d * EPR]));
    }
  }
}

}  // namespace
