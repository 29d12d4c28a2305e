// Routing inside the blocks (ep_dispatch_local, ep_stage_send(_large)): LocalTables, id loading and checks,
// the bookkeeping blocks, de-duplication books, and InBlockDests.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Routing inside each block: ep_dispatch_local (one rank, T*k <= EP_LOCAL_MAX_PAIRS) and ep_stage_send
// (W > 1, T*k <= EP_MAX_PAIRS; ep_stage_send_large past EP_STAGE_SMEM_PAIRS). Every row block reads all T*k ids
// (at most 128 KiB, from L2 after the first block; kept in shared memory up to EP_STAGE_SMEM_PAIRS) and counts,
// for its own tokens, the pairs of each of their experts in earlier tokens (local: per token, against its
// marked slots; staged: a running per-expert count the block advances from one of its tokens to the next,
// so ep_stage_send, whose blocks' tokens are strided, reads each id twice, once for the histogram and once
// for the counts; ep_stage_send_large (InBlockDests' Large) gives each block consecutive tokens and starts
// the counts in the histogram's pass, so it reads each id once, 4 a load); the last block
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
  int capE;                         // bookkeeping: first expert (one rank) or destination (staged) over capacity
  uint64_t base;                    // this rank's heap
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
// holds the pairs with an expert and S.hist is zero, ready for count_experts.
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
      for (int q = p - p % K; q < p; ++q)
        if (pair_expert(a, S, q) == e) {
          bad = min(bad, p);
          break;
        }
    }
  } else {
    bad = scan_ids_l2(a, &rows);
    __syncthreads();  // (thread 0's S.bad and S.rows before the atomics below)
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
  __syncthreads();
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
  count_experts<false>(a, S);
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
  block_exclusive_scan(S.hist, E, S.scratch);  // (its first barrier orders the read of S.hist above)
  for (int e = tid; e < E; e += B) ((int*)a.expertOffsets)[e] = (int)expert_start(a, e, S.hist[e]);
}

