import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/**
 * The peers `moe-a2a bench` runs beside its own kernels, on the same machine in the same run (each a
 * Python script under bench/baselines/ that prints one JSON object as its last stdout line; see the
 * README there). Each runner returns that object's results, or a string saying why there are none.
 */

/** The last stdout line of `python3 args...` as JSON, or a string saying what went wrong. */
export function lastJsonLine<T>(
  script: string,
  args: string[],
  timeoutMs: number,
  env?: NodeJS.ProcessEnv,
): T | string {
  if (!existsSync(script)) return `${script} not found`;
  const r = spawnSync('python3', args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: timeoutMs,
    env: env ? { ...process.env, ...env } : process.env,
  });
  if (r.error) return `python3 could not run ${script}: ${r.error.message}`;
  return parseLastJsonLine<T>(r.stdout, script);
}

/** The object on the last non-empty line of `stdout`; its `error` field, or a parse failure, as a string. */
export function parseLastJsonLine<T>(stdout: string, script: string): T | string {
  const last = stdout.trim().split('\n').pop() ?? '';
  try {
    const parsed = JSON.parse(last) as T & { error?: string };
    if (parsed.error) return parsed.error;
    return parsed;
  } catch {
    return `unexpected output from ${script}: ${last.slice(0, 200)}`;
  }
}

export interface ShapeArgs {
  tokens: number[];
  hidden: number;
  topk: number;
  experts: number;
  iters: number;
  warmup: number;
}

function shapeArgs(s: ShapeArgs): string[] {
  return [
    '--tokens',
    s.tokens.join(','),
    '--hidden',
    String(s.hidden),
    '--topk',
    String(s.topk),
    '--experts',
    String(s.experts),
    '--iters',
    String(s.iters),
  ];
}

export interface TorchW1Row {
  tokens: number;
  variant: string;
  median_us: number | null;
  p10_us: number | null;
  p90_us: number | null;
  error?: string;
}

/** bench/baselines/torch_w1.py: PyTorch doing the same W = 1 work (eager, CUDA graph, torch.compile). */
export function torchW1(s: ShapeArgs): TorchW1Row[] | string {
  const script = 'bench/baselines/torch_w1.py';
  const r = lastJsonLine<{ results?: TorchW1Row[] }>(script, [script, ...shapeArgs(s)], 600_000);
  return typeof r === 'string' ? r : (r.results ?? 'no results');
}

export interface TorchNcclRow {
  tokens: number;
  dispatch_median_us: number;
  combine_median_us: number;
  total_median_us: number;
  check: string;
}

/**
 * bench/baselines/torch_nccl.py on `world` GPUs (torchrun): argsort, all_to_all_single, index_add. With
 * `nodes` > 1 and MOE_A2A_SIMULATED_HOSTS=1 its ranks play the same hosts ours do (NCCL_HOSTID per host).
 */
export function torchNccl(world: number, s: ShapeArgs, fp8: boolean, nodes = 1): TorchNcclRow[] | string {
  const script = 'bench/baselines/torch_nccl.py';
  const args = ['-m', 'torch.distributed.run', '--standalone', `--nproc-per-node=${world}`, script];
  args.push(...shapeArgs(s), '--warmup', String(s.warmup), ...(fp8 ? ['--fp8'] : []));
  if (nodes > 1) args.push('--nodes', String(nodes));
  const r = lastJsonLine<{ results?: TorchNcclRow[] }>(script, args, 600_000, { NCCL_NVLS_ENABLE: '0' });
  return typeof r === 'string' ? r : (r.results ?? 'no results');
}

export interface DeepepRow {
  tokens: number;
  /** Serving loop: one graph of dispatch + combine replayed back to back, us per layer, slowest rank. */
  loop_us: number;
  loop_us_per_rank: number[];
  /** One graph of dispatch + combine replayed right after a device-side alignment, median of the slowest rank. */
  step_median_us: number;
  check: string;
}

/**
 * bench/baselines/deepep_ll.py: DeepEP's low-latency kernels (FP8 dispatch, bf16 combine) from the
 * checkout at `deepep` (a folder holding an importable, built deep_ep), timed as ours.
 */
export function deepepLowLatency(deepep: string, world: number, s: ShapeArgs): DeepepRow[] | string {
  const script = 'bench/baselines/deepep_ll.py';
  const args = [script, '--deepep', deepep, '--world', String(world), ...shapeArgs(s)];
  args.push('--warmup', String(s.warmup));
  const r = lastJsonLine<{ results?: DeepepRow[] }>(script, args, 600_000, { PYTHONUNBUFFERED: '1' });
  return typeof r === 'string' ? r : (r.results ?? 'no results');
}
