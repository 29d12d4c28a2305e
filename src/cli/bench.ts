import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolveConfig } from '../ep/config.js';
import type { ParsedFlags } from './args.js';
import { DEEPSEEK_V3 } from './cases.js';
import { machineInfo, percentile, resolveTransport, table } from './common.js';
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

/** `moe-a2a bench`: dispatch and combine latency per T; a table, and JSON under bench/results/. */
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
  const rows: Record<string, unknown>[] = [];
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
    if (!json)
      process.stderr.write(
        `moe-a2a bench: ${transport}, W=${world} T=${tokens} ${fp8 ? 'fp8' : 'bf16'}, ${warmup} warm-up + ${iters} iterations\n`,
      );
    const totalBytes = world * tokens * topk * cfg.dispatchRowBytes;
    const copyUs = transport === 'cpu' ? typedArrayCopyUs(totalBytes) : Number.NaN;
    const task: BenchTask = {
      kind: 'bench',
      transport,
      timeoutMs: (flags.timeout as number | undefined) ?? 60_000,
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
    const d = stats(slowest((r) => r.dispatchUs));
    const c = stats(slowest((r) => r.combineUs));
    rows.push({
      tokens,
      dispatch: d,
      combine: c,
      bytesDispatched: totalBytes,
      typedArrayCopyUs: copyUs,
      dispatchOverCopy: d.median / copyUs,
    });
  }
  const result = {
    tool: 'moe-a2a bench',
    date: new Date().toISOString(),
    machine: machineInfo(),
    transport,
    config: { world, numExperts, hidden, topk, fp8, iters, warmup, seed },
    timing:
      'host clock around each call (after the device finished); per iteration the slowest rank; median/p10/p90 over iterations',
    bytes:
      'dispatched bytes = W * T * k rows * row bytes (FP8: H, bf16: 2H), every (token, expert) pair counted',
    rows,
  };
  mkdirSync('bench/results', { recursive: true });
  const file = join('bench/results', `${result.date.replace(/[:.]/g, '-')}-${transport}-W${world}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  if (json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    console.log(
      table(
        [
          'T',
          'dispatch p50 us',
          'p10',
          'p90',
          'combine p50 us',
          'p10',
          'p90',
          'MB moved',
          '1-thread copy us',
          'dispatch/copy',
        ],
        rows.map((r) => {
          const d = r.dispatch as Stats;
          const c = r.combine as Stats;
          return [
            r.tokens as number,
            d.median,
            d.p10,
            d.p90,
            c.median,
            c.p10,
            c.p90,
            (r.bytesDispatched as number) / 1e6,
            r.typedArrayCopyUs as number,
            r.dispatchOverCopy as number,
          ];
        }),
      ),
    );
    console.log(`results: ${file}`);
  }
  return 0;
}
