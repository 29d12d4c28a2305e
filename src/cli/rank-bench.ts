import { createGroup, type TransportName } from '../create.js';
import type { EpGroup } from '../ep/api.js';
import { type EpConfigInput, resolveConfig } from '../ep/config.js';
import type { DispatchPath, DispatchPathRequest } from '../ep/dispatch-path.js';
import { expertShape } from '../ep/expert-layout.js';
import { mixSeed, Rng, randomBf16, randomTopk, randomWeights } from '../ep/random.js';
import { hostTensor } from '../ep/tensor.js';
import type { DeviceTensor } from '../shmem/cuda/device-tensor.js';
import { bareLaunchUs, copyBandwidth, type Floors, measureFloors, median } from '../shmem/cuda/floors.js';
import { CudaEpGroup } from '../shmem/cuda/group.js';
import { GRAPHS_PER_SEQUENCE, type LaunchMode } from '../shmem/cuda/launch-queue.js';
import { groupIo } from './device-io.js';

export interface BenchTask {
  kind: 'bench';
  transport: TransportName;
  timeoutMs: number;
  config: EpConfigInput;
  tokens: number;
  iters: number;
  warmup: number;
  seed: number;
  /** cuda: the dispatch path to ask the group for (default 'auto'). */
  dispatchPath?: DispatchPathRequest;
  /** cuda: also record phase stamps over this many step replays (0: none). */
  stampIters?: number;
}

/** `moe-a2a bench`'s floors (cuda, W ranks): measured once per run on a group sized for them. */
export interface FloorsTask {
  kind: 'floors';
  transport: 'cuda';
  timeoutMs: number;
  world: number;
}

/**
 * A group whose expertX region (the floors' scratch) holds 256 MiB per rank: one expert per rank of
 * 16384 bf16 rows of 8192 values (the config must allow that many rows to reach one expert).
 */
export function floorsConfig(world: number): EpConfigInput {
  return {
    world,
    numExperts: world,
    hidden: 8192,
    topk: 1,
    maxTokensPerRank: 16384,
    fp8: false,
    maxRowsPerPeer: 16384,
    maxRowsPerExpert: 16384,
  };
}

export async function runFloorsRank(task: FloorsTask): Promise<Floors> {
  const group = await createGroup({
    ...floorsConfig(task.world),
    transport: 'cuda',
    timeoutMs: task.timeoutMs,
  });
  try {
    return measureFloors(group);
  } finally {
    await group.close();
  }
}

/** What only the cuda transport measures: graph replays, the host's own cost, the copy yardstick. */
export interface CudaBenchExtras {
  /** Bytes of this rank's symmetric heap. */
  heapBytes: number;
  /** This rank's combines came back as flagged partials (README, "Flagged partials"). */
  flagged: boolean;
  /**
   * The serving loop: microseconds per layer (dispatch + combine) on this rank, the mean over
   * `iters` layers issued back to back with no host barrier between them (ranks aligned once, on the
   * device, before the loop). Graph: GraphCall.step() replays; eager: dispatch() + combine() calls.
   */
  loopGraphUs: number;
  loopEagerUs: number;
  /** Graph replays of dispatch alone and combine alone, each right after a device barrier (ep_barrier). */
  graphDispatchUs: number[];
  graphCombineUs: number[];
  /** Dispatch + combine replayed as one graph (GraphCall.step) right after a device barrier. */
  graphStepUs: number[];
  /** Per stamped step replay, the EP_STAMPS phase stamps (%globaltimer ns; 0 = not written). */
  stamps?: number[][];
  /** Host time (us, CPU clock) of one call, median over many calls without waiting for the device. */
  hostDispatchUs: number;
  hostCombineUs: number;
  /** The same when every call's arguments are new to the group (its graphs are updated). */
  hostFreshDispatchUs: number;
  hostFreshCombineUs: number;
  /** The same with launchMode 'direct' (each kernel launched on its own). */
  hostDirectDispatchUs: number;
  hostDirectCombineUs: number;
  hostGraphDispatchUs: number;
  hostGraphCombineUs: number;
  hostBareLaunchUs: number;
  /** How the eager calls above launched their kernels (the group's launchMode, see LaunchMode). */
  eagerLaunchMode: LaunchMode;
  /** ep_copy_bench on this GPU: GB/s counting bytes read plus written (rank 0 only). */
  copyGBs?: number;
}

export interface BenchRankResult {
  cuda?: CudaBenchExtras;
  /** The path the group took. */
  dispatchPath: DispatchPath;
  /** Per timed iteration, microseconds on this rank. */
  dispatchUs: number[];
  combineUs: number[];
  /** Rows this rank sent per dispatch (valid (token, expert) pairs) and their bytes. */
  rowsSent: number;
  bytesSent: number;
}

/** Input sets rotated between iterations, so no iteration reuses the last one's data. */
const INPUT_SETS = 2;

interface CudaSet {
  x: DeviceTensor;
  idx: DeviceTensor;
  w: DeviceTensor;
}

