// One rank of test/nccl.test.ts: joins an NCCL communicator through the launcher's store and moves
// patterned bytes between GPUs (a ring, then every pair at once in one group), checking every byte.
import { rankMain } from '../../src/cli/rank-io.js';
import type { NcclError } from '../../src/errors.js';
import { readRankEnv, storeFromEnv } from '../../src/launch/env.js';
import { loadNccl, NcclComm } from '../../src/net/nccl.js';
import { loadDriver } from '../../src/shmem/cuda/driver.js';

export interface NcclRankTask {
  bytes: number;
  rounds: number;
  timeoutMs: number;
  /** Give each rank its own NCCL_HOSTID, so NCCL takes its network transport (sockets) between them. */
  simulateHosts: boolean;
  /** A rank that never joins the communicator (it leaves at once): the others must time out, naming the call. */
  absentRank?: number;
}

export interface NcclRankResult {
  /** What init threw, where a rank expected it to fail (absentRank). */
  initError?: { code: string; message: string; call: unknown; ms: number };
  version: number;
  checked: number;
  wrong: number;
  firstWrong: string | null;
}

/** Byte i of what rank `src` sends rank `dst` in round `round`. */
function pattern(src: number, dst: number, round: number, i: number): number {
  return (src * 37 + dst * 11 + round * 5 + i * 7 + (i >> 8)) & 255;
}

await rankMain<NcclRankTask, NcclRankResult>(async (task, rank) => {
  const env = readRankEnv();
  if (!env) throw new Error('nccl-rank runs under the launcher');
  if (task.simulateHosts) {
    process.env.NCCL_HOSTID = `moe-a2a-test-host-${rank}`; // (read by NCCL at init, through getenv)
    process.env.NCCL_SOCKET_IFNAME ??= 'lo';
  }
  const store = await storeFromEnv(env, task.timeoutMs);
  const drv = loadDriver();
  drv.useDevice(env.localRank % drv.deviceCount);
  const lib = loadNccl();
  const W = env.world;
  if (task.absentRank !== undefined) {
    if (rank === task.absentRank) return { version: lib.version, checked: 0, wrong: 0, firstWrong: null };
    const t0 = performance.now();
    try {
      await NcclComm.init({ store, key: 'test/nccl-id', rank, world: W, timeoutMs: task.timeoutMs, lib });
    } catch (err) {
      const e = err as NcclError;
      const initError = {
        code: e.code,
        message: e.message,
        call: e.details?.call,
        ms: performance.now() - t0,
      };
      return { version: lib.version, checked: 0, wrong: 0, firstWrong: null, initError };
    }
    throw new Error('init succeeded without the absent rank');
  }
  const comm = await NcclComm.init({
    store,
    key: 'test/nccl-id',
    rank,
    world: W,
    timeoutMs: task.timeoutMs,
    lib,
  });
  const n = task.bytes;
  const send = Array.from({ length: W }, () => drv.memAlloc(n));
  const recv = Array.from({ length: W }, () => drv.memAlloc(n));
  const stream = drv.streamCreate({ nonBlocking: true });
  const host = new Uint8Array(n);
  let checked = 0;
  let wrong = 0;
  let firstWrong: string | null = null;
  const expectFrom = (src: number, round: number, buf: bigint) => {
    drv.memcpyDtoH(host, buf, n);
    for (let i = 0; i < n; i++) {
      checked++;
      if (host[i] !== pattern(src, rank, round, i)) {
        wrong++;
        firstWrong ??= `round ${round}, from rank ${src}, byte ${i}: ${host[i]}`;
      }
    }
  };
  for (let round = 0; round < task.rounds; round++) {
    for (let d = 0; d < W; d++)
      drv.memcpyHtoD(
        send[d],
        Uint8Array.from({ length: n }, (_, i) => pattern(rank, d, round, i)),
      );
    drv.synchronizeContext();
    // a ring: to the next rank, from the previous one
    const next = (rank + 1) % W;
    const prev = (rank + W - 1) % W;
    comm.groupP2p(
      [
        { kind: 'send', ptr: send[next], bytes: n, peer: next },
        { kind: 'recv', ptr: recv[prev], bytes: n, peer: prev },
      ],
      stream,
    );
    drv.streamSynchronize(stream);
    expectFrom(prev, round, recv[prev]);
    // every pair at once, in one group (what an all-to-all over the network engine issues)
    const ops = [];
    for (let d = 0; d < W; d++) {
      if (d === rank) continue;
      ops.push({ kind: 'send' as const, ptr: send[d], bytes: n, peer: d });
      ops.push({ kind: 'recv' as const, ptr: recv[d], bytes: n, peer: d });
    }
    comm.groupP2p(ops, stream);
    drv.streamSynchronize(stream);
    for (let s = 0; s < W; s++) if (s !== rank) expectFrom(s, round, recv[s]);
  }
  comm.destroy();
  for (const p of [...send, ...recv]) drv.memFree(p);
  drv.streamDestroy(stream);
  await store.barrier('test/nccl-done', W, task.timeoutMs);
  await store.close();
  return { version: lib.version, checked, wrong, firstWrong };
});
