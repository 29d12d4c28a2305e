// Kernel 1, ep_route: validation, counts, the count exchange and every pair's row (the direct protocol).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

// =============================================================================================
// 1. ep_route: validate topkIdx, count pairs per expert, prefix-sum, stable pair -> row, capacity; send
// the counts to every peer and receive theirs; from all counts, each pair's row in its owner's expertX.
//
// One block of up to EP_ROUTE_THREADS (1024) threads. Dynamic shared memory (4*(NW*E + E + 1) + 2*N
// bytes, NW = blockDim/32, N = T*k), and static sDelta[E], sMst[W]:
//   hist[NW][E]  per-warp histograms, later per-warp running row bases
//   off[E+1]     exclusive prefix sum of the counts
//   idx[N]       topkIdx as int16 (ids are < 1024), invalid ids stored as -1
// Warp w owns the contiguous pair segment [w*S, (w+1)*S), S a multiple of 128, so "pairs of expert e in
// increasing p" = warps in order, and inside a warp 32-pair chunks in order, and inside a chunk lanes in
// order (lanes of the same expert found with ballots, match_keys, + popc of the lower lanes). Row of pair p = off[e] + pairs of e in earlier
// warps + pairs of e earlier in this warp: exactly planRouting's stable order.
extern "C" __global__ void __launch_bounds__(EP_ROUTE_THREADS, 1) ep_route(const __grid_constant__ EpArgs a) {
  extern __shared__ __align__(16) int dyn[];
  __shared__ int sScratch[33];
  __shared__ int sBad;   // first offending pair (ids), INT_MAX if none
  __shared__ int sCap;   // first destination over capacity
  __shared__ int sCapE;  // first local expert over capacity
  __shared__ int sPeerErr;  // a count wait failed (and was reported): the call is off
  __shared__ int sMst[EP_MAX_EXPERTS];    // m_st of each source (W <= E)
  __shared__ int sDelta[EP_MAX_EXPERTS];  // per expert: destination row minus send row, or INT_MIN
  __shared__ int sStart[EP_MAX_EXPERTS + 1];  // packed: rows of all experts before each one (its start, + the owner's)
  __shared__ unsigned long long sCall;
  EP_PROBE_AT(0);
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  // an ep_dispatch launched with programmatic serialization (bench/micro/kernel_probe.cu does) may
  // start loading and quantising its rows
  // now; it waits for this kernel before it reads anything written here.
  allow_dependents();

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int B = blockDim.x, NW = B >> 5;
  const int E = a.numExperts, K = a.topk, W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const int N = a.numTokens * K;
  const int* topk = (const int*)a.topkIdx;
  EpState* st = state_of(a);
  const uint64_t* peer = (const uint64_t*)a.peerBases;

  // A host that passed too little shared memory, or sizes beyond the limits, is a programming
  // error of the host, not a user input error: stop loudly instead of corrupting memory.
  const uint64_t need = 4ull * ((uint64_t)NW * E + E + 1) + 2ull * (uint64_t)N;
  host_requires(need <= dynamic_smem_bytes() && E <= EP_MAX_EXPERTS && K <= EP_MAX_TOPK && N <= EP_MAX_PAIRS && !(B & 31),
                "ep_route: dynamic smem >= the ids and histograms, E, k, T*k within limits, block a multiple of 32");

  int* hist = dyn;
  int* off = hist + NW * E;
  int16_t* idx = (int16_t*)(off + E + 1);

  if (tid == 0) {
    // Only this thread touches dispatchCalls in this kernel; the others get the call from sCall.
    const uint64_t call = begin_call(st);
    sCall = call;
    sBad = INT_MAX;
    sCap = INT_MAX;
    sCapE = INT_MAX;
    sPeerErr = 0;
    if (host_abort(a) != 0) mark_host_abort(a);  // after the clear above (same thread)
  }
  for (int i = tid; i < NW * E; i += B) hist[i] = 0;
  for (int s = tid; s < W; s += B) sMst[s] = 0;
  bool ok = host_abort(a) == 0;

  // Phase 1 (overlapping the set-up above): load ids (8 loads in flight per thread), check the range;
  // the first bad pair of this thread joins sBad after the barrier that initialises it.
  int myBad = INT_MAX, myRows = 0;
  if (ok) myBad = stage_ids(topk, N, E, idx, &myRows);
  __syncthreads();  // set-up, hist zeroes and idx visible to all
  EP_PROBE_AT(1);
  const uint64_t call = sCall;
  const uint32_t slot = (uint32_t)(call & 1u);
  if (myBad != INT_MAX) atomicMin(&sBad, myBad);

  // Segments: S pairs per warp, a multiple of 128 (the 4 x 32 pairs one loop step takes), NWu warps in
  // use: fewer warps for small N keeps the per-expert loops over warps below short.
  const int S = N > 0 ? (((N + NW - 1) / NW + 127) & ~127) : 128;
  const int NWu = (N + S - 1) / S;
  const int segLo = warp * S, segHi = min(N, segLo + S);
  const uint32_t lt = lanemask_lt();
  const int keyBits = 32 - __clz(E + 1);  // keys e + 2 in [0, E + 2): e = -2 past the segment, -1 dropped
  EP_PROBE_AT(2);

  if (ok) {
    // Phase 2: per-warp histograms and the duplicate check, 4 chunks of 32 pairs at a time.
    if (warp < NWu) {
      for (int c0 = segLo; c0 < segHi; c0 += 128) {
        int e[4];
        uint32_t m[4];
        load_chunks(idx, c0, segHi, lane, keyBits, e, m);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (e[u] >= 0) {
            const int c = c0 + u * 32, p = c + lane;
            const int tokStart = p - p % K;
            // same expert in a lower lane of this chunk that belongs to my token?
            const uint32_t tokLanes = tokStart > c ? ~((1u << (tokStart - c)) - 1u) : FULL_MASK;
            bool dup = (m[u] & lt & tokLanes) != 0;
            for (int q = tokStart; !dup && q < c; ++q) dup = idx[q] == e[u];  // token began in an earlier chunk
            if (dup) atomicMin(&sBad, p);
            if (lane == __ffs(m[u]) - 1) atomicAdd(&hist[warp * E + e[u]], __popc(m[u]));
          }
        }
      }
    }
    __syncthreads();
    if (sBad != INT_MAX) {
      // planRouting's order: the first pair p that is out of range, or names an expert an earlier
      // slot of its token named, decides; range is checked before duplicates for that pair.
      if (tid == 0) {
        const int p = sBad, e = __ldg(topk + p);
        const uint32_t code = (e < -1 || e >= E) ? EP_ERR_EXPERT_ID : EP_ERR_DUPLICATE;
        report_error(a, code, (uint32_t)me, slot, call, p / K, p % K, (uint32_t)e);
      }
      ok = false;
    }
  }

  if (ok) {
    // Phase 3: totals, prefix sum, per-warp bases, capacity per destination.
  EP_PROBE_AT(3);
    for (int e = tid; e < E; e += B) {
      int s = 0;
#pragma unroll 8
      for (int w = 0; w < NWu; ++w) s += hist[w * E + e];
      off[e] = s;
    }
    block_exclusive_scan(off, E, sScratch);
    for (int e = tid; e < E; e += B) {
      int run = off[e];
      for (int w = 0; w < NWu; ++w) {
        const int c = hist[w * E + e];
        hist[w * E + e] = run;
        run += c;
      }
    }
    for (int d = tid; d < W; d += B)
      if (off[(d + 1) * EPR] - off[d * EPR] > a.maxRowsPerPeer) atomicMin(&sCap, d);
    __syncthreads();
    if (sCap != INT_MAX) {
      if (tid == 0) {
        const int d = sCap;
        report_error(a, EP_ERR_CAPACITY, (uint32_t)d, slot, call, d, off[(d + 1) * EPR] - off[d * EPR],
                     EP_CAPACITY_AUX_SEND);
      }
      ok = false;
    }
  }

  // Exchange: my E counts to every peer (counts[slot][me] in their heap), then the count signal; with
  // the abort bit and no counts when this call is off here. Sent as early as possible: the ranks
  // below run while the signals travel.
  EP_PROBE_AT(4);
  for (int d = warp; d < W; d += NW) {
    if (d == me) continue;  // my own counts stay in shared memory
    const uint64_t base = __ldg(peer + d);
    if (ok) {
      char* rec = (char*)(base + a.countsOff + slot * a.countsSlot + (uint64_t)me * E * 4u);
      for (int e = lane; e < E; e += 32) st_u32(rec + (uint64_t)e * 4u, (uint32_t)(off[e + 1] - off[e]));
    }
    __syncwarp();  // the lanes' count stores happen-before lane 0's fence
    if (lane == 0) {
      fence_sys();
      signal((uint64_t*)(base + a.countSignalOff + slot * a.countSignalSlot + (uint64_t)me * 8u),
             ok ? call : (call | EP_ABORT_BIT));
    }
  }

  if (ok) {
    // Phase 4: stable ranks. Each warp walks its chunks in order; the lanes of one expert in a chunk
    // take consecutive rows from the warp's running base, and the lowest of them advances it.
    int* pairRow = (int*)a.pairRow;
    if (warp < NWu) {
      for (int c0 = segLo; c0 < segHi; c0 += 128) {
        int e[4];
        uint32_t m[4];
        load_chunks(idx, c0, segHi, lane, keyBits, e, m);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int p = c0 + u * 32 + lane;
          int b = 0;
          if (e[u] >= 0) {
            b = hist[warp * E + e[u]];
            pairRow[p] = b + __popc(m[u] & lt);
          } else if (p < segHi) {
            pairRow[p] = -1;
          }
          __syncwarp();  // every lane of this chunk has read its base before it moves
          if (e[u] >= 0 && lane == __ffs(m[u]) - 1) hist[warp * E + e[u]] = b + __popc(m[u]);
          __syncwarp();  // the new base is visible to the next chunk's lanes
        }
      }
    }
  }

  EP_PROBE_AT(5);
  if (tid == 0) stamp(a, EP_STAMP_COUNTS_SENT);
  // Wait for every peer's counts (bounded). Even a rank whose call is off waits, so that no count
  // store into this slot is still in flight when the call ends here.
  {
    const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.countSignalOff + slot * a.countSignalSlot);
    if (wait_for_sources(a, mine, me, call, slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH))
      sPeerErr = 1;
  }
  __syncthreads();  // every wait done (and phase 4's pairRow stores visible to the block)
  // The call is off here when any rank's routing failed (every rank saw the abort) or a wait timed out
  // (see routed()); this block made every such report itself, so shared memory tells (no global read).
  if (!ok || sPeerErr) return;
  EP_PROBE_AT(6);
  if (tid == 0) stamp(a, EP_STAMP_COUNTS_ARRIVED);

  // Phase 5: from every rank's counts, for each expert e: where my rows of e start in its owner's
  // expertX (delta[e] = that row minus my send row of e's first pair), or INT_MIN when e holds more
  // than expertCapacity rows (its owner fails the call; nothing is stored there).
  int* delta = sDelta;
  int* mst = sMst;
  const char* counts = (const char*)(__ldg(peer + me) + a.countsOff + slot * a.countsSlot);
  // rows of expert e from every source (written by peers before their release signal, which the waits
  // above acquired: read at L2)
  auto rowsFrom = [&](int s, int e) {
    return s == me ? off[e + 1] - off[e] : (int)ld_cg_u32(counts + ((uint64_t)s * E + e) * 4u);
  };
  if (a.packedExperts) {  // each owner's experts back to back: a prefix of the totals
    for (int e = tid; e < E; e += B) {
      int total = 0;
      for (int s = 0; s < W; ++s) total += rowsFrom(s, e);
      sStart[e] = min(total, a.expertCapacity);  // (an expert over capacity stores nothing: no row past the end)
    }
    block_exclusive_scan(sStart, E, sScratch);
  }
  for (int e = tid; e < E; e += B) {
    const int owner = e / EPR, le = e - owner * EPR;
    int before = 0, total = 0;
    for (int s = 0; s < W; ++s) {
      const int c = rowsFrom(s, e);
      before += s < me ? c : 0;
      total += c;
      if (owner == me) ((int*)a.recvSplits)[s * a.splitsPerPeer + le] = c;
      if (e < me * EPR && c != 0) atomicAdd(&mst[s], c);  // m_st of source s: its rows before my experts
    }
    const bool over = total > a.expertCapacity;
    const int start = (int)expert_start(a, le, a.packedExperts ? sStart[e] - sStart[owner * EPR] : 0);
    delta[e] = over ? INT_MIN : start + before - off[e];
    if (owner == me) {
      ((int*)a.expertCounts)[le] = total;
      ((int*)a.expertOffsets)[le] = start;
      if (over) atomicMin(&sCapE, le);
    }
  }
  __syncthreads();
  for (int s = tid; s < W; s += B) ((int*)a.recvSplits)[s * a.splitsPerPeer + EPR] = mst[s];
  EP_PROBE_AT(7);
  if (sCapE != INT_MAX && tid == 0) {
    // Receive-side capacity (as routing.ts checkExpertCapacity), known to every rank from the counts:
    // senders skip the expert, and this rank fails its dispatch and tells every peer now that it
    // will not combine this call (as the cpu transport does). Its own rows still go to its peers.
    const int le = sCapE, e = me * EPR + le;
    int total = 0;
    for (int s = 0; s < W; ++s)
      total += s == me ? off[e + 1] - off[e] : (int)ld_cg_u32(counts + ((uint64_t)s * E + e) * 4u);
    report_error(a, EP_ERR_CAPACITY, (uint32_t)me, slot, call, e, total, EP_CAPACITY_AUX_EXPERT);
    for (int d = 0; d < W; ++d)
      if (d != me)
        signal((uint64_t*)(__ldg(peer + d) + a.combineSignalOff + slot * a.combineSignalSlot + (uint64_t)me * 8u),
               call | EP_ABORT_BIT);
  }

  // Phase 6: the destination row of every pair.
  const int* pairRow = (const int*)a.pairRow;
  int* pairDest = (int*)a.pairDest;
  for (int p0 = tid; p0 < N; p0 += 4 * B) {
    int r[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) r[u] = p0 + u * B < N ? pairRow[p0 + u * B] : 0;  // 4 loads in flight
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int p = p0 + u * B;
      if (p >= N) break;
      const int e = idx[p];
      const int d = e >= 0 ? delta[e] : INT_MIN;
      pairDest[p] = d == INT_MIN ? -1 : r[u] + d;
    }
  }
  EP_PROBE_AT(8);
  if (tid == 0) stamp(a, EP_STAMP_ROUTE_END);
}
