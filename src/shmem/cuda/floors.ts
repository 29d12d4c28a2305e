import type { CudaEpGroup } from './group.js';

/**
 * The floors a dispatch + combine is measured against, on the group's own GPUs and heaps (kernels/ep_bench.cuh
 * section 8), so that every figure of a bench run is a ratio on the same machine:
 * - the all-to-all write rate: every rank writes the same bytes to every peer at once (a one-pair copy
 *   overstates what an all-to-all gets, so it is measured too, for comparison);
 * - a signal's one-way trip over NVLink: a 64-bit flag ping-ponged between ranks 0 and 1;
 * - the start-to-start time of consecutive small kernels in one CUDA graph, plain and as programmatic
 *   dependent launches.
 * Collective: every rank calls measureFloors at once, with no call of the group in flight.
 */
export interface Floors {
  /** Bytes each rank wrote to each peer in the all-to-all and one-pair copies. */
  bytesPerPeer: number;
  /** Bytes written to peers per second by this rank, GB/s, every peer at once (median of reps). */
  alltoallGBs: number | null;
  /** Rank 0 alone writing to rank 1, GB/s (null on other ranks). */
  onePairGBs: number | null;
  /** One way of a release-store / acquire-poll flag between ranks 0 and 1, microseconds (rank 0). */
  signalOneWayUs: number | null;
  /** Start-to-start of consecutive empty kernels in one graph, microseconds. */
  graphKernelUs: number;
  /** The same as programmatic dependent launches. */
  graphKernelPdlUs: number;
}

/** FloorArgs (kernels/ep_bench.cuh, section 8): 7 u64, then rank, world, iters, reserved (i32). */
const FLOOR_ARGS_BYTES = 72;
const A2A_BLOCK = 512;
const A2A_CHUNK = 16 * 4 * A2A_BLOCK; // bytes one block copies per step
const PINGPONG_ITERS = 4000;
const PINGPONG_WARM = 16; // round trips the kernel leaves out of its clock
const GRAPH_KERNELS = 64;

function floorArgs(f: {
  peerBases: bigint;
  src?: bigint;
  regionOff: number;
  bytesPerPeer?: number;
  flagOff?: number;
  result?: bigint;
  epoch?: bigint;
  rank: number;
  world: number;
  iters?: number;
}): Uint8Array {
  const b = Buffer.alloc(FLOOR_ARGS_BYTES);
  const u64 = [
    f.peerBases,
    f.src ?? 0n,
    f.regionOff,
    f.bytesPerPeer ?? 0,
    f.flagOff ?? 0,
    f.result ?? 0n,
    f.epoch ?? 0n,
  ];
  u64.forEach((v, i) => {
    b.writeBigUInt64LE(BigInt(v), 8 * i);
  });
  b.writeInt32LE(f.rank, 56);
  b.writeInt32LE(f.world, 60);
  b.writeInt32LE(f.iters ?? 0, 64);
  return b;
}

/** The middle value (the upper one of an even count). */
export function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[s.length >> 1];
}

let runs = 0;

