// Combine kernels: 4 ep_combine_send and 5 ep_combine_reduce, ep_combine_reduce_dedup, ep_combine_reduce_flagged.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

// =============================================================================================
// 4. ep_combine_send: expertOut rows go back to the rank that sent them, at m_st + their index in that
// rank's expert-sorted order; the last block signals every rank and waits for every rank (a rank whose own
// partials come back flagged waits only when aborting: its reduction waits instead; an owner that sent only
// flagged partials signals from block 0, after its own items, with no barrier).
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_send(const __grid_constant__ EpArgs a) {
  __shared__ RecvTables R;
  // May be launched as a programmatic dependent of the dispatch (GraphCall.step). With flagged partials the
  // reduction that follows reads this call's state at once and polls its rows, so it may start only once
  // the dispatch's kernels are done.
  if (!a.combineFlagged) allow_dependents();
  wait_for_prior();
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_COMBINE_BEGIN);
  EpState* st = state_of(a);
  // The error word and the call count: thread 0's, shared by the barrier below (block_state's way; in
  // EP_SERIAL_FIRST_LOADS builds the first of two). Flagged, the reduction may report an error while this kernel
  // runs, and the error word decides the barriers below and the tail, so every thread must take the same copy,
  // loaded before the trigger.
  load_block_state(st, R.state);
  // dedup (not for a host abort: that launch may have a small block, and sends nothing): the pack's carriers
  // per source and their first plans' flags, loaded with them
  const bool partials = a.dedup && host_abort(a) == 0;
  uint32_t counts[4] = {0u, 0u, 0u, 0u}, backs[4];
#ifdef EP_SERIAL_FIRST_LOADS  // (bench A/B only: the counts after the state, as before v11; loaded whatever the error
                              // word says, so that the fenceless choice below stays the grid's)
  __syncthreads();
#endif
  if (partials) load_plan_counts(a, counts, backs);
  bool unflagged = partials && plan_starts(a, R, counts, backs);
  // one barrier publishes R.pre, whether any source gets its partials unflagged, and the state
  unflagged = __syncthreads_or(unflagged) != 0;
  const uint64_t call = R.state.call;
  const uint32_t code0 = R.state.code;
  if (a.combineFlagged) allow_dependents();
  const uint64_t slot = call & 1u;
  if (host_abort(a) != 0 && blockIdx.x == 0 && threadIdx.x == 0) mark_host_abort(a);
  if (code0 == 0 && host_abort(a) == 0) {
    if (a.dedup) {
      combine_send_partials(a, call, R);
    } else {
      build_tables(a, R);
      combine_send_rows<16>(a, slot, R);  // combineRowBytes = 2H, a multiple of 16
    }
  }
  // Every source that gets partials from this rank asked for them flagged: none needs a fence before its
  // signal (a source waiting for signals gets none of its rows from here), so block 0 signals after its own
  // items, with no ordering and no barrier (its other warps may still be storing: see
  // ep_combine_reduce_flagged), and no block waits for the others. Else the last block to finish signals,
  // after the fences. (Flagged: the stamp says when the last partial was stored: every warp's, no barrier.)
  // The choice is the grid's, whatever the error word says: a block that starts after block 0's wait has
  // reported an error must not take finish_block while the others skip it (the count would stay, and the next
  // call's last block would be the wrong one). A call that failed earlier stored nothing to fence.
  const bool fenceless = partials && a.nodes == 1 && !unflagged;
  if (a.combineFlagged && (threadIdx.x & 31) == 0 && !EP_DIAG_IN(1)) stamp_latest(a, EP_STAMP_COMBINE_TAIL);
  if (fenceless ? blockIdx.x != 0 : !finish_block(&st->doneBlocks[2], &R.flag)) return;
  if (!a.combineFlagged && threadIdx.x == 0 && !EP_DIAG_IN(1)) stamp(a, EP_STAMP_COMBINE_TAIL);

  // (flagged: as read at the start: what the reduction reported since is not this rank's abort)
  const uint32_t code = a.combineFlagged ? code0 : read_err_code(st);
  const bool aborted = code != 0 || host_abort(a) != 0;
  const uint64_t value = aborted ? (call | EP_ABORT_BIT) : call;
  const int W = a.world;
  // No per-thread data to order here: finish_block's fences ordered every block's rows (or there were none
  // to order).
  for (int s = threadIdx.x; s < W; s += blockDim.x) {
    if (fenceless) signal_unordered(combine_signal_of(a, s, slot), value);
    else signal(combine_signal_of(a, s, slot), value);
  }
  // The dispatch of this call failed here (its error is still in err): a routing failure every rank
  // saw (no rank sends combine rows for it, and the rank that caused it may never combine), or a
  // timeout (the group is broken; waiting again would only double the delay). Nothing to wait for.
  // With its own expert over capacity, or a combine the host refused, wait as usual.
  const bool refusedHere = code == EP_INTERNAL_HOST_ABORT && host_abort(a) != 0;
  if (code != 0 && !own_expert_over_capacity(st, code) && !refusedHere) return;
  // This rank's partials come back flagged: its reduction polls them, and waits for these words at its end.
  if (!aborted && a.combineFlagged) return;
  // Otherwise wait even when aborting: when this returns, no peer writes into this slot any more. Between
  // hosts, for this host's owners (ep_rail_land checks the others').
  const uint64_t* mine = combine_signals_here(a, slot);
  wait_for_sources(a, mine, -1, call, (uint32_t)slot, EP_ERR_PEER_ABORT_COMBINE, EP_ERR_TIMEOUT_COMBINE);
  if (a.stamps == 0) return;  // (the barrier below serves the stamp only)
  __syncthreads();
  if (threadIdx.x == 0) stamp(a, EP_STAMP_COMBINE_ARRIVED);
}

