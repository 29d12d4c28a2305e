// Receive-side tables (RecvTables, build_tables, locate), copy_segment, and combine's send helpers:
// combine_send_rows, the carrier plans (plan_at, write_plan) and combine_send_partials.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Receive-side tables (ep_recv_view, ep_combine_send), built by every block from recvSplits (the split
// records ep_route derived from every rank's counts):
//   pre[q]  (q = s*EPR + le): exclusive prefix of counts in source-major order; pre[E] = rows received.
//           Rows from s are the flat range [pre[s*EPR], pre[(s+1)*EPR]), expert-sorted.
//   preT[le*W + s]: exclusive prefix in expert-major order; the expert-major position of row i of
//           (s, le) is preT[le*W + s] - preT[le*W] + i, and expertCounts[le] = preT[(le+1)*W] - preT[le*W].
//   mst[s]: m_st of s (where its rows for me start in its own send order), computed by ep_route.
struct RecvTables {
  int pre[EP_MAX_EXPERTS + 1];
  int preT[EP_MAX_EXPERTS + 1];
  int mst[EP_MAX_EXPERTS];
  int scratch[66];  // (block_exclusive_scan2's)
  int flag;
  BlockState state;  // ep_stage_pack, ep_combine_send: the error word and call count, thread 0's
};

// From split records [W][splitsPerPeer] at `splits`: written by an earlier kernel of this rank on the
// stream (recvSplits: plain loads), or by peers before the signals this rank acquired (the stage: `peerWritten`,
// read at L2).
__device__ void build_tables_from(const EpArgs& a, RecvTables& R, const int* splits, bool peerWritten) {
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  auto load = [&](int i) { return peerWritten ? (int)ld_cg_u32(splits + i) : splits[i]; };
  for (int q = threadIdx.x; q < E; q += blockDim.x) {
    const int s = q / EPR, le = q - s * EPR;
    const int c = load(s * a.splitsPerPeer + le);
    R.pre[q] = c;
    R.preT[le * W + s] = c;
  }
  for (int s = threadIdx.x; s < W; s += blockDim.x) R.mst[s] = load(s * a.splitsPerPeer + EPR);
  block_exclusive_scan2(R.pre, R.preT, E, R.scratch);
}

// build_tables_from for the stage's split records of this call (ep_stage_pack), with the call's error word
// and count (`code` and `call`: thread 0 loads them, block_state's way, and the barrier that shares them follows
// the records' loads): both slots' records ([2][W][splitsPerPeer] from `splits`) are loaded with the call count,
// before its parity picks one, so the records cost no round trip of their own. Every thread calls it; needs E
// and W <= 4 * blockDim. Returns early (every thread) when code is not 0.
__device__ void build_stage_tables(const EpArgs& a, RecvTables& R, const int* splits, const EpState* st,
                                   uint32_t& code, uint64_t& call) {
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank, B = blockDim.x, tid = threadIdx.x;
  host_requires(E <= 4 * B, "build_stage_tables: E <= 4 * blockDim");
  const int* other = (const int*)((const char*)splits + a.stageSplitsSlot);
#ifdef EP_SERIAL_FIRST_LOADS  // (bench A/B only: the records loaded after the call count, as before v11)
  block_state(st, R.state, code, call);
  if (call & 1u) splits = other;
  other = splits;
#else
  load_block_state(st, R.state);
#endif
  int v0[4], v1[4], m0[4], m1[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int q = tid + u * B, s = q / EPR;
    const int at = s * a.splitsPerPeer + (q - s * EPR), atM = q * a.splitsPerPeer + EPR;
    v0[u] = q < E ? (int)ld_cg_u32(splits + at) : 0;
    v1[u] = q < E ? (int)ld_cg_u32(other + at) : 0;
    m0[u] = q < W ? (int)ld_cg_u32(splits + atM) : 0;
    m1[u] = q < W ? (int)ld_cg_u32(other + atM) : 0;
  }
#ifndef EP_SERIAL_FIRST_LOADS
  __syncthreads();  // thread 0's error word and call count
  code = R.state.code;
  call = R.state.call;
#endif
  if (code != 0) return;  // (uniform: the caller returns too)
  const bool odd = (call & 1u) != 0;  // (first use of the call count: its load went out before the records')
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int q = tid + u * B;
    if (q < E) {
      const int s = q / EPR, le = q - s * EPR, c = odd ? v1[u] : v0[u];
      R.pre[q] = c;
      R.preT[le * W + s] = c;
    }
    if (q < W) R.mst[q] = odd ? m1[u] : m0[u];
  }
  if (tid == 0 && (v0[0] ^ v1[0]) != 0x7fffffff) EP_DIAG_AT(24, EP_STAMP_PACK_END);  // (the records in)
  block_exclusive_scan2(R.pre, R.preT, E, R.scratch);
  if (tid == 0) EP_DIAG_AT(25, EP_STAMP_PACK_END);  // (the two scans done)
}

