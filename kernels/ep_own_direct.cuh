// own_direct: a large batch's own rows straight into expertX (ep_stage_send_large, ep_stage_pack_own): the tagged
// counts every staged row block 0 publishes, and the row blocks' wait for every peer's (own_tables).
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order (after ep_inblock.cuh's
// LocalTables, before ep_inblock_dests.cuh's InBlockDests, which calls it).
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// own_direct (README, "The protocol"): a large batch's own rows straight into expertX. Every staged row block 0
// of a group on one host with dedup publishes its per-expert counts to every peer as tagged words (publish_counts),
// as soon as its histogram is built; the row blocks of ep_stage_send_large (T*k > EP_STAGE_SMEM_PAIRS) wait for
// every peer's counts for this rank (own_tables), and then store each token's rows for this rank's own experts
// straight into expertX in the same pass as its rows for the other owners, instead of into the own stage for
// ep_stage_pack to copy.

// Whether this group's ranks publish their counts (one host, dedup; EP_OWN_DIRECT=0 builds: never).
__device__ __forceinline__ bool own_direct_group(const EpArgs& a) {
#if EP_OWN_DIRECT
  return a.dedup && a.nodes == 1;
#else
  return false;
#endif
}

// Whether this rank's call stores its own rows straight into expertX (ep_stage_send_large; ep_stage_pack then
// skips them, deciding it from the same arguments).
__device__ __forceinline__ bool own_direct(const EpArgs& a) {
  return own_direct_group(a) && !ids_in_smem(a) && a.expertsPerRank <= EP_MAX_EXPERTS / 2;
}

// own_direct's tables, in LocalTables::ids (unused: the ids stay in L2 at such batches).
struct OwnTables {
  int cnt[EP_MAX_EXPERTS];      // [s][le]: rows source s sends this rank for local expert le (-1: not known yet)
  int start[EP_MAX_EXPERTS / 2 + 1];  // where this rank's own rows of each local expert start in expertX (W >= 2;
                                     // +1: the scan's total)
  int state;     // 0 waiting, 2 a peer's call is off (any thread may set it in a round; all read it after its barrier)
  int scratch[33];
  int late;      // the lowest source whose counts were missing in this round (thread 0 alone reads and resets it;
                 // kept apart from state, so that no thread's load of state reads it too)
  int timedOut;  // thread 0 gave up waiting (read by every thread after the loop)
};
static_assert(sizeof(OwnTables) <= sizeof(LocalTables::ids), "OwnTables lives in LocalTables::ids");
__device__ __forceinline__ OwnTables& own_tables_of(LocalTables& S) { return *reinterpret_cast<OwnTables*>(S.ids); }

// The tagged count words: counts region [slot][src][le] (the direct path's, unused by a staged group: it holds
// W*E i32 a slot, and these are E u64), each (uint32 call << 32) | count, so that a word read with this call's
// tag holds this call's count (8 aligned bytes are single-copy atomic; the slot's previous value is call - 2's).
__device__ __forceinline__ uint64_t* tagged_counts(const EpArgs& a, uint64_t heap, uint64_t slot) {
  return (uint64_t*)(heap + a.countsOff + slot * a.countsSlot);
}

// Row block 0 of a staged send (own_direct_group), every thread, once its histogram is built (S.hist the exclusive
// prefix of this call's pairs per expert): this rank's count of each of peer d's experts into d's tagged words.
// No fence: nothing but the word itself depends on it. ep_stage_send_large's block 0 publishes before its first row
// (its peers' row blocks wait for it); ep_stage_send's after its rows (a few hundred bytes to each peer before its
// finish_block, rather than before its first row store; a peer of a large batch waits for them, or for the rows'
// signal that follows them).
__device__ __forceinline__ void publish_counts(const EpArgs& a, const LocalTables& S, uint64_t call) {
  const int W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const uint64_t tag = (uint64_t)(uint32_t)call << 32;
  for (int e = threadIdx.x; e < W * EPR; e += blockDim.x) {
    const int d = e / EPR;
    if (d == me) continue;
    uint64_t* at = tagged_counts(a, __ldg((const uint64_t*)a.peerBases + d), call & 1u) + (uint64_t)me * EPR + (e - d * EPR);
    signal_unordered(at, tag | (uint32_t)(S.hist[e + 1] - S.hist[e]));
  }
}

// own_tables gave up waiting for source s (the first one to: EpState.ownLate). Out of line: a rare path, kept out
// of the row blocks' registers.
__device__ __noinline__ void note_own_late(const EpArgs& a, int s) { atomicCAS(&state_of(a)->ownLate, 0u, 1u + (uint32_t)s); }

// A row block of ep_stage_send_large (own_direct), every thread, after its histogram: every peer's count for each
// of this rank's experts, from its tagged words, or from its split record once its rows' signal holds this call (a
// peer whose row block 0 never ran: no tokens); then O.start. Returns true (every thread) when the own rows may be
// stored: false when a peer's call is off (the tail's wait reports it) or timed out (EpState.ownLate, which the tail
// reports: the bookkeeping block, which may start after this one, clears the call's error first), or an expert is
// over capacity (ep_stage_pack reports it and copies nothing). It waits for every peer's row block 0 (or last block),
// which waits for nothing before it publishes: block 0 is dispatched first.
__device__ bool own_tables(const EpArgs& a, LocalTables& S, uint64_t call) {
  OwnTables& O = own_tables_of(S);
  const int tid = threadIdx.x, B = blockDim.x, W = a.world, EPR = a.expertsPerRank, me = a.rank;
  const uint64_t slot = call & 1u;
  const uint64_t* tagged = tagged_counts(a, a.localBase, slot);
  const uint64_t* rowsSignal = (const uint64_t*)(a.localBase + a.dispatchSignalOff + slot * a.dispatchSignalSlot);
  const int* splits = (const int*)(a.localBase + a.stageSplitsOff + slot * a.stageSplitsSlot);
  const uint32_t tag = (uint32_t)call;
  for (int i = tid; i < W * EPR; i += B) O.cnt[i] = i / EPR == me ? S.hist[i + 1] - S.hist[i] : -1;
  if (tid == 0) {
    O.state = 0;
    O.late = INT_MAX;
    O.timedOut = 0;
  }
  __syncthreads();
  const uint64_t deadline = deadline_after(a.timeoutNs);
  for (uint32_t sleepNs = 0;;) {
    bool missing = false;
    for (int i = tid; i < W * EPR; i += B) {
      if (O.cnt[i] >= 0) continue;
      const uint64_t v = ld_relaxed_sys(tagged + i);
      if ((uint32_t)(v >> 32) == tag) {
        O.cnt[i] = (int)(uint32_t)v;
        continue;
      }
      const int s = i / EPR;  // (its rows' signal: its split record is in, or its call is off)
      const uint64_t r = ld_relaxed_sys(rowsSignal + s);
      if (r == call) {
        (void)ld_acquire_sys(rowsSignal + s);  // (the value stays: acquire it, then read the record)
        O.cnt[i] = (int)ld_cg_u32(splits + (uint64_t)s * a.splitsPerPeer + (i - s * EPR));
      } else if (r == (call | EP_ABORT_BIT)) {
        O.state = 2;
      } else {
        missing = true;
        atomicMin(&O.late, s);
      }
    }
    // after this round's barrier: O.state and O.late (this round's) are complete; thread 0 alone decides the
    // timeout (in O.timedOut, not O.state, which the other threads read in this round), and the second barrier
    // both publishes it and keeps this round's reads before the next round's writes
    const bool stop = !__syncthreads_or(missing) || O.state == 2;
    bool timedOut = false;
    if (tid == 0) {
      const int late = O.late;
      O.late = INT_MAX;
      if (!stop && globaltimer() > deadline) {
        O.timedOut = 1;
        note_own_late(a, late);
        timedOut = true;
      }
    }
    if (__syncthreads_or(stop || timedOut)) break;
    if (sleepNs) __nanosleep(sleepNs);
    sleepNs = sleepNs ? (sleepNs < 256 ? sleepNs * 2 : 256) : 32;
  }
  if (O.state == 2 || O.timedOut) return false;
  bool over = false;
  for (int le = tid; le < EPR; le += B) {
    int total = 0;
    for (int s = 0; s < W; ++s) total += O.cnt[s * EPR + le];
    over |= total > a.expertCapacity;
    O.start[le] = total;
  }
  if (__syncthreads_or(over)) return false;
  block_exclusive_scan<false>(O.start, EPR, O.scratch);  // (O.start published by the barrier above)
  for (int le = tid; le < EPR; le += B) {
    int before = 0;  // this expert's rows from the sources before this rank
    for (int s = 0; s < me; ++s) before += O.cnt[s * EPR + le];
    O.start[le] = (int)expert_start(a, le, O.start[le]) + before;
  }
  __syncthreads();
  return true;
}

}  // namespace
