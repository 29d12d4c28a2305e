import { sumPartialsBf16 } from '../../ep/codec.js';
import {
  combineRowOffset,
  railInboxOffset,
  railMessageLayout,
  railOutboxRowOffset,
  railOutboxSignalOffset,
  recordBytes,
  signalOffset,
  splitsOffset,
  stageCarrierOffset,
  stageRecordOffset,
  stageRowOffset,
  stageScaleOffset,
} from '../../ep/layout.js';
import { ABORT_BIT } from '../transport.js';
import type { RankHeap } from './rank-heap.js';
import type { SendInput } from './send.js';

/**
 * Between hosts (config.nodes > 1; README, "Between hosts"). Ranks r = (host, local) = (r / G, r % G);
 * the rail peer on host h of rank s is (h, local(s)), and s is that rank's rail peer on host(s). Rows
 * to owners on this host go as on one host. To each other host a rank sends one message, to its rail
 * peer there: each owner's split record there, and every token going to that host once with its books
 * (per slot the owner there and the row of this rank's stage for it, with dedup the weight). The rail
 * peer builds from them what each owner's stage would have received from this rank (rows, with dedup
 * the carriers and records) on the source's behalf and signals them for it, so owners pack as on one
 * host. Combine comes back the same way: owners write the rows (or
 * partials) for a source on another host into the outbox of that source's rail peer on their host,
 * which sends them on (with dedup it first sums its host's partials of each token into one row). Every
 * write to another host goes to the rail peer; on the cpu transport a message is a put into its heap, on
 * the network engine it is one send of a fixed size.
 */

export const hostOf = (h: RankHeap, r: number) => Math.floor(r / h.config.ranksPerNode);
export const localOf = (h: RankHeap, r: number) => r % h.config.ranksPerNode;
/** The rank of local index `local` on host `host`. */
export const rankAt = (h: RankHeap, host: number, local: number) => host * h.config.ranksPerNode + local;
/** Whether slot j is the first of a token's slots with its key (keyOf(q) for slot q; slot j has one). */
export function isFirstSlot(keyOf: (q: number) => number, j: number): boolean {
  for (let q = 0; q < j; q++) if (keyOf(q) === keyOf(j)) return false;
  return true;
}
/** Whether rank d is on this rank's host. */
export const sameHost = (h: RankHeap) => (d: number) => hostOf(h, d) === hostOf(h, h.rank);

/** Waits for this rank's signal word at `offset` to reach `call`; returns whether it came with the abort bit. */
export type WaitOne = (offset: number, call: number, peer: number, phase: 'dispatch' | 'combine') => boolean;

/**
 * Per other host (null for this one): whether its rail source's dispatch message of the call came (not
 * aborted), and without dedup per owner on this host (local order) the rows of that source's combineRecv
 * the owner returns (with dedup the message's tokens say where the host's partials go).
 */
export type RowsBack = ({ live: boolean; rows: Int32Array[] } | null)[];

/** The dispatch messages to every other host's rail peer (railInbox[slot][my host] there), then their signals. */
export function sendRailMessages(
  h: RankHeap,
  input: SendInput,
  weights: Float32Array | null,
  call: number,
): void {
  const c = h.config;
  const me = hostOf(h, h.rank);
  for (let host = 0; host < c.nodes; host++) {
    if (host === me) continue;
    const peer = rankAt(h, host, localOf(h, h.rank));
    h.putTo(
      input.peers,
      peer,
      railInboxOffset(h.layout, c, input.slot, me),
      buildMessage(h, input, weights, host),
    );
    h.shmem.signal(peer, signalOffset(h.layout.railInboxSignal, input.slot, me), BigInt(call));
  }
}

