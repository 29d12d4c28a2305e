// Dispatch kernels: 2 ep_dispatch, 2b ep_dispatch_local, 2c ep_stage_send(_large), 2d ep_stage_pack, and
// 3 ep_recv_view (the source-major view).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

// =============================================================================================
// 2. ep_dispatch: quantise (FP8) or copy (bf16) each token row once and store it straight into its row
// of expertX (and expertScales) in the heap of every rank that owns one of its experts. With W > 1 the
// last block signals every peer and waits for every peer's rows.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_dispatch(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  __shared__ int sLast;
  allow_dependents();  // a kernel launched after this one as a programmatic dependent waits for it itself
  // Nothing ep_route writes is read before D.go() (inside each path, after the first row's loads).
  PlannedDests D;
  dispatch_rows(a, L, D);
  // Every block waits for ep_route (go() here too: a block without rows has not asked yet), so that a
  // kernel launched as this one's programmatic dependent also finds ep_route's outputs. One rank: every
  // row is local, and the kernel boundary orders it before the next kernel.
  if (!D.go(a, 0) || a.world == 1) return;
  EpState* st = state_of(a);
  if (!finish_block(&st->doneBlocks[0], &sLast)) return;

  // Tail (one block): tell every peer my rows have landed, then wait for theirs.
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_TAIL);
  // (finish_block's atomic ordered every block's rows before these signals)
  const uint64_t call = read_calls(st);
  signal_and_wait_rows(a, call, call);
}

// =============================================================================================
// 2b. ep_dispatch_local: ep_route and ep_dispatch in one kernel, for one rank (W = 1) and small batches
// (T*k <= EP_LOCAL_MAX_PAIRS): each block routes its own tokens from all ids (InBlockDests, ep_inblock_dests.cuh) instead
// of waiting for a single routing block; the last block keeps the books. Same outputs as ep_route +
// ep_dispatch, bit for bit, for a call that succeeds.
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_dispatch_local(const __grid_constant__ EpArgs a) {
  __shared__ DestList L;
  __shared__ LocalTables S;
  allow_dependents();
  // host errors: one block would keep the books and store no rows; the tables hold EP_LOCAL_MAX_PAIRS
  host_requires(gridDim.x >= 2 && a.world == 1 && a.numTokens * a.topk <= EP_LOCAL_MAX_PAIRS,
                "ep_dispatch_local: grid >= 2, W = 1, T*k <= EP_LOCAL_MAX_PAIRS");
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  if (blockIdx.x == gridDim.x - 1) {
    local_bookkeeping(a, S);
    return;
  }
  InBlockDests<false> D(S);
  dispatch_rows(a, L, D);
}

