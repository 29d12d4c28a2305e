/**
 * How a rank program started by the CLI (or a test) receives its task and hands back its result:
 * through workerData / postMessage in a worker thread (cpu), through JSON files in a process (cuda:
 * MOE_A2A_TASK_FILE in, MOE_A2A_RESULT_DIR/rank-N.json out).
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import { errorToWire, type WireError } from '../errors.js';
import { postRankResult } from '../shmem/cpu/threads.js';

export type RankReport<R> = { ok: true; result: R } | { ok: false; error: WireError };

export function loadRankTask<T>(): T {
  const fromThread = (workerData as { data?: T } | null)?.data;
  if (fromThread !== undefined) return fromThread;
  const file = process.env.MOE_A2A_TASK_FILE;
  if (!file)
    throw new Error('this rank program needs a task: run it through `moe-a2a verify`, `bench` or a test');
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

async function report(value: RankReport<unknown>): Promise<void> {
  const dir = process.env.MOE_A2A_RESULT_DIR;
  if (dir && !workerData) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `rank-${process.env.RANK ?? 0}.json`), JSON.stringify(value));
  } else {
    await postRankResult(value);
  }
}

/**
 * A rank process's results so far (MOE_A2A_RESULT_DIR/rank-N.partial.json, replaced whole), so that a run
 * stopped part-way (a timeout, a signal) still shows what finished. A worker thread (cpu) ends with the
 * process that reads its results: nothing to keep.
 */
export function reportPartial(value: unknown): void {
  const dir = process.env.MOE_A2A_RESULT_DIR;
  if (!dir || workerData) return;
  // best effort: a write that fails costs only what a stopped run would have shown, never the rank's work
  try {
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `rank-${process.env.RANK ?? 0}.partial.json`);
    writeFileSync(`${file}.tmp`, JSON.stringify(value));
    renameSync(`${file}.tmp`, file);
  } catch {}
}

/** Runs `body` with this rank's task and reports its result or its error (never throws). */
export async function rankMain<T, R>(body: (task: T, rank: number) => Promise<R>): Promise<void> {
  const rank = Number(process.env.RANK ?? 0);
  try {
    await report({ ok: true, result: await body(loadRankTask<T>(), rank) });
  } catch (err) {
    await report({ ok: false, error: errorToWire(err) });
  }
  // A rank process is done once it has reported: a group the body could not close (it failed half-way)
  // may still hold a store connection that would keep the process alive, and its launcher waiting.
  if (!workerData) process.exit(0);
}
