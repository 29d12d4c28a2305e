import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolveConfig } from '../ep/config.js';
import type { ParsedFlags } from './args.js';
import { DEEPSEEK_V3 } from './cases.js';
import { machineInfo, percentile, resolveTransport, table } from './common.js';
import { latencyPlotSvg, type PlotSeries } from './plot.js';
import { type BenchRankResult, type BenchTask, benchTopk } from './rank-bench.js';
import { runTaskOnRanks } from './ranks.js';

interface Stats {
  median: number;
  p10: number;
  p90: number;
}

function stats(v: number[]): Stats {
  return { median: percentile(v, 50), p10: percentile(v, 10), p90: percentile(v, 90) };
}

/**
 * The time one thread takes to copy `bytes` with TypedArray.set (median of several copies): the
 * yardstick for the cpu transport, which moves the same bytes between worker threads.
 */
export function typedArrayCopyUs(bytes: number, reps = 7): number {
  const src = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 4096) src[i] = i & 0xff; // touch every page before timing
  const dst = new Uint8Array(bytes);
  dst.set(src);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    dst.set(src);
    times.push((performance.now() - t0) * 1000);
  }
  return percentile(times, 50);
}

/**
 * Sizes the heap for the bench's own routing: rows per peer and per expert are what these inputs
 * need (rounded up), not the worst case, so large T fits in memory.
 */
function sizeForInputs(world: number, numExperts: number, topk: number, tokens: number, seed: number) {
  const epr = numExperts / world;
  let perPeer = 1;
  let perExpert = 1;
  for (let set = 0; set < 2; set++) {
    const perExpertCount = new Int32Array(numExperts);
    for (let r = 0; r < world; r++) {
      const idx = benchTopk(seed, set, r, tokens, topk, numExperts);
      const toPeer = new Int32Array(world);
      for (const e of idx) {
        if (e < 0) continue;
        toPeer[Math.floor(e / epr)]++;
        perExpertCount[e]++;
      }
      perPeer = Math.max(perPeer, ...toPeer);
    }
    perExpert = Math.max(perExpert, ...perExpertCount);
  }
  const round = (n: number) => Math.ceil(n / 16) * 16;
  const maxRowsPerPeer = Math.min(round(perPeer), tokens * topk);
  return {
    maxRowsPerPeer,
    maxRowsPerExpert: Math.min(round(perExpert), world * Math.min(tokens, maxRowsPerPeer)),
  };
}

/**
 * Bytes our kernels read plus write for one call on one rank (every (token, expert) pair counted, as
 * DeepEP counts): dispatch reads x once and writes each row and its scales straight into its place in
 * the destination's expertX (the cuda transport has no repack); combine copies the rows owned by other ranks back ((W-1)/W of
 * them under uniform routing; a rank's own rows are read in place), then the reduction reads every
 * row and writes y.
 */
export function kernelBytes(cfg: ReturnType<typeof resolveConfig>, tokens: number) {
  const rows = tokens * cfg.topk;
  const row = cfg.dispatchRowBytes + cfg.groupsPerRow * 4;
  const bf16Row = 2 * cfg.hidden;
  const remote = (cfg.world - 1) / cfg.world;
  return {
    dispatch: tokens * bf16Row + rows * row,
    combine: 2 * rows * bf16Row * remote + rows * bf16Row + tokens * bf16Row,
  };
}

interface TorchRow {
  tokens: number;
  variant: string;
  median_us: number | null;
  p10_us: number | null;
  p90_us: number | null;
  error?: string;
}

