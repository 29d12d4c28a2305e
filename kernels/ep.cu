// moe-a2a kernels: routing with the count exchange, dispatch, the source-major view, combine (send + reduce), and a copy benchmark.
// The protocol is described below and in the README ("The protocol"); src/ep/*.ts is the bit-exact
// cpu reference every value here must equal (routing.ts, codec.ts, oracle.ts).
// Every kernel takes exactly one argument, `const __grid_constant__ EpArgs a` (kernels/ep_args.h),
// except ep_copy_bench (CopyArgs). Build: scripts/build-kernels.mjs (-O3 -fmad=false, sm_90/sm_90a).
//
// ============================== LAUNCH CONFIGURATION (the host follows this) ==============================
// src/shmem/cuda/launch-sizes.ts computes these sizes for the group (test/launch-sizes.test.ts holds it to
// them); bench/micro/kernel_probe.cu repeats them for its host-free timings.
// Notation: T = numTokens of the call, k = topk, E = numExperts, W = world, EPR = E / W, H = hidden,
// G = groupSize, SMs = multiprocessor count, roundup32(n) = n rounded up to a multiple of 32.
// All kernels run on one stream, in this order, with the same EpArgs bytes (numTokens and the tensor
// pointers of the call filled in; combine kernels need x/topkIdx/topkWeights/expertOut/y as relevant):
//   dispatch, one of three sequences, fixed per group (every rank of a group uses the same one):
//     direct:  ep_route -> ep_dispatch [-> ep_recv_view]           (counts all-gathered, rows stored in place)
//     staged:  ep_stage_send -> ep_stage_pack [-> ep_recv_view]    (W > 1; ep_stage_send_large in its place
//              when T*k > EP_STAGE_SMEM_PAIRS: the same protocol, each block reading the ids once; then, with
//              dedup on one host, ep_stage_pack_own in the pack's: own_direct)
//     local:   ep_dispatch_local [-> ep_recv_view]                 (W = 1 and T*k <= EP_LOCAL_MAX_PAIRS)
//   combine:  [ep_combine_send ->] ep_combine_reduce   (dedup, W > 1: ep_combine_reduce_dedup in its place;
//             with EpArgs.combineFlagged, ep_combine_reduce_flagged, which polls while ep_combine_send runs)
//   between hosts (nodes > 1, staged only; kernels/ep_rail.cuh, the host's NCCL exchange in brackets):
//     dispatch: ep_stage_send(_large) -> ep_rail_plan -> ep_rail_rows -> [NCCL] -> ep_rail_forward -> ep_stage_pack
//     combine:  ep_combine_send -> ep_rail_combine -> [NCCL] -> ep_rail_land -> ep_combine_reduce(_dedup)
//     Every rank runs both NCCL exchanges of every call, in this order (a dispatch that fails or is refused
//     is followed by the combine's abort sequence: ep_combine_send with hostAbort, ep_rail_combine, NCCL,
//     ep_rail_land), so that the sends and receives between hosts always pair up.
// ep_recv_view runs only when the caller asks for the source-major receive buffer (viewX/viewScales set).
// ep_combine_send moves rows between ranks only: with W = 1 the host may leave it out.
// Programmatic dependent launch (sm_90): ep_dispatch, ep_stage_pack, ep_recv_view, ep_combine_send and
// ep_combine_reduce (and _dedup, _flagged) may be launched with programmatic stream serialization after the kernel before them in
// this order (each waits with griddepcontrol.wait before it touches that kernel's memory; every kernel lets
// its dependents start early). Never launch one so after other work: the wait covers only the kernel before.
// With EpArgs.combineFlagged, ep_combine_send lets the reduction start only after its own wait, and
// ep_combine_reduce_flagged polls the flagged rows instead of waiting first: it waits at its end.
// Every kernel is correct for any grid >= 1 (ep_dispatch_local and ep_stage_send(_large): >= 2; they grid-stride;
// launch at least 1 block even when T = 0) and any block that is a multiple of 32 up to its maximum.
// The grids below are for speed only.
// ep_dispatch and ep_stage_send(_large) (W > 1) and ep_combine_send end with "the last block to finish publishes and
// waits": no cooperative launch, no co-residency needed (ep_combine_send, when every partial it sent was
// flagged: block 0 signals after its own items, unordered, and no block waits for another). The blocks of ep_rail_combine other than block 0
// wait for block 0 (which waits for none of them), dispatched first. So do the row blocks of ep_stage_send_large
// with own_direct, for every peer's row block 0, which publishes its counts before it waits for anything.
//
//  ep_route           grid 1, block 1024 (EP_ROUTE_THREADS; the host uses 512 when T*k <= 4096: faster),
//                     dynamic smem = 4 * ((block/32) * E + E + 1) + 2 * T*k bytes; pass it for
//                     T = maxTokensPerRank so one value serves every call (and a captured graph).
//  ep_dispatch        block B = roundup32(ceil(U / ceil(U / 256))) with U = H/16  (H = 7168 -> 224);
//                     grid = min(8 * SMs, max(1, T * ceil(H / (16 * B))));  dynamic smem 0.  B <= 512.
//  ep_dispatch_local  block as ep_dispatch, grid = ep_dispatch's + 1 (the last block keeps the books and
//                     stores no rows; grid >= 2); W = 1 and T*k <= EP_LOCAL_MAX_PAIRS only (it stops with a device assert naming the requirement otherwise).
//  ep_stage_send      block and grid as ep_dispatch_local; W > 1 (it stops with a device assert otherwise).
//  ep_stage_send_large block as ep_dispatch, grid = min(min(8, its occupancy at that block, smem 0) * SMs,
//                     max(1, T * ceil(H / (16 * B)))) + 1: one wave (each block reads every id once).
//  The row walkers below (block 256; the pack and the combine's send build their tables or load their plan
//  counts in every block) keep their grids to one wave:
//  waveCap = min(4, the blocks of 256 an SM holds for that kernel (the driver's occupancy)) * SMs.
//  ep_stage_pack      block 256, grid = min(waveCap, max(1, ceil(W * stageRows * ceil(rowBytes / 2048) / 8))).
//                     ep_stage_pack_own (after ep_stage_send_large with dedup on one host) the same.
//  ep_recv_view       block 256, grid = min(waveCap, max(1, ceil(W * maxRowsPerPeer / 8)));  dynamic smem 0.  B <= 512.
//  ep_combine_send    block 256, grid as ep_recv_view; with dedup a warp per (carrier, 2 KiB segment):
//                     grid = min(waveCap, max(1, ceil(W * min(maxTokensPerRank, maxRowsPerPeer) * ceil(2H / 2048) / 8)));
//                     dynamic smem 0.  B <= 512.
//  ep_combine_reduce  (and _dedup, _flagged) block B = roundup32(ceil(V / ceil(V / 256))) with V = H/8   (H = 7168 -> 224);
//                     grid = min(8 * SMs, max(1, T * ceil(V / B)));  dynamic smem 0.  B <= 512.
//  ep_rail_plan       grid = nodes, block 1024 (any multiple of 32 up to 1024).
//  ep_rail_rows       block and grid as ep_dispatch.
//  ep_rail_forward, ep_rail_combine, ep_rail_land: block 256, grid waveCap (any grid).
//  ep_barrier         grid 1, block 32 (any multiple of 32): every rank of the group, between calls only.
//  ep_copy_bench      block 256, grid 8 * SMs (CopyArgs by value: dst, src, bytes).  B <= 1024.
//  ep_floor_*         benchmark floors (FloorArgs by value), see section 8 (ep_bench.cuh).
//
// ep_route needs cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes) whenever its
// dynamic plus its ~12.2 KiB of static shared memory exceed 48 KiB (the host always sets it). Dynamic:
// T*k = 32768, E = 256: 99,332 bytes; E = 1024: 200,708 bytes; an H100 block may opt into 232,448. It checks %dynamic_smem_size itself and stops with a device assert if given too little.
//
// LIMITS: E <= 1024 (EP_MAX_EXPERTS), k <= 64 (EP_MAX_TOPK), T*k <= 32768 (EP_MAX_PAIRS: ep_route keeps the
// ids in shared memory; a larger batch needs a multi-block router), W <= E. Sizes as src/ep/config.ts
// allows: H a multiple of 8; G a multiple of 8, <= 1024, dividing H. The FP8 fast path covers G = 16, 32,
// 64, 128, 256, 512 (G/16 a power of two <= 32); any other G takes a slower per-thread-group path with the
// same arithmetic. Pointers 16-byte aligned (x, y, expertOut, viewX, viewScales, heap bases).
//
// HOST DUTIES: zero EpState once at creation (dispatchCalls, doneBlocks, barrierCalls, err) and the whole
// symmetric heap (signal words must start below any call count); peerBases[] in device memory,
// peerBases[rank] = the local heap; one call of a group in flight at a time, on one stream (a handle's
// combine must come before the next dispatch: combine reads pairRow/pairDest/recvSplits of its dispatch,
// and expertX is rewritten by the next dispatch). After each collective, read errHost (host-mapped): the
// device writes it only when an error happens and never clears it, so the host clears errHost->code after
// handling one. EP_ERR_CAPACITY: aux = 0 (a = destination, b = rows > maxRowsPerPeer: this rank's routing),
// aux = 1 (a = global expert id of this rank, b = rows > expertCapacity: that rank has already sent
// combine aborts, so peers' combines fail with EP_ERR_PEER_ABORT_COMBINE instead of timing out; its
// own rows still went to its peers). On a timeout (EP_ERR_TIMEOUT_*) late writes may still land: treat
// the group as broken. To abort a call for a host-side reason (a bad shape): set hostAbort to 1 and
// launch the first kernel of the group's dispatch sequence (ep_route, or ep_stage_send with grid 2; T = 0
// is fine), or ep_combine_send alone: no data is sent, every peer gets call | EP_ABORT_BIT, and errHost is
// not written; set it back to 0.
// ===========================================================================================================
//
// The protocol (README, "The protocol"). Two ways to move a dispatch's rows between ranks, chosen per group:
//
// direct: ep_route counts this rank's pairs per expert and all-gathers the counts (E ints to every peer, then
// a count signal). From every rank's counts each rank computes, for each of its pairs, the final row in the
// owner's expert-major expertX (sources in rank order, each source's rows in its token order), so
// ep_dispatch stores every row once, straight into its final place in the owner's heap: no receive buffer
// and no repack. The count exchange also orders calls: a rank sends its counts for call n + 1 only after
// its combine of call n, so no peer writes into its expertX while it may still read the previous call's.
// It costs a signal round trip before the first row moves, and one block routes the whole batch.
//
// staged (the cpu transport's protocol, src/shmem/cpu/group.ts): no count exchange before the rows move.
// Every ep_stage_send block routes its own tokens from all of this rank's ids (a block-wide histogram
// gives where each destination's rows start in this rank's expert-sorted order), and stores each row into
// the owner's stage, source-major: row r of source s at stage[s][r], r = its place among this rank's rows
// for that owner (expert-sorted, token order within an expert). The last block of the grid keeps the books:
// it validates the ids, checks maxRowsPerPeer and writes each owner's split record (rows per local expert,
// then m_st, where that owner's rows start in this rank's own order) into the owner's heap. The last block
// to finish signals every peer (the abort bit when this rank's input was rejected) and waits for every
// peer. ep_stage_pack then copies the staged rows into expert-major expertX (sources in rank order), checks
// maxRowsPerExpert and writes the counts. own_direct (dedup on one host; ep_own_direct.cuh): every staged send's
// row block 0 also publishes its per-expert counts to every peer as tagged words (ep_stage_send_large's right
// after its histogram, ep_stage_send's after its rows), and the row blocks of ep_stage_send_large wait for
// every peer's counts for this rank (or its row signal) before their first row and
// store their tokens' rows for this rank's own experts straight into expertX and expertScales, in the same
// pass as their rows for the other owners; the pack then copies only the peers' rows. The stage has two copies, by call parity: a source writes
// slot (n + 2) & 1 only after its call n + 1 saw this rank's signal of n + 1, which follows this rank's pack
// of call n (a source whose own dispatch n failed may skip its combine n, so the combine does not order it).
//
// Combine is the same for both: ep_combine_send returns each row to its origin at m_st + its index in the
// origin's rows for this rank (the origin's own expert-sorted order), and ep_combine_reduce sums them.
//
// dedup (EpArgs.dedup, staged only, k <= 32; README, "De-duplication"): a token's row goes to each owner
// once, at its carrier row (the row of its first slot naming that owner); the sender also writes, for every
// row, its carrier (stageCarrier) and, per carrier, a record (the origin's combine row t*k + carrier slot,
// then per slot the row for this owner or -1, and the weight). ep_stage_pack copies each row from its
// carrier and writes one plan per carrier (carrierPlans, by source: the source, the origin's row, and per
// slot the expertOut row or -1 and the weight); ep_combine_send sums each carrier's
// token over this rank's experts (f32, slot order, weighted), rounds once to bf16 and returns that one
// partial to the origin's row t*k + carrier slot; ep_combine_reduce_dedup adds the partials in slot order
// (between hosts, one per owner on this host and one per other host: its rail peer summed that host's).
//
// Between hosts (EpArgs.nodes > 1, staged only; README, "Between hosts"; the details in ep_rail.cuh): a rank
// maps only its own host's heaps (peerBases of another host's rank is 0; nothing may read it). ep_stage_send
// stores rows and split records for this host's owners only, and signals and waits for this host's ranks;
// pairRow still covers every pair, and ep_rail_plan builds each other host's message from it. The rail
// peer's ep_rail_forward fills its host's owners' stages on a remote source's behalf, signals them for it,
// then waits for every remote source's signal; ep_stage_pack is unchanged. ep_combine_send writes the
// rows (or partials) of a source on another host into the outbox of that source's rail peer on this host
// (combine_rows_of, combine_signal_of), waits for this host's owners only, and ep_rail_land checks the
// others'. EpState.ownAbort says whether this rank's own input failed the call (its messages carry the
// abort bit), as opposed to a peer's abort seen in the wait.
//
// Call numbering: ep_route (and ep_dispatch_local's bookkeeping block) increments state->dispatchCalls
// (call = the new value, slot = call & 1) and clears state->err; ep_stage_send's blocks all compute
// call = dispatchCalls + 1 at their start (its row blocks need the slot) and its last block stores it
// (its bookkeeping block clears err). Every later kernel of that dispatch and of the matching combine reads
// dispatchCalls. Signals hold call (or
// call | EP_ABORT_BIT) and are never cleared: a stale value can never equal a later call. A rank whose
// routing failed signals with the abort bit (direct: its counts; staged: its row signal), so every rank
// learns that the call is off. (own_direct's tagged counts are no signal: a call that is off may publish them,
// and its row signal says it is off.)
#include <assert.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include "ep_args.h"
#include "shmem.cuh"