/** The message to host `host` (railMessageLayout). */
function buildMessage(
  h: RankHeap,
  { src, T, idx, plan }: SendInput,
  weights: Float32Array | null,
  host: number,
): Uint8Array {
  const c = h.config;
  const { topk: k, expertsPerRank: epr, ranksPerNode: G, dispatchRowBytes: rb, groupsPerRow: gpr } = c;
  const M = railMessageLayout(c);
  const msg = new Uint8Array(M.bytes);
  const i32 = new Int32Array(msg.buffer);
  const f32 = new Float32Array(msg.buffer);
  const ownerOf = (p: number) => (plan.pairRow[p] < 0 ? -1 : (idx[p] / epr) | 0);
  let n = 0;
  for (let t = 0; t < T; t++) {
    let goes = false;
    let mask = 0; // t's carrier slots on host `host` (each owner's first; dedup has k <= 32)
    for (let j = 0; j < k; j++) {
      const d = ownerOf(t * k + j);
      if (d < 0 || hostOf(h, d) !== host) continue;
      goes = true;
      if (j < 32 && isFirstSlot((q) => ownerOf(t * k + q), j)) mask |= 1 << j;
    }
    if (!goes) continue;
    msg.set(src.subarray(t * rb, (t + 1) * rb), M.rows + n * rb);
    if (c.fp8) msg.set(h.tokenScales(t), M.scales + n * gpr * 4);
    const at = (M.tokens + n * M.tokenBytes) / 4;
    i32[at] = t;
    i32[at + 1] = mask;
    for (let j = 0; j < k; j++) {
      const d = ownerOf(t * k + j);
      const here = d >= 0 && hostOf(h, d) === host;
      i32[at + 2 + 2 * j] = here ? localOf(h, d) : -1;
      i32[at + 3 + 2 * j] = here ? plan.pairRow[t * k + j] - plan.destRowStart[d] : -1;
      if (c.dedup) f32[at + 2 + 2 * k + j] = here ? (weights as Float32Array)[t * k + j] : 0;
    }
    n++;
  }
  i32[0] = n;
  for (let g = 0; g < G; g++) {
    const d = rankAt(h, host, g);
    for (let e = 0; e < epr; e++) i32[M.splits / 4 + g * (epr + 1) + e] = plan.expertCounts[d * epr + e];
    i32[M.splits / 4 + g * (epr + 1) + epr] = plan.destRowStart[d];
  }
  return msg;
}

/**
 * As rail peer: takes each other host's message of this call (waiting for it), copies what it holds into
 * the stages of this host's owners on its source's behalf and signals them for it (with the abort bit
 * when the source aborted the call). Returns, per host, the rows each owner will return in combine.
 */
