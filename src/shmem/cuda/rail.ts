import type { EpConfig } from '../../ep/config.js';
import {
  type HeapLayout,
  type RailCombineLayout,
  type RailMessageLayout,
  railCombineLayout,
  railMessageLayout,
} from '../../ep/layout.js';
import { ConfigError } from '../../errors.js';
import { readRankEnv, storeFromEnv } from '../../launch/env.js';
import { NcclComm, type NcclLib, type P2pOp } from '../../net/nccl.js';
import type { CudaDriver, CuStream } from './driver.js';
import type { StreamWatch } from './stream-watch.js';

/**
 * Between hosts on the cuda transport (config.nodes > 1; README, "Between hosts"; kernels/ep_rail.cuh):
 * this rank's rail, the NCCL communicator of the ranks of its local index (one per host, its rank there
 * is its host), the message buffers, and the two exchanges each call makes on the group's stream. Every
 * message has a fixed size (railMessageLayout, railCombineLayout), so the exchange needs no count from
 * the device and a captured graph replays it.
 */
export interface CudaRail {
  readonly host: number;
  readonly msg: RailMessageLayout;
  readonly comb: RailCombineLayout;
  /** Device buffers the kernels read and write (EpArgs rail*). */
  readonly buffers: {
    readonly railSend: bigint;
    readonly railRecv: bigint;
    readonly railTokenOf: bigint;
    readonly railCombSend: bigint;
    readonly railCombRecv: bigint;
  };
  /** Enqueues this call's dispatch or combine messages to and from every other host on `stream`. */
  exchange(kind: 'dispatch' | 'combine', stream: CuStream): void;
  /** NCCL's asynchronous error on the rail (a peer's connection broke), or null. */
  asyncError(): string | null;
  /** ncclCommAbort: transfers in flight end (the group is broken). */
  abort(): void;
  /** Frees the communicator (aborts it when it was aborted or cannot finish). */
  close(): void;
}

/**
 * On one machine, `MOE_A2A_SIMULATED_HOSTS=1` makes its ranks play config.nodes hosts: each host's
 * ranks get their own NCCL_HOSTID, so NCCL moves the messages between them as between hosts (through its
 * network transport; `NCCL_SOCKET_IFNAME=lo` keeps that on the loopback). NCCL reads NCCL_HOSTID once a
 * process: one set otherwise (by the user, or by a group that put this process on another host) is refused.
 */
export const SIMULATED_HOSTS_VAR = 'MOE_A2A_SIMULATED_HOSTS';

/**
 * Waits for the stream, which between hosts may hold an NCCL transfer a peer never answers: up to
 * `patienceMs` without progress, or until NCCL reports a broken connection. Returns null when the stream
 * finished; else aborts the rail (its transfers end), gives the kernels after them `patienceMs` more to
 * finish, and returns why it gave up.
 */
export function waitOrAbortRail(rail: CudaRail, watch: StreamWatch, patienceMs: number): string | null {
  let ncclError: string | null = null;
  const broke = () => {
    ncclError = rail.asyncError();
    return ncclError !== null;
  };
  if (watch.wait(patienceMs, broke)) return null;
  rail.abort();
  const finished = watch.wait(patienceMs);
  const why = ncclError
    ? `NCCL reported: ${ncclError as string}`
    : `it made no progress within ${patienceMs} ms (a rank on another host stopped answering)`;
  return finished ? why : `${why}; the stream did not finish after the abort either`;
}

/**
 * One exchange of each kind at creation, with messages of call 0 (which no call takes for its own), so
 * that NCCL connects the rail now and never inside a graph capture. Every rank does it, in this order.
 * Returns null, or why it failed (the rail is aborted then).
 */
export function warmUpRail(
  drv: CudaDriver,
  rail: CudaRail,
  watch: StreamWatch,
  stream: CuStream,
  nodes: number,
  timeoutMs: number,
): string | null {
  drv.memsetD8Async(rail.buffers.railSend, 0, nodes * rail.msg.bytes, stream);
  drv.memsetD8Async(rail.buffers.railCombSend, 0, nodes * rail.comb.bytes, stream);
  rail.exchange('dispatch', stream);
  rail.exchange('combine', stream);
  watch.mark();
  return waitOrAbortRail(rail, watch, timeoutMs);
}

