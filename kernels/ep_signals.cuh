// Waiting for peers (wait_for_sources, signal_and_wait_rows), the call's error and call numbering
// (clear_error, begin_call, own_expert_over_capacity).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Waiting for peers

// Every thread of the block waits for its share of the W signal words at `mine` (one per source,
// `skip` excluded: -1 for none) to hold `call`, within the group's timeout; an abort or a timeout is
// reported with `abortCode` / `timeoutCode`. Returns true in a thread that saw either.
__device__ __forceinline__ bool wait_for_sources(const EpArgs& a, const uint64_t* mine, int skip, uint64_t call,
                                                 uint32_t slot, uint32_t abortCode, uint32_t timeoutCode) {
  const uint64_t deadline = deadline_after(a.timeoutNs);
  bool failed = false;
  for (int s = threadIdx.x; s < a.world; s += blockDim.x) {
    if (s == skip) continue;
    uint64_t seen = 0;
    const int r = wait_until(mine + s, call, deadline, &seen);
    failed |= r != WAIT_ARRIVED;
    if (r == WAIT_ABORTED) report_error(a, abortCode, (uint32_t)s, slot, call, 0, 0, 0u);
    else if (r == WAIT_TIMED_OUT) report_error(a, timeoutCode, (uint32_t)s, slot, call, (int64_t)seen, 0, 0u);
  }
  return failed;
}

// The last block of a dispatch kernel (W > 1): `value` into every peer's row-signal word for this rank,
// then every peer's word of this call awaited (an abort or a timeout is reported); stamps the end.
__device__ void signal_and_wait_rows(const EpArgs& a, uint64_t call, uint64_t value) {
  const uint64_t slot = call & 1u;
  const int W = a.world, me = a.rank;
  const uint64_t* peer = (const uint64_t*)a.peerBases;
  for (int d = threadIdx.x; d < W; d += blockDim.x)
    if (d != me)
      signal((uint64_t*)(__ldg(peer + d) + a.dispatchSignalOff + slot * a.dispatchSignalSlot + (uint64_t)me * 8u),
             value);
  const uint64_t* mine = (const uint64_t*)(__ldg(peer + me) + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  wait_for_sources(a, mine, me, call, (uint32_t)slot, EP_ERR_PEER_ABORT_DISPATCH, EP_ERR_TIMEOUT_DISPATCH);
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