// =============================================================================================
// 5. ep_combine_reduce: y[t] = bf16(sum over valid j in order of f32(w[t,j] * out[t,j])), f32 accumulate,
// two roundings per step (__fmul_rn, __fadd_rn; the build also passes -fmad=false).
// ep_combine_reduce_dedup (dedup, W > 1): y[t] = bf16 of the f32 sum, in slot order, of the partials at the
// token's carrier slots (the first taken as it is): the first slot of each owner on this host and of each
// other host (pre-reduced there: ep_rail_combine).
// Item = (token, chunk of blockDim vectors of 8 values); the k rows of a token are loaded 8 at a time.
// With k <= 32 every warp gathers its token's slots itself (shuffles), else warp 0 lists them in shared
// memory. Kernels of their own, not one with branches: each keeps its own registers (one kernel holding both paths
// took 96 a thread, so 3 blocks of 224 threads an SM instead of 4, and was 20% slower at T = 512).
// ep_combine_reduce_flagged (dedup, W > 1, one host, EpArgs.combineFlagged): as _dedup, from flagged partials
// (ep_flagged.cuh) it polls as they land, while ep_combine_send may still run; at its end block 0 waits for
// every owner's signal (as ep_combine_send does without flags; not once the call has failed here) and every
// block for ep_combine_send, so that
// what follows on the stream still follows the whole combine.
namespace {
template <bool Dedup, bool Flagged>
__device__ __forceinline__ void combine_reduce(const EpArgs& a) {
  __shared__ uint64_t sRow[2][EP_MAX_TOPK];
  __shared__ float sW[2][EP_MAX_TOPK];
  __shared__ int sN[2];
  __shared__ BlockState sState;
  // may be launched as a programmatic dependent of combine send or the dispatch; flagged: see above (its
  // first loads, the call's state, were final before ep_combine_send let it start)
#if EP_DIAG == 59  // (the state's line loaded once before the wait: whether the first load after it is slow anyway)
  uint64_t early = 0;
  if (threadIdx.x == 0) early = read_calls(state_of(a));
#endif
  if (!Flagged) wait_for_prior();
#if EP_DIAG == 59
  if (threadIdx.x == 0 && early == 0xffffffffffffffffull) early = 1;  // (the early load has completed here)
#endif
  if (threadIdx.x == 0) EP_DIAG_AT(55, EP_STAMP_REDUCE_END);  // (a block starts)
  // (at entry: its first loads count; flagged: it overlaps the send, so only its end is stamped)
  if (!Flagged && blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_REDUCE_BEGIN);
  EpState* st = state_of(a);
  const int B = blockDim.x, tid = threadIdx.x, k = a.topk, lane = tid & 31;
  const int V = a.hidden / 8;
  const int chunks = (V + B - 1) / B;
  const int items = a.numTokens * chunks;
  const int* topk = (const int*)a.topkIdx;
  const int* pairRow = (const int*)a.pairRow;
  const int* pairDest = (const int*)a.pairDest;
  const float* weights = (const float*)a.topkWeights;
  const int EPR = a.expertsPerRank;
  if (Dedup) host_requires(k <= 32 && a.world > 1, "ep_combine_reduce_dedup: k <= 32, W > 1");
  if (Flagged) host_requires(a.nodes == 1 && a.combineFlagged, "ep_combine_reduce_flagged: one host, combineFlagged");
  // (58: the kernel's parameters that the first loads need, in from the constant bank; nothing else)
  if (threadIdx.x == 0 && (a.state ^ a.peerBases ^ (uint64_t)a.rank ^ a.localBase) != 1u)
    EP_DIAG_AT(58, EP_STAMP_REDUCE_END);
#if EP_DIAG == 56 || EP_DIAG == 57  // (a trip to another allocation first: whether the first trip or the state is slow)
  if (threadIdx.x == 0) {
    const uint64_t base = *(const volatile uint64_t*)((const uint64_t*)a.peerBases + a.rank);
    if (base != 1u) EP_DIAG_AT(56, EP_STAMP_REDUCE_END);
  }
#endif
  // the error word and the call count in one round trip, by thread 0 alone, shared through shared memory: at
  // T = 128 (512 blocks) the latest block had them 2.9 us into the kernel when every thread loaded them, 0.7 when
  // one thread a block does (bench/NOTES.md v36)
  uint32_t code;
  uint64_t call;
  block_state(st, sState, code, call);
  const uint64_t slot = call & 1u;
  if (code != 0) {
    if (Flagged) wait_for_prior();
    return;
  }
  if (threadIdx.x == 0) EP_DIAG_AT(51, EP_STAMP_REDUCE_END);  // (its error word and call in)
  if (threadIdx.x == 0) EP_DIAG_AT(57, EP_STAMP_REDUCE_END);  // (as 51, after 56's trip)
  if (threadIdx.x == 0) EP_DIAG_AT(59, EP_STAMP_REDUCE_END);  // (as 51, the state's line loaded before the wait)
  bool failed = false;  // flagged: a wait gave up (reported): the rest of this thread's rows are not awaited
  const uint32_t flag = Flagged ? flag_of(call) : 0u;
  const uint64_t recv = Flagged ? a.localBase + a.flaggedRecvOff + slot * a.flaggedRecvSlot
                               : a.localBase + a.combineRecvOff + slot * a.combineRecvSlot;
  char* y = (char*)a.y;
  // A row of my own expert is still in expertOut, at the row routing gave its pair in my expertX; every
  // other row came back from its owner (ep_combine_send) to my send order.
  auto rowOf = [&](int e, int dest, int back) -> uint64_t {
    return e / EPR == a.rank ? (uint64_t)a.expertOut + (uint64_t)dest * a.combineRowBytes
                             : recv + (uint64_t)back * a.combineRowBytes;
  };
  if (Dedup || k <= 32) {
    // Each warp reads token t's slots itself (lane j = slot j, the loads in one round trip) and hands
    // row addresses and weights round with shuffles: no shared memory and no barrier.
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
      const int t = it / chunks, c = it % chunks;
      const int p = t * k + lane;
      int e = -1, dest = 0, back = 0;
      float w = 0.0f;
      if (lane < k) {
        e = __ldg(topk + p);
        if (!Dedup) {
          dest = __ldg(pairDest + p);
          back = a.world > 1 ? __ldg(pairRow + p) : 0;  // (one rank: unused, and ep_dispatch_local leaves it unwritten)
          w = __ldg(weights + p);
        }
      }
      uint64_t row = e >= 0 ? rowOf(e, dest, back) : 0;
      bool take = e >= 0;
      if (Dedup) {  // the partials of the token's carrier slots
        const int lead = carrier_lane(e >= 0 ? reduce_key(a, e / EPR) : -1 - lane, k);  // (every lane: it shuffles)
        take = take && lead == lane;
        row = recv + (uint64_t)p * (Flagged ? 2u : 1u) * a.combineRowBytes;
      }
      if (lane == 0 && e != -2) EP_DIAG_AT(52, EP_STAMP_REDUCE_END);  // (a warp's ids in)
      const int owner = Flagged && e >= 0 ? e / EPR : 0;  // flagged: whose abort a wait for this row watches
      const int v = c * B + tid;
      const bool active = v < V;
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
      bool started = false;  // dedup: the first partial is taken as it is
      // valid slots in slot order (the reduction order), 8 loads in flight; `left` is warp-uniform
      // (flagged: 4 rows in flight, each two loads)
      constexpr int U = Flagged ? 4 : 8;
      for (uint32_t left = __ballot_sync(FULL_MASK, take); left != 0;) {
        uint4 r[U], r2[U];
        float ws[U];
        uint64_t at[U];  // flagged: where row u's 32 bytes are, and whose they are
        int own[U];
        uint32_t has = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int j = left ? __ffs(left) - 1 : 0;
          const uint64_t rj = __shfl_sync(FULL_MASK, row, j);
          if (!Dedup) ws[u] = __shfl_sync(FULL_MASK, w, j);
          if (Flagged) {
            own[u] = __shfl_sync(FULL_MASK, owner, j);
            at[u] = rj + (uint64_t)v * 32u;
          }
          if (left) {
            has |= 1u << u;
            if (active && !Flagged) r[u] = ld_cg_v4((const char*)rj + (uint64_t)v * 16u);
            if (active && Flagged) {
              r[u] = ld_volatile_v4((const char*)at[u]);
              r2[u] = ld_volatile_v4((const char*)at[u] + 16);
            }
          }
          left &= left - 1;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (active && (has >> u & 1u)) {
            if (Flagged) {
              r[u] = flagged_ready(r[u], r2[u], flag) ? flagged_data(r[u], r2[u])
                                                       : poll_flagged(a, (const char*)at[u], own[u], call, failed);
            }
            float x[8];
            bf16x8_to_f32(r[u], x);
            if (!Dedup) {
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(ws[u], x[i]));
            } else {
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[i] = started ? __fadd_rn(acc[i], x[i]) : x[i];
              started = true;
            }
          }
        }
      }
      if (lane == 0 && acc[0] != 12345.0f) EP_DIAG_AT(53, EP_STAMP_REDUCE_END);  // (its partials in and summed)
      if (active) st_v4(y + ((uint64_t)t * V + v) * 16u, pack_bf16x8(acc));
      if (lane == 0) EP_DIAG_AT(54, EP_STAMP_REDUCE_END);  // (its stores issued)
    }
    if (tid == 0 && !EP_DIAG_IN(5)) stamp_latest(a, EP_STAMP_REDUCE_END);
    if (Flagged) {
      // Every owner's signal, as ep_combine_send waits for them without flags: an abort by a rank that sent
      // this one no partial still fails the call here. (An owner that signals unordered may still be storing
      // flagged rows: harmless, they carry this call's flag and the slot is next written two calls on.)
      // (not after a reported error: a timeout's wait again would only double the delay)
      if (blockIdx.x == 0 && read_err_code(st) == 0) {
        const uint64_t* mine = combine_signals_here(a, slot);
        wait_for_sources(a, mine, -1, call, (uint32_t)slot, EP_ERR_PEER_ABORT_COMBINE, EP_ERR_TIMEOUT_COMBINE);
      }
      wait_for_prior();
    }
    return;
  }
  int buf = 0;
  for (int it = blockIdx.x; it < items; it += gridDim.x, buf ^= 1) {
    const int t = it / chunks, c = it % chunks;
    if (tid < 32) {
      // Warp 0 (k > 32): the valid slots of token t in slot order (the reduction order), compacted.
      int n = 0;
      for (int j0 = 0; j0 < k; j0 += 32) {
        const int j = j0 + tid, p = t * k + j;
        // the three loads together: one round trip to memory instead of two
        const int e = j < k ? __ldg(topk + p) : -1;
        const int dest = j < k ? __ldg(pairDest + p) : 0;
        const int back = j < k && a.world > 1 ? __ldg(pairRow + p) : 0;  // (one rank: unused, and ep_dispatch_local leaves it unwritten)
        const bool valid = e >= 0;
        const uint64_t row = valid ? rowOf(e, dest, back) : 0;
        const uint32_t bal = __ballot_sync(FULL_MASK, valid);
        if (valid) {
          const int pos = n + __popc(bal & lanemask_lt());
          sRow[buf][pos] = row;
          sW[buf][pos] = __ldg(weights + p);
        }
        n += __popc(bal);
      }
      if (tid == 0) sN[buf] = n;
    }
    __syncthreads();  // list ready; double buffering makes one barrier per item enough
    const int v = c * B + tid;
    if (v >= V) continue;
    const int n = sN[buf];
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    for (int j0 = 0; j0 < n; j0 += 8) {
      uint4 r[8];
#pragma unroll
      for (int u = 0; u < 8; ++u)
        if (j0 + u < n) r[u] = ld_cg_v4((const char*)sRow[buf][j0 + u] + (uint64_t)v * 16u);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (j0 + u < n) {
          const float w = sW[buf][j0 + u];
          float x[8];
          bf16x8_to_f32(r[u], x);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(w, x[i]));
        }
      }
    }
    st_v4(y + ((uint64_t)t * V + v) * 16u, pack_bf16x8(acc));
  }
  // (points 52-54 are the warp path's: here, k > 32, only 51 and 55-58 take the end stamp's place)
  constexpr bool diagHere = EP_DIAG_IN(5) && EP_DIAG != 52 && EP_DIAG != 53 && EP_DIAG != 54;
  if (tid == 0 && !diagHere) stamp_latest(a, EP_STAMP_REDUCE_END);
}
}  // namespace

extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_reduce(const __grid_constant__ EpArgs a) {
  combine_reduce<false, false>(a);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_reduce_dedup(const __grid_constant__ EpArgs a) {
  combine_reduce<true, false>(a);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_combine_reduce_flagged(const __grid_constant__ EpArgs a) {
  combine_reduce<true, true>(a);
}
