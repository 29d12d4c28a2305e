// Waiting for peers (wait_for_sources, signal_and_wait_rows), the call's error and call numbering
// (clear_error, begin_call, own_expert_over_capacity).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Hosts (EpArgs.nodes > 1; README, "Between hosts"): rank r is (host r / G, local r % G). Only ranks of
// this rank's host are mapped (peerBases of the others is 0); everything for another host goes through
// the rail peer (kernels/ep_rail.cuh).

__device__ __forceinline__ int host_of(const EpArgs& a, int r) { return a.nodes > 1 ? r / a.ranksPerNode : 0; }
__device__ __forceinline__ bool same_host(const EpArgs& a, int r) { return host_of(a, r) == host_of(a, a.rank); }
// dedup: what the origin sums one partial for: an owner on its host, or a whole other host (README, "Between hosts").
__device__ __forceinline__ int reduce_key(const EpArgs& a, int owner) {
  return same_host(a, owner) ? owner : a.world + host_of(a, owner);
}
// The rank of local index `local` on host `host`.
__device__ __forceinline__ int rank_at(const EpArgs& a, int host, int local) { return host * a.ranksPerNode + local; }
// This rank's rail peer on host `host`: the rank of its own local index there.
__device__ __forceinline__ int rail_peer(const EpArgs& a, int host) {
  return rank_at(a, host, a.rank - host_of(a, a.rank) * a.ranksPerNode);
}

// Where this rank's combine rows for source s go: s's combine buffer (slot), or, for s on another host, the
// outbox for s's host of s's rail peer on this host, at the same rows.
__device__ __forceinline__ char* combine_rows_of(const EpArgs& a, int s, uint64_t slot) {
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  if (same_host(a, s)) return (char*)(__ldg(peer + s) + a.combineRecvOff + slot * a.combineRecvSlot);
  const int h = host_of(a, s), relay = rank_at(a, host_of(a, a.rank), s - h * a.ranksPerNode);
  return (char*)(__ldg(peer + relay) + a.railOutboxOff + slot * a.railOutboxSlot + (uint64_t)h * a.railOutboxHostBytes);
}
// This rank's combine signal words of `slot`, one per owner (written by the owners: combine_signal_of).
__device__ __forceinline__ const uint64_t* combine_signals_here(const EpArgs& a, uint64_t slot) {
  return (const uint64_t*)(a.localBase + a.combineSignalOff + slot * a.combineSignalSlot);
}

// The word that tells source s this rank's combine rows of this call are in (see combine_rows_of).
__device__ __forceinline__ uint64_t* combine_signal_of(const EpArgs& a, int s, uint64_t slot) {
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  if (same_host(a, s))
    return (uint64_t*)(__ldg(peer + s) + a.combineSignalOff + slot * a.combineSignalSlot + (uint64_t)a.rank * 8u);
  const int h = host_of(a, s), G = a.ranksPerNode, mine = a.rank - host_of(a, a.rank) * G;
  const int relay = rank_at(a, host_of(a, a.rank), s - h * G);
  return (uint64_t*)(__ldg(peer + relay) + a.railOutboxSignalOff + slot * a.railOutboxSignalSlot +
                     ((uint64_t)h * G + mine) * 8u);
}

// ---------------------------------------------------------------------------------------------
// Waiting for peers

// Every thread of the block waits for its share of the W signal words at `mine` (one per source,
// `skip` excluded: -1 for none) to hold `call`, within the group's timeout; an abort or a timeout is
// reported with `abortCode` / `timeoutCode`. Returns true in a thread that saw either. `hosts`: which
// sources' words, by host: those of this host (the ones written by the sources themselves), or those of
// the other hosts (written on their behalf by their rail peers here), or all.
enum WaitHosts : int { WAIT_THIS_HOST = 0, WAIT_OTHER_HOSTS = 1, WAIT_ALL_HOSTS = 2 };
__device__ __forceinline__ bool wait_for_sources(const EpArgs& a, const uint64_t* mine, int skip, uint64_t call,
                                                 uint32_t slot, uint32_t abortCode, uint32_t timeoutCode,
                                                 WaitHosts hosts = WAIT_THIS_HOST) {
  const uint64_t deadline = deadline_after(a.timeoutNs);
  bool failed = false;
  for (int s = threadIdx.x; s < a.world; s += blockDim.x) {
    if (s == skip || (hosts != WAIT_ALL_HOSTS && same_host(a, s) != (hosts == WAIT_THIS_HOST))) continue;
    uint64_t seen = 0;
    const int r = wait_until(mine + s, call, deadline, &seen);
    failed |= r != WAIT_ARRIVED;
    if (r == WAIT_ABORTED) report_error(a, abortCode, (uint32_t)s, slot, call, 0, 0, 0u);
    else if (r == WAIT_TIMED_OUT) report_error(a, timeoutCode, (uint32_t)s, slot, call, (int64_t)seen, 0, 0u);
  }
  return failed;
}

// The last block of a dispatch kernel (W > 1): `value` into every peer's row-signal word for this rank,
// then (`wait`) every peer's word of this call awaited (an abort or a timeout is reported); stamps the end.
// Between hosts, the peers of this host only (ep_rail_forward waits for the others').
__device__ void signal_and_wait_rows(const EpArgs& a, uint64_t call, uint64_t value, bool wait = true) {
  const uint64_t slot = call & 1u;
  const int W = a.world, me = a.rank;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int d = threadIdx.x; d < W; d += blockDim.x)
    if (d != me && same_host(a, d))  // (other hosts learn it from this rank's message: ep_rail_plan)
      signal((uint64_t*)(__ldg(peer + d) + a.dispatchSignalOff + slot * a.dispatchSignalSlot + (uint64_t)me * 8u),
             value);
  if (!wait) return;
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  wait_for_sources(a, mine, me, call, (uint32_t)slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH);
  if (a.stamps == 0) return;  // (the barrier below serves the stamp only: the callers end here)
  __syncthreads();
  if (threadIdx.x == 0) stamp(a, EP_STAMP_DISPATCH_ARRIVED);
}

// This call's error cleared (the device copy; errHost is the host's to clear). One thread.
__device__ __forceinline__ void clear_error(EpState* st) {
  volatile EpError* e = &st->err;
  e->code = 0;
  e->peer = 0;
  e->slot = 0;
  e->aux = 0;
  e->callCount = 0;
  e->a = 0;
  e->b = 0;
}

// One thread of the kernel that begins a dispatch: the next call count, and this call's error cleared.
// Returns the call.
__device__ __forceinline__ uint64_t begin_call(EpState* st) {
  const uint64_t call = read_calls(st) + 1;
  st->dispatchCalls = call;
  clear_error(st);
  return call;
}

// This call's error is this rank's own expert over capacity: its dispatch failed, but its rows went
// to its peers and its peers go on to combine.
__device__ __forceinline__ bool own_expert_over_capacity(const EpState* st, uint32_t code) {
  return code == EP_ERR_CAPACITY && *(const volatile uint32_t*)&st->err.aux == EP_CAPACITY_AUX_EXPERT;
}

}  // namespace