/**
 * The rail's message layouts and buffers: the messages out (`alloc`) and in (the heap's first inbox slot:
 * the cpu transport's rail peers write it, here NCCL receives into it), and the tokens' message indices.
 */
export function railBuffers(
  config: EpConfig,
  layout: HeapLayout,
  heapLocal: bigint,
  alloc: (bytes: number) => bigint,
): Pick<CudaRail, 'msg' | 'comb' | 'buffers'> {
  const msg = railMessageLayout(config);
  const comb = railCombineLayout(config, layout.stageRows);
  const N = config.nodes;
  const buffers = {
    railSend: alloc(N * msg.bytes),
    railRecv: heapLocal + BigInt(layout.railInbox.offset),
    railTokenOf: alloc(N * config.maxTokensPerRank * 4),
    railCombSend: alloc(N * comb.bytes),
    railCombRecv: alloc(N * comb.bytes),
  };
  return { msg, comb, buffers };
}

let railsOpened = 0;

export async function openCudaRail(
  config: EpConfig,
  layout: HeapLayout,
  heapLocal: bigint,
  rank: number,
  timeoutMs: number,
  alloc: (bytes: number) => bigint,
  lib?: NcclLib,
): Promise<CudaRail> {
  const G = config.ranksPerNode;
  const host = Math.floor(rank / G);
  const local = rank % G;
  const env = readRankEnv();
  if (!env) {
    throw new ConfigError(
      `nodes = ${config.nodes} needs one process per rank, started by \`moe-a2a launch\` on every host`,
      { fields: 'nodes' },
    );
  }
  if (process.env[SIMULATED_HOSTS_VAR] === '1') {
    const id = `moe-a2a-simulated-host-${host}`;
    process.env.NCCL_HOSTID ??= id;
    if (process.env.NCCL_HOSTID !== id) {
      throw new ConfigError(
        `${SIMULATED_HOSTS_VAR}=1: rank ${rank} would play host ${host}, but NCCL_HOSTID is already ${process.env.NCCL_HOSTID} in this process (set before, or by a group that put it on another host; NCCL reads it once a process): unset it, or give that group processes of its own`,
        { fields: 'nodes' },
      );
    }
  }
  const { msg, comb, buffers } = railBuffers(config, layout, heapLocal, alloc);
  const N = config.nodes;
  const seq = railsOpened++;
  const store = await storeFromEnv(env, timeoutMs);
  let comm: NcclComm;
  try {
    comm = await NcclComm.init({
      store,
      key: `moe-a2a/rail${seq}/${local}`,
      rank: host,
      world: N,
      timeoutMs,
      lib,
    });
  } finally {
    await store.close();
  }
  const ops = (send: bigint, recv: bigint, bytes: number): P2pOp[] => {
    const out: P2pOp[] = [];
    for (let h = 0; h < N; h++) {
      if (h === host) continue;
      out.push({ kind: 'send', ptr: send + BigInt(h * bytes), bytes, peer: h });
      out.push({ kind: 'recv', ptr: recv + BigInt(h * bytes), bytes, peer: h });
    }
    return out;
  };
  const dispatchOps = ops(buffers.railSend, buffers.railRecv, msg.bytes);
  const combineOps = ops(buffers.railCombSend, buffers.railCombRecv, comb.bytes);
  let aborted = false;
  return {
    host,
    msg,
    comb,
    buffers,
    exchange(kind, stream) {
      comm.groupP2p(kind === 'dispatch' ? dispatchOps : combineOps, stream);
    },
    asyncError: () => comm.asyncError(),
    abort() {
      aborted = true;
      comm.abort();
    },
    close() {
      if (aborted) return;
      try {
        comm.destroy();
      } catch {
        comm.abort();
      }
    },
  };
}