// The code, by concern, in this order: each header below is a part of this one translation unit (nvcc
// compiles only ep.cu), included here only, and may use anything the headers before it define.
#include "ep_limits.cuh"    // limits, host_requires, the internal host-abort code, EP_PROBE
#include "ep_device.cuh"    // block-wide helpers: stamps, host abort, scans, ids, finish_block
#include "ep_codec.cuh"     // bf16 / FP8 number formats (src/ep/codec.ts)
#include "ep_signals.cuh"   // waiting for peers, the call's error, call numbering
#include "ep_flagged.cuh"   // flagged partials: small combines whose data need no fence and carry their own flag
#include "ep_rows.cuh"      // dispatch's row stores (DestList ... dispatch_rows), expert_start
#include "ep_inblock.cuh"   // routing inside the blocks: LocalTables, ids, checks, bookkeeping
#include "ep_own_direct.cuh"  // a large batch's own rows straight into expertX: tagged counts, own_tables
#include "ep_inblock_dests.cuh"  // routing inside the blocks: dedup books, InBlockDests
#include "ep_recv.cuh"      // receive tables, locate, copy_segment, combine send helpers
#include "ep_route.cuh"     // 1. ep_route
#include "ep_dispatch.cuh"  // 2. ep_dispatch, 2b-2d. ep_dispatch_local, ep_stage_send(_large), ep_stage_pack, 3. ep_recv_view
#include "ep_combine.cuh"   // 4. ep_combine_send, 5. ep_combine_reduce
#include "ep_bench.cuh"     // 6. ep_copy_bench, 7. ep_barrier, 8. floors
#include "ep_rail.cuh"      // 9-13. between hosts: ep_rail_plan, ep_rail_rows, ep_rail_forward, ep_rail_combine, ep_rail_land