export function measureFloors(g: CudaEpGroup, reps = 10): Floors {
  const { drv, stream, module, peerBases, smCount, scratch, timeOnDevice } = g.benchContext();
  const W = g.config.world;
  const rank = g.rank;
  const fn = (name: string) => drv.moduleGetFunction(module, name);
  // the scratch region holds W blocks of bytesPerPeer (one per source), then the ping-pong flag
  const perPeer = Math.floor((scratch.bytes - 256) / W / A2A_CHUNK) * A2A_CHUNK;
  const bytesPerPeer = Math.min(64 * 2 ** 20, perPeer);
  const flagOff = scratch.offset + W * bytesPerPeer;
  const src = drv.memAlloc(Math.max(bytesPerPeer, 16));
  const result = drv.memAlloc(8);
  try {
    drv.memsetD8Async(src, 0x5a, bytesPerPeer, stream);
    const copy = (world: number, who: number) =>
      drv.prepareLaunch(
        fn('ep_floor_alltoall'),
        floorArgs({ peerBases, src, regionOff: scratch.offset, bytesPerPeer, rank: who, world }),
      );
    const timeCopy = (launch: (() => void) | null) => {
      const t: number[] = [];
      for (let i = 0; i < reps + 1; i++) {
        g.deviceBarrier();
        const us = timeOnDevice(() => launch?.());
        if (i > 0) t.push(us);
      }
      return median(t);
    };
    let alltoallGBs: number | null = null;
    let onePairGBs: number | null = null;
    if (W > 1 && bytesPerPeer > 0) {
      const all = copy(W, rank);
      const us = timeCopy(() => all.launch([4 * smCount, 1, 1], [A2A_BLOCK, 1, 1], 0, stream));
      alltoallGBs = ((W - 1) * bytesPerPeer) / (us * 1e3);
      // rank 0 alone to rank 1 (as a world of two): what a one-pair test reports
      const pair = copy(2, 0);
      const pairUs = timeCopy(
        rank === 0 ? () => pair.launch([4 * smCount, 1, 1], [A2A_BLOCK, 1, 1], 0, stream) : null,
      );
      if (rank === 0) onePairGBs = bytesPerPeer / (pairUs * 1e3);
    }
    let signalOneWayUs: number | null = null;
    if (W > 1) {
      runs++;
      const ping = drv.prepareLaunch(
        fn('ep_floor_pingpong'),
        floorArgs({
          peerBases,
          regionOff: 0,
          flagOff,
          result,
          epoch: BigInt(runs) << 40n,
          rank,
          world: W,
          iters: PINGPONG_ITERS,
        }),
      );
      g.deviceBarrier();
      ping.launch([1, 1, 1], [32, 1, 1], 0, stream);
      g.synchronize();
      if (rank === 0) {
        const out = new BigUint64Array(1);
        drv.memcpyDtoH(out, result, 8);
        if (out[0] !== 0xffff_ffff_ffff_ffffn)
          signalOneWayUs = Number(out[0]) / (2 * (PINGPONG_ITERS - PINGPONG_WARM)) / 1e3;
      }
    }
    const empty = drv.prepareLaunch(
      fn('ep_floor_empty'),
      floorArgs({ peerBases, regionOff: 0, rank, world: W }),
    );
    const graphUs = (dependent: boolean) => {
      drv.streamBeginCapture(stream, 'thread-local');
      let graph: ReturnType<typeof drv.streamEndCapture>;
      try {
        for (let i = 0; i < GRAPH_KERNELS; i++)
          empty.launch([1, 1, 1], [32, 1, 1], 0, stream, dependent && i > 0);
      } finally {
        graph = drv.streamEndCapture(stream);
      }
      const exec = drv.graphInstantiate(graph);
      drv.graphDestroy(graph);
      try {
        const t: number[] = [];
        for (let i = 0; i < 21; i++) {
          const us = timeOnDevice(() => drv.graphLaunch(exec, stream));
          if (i > 0) t.push(us / GRAPH_KERNELS);
        }
        return median(t);
      } finally {
        drv.graphExecDestroy(exec);
      }
    };
    return {
      bytesPerPeer,
      alltoallGBs,
      onePairGBs,
      signalOneWayUs,
      graphKernelUs: graphUs(false),
      graphKernelPdlUs: graphUs(true),
    };
  } finally {
    g.synchronize();
    drv.memFree(src);
    drv.memFree(result);
  }
}

/**
 * The device's own copy bandwidth (GB/s counting bytes read plus bytes written) for `bytes`-sized
 * buffers: the yardstick for the kernels' bandwidth. Median of `reps` copies by ep_copy_bench.
 */
export function copyBandwidth(g: CudaEpGroup, bytes: number, reps = 20): number {
  const { drv, stream, module, smCount, timeOnDevice } = g.benchContext();
  const src = drv.memAlloc(bytes);
  const dst = drv.memAlloc(bytes);
  try {
    drv.memsetD8Async(src, 1, bytes, stream);
    const args = Buffer.alloc(24); // CopyArgs: dst, src, bytes
    args.writeBigUInt64LE(dst, 0);
    args.writeBigUInt64LE(src, 8);
    args.writeBigUInt64LE(BigInt(bytes), 16);
    const launcher = drv.prepareLaunch(drv.moduleGetFunction(module, 'ep_copy_bench'), args);
    const times: number[] = [];
    for (let i = 0; i < reps + 2; i++) {
      const us = timeOnDevice(() => launcher.launch([8 * smCount, 1, 1], [256, 1, 1], 0, stream));
      if (i >= 2) times.push(us);
    }
    return (2 * bytes) / (median(times) * 1e3);
  } finally {
    drv.memFree(src);
    drv.memFree(dst);
  }
}

/**
 * The host's cost of one bare kernel launch through the FFI (an empty ep_copy_bench), median over `n`
 * launches in microseconds: the floor under the host cost of every eager call.
 */
export function bareLaunchUs(g: CudaEpGroup, n = 200): number {
  const { drv, stream, module } = g.benchContext();
  const launcher = drv.prepareLaunch(drv.moduleGetFunction(module, 'ep_copy_bench'), Buffer.alloc(24));
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    launcher.launch([1, 1, 1], [32, 1, 1], 0, stream);
    times.push((performance.now() - t0) * 1000);
    if (i % 16 === 15) g.synchronize(); // keep the launch queue short
  }
  g.synchronize();
  return median(times);
}
