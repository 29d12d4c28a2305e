import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ExpertLayout, parseExpertLayout, resolveConfig } from '../ep/config.js';
import { type DispatchPath, type DispatchPathRequest, parseDispatchPath } from '../ep/dispatch-path.js';
import type { Floors } from '../shmem/cuda/floors.js';
import type { ParsedFlags } from './args.js';
import {
  type DeepepRow,
  deepepLowLatency,
  type TorchNcclRow,
  type TorchW1Row,
  torchNccl,
  torchW1,
} from './bench-baselines.js';
import { type CallBytes, callBytes } from './bench-bytes.js';
import { type HopBytes, hopBytes } from './bench-hops.js';
import { DEEPSEEK_V3 } from './cases.js';
import { machineInfo, percentile, resolveTransport, table } from './common.js';
import { latencyPlotSvg, type PlotSeries } from './plot.js';
import {
  type BenchRankResult,
  type BenchTask,
  benchTopk,
  type CudaBenchExtras,
  type FloorsTask,
} from './rank-bench.js';
import { runTaskOnRanks } from './ranks.js';
import { SEGMENT_MEANING, type StampSplit, stampSplit } from './stamps.js';

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
export function kernelBytes(
  cfg: ReturnType<typeof resolveConfig>,
  tokens: number,
  path: DispatchPath = 'direct',
) {
  const rows = tokens * cfg.topk;
  const row = cfg.dispatchRowBytes + (cfg.fp8 ? cfg.groupsPerRow * 4 : 0);
  const bf16Row = 2 * cfg.hidden;
  const remote = (cfg.world - 1) / cfg.world;
  // staged (W > 1): the owner's pack reads every staged row and writes it into expertX (under uniform
  // routing a rank receives as many rows as it sends)
  const pack = path === 'staged' && cfg.world > 1 ? 2 * rows * row : 0;
  return {
    dispatch: tokens * bf16Row + rows * row + pack,
    combine: 2 * rows * bf16Row * remote + rows * bf16Row + tokens * bf16Row,
  };
}

/** What a cuda bench row runs: a dispatch path (or 'auto'), or 'dedup' (the staged path, de-duplicated). */
type BenchPath = DispatchPathRequest | 'dedup';

/** The dispatch paths a bench at this shape compares (every one the group can take; both transports run all). */
function pathsFor(cfg: ReturnType<typeof resolveConfig>, flag: unknown): readonly (BenchPath | undefined)[] {
  if (cfg.world === 1) return [undefined]; // (one rank: nothing to de-duplicate)
  if (flag === 'dedup') return ['dedup'];
  if (flag !== undefined && flag !== 'all') return [parseDispatchPath(flag, '--path')];
  return ['dedup', 'staged', 'direct'];
}

type Row = Record<string, unknown>;

/** A row's variant as the tables name it: its dispatch path, and 'packed' for the packed expert layout. */
function shownPath(r: Row): string {
  const parts = [r.path, r.layout === 'packed' ? 'packed' : undefined].filter((p) => p !== undefined);
  return parts.length ? parts.join(' ') : '-';
}

/** The expert layouts a bench compares: --expert-layout padded, packed or both (default: the config's default). */
function layoutsFor(flag: unknown): readonly (ExpertLayout | undefined)[] {
  if (flag === undefined) return [undefined];
  if (flag === 'both') return ['padded', 'packed'];
  return [parseExpertLayout(flag, '--expert-layout')];
}

// A collective takes as long as its slowest rank: the largest of a figure over ranks, and, for a
// figure per iteration, per iteration the largest over ranks.
const maxOver = <T>(items: readonly T[], pick: (x: T) => number) => Math.max(...items.map(pick));
const slowestPerIteration = <T>(items: readonly T[], pick: (x: T) => number[]) =>
  pick(items[0]).map((_, i) => maxOver(items, (x) => pick(x)[i]));
const fmt = (v: number | null | undefined, digits = 1) =>
  v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(digits);

