import type { EpConfig } from '../../ep/config.js';
import type { HeapLayout } from '../../ep/layout.js';
import { railOutboxSignalOffset, signalOffset } from '../../ep/layout.js';
import { EP_ABORT_BIT } from './args.js';
import type { CudaDriver } from './driver.js';
import type { CudaHeap } from './heap.js';

/**
 * What a rank process that exits with its group open does (it threw, or was stopped): it writes the
 * abort value into every signal word a peer could be waiting on for it, so they fail at once with
 * PeerFailedError naming it instead of waiting for the timeout. `calls`: the dispatches it has begun.
 */
export function abortPeersOnExit(
  drv: CudaDriver,
  heap: CudaHeap,
  L: HeapLayout,
  cfg: EpConfig,
  calls: number,
): void {
  const world = cfg.world;
  const n = BigInt(calls);
  const rank = heap.rank;
  const word = (r: typeof L.countSignal, call: bigint): [bigint, bigint] => [
    BigInt(signalOffset(r, Number(call & 1n), rank)),
    call | EP_ABORT_BIT,
  ];
  // the next call's counts (direct) or rows (staged), and every word of the current call a peer may
  // still wait on
  const words = [
    word(L.countSignal, n + 1n),
    word(L.dispatchSignal, n + 1n),
    word(L.countSignal, n),
    word(L.dispatchSignal, n),
    word(L.combineSignal, n),
  ];
  // between hosts: this rank's combine rows for the sources on other hosts pass through its host's rail
  // peers (their outboxes): those of the current call are not coming either, so the sources hear of it
  const G = cfg.ranksPerNode;
  const host = Math.floor(rank / G);
  const relayed: Array<[bigint, bigint]> = [];
  for (let h = 0; h < cfg.nodes; h++)
    if (h !== host)
      relayed.push([BigInt(railOutboxSignalOffset(L, cfg, Number(n & 1n), h, rank % G)), n | EP_ABORT_BIT]);
  for (let p = 0; p < world; p++) {
    if (p === rank || heap.peers[p] === 0n) continue; // (another host's: it learns through its rail peer, or times out)
    for (const [off, v] of cfg.nodes > 1 ? [...words, ...relayed] : words) {
      try {
        drv.memcpyHtoD(heap.peers[p] + off, BigUint64Array.of(v), 8);
      } catch {
        // the process is going away; a peer that misses this still times out
      }
    }
  }
}