// =============================================================================================
// 2c. ep_stage_send (the staged protocol, W > 1): each row block routes its own
// tokens and stores their rows (FP8-quantised or bf16) into the owners' stages, source-major; the last
// block keeps the books (validation, maxRowsPerPeer, the split records). The last block to finish signals
// every peer (call, or call | EP_ABORT_BIT when this rank's input was rejected) and waits for every peer.
// Every block takes the call count as dispatchCalls + 1 (nothing changes it before the end of this
// kernel), and the finishing block stores it.
// ep_stage_send_large, for batches whose ids do not fit in shared memory (T*k > EP_STAGE_SMEM_PAIRS), is the
// same protocol with the ids read fewer times (InBlockDests' Large): each row block takes consecutive tokens
// and reads every id once, 4 a load, and the bookkeeping block checks them a token at a time. Two kernels,
// so that the small batches' code (and its registers) stays as it is. With own_direct (dedup, one host), row
// block 0 of either publishes its counts to every peer, and the large one's row blocks wait for every peer's
// before their first row, then store this rank's own rows straight into expertX instead of its own stage.
template <bool Large>
__device__ __forceinline__ void stage_send(const EpArgs& a) {
  __shared__ DestList L;
  __shared__ LocalTables S;
  __shared__ int sLast;
  allow_dependents();
  // (the row blocks of a large batch skip load_ids, whose own check covers k and E)
  host_requires(gridDim.x >= 2 && a.world >= 2 && a.numTokens * a.topk <= EP_MAX_PAIRS &&
                    a.topk <= EP_MAX_TOPK && a.numExperts <= EP_MAX_EXPERTS &&
                    (a.numTokens == 0 || a.stageRows >= 1) && (!a.dedup || a.topk <= 32) &&
                    (Large || !own_direct(a)),
                "ep_stage_send(_large): grid >= 2, W > 1, T*k <= EP_MAX_PAIRS, k <= EP_MAX_TOPK, E <= EP_MAX_EXPERTS, a stage, "
                "k <= 32 with dedup, ep_stage_send_large where the pack skips the own rows (own_direct)");
  if (blockIdx.x == 0 && threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_BEGIN);
  EpState* st = state_of(a);
  if (blockIdx.x == gridDim.x - 1) {
    stage_bookkeeping<Large>(a, S, read_calls(st) + 1);
    if (threadIdx.x == 0) EP_DIAG_AT(32, EP_STAMP_DISPATCH_TAIL);  // (the books are stored)
  } else {
    InBlockDests<true, Large> D(S);  // reads the call count with the ids, after the rows' first loads
    dispatch_rows(a, L, D);
    if ((threadIdx.x & 31) == 0) EP_DIAG_AT(31, EP_STAMP_DISPATCH_TAIL);  // (a warp's last row store is issued)
    // own_direct: a peer's large batch waits for this rank's counts (ep_stage_send_large's block 0 published them
    // in go(), before its rows)
    if (!Large && blockIdx.x == 0 && D.state == 1 && own_direct_group(a)) publish_counts(a, S, D.call);
  }
  if (!finish_block(&st->doneBlocks[0], &sLast)) return;

  // Tail (one block): every block's rows and the split records are fenced (finish_block).
  const uint64_t call = read_calls(st) + 1;  // (unchanged until the store below)
  uint32_t late = 0u;
  if (threadIdx.x == 0) {
    st->dispatchCalls = call;
    if (!EP_DIAG_IN(3)) stamp(a, EP_STAMP_DISPATCH_TAIL);
    // own_direct: a row block gave up waiting for a peer's counts (a timeout), so its own rows are not in expertX:
    // the call fails here (after the bookkeeping block's clear of the error), and the wait below is skipped, so
    // that the error comes after one timeout, not two (the group is broken after a timeout anyway)
    // (a row block's note is ordered before this read by finish_block's acq_rel count)
    late = Large ? *(volatile uint32_t*)&st->ownLate : 0u;
    if (late != 0) {
      report_error(a, EP_ERR_TIMEOUT_DISPATCH, late - 1u, (uint32_t)(call & 1u), call, 0, 0, 0u);
      st->ownLate = 0u;
    }
  }
  // (also orders the report before the error's read below; ep_stage_send reports nothing here, and no other
  // thread reads what thread 0 stored above, so it takes no barrier)
  const bool skipWait = Large && __syncthreads_or(late != 0);
  if (a.dedup)  // ep_stage_pack counts this call's carriers per source
    for (int s = threadIdx.x; s < a.world; s += blockDim.x) plan_counts(a)[s] = 0u;
  // this rank's own input failed the call (not a peer's abort, seen only in the wait below): between
  // hosts, ep_rail_plan puts it in this rank's messages
  const bool own = read_err_code(st) != 0;
  if (threadIdx.x == 0) st->ownAbort = own ? 1u : 0u;
  // Wait even when this rank's call is off: when this returns, no peer writes into this slot any more.
  // (skipWait: the group is broken after a timeout; a late peer's writes into this slot then no longer matter)
  signal_and_wait_rows(a, call, own ? (call | EP_ABORT_BIT) : call, !skipWait);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_send(const __grid_constant__ EpArgs a) {
  stage_send<false>(a);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_send_large(const __grid_constant__ EpArgs a) {
  stage_send<true>(a);
}

// =============================================================================================
// 2d. ep_stage_pack (after ep_stage_send): the staged rows of every source into expert-major expertX (for
// each local expert, sources in rank order, each source's rows in its order) with their scales; expertCounts
// and recvSplits (for ep_combine_send and ep_recv_view); and, for the rows this rank staged for itself,
// pairDest (the expertX row ep_combine_reduce reads in place; with dedup instead each row is copied from its
// carrier and the carriers are listed for ep_combine_send). An expert over maxRowsPerExpert fails the
// call here, as ep_route does: nothing is copied, and every peer learns at once that this rank will not
// combine. One warp per (row, 2 KiB segment), as ep_recv_view.
// ep_stage_pack_own, after ep_stage_send_large with dedup on one host (own_direct): the same, but this rank's
// own rows are in expertX already (ep_stage_send_large stored them), so only their plans are written. Two
// kernels, so that the small batches' pack keeps its registers (95 against 102).
template <bool OwnDirect>
__device__ __forceinline__ void stage_pack(const EpArgs& a) {
  __shared__ RecvTables R;
  __shared__ int sOver;
  wait_for_prior();  // the send kernel, whose last block waited for every peer's rows
  allow_dependents();
  EpState* st = state_of(a);
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank, me = a.rank, tid = threadIdx.x;
  if (blockIdx.x == 0 && tid == 0) stamp(a, EP_STAMP_PACK_BEGIN);  // (at entry: the pack's own loads count)
  // the error word, the call count and both slots' split records in one round trip (the slot is the
  // call's parity: the records of the other slot are loaded and dropped)
  uint32_t code;
  uint64_t call;
  const uint64_t own = a.localBase;
  build_stage_tables(a, R, (const int*)(own + a.stageSplitsOff), st, code, call);
  if (code != 0) return;  // the call is off here (an abort, a timeout, or this rank's input)
  const uint64_t slot = call & 1u;
  if (tid == 0) sOver = INT_MAX;
  __syncthreads();
  for (int le = tid; le < EPR; le += blockDim.x)
    if (R.preT[(le + 1) * W] - R.preT[le * W] > a.expertCapacity) atomicMin(&sOver, le);
  __syncthreads();
  if (sOver != INT_MAX) {
    if (blockIdx.x == 0 && tid == 0) {
      const int le = sOver;
      report_error(a, EP_ERR_CAPACITY, (uint32_t)me, (uint32_t)slot, call, me * EPR + le,
                   R.preT[(le + 1) * W] - R.preT[le * W], EP_CAPACITY_AUX_EXPERT);
      for (int d = 0; d < W; ++d)
        if (d != me) signal(combine_signal_of(a, d, slot), call | EP_ABORT_BIT);
    }
    return;
  }
  if (blockIdx.x == 0) {
    int* splits = (int*)a.recvSplits;
    for (int le = tid; le < EPR; le += blockDim.x) {
      ((int*)a.expertCounts)[le] = R.preT[(le + 1) * W] - R.preT[le * W];
      ((int*)a.expertOffsets)[le] = (int)expert_start(a, le, R.preT[le * W]);
    }
    for (int q = tid; q < E; q += blockDim.x) {
      const int s = q / EPR;
      splits[s * a.splitsPerPeer + (q - s * EPR)] = R.pre[q + 1] - R.pre[q];
    }
    for (int s = tid; s < W; s += blockDim.x) splits[s * a.splitsPerPeer + EPR] = R.mst[s];
  }
  if (tid == 0) EP_DIAG_AT(21, EP_STAMP_PACK_END);  // (the tables are built)
  const int lane = tid & 31, warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.dispatchRowBytes;
  const uint64_t VB = rowBytes % 16u == 0 ? 16u : 8u;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  // per row: its segments, then one more item for its scales and (own rows) its pairDest. own_direct: the
  // send stored this rank's own rows and scales in expertX already, so they take only the last item (the plan).
  const bool skipOwn = OwnDirect && own_direct(a);  // (EP_OWN_DIRECT=0 builds: never)
  const int ownLo = R.pre[me * EPR], ownN = skipOwn ? R.pre[(me + 1) * EPR] - ownLo : 0;
  const uint32_t fullItems = (uint32_t)(R.pre[E] - ownN) * (uint32_t)(segs + 1);
  const uint32_t items = fullItems + (uint32_t)ownN;
  const char* inX = (const char*)(own + a.stageDataOff + slot * a.stageDataSlot);
  const char* inS = (const char*)(own + a.stageScalesOff + slot * a.stageScalesSlot);
  char* outX = (char*)(own + a.expertXOff);
  char* outS = (char*)(own + a.expertScalesOff);
  const uint64_t gpr = a.fp8 ? (uint64_t)a.groupsPerRow : 0u;
  const char* carrierOf = (const char*)(own + a.stageCarrierOff + slot * a.stageCarrierSlot);
  // One item: segment `seg` of row iSrc of source s (its data at row `carrier` of s), or with seg == segs its
  // scales, its plan (dedup: a carrier row) and its pairDest (own rows without dedup). Warp-uniform arguments.
  const auto packItem = [&](int s, int iSrc, int seg, uint32_t carrier, uint64_t dstRow) {
    const uint64_t row = (uint64_t)s * a.stageRows + iSrc, srcRow = (uint64_t)s * a.stageRows + carrier;
    if (seg < segs) {
      if (VB == 16) copy_segment<16, true>(outX + dstRow * rowBytes, inX + srcRow * rowBytes, rowBytes, seg, lane);
      else copy_segment<8, true>(outX + dstRow * rowBytes, inX + srcRow * rowBytes, rowBytes, seg, lane);
      return;
    }
    int self = -1;
    if (s == me && lane == 0 && !a.dedup) self = ((const int*)a.selfPairs)[iSrc];  // loaded with the scales
    const uint64_t scales = s == me && skipOwn ? 0u : gpr;  // (own_direct: the send stored them)
    // two loads in flight per lane; the first 64 scales' loads go out before the plan's record loads, so that
    // the two share a round trip
    for (uint64_t i0 = 0; i0 < scales || i0 == 0; i0 += 64) {
      const uint64_t i = i0 + lane, i2 = i + 32;
      const uint32_t v0 = i < scales ? ld_cg_u32(inS + (srcRow * gpr + i) * 4u) : 0u;
      const uint32_t v1 = i2 < scales ? ld_cg_u32(inS + (srcRow * gpr + i2) * 4u) : 0u;
      if (i0 == 0 && a.dedup && srcRow == row) write_plan(a, R, own, s, row, slot);
      if (i < scales) st_u32(outS + (dstRow * gpr + i) * 4u, v0);
      if (i2 < scales) st_u32(outS + (dstRow * gpr + i2) * 4u, v1);
    }
    if (self >= 0) ((int*)a.pairDest)[self] = (int)dstRow;
  };
  // Item `it`'s row and its carrier (dedup: the row's data sits at its carrier row, the token's first row
  // for this rank), as packItem takes them.
  struct Found {
    RowLoc l;
    int seg;
    uint32_t carrier;
  };
  const auto find = [&](uint32_t it) {
    Found f;
    if (it < fullItems) {  // (own_direct: past this rank's own rows, whose items come last)
      const int g = (int)(it / (uint32_t)(segs + 1));
      f.l = locate(R, a, g < ownLo ? g : g + ownN);
      f.seg = (int)(it % (uint32_t)(segs + 1));
    } else {
      f.l = locate(R, a, ownLo + (int)(it - fullItems));
      f.seg = segs;
    }
    f.carrier = a.dedup ? ld_cg_u32(carrierOf + ((uint64_t)f.l.s * a.stageRows + f.l.iSrc) * 4u) : (uint32_t)f.l.iSrc;
    return f;
  };
  const uint32_t warpsTotal = gridDim.x * (uint32_t)warpsPerBlock, w0 = blockIdx.x * warpsPerBlock + (tid >> 5);
  if (items <= warpsTotal) {  // (small batches) one item a warp at most: every lane finds it
    if (w0 < items) {
      const Found f = find(w0);
      if (lane == 0 && f.carrier != 0xffffffffu) EP_DIAG_AT(22, EP_STAMP_PACK_END);  // (the item's carrier is in)
      packItem(f.l.s, f.l.iSrc, f.seg, f.carrier, f.l.row);
      if (lane == 0) EP_DIAG_AT(23, EP_STAMP_PACK_END);  // (its stores are issued)
    }
  } else {
    // A warp's items are it0, it0 + warpsTotal, ...: lane j finds the j-th of its next 32, so that one round
    // trip serves them all instead of one before each item's copy.
    for (uint32_t it0 = w0; it0 < items; it0 += 32u * warpsTotal) {
      const uint32_t n = min(32u, (items - it0 + warpsTotal - 1) / warpsTotal);
      const Found f = find(it0 + ((uint32_t)lane < n ? (uint32_t)lane : 0u) * warpsTotal);
      for (uint32_t j = 0; j < n; ++j) {
        packItem(__shfl_sync(FULL_MASK, f.l.s, j), __shfl_sync(FULL_MASK, f.l.iSrc, j), __shfl_sync(FULL_MASK, f.seg, j),
                 __shfl_sync(FULL_MASK, f.carrier, j), __shfl_sync(FULL_MASK, f.l.row, j));
      }
    }
  }
  if (a.stamps == 0) return;  // (the barrier below serves the stamp only)
  __syncthreads();
  if (tid == 0 && !EP_DIAG_IN(2)) stamp_latest(a, EP_STAMP_PACK_END);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_pack(const __grid_constant__ EpArgs a) {
  host_requires(!own_direct(a), "ep_stage_pack: not where ep_stage_send_large stored the own rows (ep_stage_pack_own)");
  stage_pack<false>(a);
}
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_stage_pack_own(const __grid_constant__ EpArgs a) {
  stage_pack<true>(a);
}

// =============================================================================================
// 3. ep_recv_view (only when the caller asks for it): the source-major view of what this rank
// received, rebuilt from expertX: viewX[s][i] = row i of the rows s sent me (in s's order, which is
// expert-sorted), viewScales likewise. One warp per (row, 2 KiB segment).
extern "C" __global__ void __launch_bounds__(EP_MAX_THREADS) ep_recv_view(const __grid_constant__ EpArgs a) {
  __shared__ RecvTables R;
  wait_for_prior();  // launched as a programmatic dependent of the dispatch
  EpState* st = state_of(a);
  if (read_err_code(st) != 0) return;  // this rank's dispatch failed: nothing to show
  build_tables(a, R);
  const int E = a.numExperts;
  const int lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.dispatchRowBytes;
  const uint64_t VB = rowBytes % 16u == 0 ? 16u : 8u;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  const uint32_t items = (uint32_t)R.pre[E] * (uint32_t)segs;
  const uint64_t own = ((const uint64_t*)a.peerBases)[a.rank];
  const char* inX = (const char*)(own + a.expertXOff);
  const char* inS = (const char*)(own + a.expertScalesOff);
  const uint64_t gpr = a.fp8 ? (uint64_t)a.groupsPerRow : 0u;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it < items;
       it += gridDim.x * warpsPerBlock) {
    const int g = (int)(it / (uint32_t)segs), seg = (int)(it % (uint32_t)segs);
    const RowLoc l = locate(R, a, g);
    const uint64_t srcRow = l.row;
    const uint64_t dstRow = (uint64_t)l.s * a.maxRowsPerPeer + l.iSrc;
    char* dst = (char*)a.viewX + dstRow * rowBytes;
    if (VB == 16) copy_segment<16, true>(dst, inX + srcRow * rowBytes, rowBytes, seg, lane);
    else copy_segment<8, true>(dst, inX + srcRow * rowBytes, rowBytes, seg, lane);
    if (seg == 0 && gpr != 0) {
      for (uint64_t i = lane; i < gpr; i += 32)
        st_u32((char*)a.viewScales + (dstRow * gpr + i) * 4u, ld_cg_u32(inS + (srcRow * gpr + i) * 4u));
    }
  }
}
