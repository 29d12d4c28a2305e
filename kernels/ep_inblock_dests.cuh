// Routing inside the blocks, second part: the de-duplication books and InBlockDests (the destinations of a
// block's tokens, for ep_dispatch_local and ep_stage_send(_large)).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

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
      // staged: the call count, thread 0's, shared by the barrier below (one load a block: block_state)
      if (Staged && threadIdx.x == 0) S.call = read_calls(state_of(a)) + 1;
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
      if (Staged) call = S.call;
      if (blockIdx.x == 0 && threadIdx.x == 0) EP_DIAG_AT(33, EP_STAMP_ROWS_BEGIN);  // (the ids in, published)
      if (prefix) {
        if (Staged) {  // one pass: every pair into hist, and those before this block's first token into run
          // (so that dests() needs no pass and no barrier of its own for the first token: the scan's last
          // barrier publishes run with hist)
          const int t0 = t * a.topk;
          each_pair_expert<Large>(a, S, 0, a.numTokens * a.topk, [&](int p, int e) {
            atomicAdd(&S.hist[e], 1);
            if (p < t0) atomicAdd(&S.run[e], 1);
          });
          __syncthreads();
          cursor = counted = t;
        } else {
          count_experts<false>(a, S);
        }
        // one rank's packed experts: an expert over capacity stores nothing, so it takes no rows from the
        // next ones' starts (a failing call stores no row past the end either)
        if (!Staged) {
          for (int e = threadIdx.x; e < a.numExperts; e += blockDim.x) S.hist[e] = min(S.hist[e], a.expertCapacity);
          __syncthreads();  // (another thread may scan these entries)
        }
        block_exclusive_scan<false>(S.hist, a.numExperts, S.scratch);  // (the counts' barrier, or the one above)
        if (blockIdx.x == 0 && threadIdx.x == 0) EP_DIAG_AT(34, EP_STAMP_ROWS_BEGIN);  // (the histogram scanned)
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
      if (blockIdx.x == 0 && threadIdx.x == 0 && state && EP_DIAG != 33 && EP_DIAG != 34) stamp(a, EP_STAMP_ROWS_BEGIN);
    }
    return state != 0;
  }
  // Token t's rows, then warp 0 turns the counts into rows (and pairDest or pairRow, by the block of the
  // first chunk). Local: every pair of the call counted against t's marked slots (one shared atomic per
  // match). Staged: S.run brought up to t, adding the pairs since the block's last token (the loop's
  // barrier ordered warp 0's reads of the last token's counts; go() counted those before its first token).
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
