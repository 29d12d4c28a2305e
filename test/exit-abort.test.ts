// What a rank that exits with its group open writes into its peers' heaps (src/shmem/cuda/exit-abort.ts):
// every signal word a peer may wait on for it, on its own host only; between hosts also the outbox words
// through which its combine rows reach the sources on other hosts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { computeLayout, railOutboxSignalOffset, signalOffset, stagedRowsFor } from '../src/ep/layout.js';
import { EP_ABORT_BIT } from '../src/shmem/cuda/args.js';
import type { CudaDriver } from '../src/shmem/cuda/driver.js';
import { abortPeersOnExit } from '../src/shmem/cuda/exit-abort.js';
import type { CudaHeap } from '../src/shmem/cuda/heap.js';

test('an exiting rank aborts its own host only; between hosts also its rows through the rail peers', () => {
  const cfg = resolveConfig({
    world: 4,
    nodes: 2,
    numExperts: 8,
    hidden: 64,
    topk: 2,
    maxTokensPerRank: 4,
    fp8: false,
  });
  const L = computeLayout(cfg, stagedRowsFor(cfg));
  const base = [0x1000_0000n, 0x2000_0000n, 0n, 0n]; // rank 1 exits; rank 0 shares its host, 2 and 3 do not
  const writes: Array<[number, bigint, bigint]> = [];
  const drv = {
    memcpyHtoD: (dst: bigint, src: BigUint64Array) => {
      const peer = base.findIndex((b) => b !== 0n && dst >= b && dst < b + BigInt(L.totalBytes));
      writes.push([peer, dst - base[peer], src[0]]);
    },
  } as unknown as CudaDriver;
  const heap = { rank: 1, world: 4, local: base[1], peers: base } as unknown as CudaHeap;
  abortPeersOnExit(drv, heap, L, cfg, 3); // (call 3 is the current one)
  assert.ok(
    writes.every(([peer]) => peer === 0),
    'only rank 0 is mapped here',
  );
  const at = new Set(writes.map(([, off, v]) => `${off}=${v}`));
  const abort = (call: bigint) => call | EP_ABORT_BIT;
  for (const [off, v] of [
    [signalOffset(L.dispatchSignal, 0, 1), abort(4n)],
    [signalOffset(L.dispatchSignal, 1, 1), abort(3n)],
    [signalOffset(L.combineSignal, 1, 1), abort(3n)],
    // rank 0 relays for host 1's source of local index 0 (rank 2): rank 1 is owner 1 of its host
    [railOutboxSignalOffset(L, cfg, 1, 1, 1), abort(3n)],
  ] as const)
    assert.ok(at.has(`${off}=${v}`), `no abort at ${off}`);
  const oneHost = resolveConfig({
    world: 4,
    numExperts: 8,
    hidden: 64,
    topk: 2,
    maxTokensPerRank: 4,
    fp8: false,
  });
  const before = writes.length;
  abortPeersOnExit(drv, heap, computeLayout(oneHost, stagedRowsFor(oneHost)), oneHost, 3);
  assert.equal(writes.length - before, 5, 'one host: the five signal words, no outbox');
});