// From recvSplits, written by this call's ep_route or ep_stage_pack (an earlier kernel on the stream).
__device__ void build_tables(const EpArgs& a, RecvTables& R) {
  build_tables_from(a, R, (const int*)a.recvSplits, false);
}

// Row g of the flat received order -> (source s, local expert le, index within s's rows, its row in expertX).
struct RowLoc {
  int s, le, iSrc;
  uint64_t row;
};
__device__ __forceinline__ RowLoc locate(const RecvTables& R, const EpArgs& a, int g) {
  const int E = a.numExperts, W = a.world, EPR = a.expertsPerRank;
  const int lo = find_run(R.pre, E, g);
  RowLoc r;
  r.s = lo / EPR;
  r.le = lo - r.s * EPR;
  r.iSrc = g - R.pre[r.s * EPR];
  r.row = expert_start(a, r.le, R.preT[r.le * W]) + (R.preT[r.le * W + r.s] - R.preT[r.le * W]) + (g - R.pre[lo]);
  return r;
}

// One warp copies segment `seg` (32 lanes x SEG_VECS vectors) of a row; all loads before all stores.
constexpr int SEG_VECS = 4;
template <int VB, bool Coherent>
__device__ __forceinline__ void copy_segment(char* dst, const char* src, uint64_t rowBytes, int seg, int lane) {
  using V = Vec<VB>;
  typename V::T v[SEG_VECS];
  const uint64_t base = (uint64_t)seg * 32u * SEG_VECS * VB;
#pragma unroll
  for (int u = 0; u < SEG_VECS; ++u) {
    const uint64_t off = base + (uint64_t)(u * 32 + lane) * VB;
    if (off < rowBytes) v[u] = Coherent ? V::ld_cg(src + off) : V::ld_nc(src + off);
  }
#pragma unroll
  for (int u = 0; u < SEG_VECS; ++u) {
    const uint64_t off = base + (uint64_t)(u * 32 + lane) * VB;
    if (off < rowBytes) V::st(dst + off, v[u]);
  }
}

template <int VB>
__device__ void combine_send_rows(const EpArgs& a, uint64_t slot, const RecvTables& R) {
  const int E = a.numExperts, EPR = a.expertsPerRank;
  const int lane = threadIdx.x & 31;
  const int warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.combineRowBytes;
  const int segs = (int)((rowBytes + 32u * SEG_VECS * VB - 1) / (32u * SEG_VECS * VB));
  // Rows that came from this rank itself are not copied: ep_combine_reduce reads them straight from
  // expertOut (same values, so the same result), which saves a round trip through HBM.
  const int selfLo = R.pre[a.rank * EPR], selfRows = R.pre[(a.rank + 1) * EPR] - selfLo;
  const int rows = R.pre[E] - selfRows;
  // 32-bit: items <= rows received * segments, far below 2^31 for any heap that fits a GPU.
  const uint32_t items = (uint32_t)rows * (uint32_t)segs;
  const char* expertOut = (const char*)a.expertOut;
  for (uint32_t it = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it < items;
       it += gridDim.x * warpsPerBlock) {
    // from source rank + 1 on (the rows after this rank's own), so the ranks write to different peers at once
    int g = (int)(it / (uint32_t)segs) + selfLo;
    if (g >= rows) g -= rows;
    const int seg = (int)(it % (uint32_t)segs);
    if (g >= selfLo) g += selfRows;
    const RowLoc l = locate(R, a, g);
    const uint64_t srcRow = l.row;
    const uint64_t dstRow = (uint64_t)R.mst[l.s] + l.iSrc;  // the row in s's own expert-sorted order
    char* dst = combine_rows_of(a, l.s, slot);
    copy_segment<VB, false>(dst + dstRow * rowBytes, expertOut + srcRow * rowBytes, rowBytes, seg, lane);
  }
}