// ep_stage_send's bookkeeping block: the ids, then maxRowsPerPeer for every destination (the first one over
// it is reported, as ep_route does), then each destination's split record (its local experts' counts, then
// m_st) into its stage. On any error nothing is written to peers: the last block's signal carries the abort.
template <bool Large>
__device__ void stage_bookkeeping(const EpArgs& a, LocalTables& S, uint64_t call) {
  const int tid = threadIdx.x, B = blockDim.x, lane = tid & 31, warp = tid >> 5;
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  if (tid == 0) clear_error(state_of(a));  // (no other block reports before the last block's wait)
  __syncthreads();
  if (!check_ids<false, Large>(a, S, &call)) return;
  count_experts<Large>(a, S);
  block_exclusive_scan(S.hist, E, S.scratch);  // hist[e] = pairs of experts < e
  for (int d = tid; d < W; d += B)
    if (S.hist[(d + 1) * EPR] - S.hist[d * EPR] > a.maxRowsPerPeer) atomicMin(&S.capE, d);
  __syncthreads();
  const uint64_t slot = call & 1u;
  if (S.capE != INT_MAX) {
    if (tid == 0) {
      const int d = S.capE;
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

// ---------------------------------------------------------------------------------------------
// own_direct (README, "The protocol"): a large batch's own rows straight into expertX. Every staged row block 0
// of a group on one host with dedup publishes its per-expert counts to every peer as tagged words (publish_counts),
// as soon as its histogram is built; the row blocks of ep_stage_send_large (T*k > EP_STAGE_SMEM_PAIRS) wait for
// every peer's counts for this rank (own_tables), and then store each token's rows for this rank's own experts
// straight into expertX in the same pass as its rows for the other owners, instead of into the own stage for
// ep_stage_pack to copy.

// Whether this group's ranks publish their counts (one host, dedup; EP_OWN_DIRECT=0 builds: never).
__device__ __forceinline__ bool own_direct_group(const EpArgs& a) {
#if EP_OWN_DIRECT
  return a.dedup && a.nodes == 1;
#else
  return false;
#endif
}

// Whether this rank's call stores its own rows straight into expertX (ep_stage_send_large; ep_stage_pack then
// skips them, deciding it from the same arguments).
__device__ __forceinline__ bool own_direct(const EpArgs& a) {
  return own_direct_group(a) && !ids_in_smem(a) && a.expertsPerRank <= EP_MAX_EXPERTS / 2;
}

// own_direct's tables, in LocalTables::ids (unused: the ids stay in L2 at such batches).
struct OwnTables {
  int cnt[EP_MAX_EXPERTS];      // [s][le]: rows source s sends this rank for local expert le (-1: not known yet)
  int start[EP_MAX_EXPERTS / 2 + 1];  // where this rank's own rows of each local expert start in expertX (W >= 2;
                                     // +1: the scan's total)
  int scratch[33];
  int state;  // 0 waiting, 2 a peer's call is off or timed out
  int late;   // the lowest source whose counts were missing in this round
};
static_assert(sizeof(OwnTables) <= sizeof(LocalTables::ids), "OwnTables lives in LocalTables::ids");
__device__ __forceinline__ OwnTables& own_tables_of(LocalTables& S) { return *reinterpret_cast<OwnTables*>(S.ids); }

// The tagged count words: counts region [slot][src][le] (the direct path's, unused by a staged group: it holds
// W*E i32 a slot, and these are E u64), each (uint32 call << 32) | count, so that a word read with this call's
// tag holds this call's count (8 aligned bytes are single-copy atomic; the slot's previous value is call - 2's).
__device__ __forceinline__ uint64_t* tagged_counts(const EpArgs& a, uint64_t heap, uint64_t slot) {
  return (uint64_t*)(heap + a.countsOff + slot * a.countsSlot);
}

// Row block 0 of a staged send (own_direct_group), every thread, once its histogram is built (S.hist the exclusive
// prefix of this call's pairs per expert): this rank's count of each of peer d's experts into d's tagged words.
// No fence: nothing but the word itself depends on it. ep_stage_send_large's block 0 publishes before its first row
// (its peers' row blocks wait for it); ep_stage_send's after its rows (a few hundred bytes to each peer before its
// finish_block, rather than before its first row store; a peer of a large batch waits for them, or for the rows'
// signal that follows them).
__device__ __forceinline__ void publish_counts(const EpArgs& a, const LocalTables& S, uint64_t call) {
  const int W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const uint64_t tag = (uint64_t)(uint32_t)call << 32;
  for (int e = threadIdx.x; e < W * EPR; e += blockDim.x) {
    const int d = e / EPR;
    if (d == me) continue;
    uint64_t* at = tagged_counts(a, __ldg((const uint64_t*)a.peerBases + d), call & 1u) + (uint64_t)me * EPR + (e - d * EPR);
    signal_unordered(at, tag | (uint32_t)(S.hist[e + 1] - S.hist[e]));
  }
}

// own_tables gave up waiting for source s (the first one to: EpState.ownLate). Out of line: a rare path, kept out
// of the row blocks' registers.
__device__ __noinline__ void note_own_late(const EpArgs& a, int s) { atomicCAS(&state_of(a)->ownLate, 0u, 1u + (uint32_t)s); }

// A row block of ep_stage_send_large (own_direct), every thread, after its histogram: every peer's count for each
// of this rank's experts, from its tagged words, or from its split record once its rows' signal holds this call (a
// peer whose row block 0 never ran: no tokens); then O.start. Returns true (every thread) when the own rows may be
// stored: false when a peer's call is off (the tail's wait reports it) or timed out (EpState.ownLate, which the tail
// reports: the bookkeeping block, which may start after this one, clears the call's error first), or an expert is
// over capacity (ep_stage_pack reports it and copies nothing). It waits for every peer's row block 0 (or last block),
// which waits for nothing before it publishes: block 0 is dispatched first.
__device__ bool own_tables(const EpArgs& a, LocalTables& S, uint64_t call) {
  OwnTables& O = own_tables_of(S);
  const int tid = threadIdx.x, B = blockDim.x, W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const uint64_t slot = call & 1u;
  const uint64_t* tagged = tagged_counts(a, a.localBase, slot);
  const uint64_t* rowsSignal = (const uint64_t*)(a.localBase + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  const int* splits = (const int*)(a.localBase + a.stageSplitsOff + slot * a.stageSplitsSlot);
  const uint32_t tag = (uint32_t)call;
  for (int i = tid; i < W * EPR; i += B) O.cnt[i] = i / EPR == me ? S.hist[i + 1] - S.hist[i] : -1;
  if (tid == 0) {
    O.state = 0;
    O.late = INT_MAX;
  }
  __syncthreads();
  const uint64_t deadline = deadline_after(a.timeoutNs);
  for (uint32_t sleepNs = 0;;) {
    bool missing = false;
    for (int i = tid; i < W * EPR; i += B) {
      if (O.cnt[i] >= 0) continue;
      const uint64_t v = ld_relaxed_sys(tagged + i);
      if ((uint32_t)(v >> 32) == tag) {
        O.cnt[i] = (int)(uint32_t)v;
        continue;
      }
      const int s = i / EPR;  // (its rows' signal: its split record is in, or its call is off)
      const uint64_t r = ld_relaxed_sys(rowsSignal + s);
      if (r == call) {
        (void)ld_acquire_sys(rowsSignal + s);  // (the value stays: acquire it, then read the record)
        O.cnt[i] = (int)ld_cg_u32(splits + (uint64_t)s * a.splitsPerPeer + (i - s * EPR));
      } else if (r == (call | EP_ABORT_BIT)) {
        O.state = 2;
      } else {
        missing = true;
        atomicMin(&O.late, s);
      }
    }
    // after this round's barrier: O.state and O.late (this round's) are complete; thread 0 alone decides the
    // timeout, and the second barrier both publishes it and keeps O.state's reads before the next round's writes
    const bool stop = !__syncthreads_or(missing) || O.state == 2;
    bool timedOut = false;
    if (tid == 0) {
      const int late = O.late;
      O.late = INT_MAX;
      if (!stop && globaltimer() > deadline) {
        O.state = 2;
        note_own_late(a, late);
        timedOut = true;
      }
    }
    if (__syncthreads_or(stop || timedOut)) break;
    if (sleepNs) __nanosleep(sleepNs);
    sleepNs = sleepNs ? (sleepNs < 256 ? sleepNs * 2 : 256) : 32;
  }
  if (O.state == 2) return false;
  bool over = false;
  for (int le = tid; le < EPR; le += B) {
    int total = 0;
    for (int s = 0; s < W; ++s) total += O.cnt[s * EPR + le];
    over |= total > a.expertCapacity;
    O.start[le] = total;
  }
  if (__syncthreads_or(over)) return false;
  block_exclusive_scan(O.start, EPR, O.scratch);
  for (int le = tid; le < EPR; le += B) {
    int before = 0;  // this expert's rows from the sources before this rank
    for (int s = 0; s < me; ++s) before += O.cnt[s * EPR + le];
    O.start[le] = (int)expert_start(a, le, O.start[le]) + before;
  }
  __syncthreads();
  return true;
}

// ---------------------------------------------------------------------------------------------
// De-duplication (EpArgs.dedup, staged only, k <= 32): a token crosses to each owner once. Of a token's
// slots naming experts of one owner, the first (its carrier slot) carries the row; the owner's stage
// learns, for every row, the row that carries its data (stageCarrier) and, for every carrier row, a
// record: the origin's combine row (t*k + carrier slot), then per slot the row in this rank's order for
// that owner (or -1) and the router weight, from which the owner pre-reduces the token's outputs.

// The lowest lane (< k) whose key equals mine: the carrier slot of my owner. Keys of lanes without a row
// are unique (-1 - lane), so such a lane leads itself. Every lane of the warp must call it (it shuffles
// over the full warp: a lane that skips it leaves the others waiting forever).
__device__ __forceinline__ int carrier_lane(int key, int k) {
  int lead = threadIdx.x & 31;
  for (int u = 0; u < k; ++u) {
    const int other = __shfl_sync(FULL_MASK, key, u);
    if (other == key && u < lead) lead = u;
  }
  return lead;
}

// Warp 0 of a staged row block, once per token (lane = slot j): every stored row's carrier, and every
// carrier's record, into the owners' stages. `base` is owner d's heap, r my row for d, r0 its carrier's.
__device__ __forceinline__ void dedup_books(const EpArgs& a, int t0, uint64_t slot, uint64_t base, int d, int r,
                                            int r0, bool valid, bool carrier) {
  const int lane = threadIdx.x & 31, K = a.topk;
  const uint64_t me = (uint64_t)a.rank * a.stageRows;
  const float w = lane < K ? __ldg((const float*)a.topkWeights + t0 + lane) : 0.0f;
  if (valid) st_u32((char*)(base + a.stageCarrierOff + slot * a.stageCarrierSlot + (me + r) * 4u), (uint32_t)r0);
  for (uint32_t cars = __ballot_sync(FULL_MASK, valid && carrier); cars != 0; cars &= cars - 1) {
    const int c = __ffs(cars) - 1;
    const int dc = __shfl_sync(FULL_MASK, d, c);
    const uint64_t rec = __shfl_sync(FULL_MASK, base, c) + a.stageRecordsOff + slot * a.stageRecordsSlot +
                         (me + (uint64_t)__shfl_sync(FULL_MASK, r0, c)) * (uint64_t)a.recordBytes;
    const bool ours = valid && d == dc;
    // (the top bit: this rank wants its partials flagged, ep_flagged.cuh)
    if (lane == c) st_u32((char*)rec, (uint32_t)(t0 + c) | (a.combineFlagged ? EP_FLAGGED_BACK_BIT : 0u));
    if (lane < K) {
      st_u32((char*)rec + 4u + 4u * lane, (uint32_t)(ours ? r : -1));
      st_u32((char*)rec + 4u + 4u * (K + lane), __float_as_uint(ours ? w : 0.0f));
    }
  }
}

// Where a row block learns the destinations of its tokens by routing them itself (see above). Staged:
// the block's histogram prefix is built once, in go(), which also reads the call count (the stage slot).
template <bool Staged, bool Large = false>
struct InBlockDests {
  static_assert(Staged || !Large, "InBlockDests: Large is a staged policy (ep_stage_send_large)");
  LocalTables& S;
  uint64_t call;  // staged: this call's count (its parity is the stage slot), from go()
  int state;      // -1: ids not loaded yet; then 1 (rows are stored) or 0 (the host aborted the call)
  int marked;     // local: the token whose slots slotOf holds, or -1
  int counted;    // the token whose pairs before/from (local) or run (staged) hold, or -1 (a block may take
                  // several chunks of one token)
  int cursor;     // staged: S.run counts the pairs of the tokens before this one (a block's tokens only grow)
  bool ownDirect;  // Large: this rank's own rows go straight into expertX (own_tables, from go())
  __device__ explicit InBlockDests(LocalTables& s)
      : S(s), call(0), state(-1), marked(-1), counted(-1), cursor(0), ownDirect(false) {}
  // (the last block keeps the books; Large: consecutive tokens a block, see contiguous_items)
  __device__ __forceinline__ ItemSpan span(int n) const {
    return Large ? contiguous_items(n, gridDim.x - 1) : strided_items(n, gridDim.x - 1);
  }
  // Slots 0..7 of token t straight from topkIdx (the same bytes in every thread: L1 broadcasts), -1 past k.
  __device__ __forceinline__ static void first_ids(const EpArgs& a, int t, int (&v)[8]) {
    const int* tok = (const int*)a.topkIdx + (uint64_t)t * a.topk;
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = u < a.topk ? __ldg(tok + u) : -1;
  }
  // Every entry of slotOf rewritten for token t by the thread that owns it (e = tid + i*B): the slot of
  // t naming e, the last one if t repeats e (the call then fails as DUPLICATE), else -1. No entry has
  // two writers, so marking needs no barrier of its own; the caller's barrier publishes it. `first`
  // holds slots 0..7 (first_ids, loaded by the caller); later slots are read 8 at a time.
  __device__ __forceinline__ void mark(const EpArgs& a, int t, const int (&first)[8]) {
    const int K = a.topk, E = a.numExperts;
    const int* tok = (const int*)a.topkIdx + (uint64_t)t * K;
    for (int j0 = 0; j0 < K; j0 += 8) {
      int v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = j0 == 0 ? first[u] : j0 + u < K ? __ldg(tok + j0 + u) : -1;
      for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int slot = j0 == 0 ? -1 : S.slotOf[e];
#pragma unroll
        for (int u = 0; u < 8; ++u) slot = v[u] == e ? j0 + u : slot;
        S.slotOf[e] = (int8_t)slot;
      }
    }
    for (int j = threadIdx.x; j < K; j += blockDim.x) S.before[j] = S.from[j] = 0;
    marked = t;
  }
  __device__ __forceinline__ bool go(const EpArgs& a, int t) {
    if (state < 0) {
      wait_for_prior();  // (a no-op unless launched as a programmatic dependent)
      if (Staged) call = read_calls(state_of(a)) + 1;
      int first[8];
      if (!Staged) first_ids(a, t, first);  // these loads and load_ids' go out together; one barrier publishes both
      // staged, and one rank's packed experts: where each expert's rows start, from a histogram
      const bool prefix = Staged || a.packedExperts;
      if (prefix)
        for (int e = threadIdx.x; e <= a.numExperts; e += blockDim.x) S.hist[e] = 0;
      if (Staged)
        for (int e = threadIdx.x; e < a.numExperts; e += blockDim.x) S.run[e] = 0;
      if (ids_in_smem(a)) {
        int rows;
        load_ids(a, S, &rows);
      } else if (threadIdx.x == 0) {  // (the ids stay in L2; the bookkeeping block validates them)
        S.base = __ldg((const uint64_t*)a.peerBases + a.rank);
      }
      if (!Staged) mark(a, t, first);
      __syncthreads();
      if (prefix) {
        if (Large) {  // one pass: every pair into hist, and those before this block's first token into run
          const int t0 = t * a.topk;
          each_pair_expert<true>(a, S, 0, a.numTokens * a.topk, [&](int p, int e) {
            atomicAdd(&S.hist[e], 1);
            if (p < t0) atomicAdd(&S.run[e], 1);
          });
          __syncthreads();
          cursor = counted = t;
        } else {
          count_experts<false>(a, S);  // (the running counts start in dests())
        }
        // one rank's packed experts: an expert over capacity stores nothing, so it takes no rows from the
        // next ones' starts (a failing call stores no row past the end either)
        if (!Staged)
          for (int e = threadIdx.x; e < a.numExperts; e += blockDim.x) S.hist[e] = min(S.hist[e], a.expertCapacity);
        block_exclusive_scan(S.hist, a.numExperts, S.scratch);
        // own_direct: ep_stage_send_large's block 0 publishes its counts at once (ep_stage_send's after its rows:
        // stage_send), then every block waits for every peer's
        if (Large && own_direct_group(a) && host_abort(a) == 0) {
          if (blockIdx.x == 0) publish_counts(a, S, call);
          // (point 41, two stamps the staged path does not otherwise write: block 0's counts published, and the
          // latest block with every peer's counts)
          if (blockIdx.x == 0 && threadIdx.x == 0) EP_DIAG_AT(41, EP_STAMP_COUNTS_SENT);
          if (own_direct(a)) ownDirect = own_tables(a, S, call);
          if (threadIdx.x == 0) EP_DIAG_AT(41, EP_STAMP_COUNTS_ARRIVED);
        }
      }
      state = host_abort(a) == 0 ? 1 : 0;
      if (blockIdx.x == 0 && threadIdx.x == 0 && state) stamp(a, EP_STAMP_ROWS_BEGIN);
    }
    return state != 0;
  }
  // Token t's rows, then warp 0 turns the counts into rows (and pairDest or pairRow, by the block of the
  // first chunk). Local: every pair of the call counted against t's marked slots (one shared atomic per
  // match). Staged: S.run brought up to t, adding the pairs since the block's last token (the loop's
  // barrier ordered warp 0's reads of the last token's counts), so a block reads each id once.
  __device__ void dests(const EpArgs& a, int t, bool firstChunk, DestList& L, int buf) {
    const int tid = threadIdx.x, K = a.topk, N = a.numTokens * K, t0 = t * K;
    if (Staged && counted != t) {
      each_pair_expert<Large>(a, S, cursor * K, t0, [&](int, int e) { atomicAdd(&S.run[e], 1); });
      __syncthreads();
      cursor = counted = t;
    }
    if (!Staged && counted != t) {
      if (marked != t) {  // a later token of this block (the loop's barrier ordered the last one's reads)
        int first[8];
        first_ids(a, t, first);
        mark(a, t, first);
        __syncthreads();
      }
      for (int p = tid; p < N; p += blockDim.x) {
        const int e = S.ids[p];
        const int j = e >= 0 ? S.slotOf[e] : -1;
        if (j >= 0) atomicAdd(p < t0 ? &S.before[j] : &S.from[j], 1);
      }
      __syncthreads();
      counted = t;
    }  // (another chunk of the token counted last: its counts stand)
    if (tid >= 32) return;
    const int lane = tid;
    int n = 0;
    for (int j0 = 0; j0 < K; j0 += 32) {
      const int j = j0 + lane;
      const int e = j < K ? pair_expert(a, S, t0 + j) : -1;
      // local: a slot repeating an expert stores nothing; staged: such a call fails (the bookkeeping block
      // reports it), and both slots' rows land in the same place, inside the stage
      const bool mine = e >= 0 && (Staged || S.slotOf[e] == j);
      uint64_t row = 0, sc = 0;
      bool valid = false;  // this slot's row is stored (dedup: only the token's carrier row for its owner)
      if (!Staged) {
        int r = -1;
        if (mine && S.before[j] + S.from[j] <= a.expertCapacity) r = (int)expert_start(a, e, a.packedExperts ? S.hist[e] : 0) + S.before[j];
        if ((uint64_t)r >= expert_rows(a)) r = -1;  // (a call over maxRowsPerPeer fails: its rows stay inside expertX)
        if (firstChunk && j < K) ((int*)a.pairDest)[t0 + j] = r;
        valid = r >= 0;
        row = S.base + a.expertXOff + (uint64_t)r * a.dispatchRowBytes;
        sc = S.base + a.expertScalesOff + (uint64_t)r * (uint64_t)a.groupsPerRow * 4u;
      } else {
        const int d = mine ? e / a.expertsPerRank : 0;
        const int before = mine ? S.run[e] : 0;
        int r = mine ? S.hist[e] - S.hist[d * a.expertsPerRank] + before : -1;
        valid = mine && r < a.stageRows;
        const uint64_t slot = call & 1u;
        const uint64_t base = __ldg((const uint64_t*)a.peerBases + d);
        if (firstChunk && j < K) {
          ((int*)a.pairRow)[t0 + j] = valid ? S.hist[e] + before : -1;
          if (valid && d == a.rank && !a.dedup) ((int*)a.selfPairs)[r] = t0 + j;
        }
        // an owner on another host: its row and books travel in this rank's message to that host (pairRow,
        // above, is what ep_rail_plan builds them from)
        const bool here = same_host(a, d);
        if (a.dedup) {  // (k <= 32: this is the only pass)
          const int lead = carrier_lane(valid ? d : -1 - lane, K);
          const int r0 = __shfl_sync(FULL_MASK, r, lead);
          if (firstChunk) dedup_books(a, t0, slot, base, d, r, r0, valid && here, lead == lane);
          valid = valid && lead == lane;
        }
        valid = valid && here;
        if (Large && ownDirect && d == a.rank) {  // every own slot's row, straight into expertX (not the stage)
          const int at = mine && r < a.stageRows ? own_tables_of(S).start[e - d * a.expertsPerRank] + before : -1;
          valid = at >= 0 && (uint64_t)at < expert_rows(a);
          row = a.localBase + a.expertXOff + (uint64_t)at * a.dispatchRowBytes;
          sc = a.localBase + a.expertScalesOff + (uint64_t)at * (uint64_t)a.groupsPerRow * 4u;
        } else if (valid) {
          const uint64_t src = (uint64_t)a.rank * a.stageRows + r;
          row = base + a.stageDataOff + slot * a.stageDataSlot + src * a.dispatchRowBytes;
          sc = base + a.stageScalesOff + slot * a.stageScalesSlot + src * (uint64_t)a.groupsPerRow * 4u;
        }
      }
      n = push_dest(L, buf, n, valid, row, sc);
    }
    if (lane == 0) L.n[buf] = n;
  }
};

}  // namespace