export function forwardRailMessages(h: RankHeap, slot: number, call: number, waitOne: WaitOne): RowsBack {
  const c = h.config;
  const { topk: k, expertsPerRank: epr, ranksPerNode: G, dispatchRowBytes: rb, groupsPerRow: gpr } = c;
  const M = railMessageLayout(c);
  const me = hostOf(h, h.rank);
  const peers = h.peers();
  const rowsBack: RowsBack = [];
  for (let host = 0; host < c.nodes; host++) {
    rowsBack.push(null);
    if (host === me) continue;
    const s = rankAt(h, host, localOf(h, h.rank)); // the source whose rows this message carries
    const aborted = waitOne(signalOffset(h.layout.railInboxSignal, slot, host), call, s, 'dispatch');
    const at = h.shmem.local().byteOffset + railInboxOffset(h.layout, c, slot, host);
    const msg = new Uint8Array(h.shmem.local().buffer, at, M.bytes);
    const i32 = new Int32Array(msg.buffer, msg.byteOffset, M.bytes / 4);
    const back: Int32Array[] = [];
    for (let g = 0; g < G; g++) {
      const d = rankAt(h, me, g);
      const sig = signalOffset(h.layout.dispatchSignal, slot, s);
      if (aborted) {
        h.shmem.signal(d, sig, BigInt(call) | ABORT_BIT);
        continue;
      }
      const split = i32.subarray(M.splits / 4 + g * (epr + 1), M.splits / 4 + (g + 1) * (epr + 1));
      let count = 0;
      for (let e = 0; e < epr; e++) count += split[e];
      h.putTo(peers, d, splitsOffset(h.layout, slot, s), new Uint8Array(split.slice().buffer));
      const rows = c.dedup ? new Int32Array(0) : Int32Array.from({ length: count }, (_, r) => split[epr] + r); // m_st + r
      const f32 = new Float32Array(msg.buffer, msg.byteOffset, M.bytes / 4);
      for (let n = 0; n < i32[0]; n++) {
        const at = (M.tokens + n * M.tokenBytes) / 4;
        const [t, mask] = [i32[at], i32[at + 1]];
        const ownerAt = (j: number) => i32[at + 2 + 2 * j];
        const rowAt = (j: number) => i32[at + 3 + 2 * j];
        for (let j = 0; j < k; j++) {
          if (ownerAt(j) !== g) continue;
          // (without dedup every slot's row is stored; with it only the carrier's: k <= 32)
          if (c.dedup && ((mask >>> j) & 1) === 0) continue;
          const r = rowAt(j);
          h.putTo(
            peers,
            d,
            stageRowOffset(h.layout, c, slot, s, r),
            msg.subarray(M.rows + n * rb, M.rows + (n + 1) * rb),
          );
          if (c.fp8)
            h.putTo(
              peers,
              d,
              stageScaleOffset(h.layout, c, slot, s, r),
              msg.subarray(M.scales + n * gpr * 4, M.scales + (n + 1) * gpr * 4),
            );
          if (!c.dedup) continue;
          // the carrier's record (where the partial goes, each slot's row on this owner and weight), and
          // for each of the token's rows on this owner, its carrier
          const rec = new Int32Array(recordBytes(c) / 4);
          const recW = new Float32Array(rec.buffer);
          rec[0] = t * k + j;
          for (let q = 0; q < k; q++) {
            const own = ownerAt(q) === g;
            rec[1 + q] = own ? rowAt(q) : -1;
            recW[1 + k + q] = own ? f32[at + 2 + 2 * k + q] : 0;
            if (own)
              h.putTo(
                peers,
                d,
                stageCarrierOffset(h.layout, slot, s, rowAt(q)),
                new Uint8Array(Int32Array.of(r).buffer),
              );
          }
          h.putTo(peers, d, stageRecordOffset(h.layout, c, slot, s, r), new Uint8Array(rec.buffer));
        }
      }
      back.push(rows);
      h.shmem.fence();
      h.shmem.signal(d, sig, BigInt(call));
    }
    rowsBack[host] = { live: !aborted, rows: back };
  }
  return rowsBack;
}

/**
 * Where an owner's combine rows for source s go: s's own combine buffer on this host, else the outbox of
 * s's rail peer on this host (railOutbox[slot][host(s)], at the same rows), with the signal that says
 * they are in.
 */
export function combineRoute(h: RankHeap, slot: number, s: number) {
  const c = h.config;
  if (c.nodes === 1 || sameHost(h)(s))
    return {
      rank: s,
      rowOffset: (row: number) => combineRowOffset(h.layout, c, slot, row),
      signal: signalOffset(h.layout.combineSignal, slot, h.rank),
    };
  const host = hostOf(h, s);
  return {
    rank: rankAt(h, hostOf(h, h.rank), localOf(h, s)),
    rowOffset: (row: number) => railOutboxRowOffset(h.layout, c, slot, host, row),
    signal: railOutboxSignalOffset(h.layout, c, slot, host, localOf(h, h.rank)),
  };
}

/**
 * As rail peer, in combine: as each owner on this host signals its rows for each other host's rail
 * source (waiting for them in owner order), sends them on into that source's combine buffer and signals
 * it for that owner (the abort bit for an owner that aborted). With dedup it sends one row per token
 * instead, the host's partial (preReduce), before the last owner's signal.
 */