// carrierPlans (dedup): u32 counts[W] (padded to 16 bytes; ep_stage_send's tail zeroes them, ep_stage_pack
// counts), then [W][stageRows] plans of recordBytes: source s's carriers in region s, in any order.
// A plan takes 4 * (2 + 2k) bytes, at most recordBytes = alignUp(4 * (1 + 2k), 16): plans use that stride.
__device__ __forceinline__ uint32_t* plan_counts(const EpArgs& a) { return (uint32_t*)a.carrierPlans; }
__device__ __forceinline__ char* plan_at(const EpArgs& a, int s, uint32_t i) {
  const uint64_t head = ((uint64_t)a.world * 4u + 15u) & ~(uint64_t)15u;
  return (char*)a.carrierPlans + head + ((uint64_t)s * a.stageRows + i) * (uint64_t)a.recordBytes;
}

// dedup, ep_stage_pack (one warp, every lane): carrier row `row` of source s (in this call's stage slot)
// gets the next plan of s for ep_combine_send: s, the origin's row, then per slot the expertOut row of the
// token's row for this rank (its expertX row: locate() through this call's tables), or -1, and the weight.
__device__ void write_plan(const EpArgs& a, const RecvTables& R, uint64_t own, int s, uint64_t row, uint64_t slot) {
  const int lane = threadIdx.x & 31, K = a.topk, EPR = a.expertsPerRank;
  const char* rec = (const char*)(own + a.stageRecordsOff + slot * a.stageRecordsSlot) + row * (uint64_t)a.recordBytes;
  // the sender's record (read at L2), loaded before the plan's slot is taken: the two round trips overlap
  uint32_t ci = 0;
#ifdef EP_SERIAL_FIRST_LOADS  // (bench A/B only: the slot first, as before v11)
  if (lane == 0) ci = atomicAdd(plan_counts(a) + s, 1u);
  ci = __shfl_sync(FULL_MASK, ci, 0);
#endif
  const int r = lane < K ? (int)ld_cg_u32(rec + 4u + 4u * lane) : -1;  // (k <= 32 with dedup)
  const uint32_t w = lane < K ? ld_cg_u32(rec + 4u + 4u * (K + lane)) : 0u;
  const int back = lane == 0 ? (int)ld_cg_u32(rec) : 0;
#ifndef EP_SERIAL_FIRST_LOADS
  if (lane == 0) ci = atomicAdd(plan_counts(a) + s, 1u);
  ci = __shfl_sync(FULL_MASK, ci, 0);
#endif
  char* plan = plan_at(a, s, ci);
  if (lane < K) {
    int x = -1;
    if (r >= 0) {
      x = (int)locate(R, a, R.pre[s * EPR] + r).row;
    }
    ((int*)(plan + 8u))[lane] = x;
    ((uint32_t*)(plan + 8u))[K + lane] = w;
  }
  if (lane == 0) {
    ((int*)plan)[0] = s;
    ((int*)plan)[1] = back;
  }
}

// dedup: for each carrier plan the pack wrote, the token's outputs from this rank's experts, weighted and
// summed in f32 in slot order (the plan's rows and weights), rounded to bf16 once and stored into the
// source's combine buffer at the origin's row (t*k + carrier slot); a token from this rank itself included
// (stored locally). One warp per (carrier, 2 KiB segment of the output row); the plan names expertOut rows
// directly, so a warp's loads wait on one load of the plan, and up to four rows' loads are in flight.
// Sources are taken from this rank + 1 on (this rank last), so that the ranks write to different peers at
// any moment instead of all to source 0 first.
// The i-th source ep_combine_send takes: rank + 1 on (EP_SEND_FIRST, ep_limits.cuh: 0 in a diagnostic build that
// takes this rank's own carriers first).
__device__ __forceinline__ int send_source(const EpArgs& a, int i) { return (a.rank + EP_SEND_FIRST + i) % a.world; }

// The pack's carrier count of source send_source(a, i) for i = threadIdx.x + u * blockDim.x (0 past W), and
// (one host) the origin word of its first plan, whose top bit says whether it wants its partials flagged (a
// source's plans all carry its choice): loaded by ep_combine_send with its first loads, the word whatever the
// count (it means something only where the count is not 0), so that the two share a round trip.
// Needs W <= 4 * blockDim.
__device__ __forceinline__ void load_plan_counts(const EpArgs& a, uint32_t (&counts)[4], uint32_t (&backs)[4]) {
  host_requires(a.world <= 4 * (int)blockDim.x, "load_plan_counts: W <= 4 * blockDim");
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int i = threadIdx.x + u * blockDim.x, s = send_source(a, i);
    counts[u] = i < a.world ? plan_counts(a)[s] : 0u;
    const bool word = i < a.world && a.nodes == 1 && a.stageRows > 0;
    backs[u] = word ? ld_cg_u32(plan_at(a, s, 0) + 4) : EP_FLAGGED_BACK_BIT;
  }
}

