// The kernels' limits (EP_MAX_*), the EP_ERR_CAPACITY aux values, host_requires, the internal
// host-abort code, and the EP_PROBE hook of bench/micro/kernel_probe.cu.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

#define EP_MAX_EXPERTS 1024
#define EP_MAX_TOPK 64
#define EP_MAX_PAIRS 32768
#define EP_LOCAL_MAX_PAIRS 2048  // ep_dispatch_local: T*k it routes inside each block
#define EP_STAGE_SMEM_PAIRS 4096  // in-block routing keeps T*k ids up to this in shared memory (beyond: read from L2)
#define EP_ROUTE_THREADS 1024
#define EP_MAX_THREADS 512
// 1: a large batch's own rows go straight into expertX from ep_stage_send_large (own_direct, ep_own_direct.cuh);
// 0 (bench A/B builds only): they are staged and packed as every peer's.
#ifndef EP_OWN_DIRECT
#define EP_OWN_DIRECT 1
#endif

// ep_combine_send takes the sources from rank + EP_SEND_FIRST on (bench A/B only: 0 takes a rank's own carriers first).
#ifndef EP_SEND_FIRST
#define EP_SEND_FIRST 1
#endif

// Diagnostic builds (bench only, -DEP_DIAG=n; 0, the default: none): point n inside a kernel stamps, as the latest
// of its callers, the stamp that ends that kernel's segment, whose own stamp is left out, so that the bench's split
// shows the time from the segment's start to that point (EP_DIAG_AT, ep_device.cuh; scripts/device-check.sh diag).
// A stamp costs its caller one fire-and-forget atomic. The points:
//   11-18 ep_combine_send (dedup): 11 a block's carrier counts and their scan done, 12 a warp's plan in, 13 its rows
//         in and summed, 14 its partial's stores issued; 15 and 16 as 12, for the first and the second half of the
//         items; 17 and 18 run every item twice (so the call is longer; the second pass gives each warp another
//         block's item): 17 a warp's plan in on the second pass, 18 a block's second pass starts (after a barrier);
//         19 a warp of the second half of the items about to load its plan (its loads' issue, not their arrival);
//   21-25 ep_stage_pack: 21 a block's tables built, 22 a warp's carrier index in, 23 its stores issued (22 and 23
//         only where a warp has one item at most); 24 a block's split records in (thread 0's), 25 its two scans done
//         (21 after the capacity check that follows);
//   31-34 ep_stage_send(_large): 31 a warp's last row store issued, 32 the bookkeeping block's books stored;
//         33 and 34 end the segment before (to the first row store) instead, block 0's: 33 its ids in and
//         published (a barrier), 34 its histogram scanned;
//   41    ep_stage_send_large with own_direct: into two stamps the staged path does not otherwise write (the bench
//         names them after ep_route's count exchange), row block 0's counts published (COUNTS_SENT, thread 0's
//         share) and the latest row block with every peer's counts (COUNTS_ARRIVED); ROWS_BEGIN stays.
//   51-59 ep_combine_reduce(_dedup, _flagged); 52-54 in the warp-per-token path (k <= 32) only: 55 a block
//         starts (after its wait for the kernel before; _flagged does not wait), 51 its error word and call in,
//         52 a warp's ids in, 53 its partials in and summed, 54 its stores issued; 56 thread 0's load of its own
//         heap base (another allocation) in, first; 57 as 51, after 56's load; 58 thread 0 has the parameters
//         those loads need (a.state, a.peerBases, a.rank, a.localBase); 59 as 51, with thread 0 having loaded the
//         state's line once before the wait for the kernel before.
#ifndef EP_DIAG
#define EP_DIAG 0
#endif
static_assert(EP_DIAG == 0 || (EP_DIAG >= 11 && EP_DIAG <= 19) || (EP_DIAG >= 21 && EP_DIAG <= 25) ||
                  EP_DIAG == 31 || EP_DIAG == 32 || EP_DIAG == 33 || EP_DIAG == 34 || EP_DIAG == 41 || (EP_DIAG >= 51 && EP_DIAG <= 59),
              "EP_DIAG: 0 or one of the points listed above");
#define EP_DIAG_IN(group) (EP_DIAG / 10 == (group))

// EP_ERR_CAPACITY has two sources, told apart by EpError.aux (the header defines one code for both):
//   aux = EP_CAPACITY_AUX_SEND (0):   ep_route, a = destination rank, b = rows it would get (> maxRowsPerPeer)
//   aux = EP_CAPACITY_AUX_EXPERT (1): ep_route, a = global expert id of this rank, b = rows it would hold (> expertCapacity)
#define EP_CAPACITY_AUX_SEND 0u
#define EP_CAPACITY_AUX_EXPERT 1u

// A launch the host must never make (a programming error of the host, not a user's input): say which
// requirement failed, then stop the kernel. Device-side assert prints the message (with the file and
// line of the call) when the kernel ends, and the host then sees CUDA_ERROR_ASSERT.
#define host_requires(cond, what) assert((cond) && what)

// Device-internal err.code for a call the host aborted (see host_abort): set in state->err only, never
// mirrored to errHost (the host already knows), and it makes every later kernel of the call abort.
#define EP_INTERNAL_HOST_ABORT 0xffffffffu

using namespace ep;

// Phase timestamps of ep_route for bench/micro/kernel_probe.cu (built with -DEP_PROBE); nothing otherwise.
#ifdef EP_PROBE
__device__ long long ep_probe[16];
#define EP_PROBE_AT(i)                                 \
  do {                                                 \
    if (threadIdx.x == 0) ep_probe[i] = clock64();     \
  } while (0)
#else
#define EP_PROBE_AT(i) \
  do {                 \
  } while (0)
#endif
