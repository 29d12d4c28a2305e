import { createGroup, type TransportName } from '../create.js';
import type { EpGroup } from '../ep/api.js';
import { type EpConfigInput, resolveConfig } from '../ep/config.js';
import { mixSeed, Rng, randomBf16, randomTopk, randomWeights } from '../ep/random.js';
import { hostTensor } from '../ep/tensor.js';
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
}

export interface BenchRankResult {
  /** Per timed iteration, microseconds on this rank. */
  dispatchUs: number[];
  combineUs: number[];
  /** Rows this rank sent per dispatch (valid (token, expert) pairs) and their bytes. */
  rowsSent: number;
  bytesSent: number;
}

/** Input sets rotated between iterations, so no iteration reuses the last one's data. */
const INPUT_SETS = 2;

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
      hostTensor(
        'bf16',
        [cfg.expertsPerRank, cfg.expertCapacity, cfg.hidden],
        randomBf16(outRng, cfg.expertsPerRank * cfg.expertCapacity * cfg.hidden),
      ),
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
    for (let i = 0; i < total; i++) {
      const set = sets[i % INPUT_SETS];
      // start every rank's dispatch together, so that no rank's time includes waiting for a late peer
      await group.barrier();
      let handle: Parameters<typeof group.combine>[1] | undefined;
      const d = time(() => {
        handle = group.dispatch(set.x, set.idx, { topkWeights: set.w }).handle;
      });
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
    return { dispatchUs, combineUs, rowsSent, bytesSent: rowsSent * cfg.dispatchRowBytes };
  } finally {
    await group.close();
  }
}