// ep_combine_send, every thread of the block, before the barrier that publishes R.pre: where the carriers of
// source send_source(a, i) start in the order this rank sends them (R.pre[i], R.pre[W] their total: W <= 32,
// warp 0 alone, without a barrier; else a block scan), and whether this thread sees a source that gets
// partials unflagged (flagged partials, ep_flagged.cuh; `counts` and `backs` as load_plan_counts gives
// them). When no thread of the block does, nothing this rank stored needs a fence before its signals.
__device__ __forceinline__ bool plan_starts(const EpArgs& a, RecvTables& R, const uint32_t (&counts)[4],
                                            const uint32_t (&backs)[4]) {
  const int W = a.world;
  if (W <= 32) {  // thread i holds source i's count (a block scan would take three barriers)
    if (threadIdx.x < 32) {
      const int c = (int)threadIdx.x < W ? (int)counts[0] : 0;
      int inc[1] = {c};
      warp_inclusive_scan(inc);
      if ((int)threadIdx.x < W) R.pre[threadIdx.x] = inc[0] - c;
      if (threadIdx.x == 31) R.pre[W] = inc[0];
    }
  } else {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = threadIdx.x + u * blockDim.x;
      if (i < W) R.pre[i] = (int)counts[u];
    }
    block_exclusive_scan(R.pre, W, R.scratch);
  }
  bool unflagged = false;
#pragma unroll
  for (int u = 0; u < 4; ++u) unflagged |= counts[u] > 0 && (backs[u] & EP_FLAGGED_BACK_BIT) == 0;
  return unflagged;
}