/** `moe-a2a bench`: dispatch and combine latency per T; tables, JSON and an SVG plot under bench/results/. */
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
  const stampTokens = (flags.stamps as number[] | undefined) ?? [1, 128];
  const deepepPath = (flags.deepep as string | undefined) ?? process.env.MOE_A2A_DEEPEP;
  const timeoutMs = (flags.timeout as number | undefined) ?? 30_000;
  const json = flags.json === true;
  const say = (line: string) => {
    if (!json) process.stderr.write(`${line}\n`);
  };
  const rows: Row[] = [];
  let copyGBs: number | undefined;
  let eagerLaunchMode: string | undefined;
  let floors: Floors[] | undefined;
  if (transport === 'cuda') {
    say(`moe-a2a bench: floors on ${world} rank(s): all-to-all write rate, signal trip, kernel gap ...`);
    const task: FloorsTask = { kind: 'floors', transport: 'cuda', timeoutMs, world };
    floors = await runTaskOnRanks<Floors>('cuda', world, task);
  }
  const a2aGBs = floors
    ? Math.min(...floors.map((f) => f.alltoallGBs ?? Number.POSITIVE_INFINITY))
    : Number.NaN;
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
    // bytes of one call, both ways, on the rank that moves the most (input set 0)
    const perRankBytes = Array.from({ length: world }, (_, r) =>
      callBytes(cfg, benchTopk(seed, 0, r, tokens, topk, numExperts), r),
    );
    const most = (pick: (b: CallBytes) => number) => maxOver(perRankBytes, pick);
    const bytes = {
      deepepDispatch: most((b) => b.deepepDispatch),
      deepepCombine: most((b) => b.deepepCombine),
      wireDispatch: most((b) => b.wireDispatch),
      wireCombine: most((b) => b.wireCombine),
      wireDispatchDedup: most((b) => b.wireDispatchDedup),
      wireCombineDedup: most((b) => b.wireCombineDedup),
    };
    const totalBytes = world * tokens * topk * cfg.dispatchRowBytes;
    const copyUs = transport === 'cpu' ? typedArrayCopyUs(totalBytes) : Number.NaN;
    for (const [path, expertLayout] of pathsFor(cfg, flags.path).flatMap((p) =>
      layoutsFor(flags['expert-layout']).map((l) => [p, l] as const),
    )) {
      say(
        `moe-a2a bench: ${transport}, W=${world} T=${tokens} ${fp8 ? 'fp8' : 'bf16'}${path ? `, ${path} dispatch` : ''}${expertLayout ? `, ${expertLayout} experts` : ''}, ${warmup} warm-up + ${iters} iterations`,
      );
      const dedup = path === 'dedup';
      const layoutOf = resolveConfig({ ...config, expertLayout }).expertLayout;
      const task: BenchTask = {
        kind: 'bench',
        transport,
        timeoutMs,
        config: { ...config, dedup, expertLayout },
        tokens,
        iters,
        warmup,
        seed,
        dispatchPath: dedup ? 'staged' : path,
        stampIters: transport === 'cuda' && stampTokens.includes(tokens) ? 50 : 0,
      };
      const perRank = await runTaskOnRanks<BenchRankResult>(transport, world, task);
      const slowest = (pick: (r: BenchRankResult) => number[]) => slowestPerIteration(perRank, pick);
      const cuda = perRank.map((r) => r.cuda);
      const ex = cuda.every((x) => x !== undefined) ? (cuda as CudaBenchExtras[]) : null;
      // the path the groups took (a one-rank cpu row names none, as it compares none)
      const taken = ex || path !== undefined ? perRank[0].dispatchPath : undefined;
      const label: DispatchPath | 'dedup' | undefined = dedup ? 'dedup' : taken;
      const kb = kernelBytes(cfg, tokens, label === 'dedup' ? 'staged' : (label ?? 'direct'));
      const row: Row = {
        tokens,
        variant: 'eager',
        path: label,
        layout: layoutOf,
        dispatch: stats(slowest((r) => r.dispatchUs)),
        combine: stats(slowest((r) => r.combineUs)),
        total: stats(slowest((r) => r.dispatchUs.map((d, i) => d + r.combineUs[i]))),
        bytesDispatched: totalBytes,
        kernelBytes: kb,
        callBytes: bytes,
      };
      if (transport === 'cpu') {
        row.typedArrayCopyUs = copyUs;
        row.dispatchOverCopy = (row.dispatch as Stats).median / copyUs;
      }
      rows.push(row);
      if (ex) {
        copyGBs ??= ex[0].copyGBs;
        eagerLaunchMode ??= ex[0].eagerLaunchMode;
        const graphSlowest = (pick: (r: CudaBenchExtras) => number[]) => slowestPerIteration(ex, pick);
        const most = (pick: (r: CudaBenchExtras) => number) => maxOver(ex, pick);
        const stamps = ex.every((r) => r.stamps)
          ? stampSplit(ex.map((r) => r.stamps as number[][]))
          : undefined;
        rows.push({
          tokens,
          variant: 'graph',
          path: label,
          layout: layoutOf,
          dispatch: stats(graphSlowest((r) => r.graphDispatchUs)),
          combine: stats(graphSlowest((r) => r.graphCombineUs)),
          total: stats(graphSlowest((r) => r.graphDispatchUs.map((d, i) => d + r.graphCombineUs[i]))),
          // dispatch + combine as one graph replay: the measurement the PyTorch graph baseline makes
          step: stats(graphSlowest((r) => r.graphStepUs)),
          // the serving loop: mean per layer of back-to-back layers, the slowest rank
          loop: {
            graphUs: most((r) => r.loopGraphUs),
            eagerUs: most((r) => r.loopEagerUs),
            graphUsPerRank: ex.map((r) => r.loopGraphUs),
            eagerUsPerRank: ex.map((r) => r.loopEagerUs),
          },
          heapBytes: most((r) => r.heapBytes),
          stampSplit: stamps,
          bytesDispatched: totalBytes,
          kernelBytes: kb,
          callBytes: bytes,
        });
        row.hostUs = {
          dispatch: most((r) => r.hostDispatchUs),
          combine: most((r) => r.hostCombineUs),
          freshDispatch: most((r) => r.hostFreshDispatchUs),
          freshCombine: most((r) => r.hostFreshCombineUs),
          directDispatch: most((r) => r.hostDirectDispatchUs),
          directCombine: most((r) => r.hostDirectCombineUs),
          graphDispatch: most((r) => r.hostGraphDispatchUs),
          graphCombine: most((r) => r.hostGraphCombineUs),
          bareLaunch: most((r) => r.hostBareLaunchUs),
        };
      }
    }
  }
  const shape = { tokens: tokenList, hidden, topk, experts: numExperts, iters: Math.min(iters, 200), warmup };
  let torch: TorchW1Row[] | string | undefined;
  let torchNcclRows: TorchNcclRow[] | string | undefined;
  let deepep: DeepepRow[] | string | undefined;
  if (transport === 'cuda' && world === 1 && flags.baseline !== false) {
    say('moe-a2a bench: PyTorch baseline (bench/baselines/torch_w1.py) ...');
    torch = torchW1({ ...shape, iters: Math.min(iters, 100) });
    if (typeof torch === 'string') say(`moe-a2a bench: no PyTorch baseline: ${torch}`);
  }
  if (transport === 'cuda' && world > 1 && flags.baseline !== false) {
    say(`moe-a2a bench: PyTorch + NCCL baseline (bench/baselines/torch_nccl.py, ${world} processes) ...`);
    torchNcclRows = torchNccl(world, { ...shape, iters: Math.min(iters, 50) }, fp8);
    if (typeof torchNcclRows === 'string') say(`moe-a2a bench: no PyTorch + NCCL baseline: ${torchNcclRows}`);
  }
  if (transport === 'cuda' && world > 1 && deepepPath) {
    // DeepEP's low-latency mode is for decode batches: its buffer grows with T
    const small = tokenList.filter((t) => t >= 1 && t <= 512);
    say(`moe-a2a bench: DeepEP low-latency (bench/baselines/deepep_ll.py, ${deepepPath}) ...`);
    deepep = small.length
      ? deepepLowLatency(deepepPath, world, { ...shape, tokens: small })
      : 'no T in 1..512';
    if (typeof deepep === 'string') say(`moe-a2a bench: no DeepEP baseline: ${deepep}`);
  }
  // beyond one host, computed from the same routing (8 GPUs a host, rail-aligned, de-duplicated)
  const hops = [16, 32, 64]
    .filter((ep) => numExperts % ep === 0)
    .flatMap((ep) =>
      tokenList.map((tokens) => ({
        tokens,
        ...hopBytes(
          resolveConfig({ world: ep, numExperts, hidden, topk, fp8, maxTokensPerRank: Math.max(1, tokens) }),
          8,
          benchTopk(seed, 0, 0, tokens, topk, numExperts),
          tokens,
        ),
      })),
    );
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
        ? 'loop: mean us per layer of dispatch + combine issued back to back (graph: one step replay per layer; eager: dispatch() + combine()), ranks aligned once on the device, the slowest rank; eager/graph rows: CUDA events around each call (graph: one replay of the dispatch, combine or step graph), each right after a device barrier (ep_barrier), per iteration the slowest rank, median/p10/p90'
        : 'host clock around each call after a host barrier; per iteration the slowest rank; median/p10/p90 over iterations',
    bytes:
      'callBytes: one call on the rank that moves the most, counted as DeepEP does (deepep*: every selection, local included, FP8 row H + H/128*4 + 16) and as they cross NVLink (wire*: remote pairs, our row sizes); kernelBytes: bytes our kernels read plus write on one rank (see kernelBytes in src/cli/bench.ts)',
    floors,
    deviceCopyGBs: copyGBs,
    // cuda: how the eager rows launched their kernels ('graph': cached graph replays; see LaunchMode)
    eagerLaunchMode,
    rows,
    torch,
    torchNccl: torchNcclRows,
    deepep,
    // computed, not measured: what one GPU would move per call at EP 16/32/64 (src/cli/bench-hops.ts)
    hops,
  };
  mkdirSync('bench/results', { recursive: true });
  const stem = join('bench/results', `${date.replace(/[:.]/g, '-')}-${transport}-W${world}`);
  writeFileSync(`${stem}.json`, `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(
    `${stem}.svg`,
    plotOf(rows, torch, torchNcclRows, deepep, {
      world,
      hidden,
      topk,
      numExperts,
      fp8,
      iters,
      transport,
      device: result.device,
      date,
    }),
  );
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  printTables(rows, { transport, copyGBs, floors, a2aGBs, torch, torchNcclRows, deepep, hops });
  console.log(`results: ${stem}.json, ${stem}.svg`);
  return 0;
}

function plotOf(
  rows: Row[],
  torch: TorchW1Row[] | string | undefined,
  torchNcclRows: TorchNcclRow[] | string | undefined,
  deepep: DeepepRow[] | string | undefined,
  o: {
    world: number;
    hidden: number;
    topk: number;
    numExperts: number;
    fp8: boolean;
    iters: number;
    transport: string;
    device?: string;
    date: string;
  },
): string {
  const series: PlotSeries[] = [];
  const paths = [...new Set(rows.map(shownPath))];
  for (const path of paths) {
    const mine = rows.filter((r) => shownPath(r) === path);
    const name = (v: string) => `moe-a2a ${v}${path !== '-' ? ` (${path})` : ''}`;
    const loop = mine.filter((r) => r.loop);
    if (loop.length) {
      series.push({
        name: name('graph loop'),
        points: loop.map((r) => ({
          tokens: r.tokens as number,
          us: (r.loop as { graphUs: number }).graphUs,
        })),
      });
    }
    for (const v of loop.length ? ['eager'] : ['eager', 'graph']) {
      series.push({
        name: name(v),
        points: mine
          .filter((r) => r.variant === v)
          .map((r) => ({
            tokens: r.tokens as number,
            us: (r.total as Stats).median,
            p10: (r.total as Stats).p10,
            p90: (r.total as Stats).p90,
          })),
      });
    }
  }
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
  if (Array.isArray(torchNcclRows))
    series.push({
      name: 'PyTorch + NCCL (eager)',
      dashed: true,
      points: torchNcclRows.map((r) => ({ tokens: r.tokens, us: r.total_median_us })),
    });
  if (Array.isArray(deepep))
    series.push({
      name: 'DeepEP low-latency (graph loop)',
      dashed: true,
      points: deepep.map((r) => ({ tokens: r.tokens, us: r.loop_us })),
    });
  return latencyPlotSvg(series, {
    title: `dispatch + combine, W=${o.world}, H=${o.hidden}, k=${o.topk}, E=${o.numExperts}, ${o.fp8 ? 'FP8' : 'bf16'} dispatch`,
    subtitle: `${o.transport}${o.device ? ` on ${o.device}` : ''}, ${o.date.slice(0, 10)}; us per layer (loops: mean; others: median (p10..p90) of ${o.iters})`,
  });
}

function printTables(
  rows: Row[],
  o: {
    transport: string;
    copyGBs?: number;
    floors?: Floors[];
    a2aGBs: number;
    torch?: TorchW1Row[] | string;
    torchNcclRows?: TorchNcclRow[] | string;
    deepep?: DeepepRow[] | string;
    hops: Array<HopBytes & { tokens: number }>;
  },
): void {
  const loops = rows.filter((r) => r.loop);
  const deepepAt = (t: number) =>
    Array.isArray(o.deepep) ? o.deepep.find((d) => d.tokens === t) : undefined;
  const ncclAt = (t: number) =>
    Array.isArray(o.torchNcclRows) ? o.torchNcclRows.find((d) => d.tokens === t) : undefined;
  if (loops.length) {
    console.log('serving loop: us per layer (dispatch + combine), layers back to back, the slowest rank');
    console.log(
      table(
        [
          'T',
          'dispatch path',
          'graph loop',
          'eager loop',
          'DeepEP graph loop',
          'x DeepEP',
          'PyTorch+NCCL eager',
          'heap MiB/rank',
        ],
        loops.map((r) => {
          const l = r.loop as { graphUs: number; eagerUs: number };
          const d = deepepAt(r.tokens as number);
          const n = ncclAt(r.tokens as number);
          return [
            r.tokens as number,
            shownPath(r),
            fmt(l.graphUs),
            fmt(l.eagerUs),
            fmt(d?.loop_us),
            d ? fmt(d.loop_us / l.graphUs, 2) : '-',
            fmt(n?.total_median_us),
            fmt((r.heapBytes as number) / 2 ** 20, 0),
          ];
        }),
      ),
    );
  }
  console.log(
    o.transport === 'cuda'
      ? 'per call: CUDA events around each call, ranks aligned on the device first; median of the slowest rank'
      : 'per call: the host clock around each call, ranks aligned by a barrier first; median of the slowest rank',
  );
  console.log(
    table(
      [
        'T',
        'variant',
        'path',
        'dispatch p50 us',
        'p10',
        'p90',
        'combine p50 us',
        'p10',
        'p90',
        'total p50',
        'one-graph step p50',
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
          shownPath(r),
          fmt(d.median),
          fmt(d.p10),
          fmt(d.p90),
          fmt(c.median),
          fmt(c.p10),
          fmt(c.p90),
          fmt((r.total as Stats).median),
          fmt((r.step as Stats | undefined)?.median),
          fmt(kb.dispatch / (d.median * 1e3), 0),
          fmt(kb.combine / (c.median * 1e3), 0),
        ];
      }),
    ),
  );
  if (o.deepep !== undefined && Array.isArray(o.deepep)) {
    console.log(
      'DeepEP low-latency: one graph of dispatch + combine, replayed right after a device-side alignment (median of the slowest rank) and back to back',
    );
    console.log(
      table(
        ['T', 'one-graph step p50 us', 'graph loop us/layer', 'check'],
        o.deepep.map((d) => [d.tokens, fmt(d.step_median_us), fmt(d.loop_us), d.check]),
      ),
    );
  }
  if (loops.length) {
    console.log(
      `bytes per call on the busiest rank, MB: counted as DeepEP does (every selection) and crossing NVLink; floor = NVLink bytes at the all-to-all rate ${fmt(o.a2aGBs, 0)} GB/s`,
    );
    console.log(
      table(
        ['T', 'path', 'DeepEP-counted d / c', 'NVLink d / c', 'NVLink floor us', 'graph loop / floor'],
        loops.map((r) => {
          const b = r.callBytes as Pick<
            CallBytes,
            | 'deepepDispatch'
            | 'deepepCombine'
            | 'wireDispatch'
            | 'wireCombine'
            | 'wireDispatchDedup'
            | 'wireCombineDedup'
          >;
          const dd = r.path === 'dedup';
          const wd = dd ? b.wireDispatchDedup : b.wireDispatch;
          const wc = dd ? b.wireCombineDedup : b.wireCombine;
          const floorUs = (wd + wc) / (o.a2aGBs * 1e3);
          return [
            r.tokens as number,
            shownPath(r),
            `${fmt(b.deepepDispatch / 1e6, 2)} / ${fmt(b.deepepCombine / 1e6, 2)}`,
            `${fmt(wd / 1e6, 2)} / ${fmt(wc / 1e6, 2)}`,
            fmt(floorUs, 2),
            fmt((r.loop as { graphUs: number }).graphUs / floorUs, 2),
          ];
        }),
      ),
    );
  }
  if (o.floors) {
    const f0 = o.floors[0];
    const a2a = o.floors.map((f) => fmt(f.alltoallGBs, 0)).join(' / ');
    console.log(
      `floors: all-to-all write rate per rank ${a2a} GB/s (${fmt(f0.bytesPerPeer / 2 ** 20, 0)} MiB to each peer), one pair ${fmt(f0.onePairGBs, 0)} GB/s; ` +
        `signal one way ${fmt(f0.signalOneWayUs, 2)} us; graph kernel start-to-start ${fmt(f0.graphKernelUs, 2)} us (${fmt(f0.graphKernelPdlUs, 2)} with dependent launch)`,
    );
  }
  for (const r of rows.filter((x) => x.stampSplit)) {
    const sp = r.stampSplit as StampSplit;
    console.log(
      `where the time goes, T=${r.tokens as number}${r.path || r.layout === 'packed' ? ` ${shownPath(r)}` : ''} (stamps, mean of 50 step replays after a device barrier; per segment the slowest rank; ` +
        `GPU clock offsets ${sp.clockOffsetUs?.map((v) => fmt(v, 1)).join(' / ') ?? '-'} us, start skew ${fmt(sp.startSkewUs, 2)} us with them removed)`,
    );
    console.log(
      table(
        ['segment', 'us', 'per rank'],
        [
          ...sp.segments.map((s) => [
            SEGMENT_MEANING[s.to],
            fmt(s.us, 2),
            s.perRank.map((v) => fmt(v, 2)).join(' '),
          ]),
          [
            'whole call',
            fmt(Math.max(...sp.totalPerRank), 2),
            sp.totalPerRank.map((v) => fmt(v, 2)).join(' '),
          ],
        ],
      ),
    );
  }
  if (o.transport === 'cpu') {
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
  if (o.hops.length) {
    console.log(
      'beyond one host, computed from the same routing: one GPU per call, 8 GPUs a host, rail-aligned (a token crosses to each host once, then NVLink), de-duplicated; MB',
    );
    console.log(
      table(
        ['T', 'EP', 'across hosts d / c', 'padded capacity d', 'NVLink d / c'],
        o.hops.map((h) => [
          h.tokens,
          h.world,
          `${fmt(h.interDispatch / 1e6, 2)} / ${fmt(h.interCombine / 1e6, 2)}`,
          fmt(h.interPadded / 1e6, 2),
          `${fmt(h.nvlinkDispatch / 1e6, 2)} / ${fmt(h.nvlinkCombine / 1e6, 2)}`,
        ]),
      ),
    );
  }
  if (o.copyGBs !== undefined)
    console.log(`device copy bandwidth (ep_copy_bench, 512 MiB, read + write): ${o.copyGBs.toFixed(0)} GB/s`);
  const host = rows.filter((r) => r.hostUs);
  if (host.length > 0) {
    console.log(
      table(
        [
          'T',
          'path',
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
            shownPath(r),
            fmt(h.dispatch),
            fmt(h.combine),
            fmt(h.freshDispatch),
            fmt(h.freshCombine),
            fmt(h.directDispatch),
            fmt(h.directCombine),
            fmt(h.graphDispatch),
            fmt(h.graphCombine),
            fmt(h.bareLaunch),
          ];
        }),
      ),
    );
  }
  if (Array.isArray(o.torch)) {
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
        o.torch.map((t) => {
          const ours = rows.find((r) => r.tokens === t.tokens && r.variant === 'graph');
          const us = ours ? (ours.total as Stats).median : Number.NaN;
          const step = (ours?.step as Stats | undefined)?.median ?? Number.NaN;
          return [
            t.tokens,
            t.variant,
            fmt(t.median_us),
            fmt(t.p10_us),
            fmt(t.p90_us),
            fmt(us),
            fmt(step),
            fmt((t.median_us ?? Number.NaN) / step, 2),
          ];
        }),
      ),
    );
  }
}

async function gpuName(): Promise<string | undefined> {
  try {
    const { loadDriver } = await import('../shmem/cuda/driver.js');
    return loadDriver().deviceInfo(0).name;
  } catch {
    return undefined;
  }
}