/**
 * Median host microseconds of `first(i)` and of the function it returns, over 400 calls made back to
 * back (the stream is synchronised every 16 calls to keep the launch queue short).
 */
function hostLoop(g: CudaEpGroup, first: (i: number) => () => void): { first: number; second: number } {
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < 400; i++) {
    const t0 = performance.now();
    const second = first(i);
    const t1 = performance.now();
    second();
    const t2 = performance.now();
    a.push((t1 - t0) * 1000);
    b.push((t2 - t1) * 1000);
    if (i % 16 === 15) g.synchronize();
  }
  g.synchronize();
  return { first: median(a), second: median(b) };
}

/**
 * Mean device microseconds per layer of `layer()` issued `n` times back to back (after `warmup` untimed
 * ones), the ranks aligned once on the device before the timed ones: what a serving loop sees.
 */
function servingLoopUs(g: CudaEpGroup, n: number, warmup: number, layer: (i: number) => void): number {
  for (let i = 0; i < warmup; i++) layer(i);
  g.deviceBarrier();
  return (
    g.timeOnDevice(() => {
      for (let i = 0; i < n; i++) layer(i);
    }) / n
  );
}

async function cudaExtras(
  g: CudaEpGroup,
  sets: CudaSet[],
  expertOut: DeviceTensor,
  task: BenchTask,
  rank: number,
): Promise<CudaBenchExtras> {
  const graph = g.captureGraph(task.tokens);
  const eagerLaunchMode = g.launchMode;
  try {
    g.copyInto(graph.expertOut, expertOut);
    const graphDispatchUs: number[] = [];
    const graphCombineUs: number[] = [];
    const graphStepUs: number[] = [];
    for (let i = 0; i < task.warmup + task.iters; i++) {
      const set = sets[i % sets.length];
      g.copyInto(graph.x, set.x);
      g.copyInto(graph.topkIdx, set.idx);
      g.copyInto(graph.topkWeights, set.w);
      // each timed replay starts right after a barrier on the device: no rank's time holds a peer's lateness
      g.deviceBarrier();
      const d = g.timeOnDevice(() => graph.dispatch());
      g.deviceBarrier();
      const c = g.timeOnDevice(() => graph.combine());
      g.deviceBarrier();
      const s = g.timeOnDevice(() => graph.step());
      if (i >= task.warmup) {
        graphDispatchUs.push(d);
        graphCombineUs.push(c);
        graphStepUs.push(s);
      }
    }
    // the serving loop: layers back to back (the graph's bound inputs hold the last set copied above)
    const loopGraphUs = servingLoopUs(g, task.iters, task.warmup, () => graph.step());
    const loopEagerUs = servingLoopUs(g, task.iters, task.warmup, (i) => {
      const set = sets[i % sets.length];
      const r = g.dispatch(set.x, set.idx, { topkWeights: set.w });
      g.combine(expertOut, r.handle);
    });
    let stamps: number[][] | undefined;
    if ((task.stampIters ?? 0) > 0) {
      g.setStamps(true);
      const stamped = g.captureGraph(task.tokens);
      try {
        g.copyInto(stamped.x, sets[0].x);
        g.copyInto(stamped.topkIdx, sets[0].idx);
        g.copyInto(stamped.topkWeights, sets[0].w);
        g.copyInto(stamped.expertOut, expertOut);
        stamps = [];
        for (let i = 0; i < task.warmup + (task.stampIters ?? 0); i++) {
          g.clearStamps();
          g.deviceBarrier();
          stamped.step();
          const st = g.readStamps();
          if (i >= task.warmup) stamps.push(st);
        }
      } finally {
        g.setStamps(false);
        stamped.close();
      }
    }
    // host cost: the CPU time of issuing calls, measured back to back without waiting for the device.
    // `sets` alternate (a caller rotating two buffers); `fresh` holds one more input set than the
    // group keeps graphs per sequence, so in 'graph' mode every call finds new arguments.
    const fresh = Array.from({ length: GRAPHS_PER_SEQUENCE + 1 }, (_, j) => {
      const from = sets[j % sets.length];
      const copy = (t: DeviceTensor) => {
        const c = g.upload(hostTensor(t.dtype, [...t.shape]));
        g.copyInto(c, t);
        return c;
      };
      return { x: copy(from.x), idx: copy(from.idx), w: copy(from.w) };
    });
    const eager = (mode: LaunchMode, inputs: CudaSet[]) => {
      g.launchMode = mode;
      return hostLoop(g, (i) => {
        const set = inputs[i % inputs.length];
        const r = g.dispatch(set.x, set.idx, { topkWeights: set.w });
        return () => g.combine(expertOut, r.handle);
      });
    };
    // (between hosts eager calls launch directly: no cached graphs to time)
    const graphs = g.config.nodes === 1;
    await g.barrier();
    const direct = eager('direct', sets);
    await g.barrier();
    const cached = graphs ? eager('graph', sets) : direct;
    await g.barrier();
    const updated = graphs ? eager('graph', fresh) : direct;
    for (const set of fresh) for (const t of [set.x, set.idx, set.w]) t.free();
    await g.barrier();
    const replay = hostLoop(g, () => {
      graph.dispatch();
      return () => graph.combine();
    });
    return {
      heapBytes: g.heapBytes,
      flagged: g.flaggedPartials(task.tokens),
      loopGraphUs,
      loopEagerUs,
      graphDispatchUs,
      graphCombineUs,
      graphStepUs,
      stamps,
      hostDispatchUs: cached.first,
      hostCombineUs: cached.second,
      hostFreshDispatchUs: updated.first,
      hostFreshCombineUs: updated.second,
      hostDirectDispatchUs: direct.first,
      hostDirectCombineUs: direct.second,
      hostGraphDispatchUs: replay.first,
      hostGraphCombineUs: replay.second,
      hostBareLaunchUs: bareLaunchUs(g),
      eagerLaunchMode,
      copyGBs: rank === 0 ? copyBandwidth(g, 512 * 1024 * 1024) : undefined,
    };
  } finally {
    g.launchMode = eagerLaunchMode;
    graph.close();
  }
}