// A source that asked for flagged partials (the record's top bit) gets them so, in its flaggedRecv: twice the
// bytes, each 8 flagged with the call (ep_flagged.cuh).
// A warp's share of a partial row (vectors per lane), and the rows whose loads it keeps in flight.
#ifndef EP_PART_VECS
#define EP_PART_VECS 4
#endif
#ifndef EP_PART_ROWS
#define EP_PART_ROWS 4
#endif
constexpr int PART_VECS = EP_PART_VECS, PART_ROWS = EP_PART_ROWS;
// Every thread of the block calls it, with R.pre as plan_starts left it, published (the caller's barrier).
__device__ void combine_send_partials(const EpArgs& a, uint64_t call, const RecvTables& R) {
  const int K = a.topk, W = a.world;
  const uint64_t slot = call & 1u;
  const int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) EP_DIAG_AT(11, EP_STAMP_COMBINE_TAIL);  // (the counts and the call: the block may start)
  const uint32_t carriers = (uint32_t)R.pre[W];
  const int warpsPerBlock = blockDim.x >> 5;
  const uint64_t rowBytes = a.combineRowBytes;
  constexpr uint64_t SEG = 32u * PART_VECS * 16u;
  const int segs = (int)((rowBytes + SEG - 1) / SEG);
  const uint32_t items = carriers * (uint32_t)segs;
  const char* expertOut = (const char*)a.expertOut;
  // (diagnostic points 17 and 18: every item twice, the second pass after a block barrier, with L2 and the address
  // translations warm)
  constexpr int passes = EP_DIAG == 17 || EP_DIAG == 18 ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass) {
    if (pass == 1) {
      __syncthreads();
      if (threadIdx.x == 0) EP_DIAG_AT(18, EP_STAMP_COMBINE_TAIL);  // (the second pass starts)
    }
    for (uint32_t it0 = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); it0 < items;
         it0 += gridDim.x * warpsPerBlock) {
      // (the second pass takes the item half the items away, another block's, so that its plan is not in this SM's L1)
      const uint32_t it = pass == 1 ? (it0 + items / 2u) % items : it0;
      const int ci = (int)(it / (uint32_t)segs), seg = (int)(it % (uint32_t)segs);
      const int lo = find_run(R.pre, W, ci);
      const char* plan = plan_at(a, send_source(a, lo), (uint32_t)(ci - R.pre[lo]));
      if (lane == 0 && it >= items / 2u) EP_DIAG_AT_FENCED(19, EP_STAMP_COMBINE_TAIL);  // (its plan's loads next)
      // lane j: slot j's expertOut row (or -1) and its weight; lane 0 also the source, lane 1 the origin's row
      int rj = -1, head = 0;
      float wj = 0.0f;
      if (lane < K) {
        rj = __ldg((const int*)(plan + 8u + 4u * lane));
        wj = __ldg((const float*)(plan + 8u + 4u * (K + lane)));
      }
      if (lane < 2) head = __ldg((const int*)plan + lane);
      const int s = __shfl_sync(FULL_MASK, head, 0);
      const uint32_t backWord = (uint32_t)__shfl_sync(FULL_MASK, head, 1);
      const bool flagged = (backWord & EP_FLAGGED_BACK_BIT) != 0;
      const uint64_t back = backWord & ~EP_FLAGGED_BACK_BIT;
      if (lane == 0 && s >= 0) {  // (the plan is in; 15 and 16: of the first and second half of the items)
        EP_DIAG_AT(12, EP_STAMP_COMBINE_TAIL);
        if (it < items / 2u) EP_DIAG_AT(15, EP_STAMP_COMBINE_TAIL);
        else EP_DIAG_AT(16, EP_STAMP_COMBINE_TAIL);
        if (pass == 1) EP_DIAG_AT(17, EP_STAMP_COMBINE_TAIL);
      }
      // the origin's row in the source's heap (flagged rows take twice the bytes)
      auto dstOf = [&]() -> char* {
        return flagged ? flagged_rows_of(a, s, slot) + back * 2u * rowBytes
                       : combine_rows_of(a, s, slot) + back * rowBytes;
      };
#ifndef EP_SERIAL_FIRST_LOADS
      // the source's heap: its load overlaps the rows' instead of following the sum
      char* dst = dstOf();
#endif
      const uint64_t src = rj >= 0 ? (uint64_t)expertOut + (uint64_t)rj * rowBytes : 0u;
      const uint64_t base = (uint64_t)seg * SEG;
      float acc[PART_VECS][8];
#pragma unroll
      for (int u = 0; u < PART_VECS; ++u)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[u][i] = 0.0f;
      // the slots in order (the reduction order), four rows' loads in flight
      constexpr int ROWS = PART_ROWS;
      for (uint32_t left = __ballot_sync(FULL_MASK, rj >= 0); left != 0;) {
        uint4 v[ROWS][PART_VECS];
        float w[ROWS];
        uint32_t has = 0;
#pragma unroll
        for (int q = 0; q < ROWS; ++q) {
          const int j = left ? __ffs(left) - 1 : 0;
          const uint64_t p = __shfl_sync(FULL_MASK, src, j);
          w[q] = __shfl_sync(FULL_MASK, wj, j);
          if (left) {
            has |= 1u << q;
#pragma unroll
            for (int u = 0; u < PART_VECS; ++u) {
              const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
              if (off < rowBytes) v[q][u] = ld_nc_v4((const char*)p + off);
            }
          }
          left &= left - 1;
        }
#pragma unroll
        for (int q = 0; q < ROWS; ++q) {
          if (!(has >> q & 1u)) continue;
#pragma unroll
          for (int u = 0; u < PART_VECS; ++u) {
            const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
            if (off >= rowBytes) continue;
            float x[8];
            bf16x8_to_f32(v[q][u], x);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[u][i] = __fadd_rn(acc[u][i], __fmul_rn(w[q], x[i]));
          }
        }
      }
#ifdef EP_SERIAL_FIRST_LOADS  // (bench A/B only: as before v11)
      char* dst = dstOf();
#endif
      if (lane == 0 && acc[0][0] != 12345.0f) EP_DIAG_AT(13, EP_STAMP_COMBINE_TAIL);  // (the rows are in and summed)
#pragma unroll
      for (int u = 0; u < PART_VECS; ++u) {
        const uint64_t off = base + (uint64_t)(u * 32 + lane) * 16u;
        if (off >= rowBytes) continue;
        if (flagged) st_flagged(dst + 2u * off, pack_bf16x8(acc[u]), flag_of(call));
        else st_v4(dst + off, pack_bf16x8(acc[u]));
      }
      if (lane == 0) EP_DIAG_AT(14, EP_STAMP_COMBINE_TAIL);  // (the partial's stores are issued)
    }
  }
}

}  // namespace