export function forwardRailCombine(
  h: RankHeap,
  slot: number,
  call: number,
  rowsBack: RowsBack,
  waitOne: WaitOne,
): void {
  const c = h.config;
  const me = hostOf(h, h.rank);
  const rb = c.combineRowBytes;
  const local = h.shmem.local();
  const peers = h.peers();
  // Each owner's signal is passed on to every other host's source as it comes, owner by owner, so that a
  // source, which waits for them in order, names the owner that never came, on every host. With dedup a
  // host's partials go before the last owner's signal (the source reduces only once it has them all).
  const anyAborted = new Array<boolean>(c.nodes).fill(false);
  for (let g = 0; g < c.ranksPerNode; g++) {
    const d = rankAt(h, me, g);
    for (let host = 0; host < c.nodes; host++) {
      const back = rowsBack[host];
      if (host === me || !back) continue;
      const s = rankAt(h, host, localOf(h, h.rank));
      const aborted = waitOne(railOutboxSignalOffset(h.layout, c, slot, host, g), call, d, 'combine');
      anyAborted[host] ||= aborted;
      if (!c.dedup && !aborted && back.live) {
        for (const row of back.rows[g]) {
          const from = railOutboxRowOffset(h.layout, c, slot, host, row);
          h.putTo(peers, s, combineRowOffset(h.layout, c, slot, row), local.subarray(from, from + rb));
        }
      }
      if (c.dedup && g === c.ranksPerNode - 1 && back.live && !anyAborted[host]) preReduce(h, slot, host, s);
      h.shmem.fence();
      h.shmem.signal(
        s,
        signalOffset(h.layout.combineSignal, slot, d),
        aborted ? BigInt(call) | ABORT_BIT : BigInt(call),
      );
    }
  }
}

/**
 * dedup, as rail peer of source s on host `host`: per token of s's dispatch message, the partials this
 * host's owners left in the outbox at the token's carrier slots, summed in slot order (f32, the first
 * taken as it is) and rounded once, into s's combine buffer at the first of those slots.
 */
function preReduce(h: RankHeap, slot: number, host: number, s: number): void {
  const c = h.config;
  const { topk: k, hidden: H } = c;
  const M = railMessageLayout(c);
  const local = h.shmem.local();
  const msg = new Int32Array(
    local.buffer,
    local.byteOffset + railInboxOffset(h.layout, c, slot, host),
    M.bytes / 4,
  );
  const outbox = new Uint16Array(
    local.buffer,
    local.byteOffset + railOutboxRowOffset(h.layout, c, slot, host, 0),
    h.layout.combineRows * H,
  );
  const row = new Uint16Array(H);
  const offs: number[] = [];
  const peers = h.peers();
  for (let i = 0; i < msg[0]; i++) {
    const t = msg[(M.tokens + i * M.tokenBytes) / 4];
    const mask = msg[(M.tokens + i * M.tokenBytes) / 4 + 1];
    if (mask === 0) continue; // (no carrier slot: nothing to send; buildMessage never writes one)
    offs.length = 0;
    for (let j = 0; j < k; j++) if ((mask >>> j) & 1) offs.push((t * k + j) * H);
    sumPartialsBf16(outbox, offs, H, row, 0);
    const first = 31 - Math.clz32(mask & -mask); // the lowest slot
    h.putTo(peers, s, combineRowOffset(h.layout, c, slot, t * k + first), new Uint8Array(row.buffer));
  }
}

/**
 * This rank abandons call `call`: every rank that would wait for it learns it through the paths its data
 * takes. Dispatch: its own host's ranks directly, and for every other host the rail peer's inbox (who
 * signals its host for it). Combine: its own host's sources directly, and the rail peers on its host for
 * the sources on other hosts (their outboxes). As rail peer it still forwards what others send through
 * it (the caller runs forwardRailMessages / forwardRailCombine after this), so that every rank learns of
 * the call's end from this rank, and names it.
 */
export function railAbort(h: RankHeap, phase: 'dispatch' | 'combine', call: number): void {
  const c = h.config;
  const slot = call & 1;
  const v = BigInt(call) | ABORT_BIT;
  const me = hostOf(h, h.rank);
  const mine = localOf(h, h.rank);
  const hostRanks = Array.from({ length: c.ranksPerNode }, (_, g) => rankAt(h, me, g));
  const region = phase === 'dispatch' ? h.layout.dispatchSignal : h.layout.combineSignal;
  for (const d of hostRanks) h.shmem.signal(d, signalOffset(region, slot, h.rank), v);
  for (let host = 0; host < c.nodes; host++) {
    if (host === me) continue;
    const rail = rankAt(h, host, mine);
    if (phase === 'dispatch') h.shmem.signal(rail, signalOffset(h.layout.railInboxSignal, slot, me), v);
    else
      for (const p of hostRanks) h.shmem.signal(p, railOutboxSignalOffset(h.layout, c, slot, host, mine), v);
  }
}