/** Runs bench/baselines/torch_w1.py (PyTorch doing the same W = 1 work) when python3 with torch is there. */
function torchBaseline(
  tokens: number[],
  hidden: number,
  topk: number,
  experts: number,
  iters: number,
): TorchRow[] | string {
  const script = 'bench/baselines/torch_w1.py';
  if (!existsSync(script)) return `${script} not found`;
  const r = spawnSync(
    'python3',
    [
      script,
      '--tokens',
      tokens.join(','),
      '--hidden',
      String(hidden),
      '--topk',
      String(topk),
      '--experts',
      String(experts),
      '--iters',
      String(iters),
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 600_000 },
  );
  if (r.error) return `python3 could not run: ${r.error.message}`;
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    const parsed = JSON.parse(last) as { error?: string; results?: TorchRow[] };
    if (parsed.error) return parsed.error;
    return parsed.results ?? 'no results';
  } catch {
    return `unexpected output from ${script}: ${last.slice(0, 200)}`;
  }
}

/** `moe-a2a bench`: dispatch and combine latency per T; a table, JSON and an SVG plot under bench/results/. */
export async function benchCommand(flags: ParsedFlags): Promise<number> {
  const transport = await resolveTransport(flags.transport);
  const world = (flags.world as number | undefined) ?? DEEPSEEK_V3.world;
  const numExperts = (flags.experts as number | undefined) ?? DEEPSEEK_V3.numExperts;
  const hidden = (flags.hidden as number | undefined) ?? DEEPSEEK_V3.hidden;
  const topk = (flags.topk as number | undefined) ?? DEEPSEEK_V3.topk;
  const fp8 = (flags.fp8 as boolean | undefined) ?? true;
  const seed = (flags.seed as number | undefined) ?? 1;
  const iters = (flags.iters as number | undefined) ?? 50;
  const warmup = (flags.warmup as number | undefined) ?? 5;
  const tokenList = (flags.tokens as number[] | undefined) ?? [DEEPSEEK_V3.tokens];
  const json = flags.json === true;
  const say = (line: string) => {
    if (!json) process.stderr.write(`${line}\n`);
  };
  const rows: Record<string, unknown>[] = [];
  let copyGBs: number | undefined;
  let eagerLaunchMode: string | undefined;
  for (const tokens of tokenList) {
    const config = {
      world,
      numExperts,
      hidden,
      topk,
      fp8,
      fp8GroupSize: (flags['group-size'] as number | undefined) ?? 128,
      maxTokensPerRank: Math.max(1, tokens),
      ...sizeForInputs(world, numExperts, topk, tokens, seed),
    };
    const cfg = resolveConfig(config);
    say(
      `moe-a2a bench: ${transport}, W=${world} T=${tokens} ${fp8 ? 'fp8' : 'bf16'}, ${warmup} warm-up + ${iters} iterations`,
    );
    const totalBytes = world * tokens * topk * cfg.dispatchRowBytes;
    const copyUs = transport === 'cpu' ? typedArrayCopyUs(totalBytes) : Number.NaN;
    const task: BenchTask = {
      kind: 'bench',
      transport,
      timeoutMs: (flags.timeout as number | undefined) ?? 30_000,
      config,
      tokens,
      iters,
      warmup,
      seed,
    };
    const perRank = await runTaskOnRanks<BenchRankResult>(transport, world, task);
    // a collective takes as long as its slowest rank: per iteration, the max over ranks
    const slowest = (pick: (r: BenchRankResult) => number[]) =>
      pick(perRank[0]).map((_, i) => Math.max(...perRank.map((r) => pick(r)[i])));
    const bytes = kernelBytes(cfg, tokens);
    const row: Record<string, unknown> = {
      tokens,
      variant: 'eager',
      dispatch: stats(slowest((r) => r.dispatchUs)),
      combine: stats(slowest((r) => r.combineUs)),
      total: stats(slowest((r) => r.dispatchUs.map((d, i) => d + r.combineUs[i]))),
      bytesDispatched: totalBytes,
      kernelBytes: bytes,
    };
    if (transport === 'cpu') {
      row.typedArrayCopyUs = copyUs;
      row.dispatchOverCopy = (row.dispatch as Stats).median / copyUs;
    }
    rows.push(row);
    const cuda = perRank.map((r) => r.cuda);
    if (cuda.every((x) => x !== undefined)) {
      const ex = cuda as NonNullable<BenchRankResult['cuda']>[];
      copyGBs ??= ex[0].copyGBs;
      eagerLaunchMode ??= ex[0].eagerLaunchMode;
      const graphSlowest = (pick: (r: NonNullable<BenchRankResult['cuda']>) => number[]) =>
        pick(ex[0]).map((_, i) => Math.max(...ex.map((r) => pick(r)[i])));
      rows.push({
        tokens,
        variant: 'graph',
        dispatch: stats(graphSlowest((r) => r.graphDispatchUs)),
        combine: stats(graphSlowest((r) => r.graphCombineUs)),
        total: stats(graphSlowest((r) => r.graphDispatchUs.map((d, i) => d + r.graphCombineUs[i]))),
        // dispatch + combine as one graph replay: the measurement the PyTorch graph baseline makes
        step: stats(graphSlowest((r) => r.graphStepUs)),
        bytesDispatched: totalBytes,
        kernelBytes: bytes,
      });
      row.hostUs = {
        dispatch: Math.max(...ex.map((r) => r.hostDispatchUs)),
        combine: Math.max(...ex.map((r) => r.hostCombineUs)),
        freshDispatch: Math.max(...ex.map((r) => r.hostFreshDispatchUs)),
        freshCombine: Math.max(...ex.map((r) => r.hostFreshCombineUs)),
        directDispatch: Math.max(...ex.map((r) => r.hostDirectDispatchUs)),
        directCombine: Math.max(...ex.map((r) => r.hostDirectCombineUs)),
        graphDispatch: Math.max(...ex.map((r) => r.hostGraphDispatchUs)),
        graphCombine: Math.max(...ex.map((r) => r.hostGraphCombineUs)),
        bareLaunch: Math.max(...ex.map((r) => r.hostBareLaunchUs)),
      };
    }
  }
  let torch: TorchRow[] | string | undefined;
  if (transport === 'cuda' && world === 1 && flags.baseline !== false) {
    say('moe-a2a bench: PyTorch baseline (bench/baselines/torch_w1.py) ...');
    torch = torchBaseline(tokenList, hidden, topk, numExperts, Math.min(iters, 100));
    if (typeof torch === 'string') say(`moe-a2a bench: no PyTorch baseline: ${torch}`);
  }
  const date = new Date().toISOString();
  const result = {
    tool: 'moe-a2a bench',
    date,
    machine: machineInfo(),
    device: transport === 'cuda' ? await gpuName() : undefined,
    transport,
    config: { world, numExperts, hidden, topk, fp8, iters, warmup, seed },
    timing:
      transport === 'cuda'
        ? 'CUDA events around each call on its stream (eager: launches included; graph: one replay each of the dispatch and the combine graph; step: one replay of both captured together, as the PyTorch graph baseline); per iteration the slowest rank; median/p10/p90'
        : 'host clock around each call; per iteration the slowest rank; median/p10/p90 over iterations',
    bytes:
      'bytesDispatched = W * T * k rows * row bytes; kernelBytes = bytes our kernels read plus write on one rank (see kernelBytes in src/cli/bench.ts)',
    deviceCopyGBs: copyGBs,
    // cuda: how the eager rows launched their kernels ('graph': cached graph replays; see LaunchMode)
    eagerLaunchMode,
    rows,
    torch,
  };
  mkdirSync('bench/results', { recursive: true });
  const stem = join('bench/results', `${date.replace(/[:.]/g, '-')}-${transport}-W${world}`);
  writeFileSync(`${stem}.json`, `${JSON.stringify(result, null, 2)}\n`);
  const series: PlotSeries[] = ['eager', 'graph'].map((v) => ({
    name: `moe-a2a ${v}`,
    points: rows
      .filter((r) => r.variant === v)
      .map((r) => ({
        tokens: r.tokens as number,
        us: (r.total as Stats).median,
        p10: (r.total as Stats).p10,
        p90: (r.total as Stats).p90,
      })),
  }));
  if (Array.isArray(torch)) {
    for (const v of ['eager', 'graph', 'compile']) {
      series.push({
        name: `PyTorch ${v}`,
        dashed: true,
        points: torch
          .filter((r) => r.variant === v && r.median_us !== null)
          .map((r) => ({ tokens: r.tokens, us: r.median_us as number })),
      });
    }
  }
  writeFileSync(
    `${stem}.svg`,
    latencyPlotSvg(series, {
      title: `dispatch + combine, W=${world}, H=${hidden}, k=${topk}, E=${numExperts}, ${fp8 ? 'FP8' : 'bf16'} dispatch`,
      subtitle: `${transport}${result.device ? ` on ${result.device}` : ''}, ${date.slice(0, 10)}; median (p10..p90) of ${iters} iterations`,
    }),
  );
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  const gbs = (b: number, us: number) => b / (us * 1e3);
  console.log(
    table(
      [
        'T',
        'variant',
        'dispatch p50 us',
        'p10',
        'p90',
        'combine p50 us',
        'p10',
        'p90',
        'total p50',
        'dispatch GB/s',
        'combine GB/s',
      ],
      rows.map((r) => {
        const d = r.dispatch as Stats;
        const c = r.combine as Stats;
        const kb = r.kernelBytes as { dispatch: number; combine: number };
        return [
          r.tokens as number,
          r.variant as string,
          d.median,
          d.p10,
          d.p90,
          c.median,
          c.p10,
          c.p90,
          (r.total as Stats).median,
          gbs(kb.dispatch, d.median),
          gbs(kb.combine, c.median),
        ];
      }),
    ),
  );
  if (transport === 'cpu') {
    console.log(
      table(
        ['T', 'MB dispatched', '1-thread TypedArray.set us', 'dispatch / copy'],
        rows.map((r) => [
          r.tokens as number,
          (r.bytesDispatched as number) / 1e6,
          r.typedArrayCopyUs as number,
          r.dispatchOverCopy as number,
        ]),
      ),
    );
  }
  if (copyGBs !== undefined)
    console.log(`device copy bandwidth (ep_copy_bench, 512 MiB, read + write): ${copyGBs.toFixed(0)} GB/s`);
  const host = rows.filter((r) => r.hostUs);
  if (host.length > 0) {
    console.log(
      table(
        [
          'T',
          'host us: dispatch',
          'combine',
          'dispatch, new args',
          'combine, new args',
          'dispatch, direct launches',
          'combine, direct',
          'graph dispatch replay',
          'graph combine replay',
          'one bare launch',
        ],
        host.map((r) => {
          const h = r.hostUs as Record<string, number>;
          return [
            r.tokens as number,
            h.dispatch,
            h.combine,
            h.freshDispatch,
            h.freshCombine,
            h.directDispatch,
            h.directCombine,
            h.graphDispatch,
            h.graphCombine,
            h.bareLaunch,
          ];
        }),
      ),
    );
  }
  if (Array.isArray(torch)) {
    console.log(
      table(
        [
          'T',
          'PyTorch variant',
          'p50 us',
          'p10',
          'p90',
          'moe-a2a d + c graphs p50',
          'one-graph step p50',
          'speed-up (one graph each)',
        ],
        torch.map((t) => {
          const ours = rows.find((r) => r.tokens === t.tokens && r.variant === 'graph');
          const us = ours ? (ours.total as Stats).median : Number.NaN;
          const step = (ours?.step as Stats | undefined)?.median ?? Number.NaN;
          return [
            t.tokens,
            t.variant,
            t.median_us ?? Number.NaN,
            t.p10_us ?? Number.NaN,
            t.p90_us ?? Number.NaN,
            us,
            step,
            (t.median_us ?? Number.NaN) / step,
          ];
        }),
      ),
    );
  }
  console.log(`results: ${stem}.json, ${stem}.svg`);
  return 0;
}

async function gpuName(): Promise<string | undefined> {
  try {
    const { loadDriver } = await import('../shmem/cuda/driver.js');
    return loadDriver().deviceInfo(0).name;
  } catch {
    return undefined;
  }
}
