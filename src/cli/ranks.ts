import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { errorFromWire, LaunchError } from '../errors.js';
import { launchProcesses } from '../launch/processes.js';
import { runThreads } from '../shmem/cpu/threads.js';
import type { RankReport } from './rank-io.js';
import type { RankTask } from './rank-main.js';

/** The path of module `name` beside the module at `base` (an import.meta.url), with its extension: .ts under tsx, .js when built. */
export function siblingModule(base: string, name: string): string {
  const ext = base.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`./${name}${ext}`, base));
}

/** The file every rank runs for verify and bench. */
export function rankMainPath(): string {
  return siblingModule(import.meta.url, 'rank-main');
}

/**
 * Runs `task` on `world` ranks: worker threads for the cpu transport, processes (through the launcher)
 * for cuda. Returns each rank's result; a rank that failed or reported an error throws, naming it.
 */
export async function runTaskOnRanks<R>(
  transport: 'cpu' | 'cuda',
  world: number,
  task: RankTask,
): Promise<R[]> {
  return runScriptOnRanks<R>(transport, world, rankMainPath(), task);
}

/** Runs a rank program (one that calls rankMain) on `world` ranks with `task`; see runTaskOnRanks. */
export async function runScriptOnRanks<R>(
  transport: 'cpu' | 'cuda',
  world: number,
  script: string,
  task: unknown,
): Promise<R[]> {
  return resultsOf(await runScriptSettled<R>(transport, world, script, task));
}

/** What became of each rank: its report, and how it died when it did not exit cleanly. */
export interface SettledRank<R> {
  report: RankReport<R> | undefined;
  died: string | undefined;
  /** A process's last reportPartial (rank-io.ts), when it made one. */
  partial?: unknown;
  /** Processes: why the launcher stopped the ranks (the first to fail, a timeout, a signal), when it did. */
  stop?: string;
}

/** Every rank's result; a rank that failed or reported an error throws, naming it (the lowest such rank). */
export function resultsOf<R>(settled: SettledRank<R>[]): R[] {
  return settled.map((s, rank) => unwrap<R>(rank, s.report, s.died));
}

/** Like runScriptOnRanks, but returns every rank's report or death instead of throwing for the first. */
export async function runScriptSettled<R>(
  transport: 'cpu' | 'cuda',
  world: number,
  script: string,
  task: unknown,
  timeoutMs?: number,
): Promise<SettledRank<R>[]> {
  if (transport === 'cpu') {
    const outcomes = await runThreads({ world, script, data: task, timeoutMs });
    return outcomes.map((o) => ({
      report: o.result as RankReport<R> | undefined,
      died: o.ok ? undefined : (o.error?.message ?? `exit code ${o.exitCode}`),
    }));
  }
  const dir = mkdtempSync(join(tmpdir(), 'moe-a2a-'));
  try {
    const taskFile = join(dir, 'task.json');
    writeFileSync(taskFile, JSON.stringify(task));
    const result = await launchProcesses({
      nprocs: world,
      command: [process.execPath, ...process.execArgv, script],
      env: { MOE_A2A_TASK_FILE: taskFile, MOE_A2A_RESULT_DIR: dir, MOE_A2A_TRANSPORT: 'cuda' },
      timeoutMs,
      onStop: (m) => process.stderr.write(`moe-a2a: ${m}\n`),
    });
    const read = (file: string): unknown => {
      try {
        return JSON.parse(readFileSync(join(dir, file), 'utf8'));
      } catch {
        return undefined;
      }
    };
    return Array.from({ length: world }, (_, r) => {
      const exit = result.exits[r];
      return {
        report: read(`rank-${r}.json`) as RankReport<R> | undefined,
        died: exit.code === 0 ? undefined : `exit code ${exit.code ?? exit.signal}`,
        partial: read(`rank-${r}.partial.json`),
        ...(result.message ? { stop: result.message } : {}),
      };
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function unwrap<R>(rank: number, report: RankReport<R> | undefined, died: string | undefined): R {
  if (report?.ok) return report.result;
  if (report && !report.ok) {
    const err = errorFromWire(report.error);
    err.message = `rank ${rank}: ${err.message}`;
    throw err;
  }
  throw new LaunchError(`rank ${rank} ended without a result${died ? ` (${died})` : ''}`, { rank });
}
