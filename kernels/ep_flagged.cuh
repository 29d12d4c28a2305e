// Flagged partials (EpArgs.combineFlagged; README, "Flagged partials"): the format, its stores and its poll.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
//
// With a small batch the time of a combine is its round trips, not its bytes. Each 16 bytes of a dedup partial
// travel as 32: {x, f, y, f} {z, f, w, f}, f = flag_of(call), each 8-byte pair in one store. A reader that
// sees f in an 8-byte pair holds that pair's data of this call (as NCCL's LL protocol, this counts on an
// aligned 8-byte store arriving whole, beyond the PTX model's 4-byte guarantee), so the owner needs no
// system fence before its signal, and the origin polls the rows themselves: one one-way trip instead of a
// fenced store (a round trip), a signal after it (one way) and a kernel boundary. Stale rows carry an older
// call's flag, so no row is ever cleared. The signals still go out (unordered when an owner sent only
// flagged partials), and the origin's reduction waits for every one of them at its end, so an abort reaches
// every rank. A source says it wants its partials flagged in the records it sends with its rows (the top bit
// of a record's first word, EP_FLAGGED_BACK_BIT), so the ranks of one call may differ.
#pragma once

#define EP_FLAGGED_BACK_BIT 0x80000000u

namespace {

// Source s's flagged partial rows (one host: s is mapped), this call's slot; row r at r * 2 * combineRowBytes.
__device__ __forceinline__ char* flagged_rows_of(const EpArgs& a, int s, uint64_t slot) {
  return (char*)(__ldg((const uint64_t*)a.peerBases + s) + a.flaggedRecvOff + slot * a.flaggedRecvSlot);
}

__device__ __forceinline__ uint4 ld_volatile_v4(const void* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes of a partial, flagged, at `p` (32 bytes). Volatile: NCCL's LL protocol stores the same way.
__device__ __forceinline__ void st_flagged(char* p, uint4 v, uint32_t f) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(f), "r"(v.y), "r"(f)
               : "memory");
  asm volatile("st.volatile.global.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(p + 16), "r"(v.z), "r"(f), "r"(v.w), "r"(f)
               : "memory");
}

// The flag of a call: never 0 (so a row the heap's zeros left never matches), and the same again only
// 2^32 - 1 calls later; with rows in slot call & 1, a stale row could match only after being left untouched
// for exactly 2 * (2^32 - 1) calls (about 10 days of calls every 100 us). The signals, 64-bit, have no limit.
__device__ __forceinline__ uint32_t flag_of(uint64_t call) { return (uint32_t)(call % 0xFFFFFFFFull) + 1u; }

__device__ __forceinline__ bool flagged_ready(const uint4& lo, const uint4& hi, uint32_t f) {
  return lo.y == f && lo.w == f && hi.y == f && hi.w == f;
}
__device__ __forceinline__ uint4 flagged_data(const uint4& lo, const uint4& hi) { return make_uint4(lo.x, lo.z, hi.x, hi.z); }

// The reduction's wait for one flagged 16 bytes at `p` whose first load was not ready: polls until it is,
// `owner` aborts this combine (its signal word holds call | EP_ABORT_BIT), the call already failed (another
// thread reported), or the group's timeout passes (reported naming `owner`). Returns the data (zeros unless
// ready). `failed` makes a thread that gave up once give up at once on every later row (its warp stays
// converged).
__device__ __noinline__ uint4 poll_flagged(const EpArgs& a, const char* p, int owner, uint64_t call, bool& failed) {
  if (failed) return make_uint4(0u, 0u, 0u, 0u);
  const uint32_t f = flag_of(call);
  const uint64_t slot = call & 1u;
  const uint64_t* sig = combine_signals_here(a, slot) + owner;
  const uint64_t deadline = deadline_after(a.timeoutNs);
  for (uint32_t n = 1;; ++n) {
    const uint4 lo = ld_volatile_v4(p), hi = ld_volatile_v4(p + 16);
    if (flagged_ready(lo, hi, f)) return flagged_data(lo, hi);
    if ((n & 63u) != 0) continue;
    const uint64_t seen = *(const volatile uint64_t*)sig;
    if (seen == (call | EP_ABORT_BIT)) {
      report_error(a, EP_ERR_PEER_ABORT_COMBINE, (uint32_t)owner, (uint32_t)slot, call, 0, 0, 0u);
    } else if (globaltimer() > deadline) {
      report_error(a, EP_ERR_TIMEOUT_COMBINE, (uint32_t)owner, (uint32_t)slot, call, (int64_t)seen, 0, 0u);
    } else if (read_err_code(state_of(a)) == 0) {
      continue;
    }
    failed = true;
    return make_uint4(0u, 0u, 0u, 0u);
  }
}

}  // namespace
