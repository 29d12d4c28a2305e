import { type EpConfigInput, type ExpertLayout, parseExpertLayout, resolveConfig } from '../ep/config.js';
import { type ParsedFlags, UsageError } from './args.js';
import { defaultSuite, type Scenario, type VerifyCase } from './cases.js';
import { anyShapeFlag, resolveTransport } from './common.js';
import type { CaseOutcome, VerifyTask } from './rank-verify.js';
import { rankMainPath, resultsOf, runScriptSettled, type SettledRank } from './ranks.js';

const SCENARIOS: Scenario[] = ['random', 'dropped', 'skewed'];
const ALL_SCENARIOS: Scenario[] = ['random', 'dropped', 'skewed', 'ragged'];

function parseScenarios(list: string): Scenario[] {
  const names = list.split(',');
  for (const n of names) {
    if (!ALL_SCENARIOS.includes(n as Scenario)) {
      throw new UsageError(`--scenario takes a list of ${ALL_SCENARIOS.join(', ')}; got '${n}'`);
    }
  }
  return names as Scenario[];
}

/** The cases a verify run covers: the default suite, or the shape the flags name with every scenario. */
export function verifyCases(flags: ParsedFlags): VerifyCase[] {
  const seed = (flags.seed as number | undefined) ?? 1;
  const calls = (flags.calls as number | undefined) ?? 2;
  const named = flags.scenario === undefined ? undefined : parseScenarios(flags.scenario as string);
  const layoutFlag = flags['expert-layout'] as string | undefined;
  const layouts: ExpertLayout[] =
    layoutFlag === undefined || layoutFlag === 'both'
      ? ['padded', 'packed']
      : [parseExpertLayout(layoutFlag, '--expert-layout')];
  if (!anyShapeFlag(flags)) {
    // the suite, narrowed by --fp8/--no-fp8 and --scenario where given
    return defaultSuite(seed, calls).filter(
      (c) =>
        (flags.fp8 === undefined || c.config.fp8 === flags.fp8) &&
        (flags.dedup === undefined || (c.config.dedup ?? false) === flags.dedup) &&
        (layouts.length === 2 || c.config.expertLayout === layouts[0]) &&
        (!named || named.includes(c.scenario)),
    );
  }
  const world = (flags.world as number | undefined) ?? 4;
  const numExperts = (flags.experts as number | undefined) ?? 256;
  const hidden = (flags.hidden as number | undefined) ?? 7168;
  const topk = (flags.topk as number | undefined) ?? 8;
  const tokenList = (flags.tokens as number[] | undefined) ?? [128];
  const fp8s = flags.fp8 === undefined ? [true, false] : [flags.fp8 as boolean];
  const scenarios = named ?? SCENARIOS;
  const dedups = flags.dedup === undefined ? [false, true] : [flags.dedup as boolean];
  const nodes = (flags.nodes as number | undefined) ?? 1;
  const cases: VerifyCase[] = [];
  for (const tokens of tokenList) {
    for (const fp8 of fp8s) {
      for (const [dedup, expertLayout] of dedups.flatMap((d) => layouts.map((l) => [d, l] as const))) {
        for (const scenario of scenarios) {
          cases.push({
            name: `W=${world}${nodes > 1 ? ` nodes=${nodes}` : ''} E=${numExperts} H=${hidden} k=${topk} T=${tokens} ${fp8 ? 'fp8' : 'bf16'} ${scenario}${dedup ? ' dedup' : ''} ${expertLayout}`,
            config: {
              world,
              numExperts,
              hidden,
              topk,
              maxTokensPerRank: Math.max(tokens, 1),
              fp8,
              fp8GroupSize: (flags['group-size'] as number | undefined) ?? 128,
              dedup,
              expertLayout,
              nodes,
            },
            scenario,
            tokens,
            calls,
            seed,
          });
        }
      }
    }
  }
  // a shape the library refuses is the flags' mistake: say so once, before any rank starts, and name the
  // flag that leaves out the refused cases where only some are
  const refusal = (config: EpConfigInput): Error | null => {
    try {
      resolveConfig(config);
      return null;
    } catch (err) {
      return err as Error;
    }
  };
  for (const c of cases) {
    const err = refusal(c.config);
    if (err === null) continue;
    const only =
      c.config.fp8 && !refusal({ ...c.config, fp8: false })
        ? ' (the FP8 cases only: --no-fp8 leaves them out)'
        : c.config.dedup && !refusal({ ...c.config, dedup: false })
          ? ' (the dedup cases only: --no-dedup leaves them out)'
          : '';
    throw new UsageError(`${err.message}${only}`);
  }
  return cases;
}

/** Bytes as MiB with two significant digits or more, e.g. "0.21 MiB", "7.5 MiB", "1536 MiB". */
function mib(bytes: number): string {
  const m = bytes / 2 ** 20;
  return `${m >= 10 ? m.toFixed(0) : m >= 1 ? m.toFixed(1) : m.toFixed(2)} MiB`;
}