/** The routing every rank uses in a bench: uniform random experts, nothing dropped. */
export function benchTopk(
  seed: number,
  set: number,
  rank: number,
  tokens: number,
  k: number,
  numExperts: number,
): Int32Array {
  return randomTopk(new Rng(mixSeed(seed, set, rank, 1)), tokens, k, numExperts, 0);
}

/** Times dispatch and combine on this rank: CUDA events on cuda, the host clock around each call on cpu. */
export async function runBenchRank(
  task: BenchTask,
  rank: number,
  progress: (line: string) => void,
): Promise<BenchRankResult> {
  const cfg = resolveConfig(task.config);
  const T = task.tokens;
  const group: EpGroup<unknown> = await createGroup({
    ...task.config,
    transport: task.transport,
    timeoutMs: task.timeoutMs,
    dispatchPath: task.dispatchPath,
  });
  try {
    const io = groupIo;
    const sets = Array.from({ length: INPUT_SETS }, (_, s) => {
      const rng = new Rng(mixSeed(task.seed, s, rank, 2));
      return {
        x: io.upload(group, hostTensor('bf16', [T, cfg.hidden], randomBf16(rng, T * cfg.hidden))),
        idx: io.upload(
          group,
          hostTensor('i32', [T, cfg.topk], benchTopk(task.seed, s, rank, T, cfg.topk, cfg.numExperts)),
        ),
        w: io.upload(group, hostTensor('f32', [T, cfg.topk], randomWeights(rng, T * cfg.topk))),
      };
    });
    const outRng = new Rng(mixSeed(task.seed, rank, 3));
    const expertOut = io.upload(
      group,
      hostTensor('bf16', expertShape(cfg, cfg.hidden), randomBf16(outRng, cfg.expertRows * cfg.hidden)),
    );
    // device-event timing where the transport has it (cuda), else the host clock around a finished call
    const onDevice = (group as { timeOnDevice?: (fn: () => void) => number }).timeOnDevice?.bind(group);
    const time = (fn: () => void): number => {
      if (onDevice) return onDevice(fn);
      const t0 = performance.now();
      fn();
      return (performance.now() - t0) * 1000;
    };
    const dispatchUs: number[] = [];
    const combineUs: number[] = [];
    let lastReport = performance.now();
    const total = task.warmup + task.iters;
    // start every rank's call together, so that no rank's time includes waiting for a late peer: on the
    // device where there is one (a host barrier would leave the ranks' launch skew in the time)
    const align = async () => {
      if (group instanceof CudaEpGroup) group.deviceBarrier();
      else await group.barrier();
    };
    for (let i = 0; i < total; i++) {
      const set = sets[i % INPUT_SETS];
      await align();
      let handle: Parameters<typeof group.combine>[1] | undefined;
      const d = time(() => {
        handle = group.dispatch(set.x, set.idx, { topkWeights: set.w }).handle;
      });
      await align();
      const c = time(() => group.combine(expertOut, handle!));
      if (i >= task.warmup) {
        dispatchUs.push(d);
        combineUs.push(c);
      }
      const now = performance.now();
      if (rank === 0 && now - lastReport > 2000) {
        lastReport = now;
        progress(`T=${T}: iteration ${i + 1}/${total}`);
      }
    }
    const rowsSent = T * cfg.topk;
    const result: BenchRankResult = {
      dispatchPath: group.dispatchPath,
      dispatchUs,
      combineUs,
      rowsSent,
      bytesSent: rowsSent * cfg.dispatchRowBytes,
    };
    if (group instanceof CudaEpGroup) {
      result.cuda = await cudaExtras(group, sets as CudaSet[], expertOut as DeviceTensor, task, rank);
    }
    return result;
  } finally {
    await group.close();
  }
}
