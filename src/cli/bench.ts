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
import { hopBytes } from './bench-hops.js';
import { plotOf } from './bench-plot.js';
import { type Row, type Stats, stats } from './bench-rows.js';
import { printTables } from './bench-tables.js';
import { DEEPSEEK_V3 } from './cases.js';
import { kernelSettings, machineInfo, percentile, resolveTransport } from './common.js';
import {
  type BenchRankResult,
  type BenchTask,
  benchTopk,
  type CudaBenchExtras,
  type FloorsTask,
} from './rank-bench.js';
import { runTaskOnRanks } from './ranks.js';
import { stampSplit } from './stamps.js';

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
  // (between hosts every group stages)
  return cfg.nodes > 1 ? ['dedup', 'staged'] : ['dedup', 'staged', 'direct'];
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
  const nodes = (flags.nodes as number | undefined) ?? 1;
  const json = flags.json === true;
  const say = (line: string) => {
    if (!json) process.stderr.write(`${line}\n`);
  };
  const rows: Row[] = [];
  let copyGBs: number | undefined;
  let eagerLaunchMode: string | undefined;
  let floors: Floors[] | undefined;
  const settings = kernelSettings();
  const settingsSet = Object.entries(settings);
  if (settingsSet.length)
    say(
      `moe-a2a bench: kernel settings from the environment: ${settingsSet.map(([k, v]) => `${k}=${v}`).join(' ')}`,
    );
  if (transport === 'cuda' && nodes > 1) {
    say('moe-a2a bench: no floors between hosts (they are measured over NVLink, on one host)');
  } else if (transport === 'cuda') {
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
      nodes,
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
        `moe-a2a bench: ${transport}, W=${world}${nodes > 1 ? ` over ${nodes} hosts` : ''} T=${tokens} ${fp8 ? 'fp8' : 'bf16'}${path ? `, ${path} dispatch` : ''}${expertLayout ? `, ${expertLayout} experts` : ''}, ${warmup} warm-up + ${iters} iterations`,
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
        // (every rank ran the same T: the same choice)
        row.flagged = ex[0].flagged;
        rows.push({
          tokens,
          variant: 'graph',
          path: label,
          layout: layoutOf,
          flagged: ex[0].flagged,
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
    torchNcclRows = torchNccl(world, { ...shape, iters: Math.min(iters, 50) }, fp8, nodes);
    if (typeof torchNcclRows === 'string') say(`moe-a2a bench: no PyTorch + NCCL baseline: ${torchNcclRows}`);
  }
  if (transport === 'cuda' && world > 1 && deepepPath && nodes > 1) {
    deepep = 'not between hosts (its low-latency mode needs RDMA NICs)';
    say(`moe-a2a bench: no DeepEP baseline: ${deepep}`);
  } else if (transport === 'cuda' && world > 1 && deepepPath) {
    // DeepEP's low-latency mode is for decode batches: its buffer grows with T
    const small = tokenList.filter((t) => t >= 1 && t <= 512);
    say(`moe-a2a bench: DeepEP low-latency (bench/baselines/deepep_ll.py, ${deepepPath}) ...`);
    deepep = small.length
      ? deepepLowLatency(deepepPath, world, { ...shape, tokens: small })
      : 'no T in 1..512';
    if (typeof deepep === 'string') say(`moe-a2a bench: no DeepEP baseline: ${deepep}`);
  }
  // beyond one host, computed from the same routing (rail-aligned, de-duplicated): this run's own hosts,
  // then 8 GPUs a host at EP 16, 32 and 64
  // (this run's own hosts: the capacities the run's groups had, dedup as the first path timed)
  const hopsOf = (ep: number, gpusPerHost: number, ownRun = false) =>
    tokenList.map((tokens) => ({
      tokens,
      ...hopBytes(
        resolveConfig({
          world: ep,
          numExperts,
          hidden,
          topk,
          fp8,
          maxTokensPerRank: Math.max(1, tokens),
          ...(ownRun ? sizeForInputs(world, numExperts, topk, tokens, seed) : {}),
        }),
        gpusPerHost,
        benchTopk(seed, 0, 0, tokens, topk, numExperts),
        tokens,
      ),
    }));
  const hops = [
    ...(nodes > 1 ? hopsOf(world, world / nodes, true) : []),
    ...[16, 32, 64].filter((ep) => numExperts % ep === 0).flatMap((ep) => hopsOf(ep, 8)),
  ];
  const date = new Date().toISOString();
  const result = {
    tool: 'moe-a2a bench',
    date,
    machine: machineInfo(),
    device: transport === 'cuda' ? await gpuName() : undefined,
    transport,
    config: { world, nodes, numExperts, hidden, topk, fp8, iters, warmup, seed },
    // the environment's kernel settings in force (an A/B's variants), none when empty
    settings,
    // between hosts on one machine (MOE_A2A_SIMULATED_HOSTS=1: NCCL_HOSTID per host, sockets between them)
    simulatedHosts: nodes > 1 ? process.env.MOE_A2A_SIMULATED_HOSTS === '1' : undefined,
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
  const stem = join(
    'bench/results',
    `${date.replace(/[:.]/g, '-')}-${transport}-W${world}${nodes > 1 ? `-N${nodes}` : ''}`,
  );
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
  printTables(rows, { transport, nodes, copyGBs, floors, a2aGBs, torch, torchNcclRows, deepep, hops });
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