/**
 * One case's verdict over every rank of its run: the fewest calls, the longest time and the largest heap of
 * any rank, and the first failing rank's message.
 */
export interface CaseRow extends Omit<CaseOutcome, 'error'> {
  world: number;
}

/** A case (or a run) that failed with no outcome to show. */
function failedRow(name: string, world: number, message: string): CaseRow {
  return { name, world, pass: false, calls: 0, ms: 0, message };
}

/**
 * The verdicts of one run's cases from what its ranks reported. A run that failed as a whole (a rank died,
 * a timeout or a signal stopped it) still gives each case that every rank finished (their partial reports)
 * its verdict; the others fail with the run's error, which is also returned (`failure`): a rank may die
 * after its last case, and the run must not pass then.
 */
export function caseRows(
  list: VerifyCase[],
  world: number,
  settled: SettledRank<CaseOutcome[]>[],
): { rows: CaseRow[]; failure?: string } {
  let perRank: CaseOutcome[][];
  let failure: string | undefined;
  try {
    perRank = resultsOf(settled);
  } catch (err) {
    // the lowest rank that failed, and what the launcher saw first (a rank it stopped may be the lowest)
    const stop = settled.find((s) => s.stop)?.stop;
    failure = `${(err as Error).message}${stop ? ` (the launcher: ${stop})` : ''}`;
    // a rank that finished has its whole result; the others what they had reported
    perRank = settled.map((s) =>
      s.report?.ok ? s.report.result : Array.isArray(s.partial) ? (s.partial as CaseOutcome[]) : [],
    );
  }
  const rows = list.map((c, i): CaseRow => {
    const outs = perRank.map((r) => r[i]);
    const missing = outs.findIndex((o) => o === undefined || o.name !== c.name);
    if (missing !== -1) {
      const why = failure ?? `rank ${missing} gave no outcome for this case`;
      return failedRow(c.name, world, `${why} (before this case ended)`);
    }
    const bad = outs.findIndex((o) => !o.pass);
    return {
      name: c.name,
      world,
      pass: bad === -1,
      calls: Math.min(...outs.map((o) => o.calls)),
      ms: Math.max(...outs.map((o) => o.ms)),
      message: bad === -1 ? undefined : `rank ${bad}: ${outs[bad].message}`,
      heapBytes: Math.max(...outs.map((o) => o.heapBytes ?? 0)),
    };
  });
  return failure === undefined ? { rows } : { rows, failure };
}

/** `moe-a2a verify`: every case on every rank, bit for bit against the oracle. Returns the exit code. */
export async function verifyCommand(flags: ParsedFlags): Promise<number> {
  const transport = await resolveTransport(flags.transport);
  let cases = verifyCases(flags);
  if (flags.graph) {
    if (transport !== 'cuda') throw new UsageError('--graph replays CUDA graphs: it needs --transport cuda');
    cases = cases.filter((c) => c.scenario !== 'ragged'); // a graph is captured for one T
  }
  const timeoutMs = (flags.timeout as number | undefined) ?? 30_000;
  const byWorld = new Map<number, VerifyCase[]>();
  for (const c of cases) byWorld.set(c.config.world, [...(byWorld.get(c.config.world) ?? []), c]);
  const json = flags.json === true;
  if (!json) process.stderr.write(`moe-a2a verify: ${cases.length} cases on the ${transport} transport\n`);
  const summary: CaseRow[] = [];
  const show = (row: CaseRow) => {
    summary.push(row);
    if (json) return;
    console.log(
      row.pass
        ? `PASS  ${row.name}  (${row.calls} call${row.calls === 1 ? '' : 's'}, ${(row.ms / 1000).toFixed(2)} s, heap ${mib(row.heapBytes ?? 0)}/rank)`
        : `FAIL  ${row.name}: ${row.message}`,
    );
  };
  // cuda: the launcher forwards a Ctrl-C or SIGTERM to the ranks of the run in progress; the runs after it
  // do not start (the cpu transport's threads end with this process, as by default)
  let stopped: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    stopped ??= sig;
  };
  if (transport === 'cuda') for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, onSignal);
  try {
    for (const [world, list] of byWorld) {
      if (stopped) {
        for (const c of list) show(failedRow(c.name, world, `not run: ${stopped}`));
        continue;
      }
      const task: VerifyTask = {
        kind: 'verify',
        cases: list,
        transport,
        timeoutMs,
        graph: flags.graph === true,
      };
      const settled = await runScriptSettled<CaseOutcome[]>(transport, world, rankMainPath(), task);
      const { rows, failure } = caseRows(list, world, settled);
      for (const row of rows) show(row);
      // every case has its verdict, yet a rank failed (after its last case): the run does not pass
      if (failure !== undefined && rows.every((r) => r.pass)) {
        show(failedRow(`the run at W=${world}`, world, failure));
      }
    }
  } finally {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.off(sig, onSignal);
  }
  const failed = summary.filter((s) => !s.pass).length;
  if (json) console.log(JSON.stringify({ transport, cases: summary, failed }, null, 2));
  else console.log(`${summary.length - failed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}
