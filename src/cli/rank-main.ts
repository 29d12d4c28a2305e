/**
 * The program every rank runs for `moe-a2a verify` and `moe-a2a bench`: a worker thread (cpu) or a
 * process (cuda, started by the launcher). It reads its task, runs it, and hands back a result:
 * through postMessage in a thread, through a JSON file (MOE_A2A_RESULT_DIR) in a process.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import { errorToWire } from '../errors.js';
import { postRankResult } from '../shmem/cpu/threads.js';
import { groupIo } from './device-io.js';
import { type BenchTask, runBenchRank } from './rank-bench.js';
import { runVerify, type VerifyTask } from './rank-verify.js';

export type RankTask = VerifyTask | BenchTask;

function loadTask(): RankTask {
  const fromThread = (workerData as { data?: RankTask } | null)?.data;
  if (fromThread) return fromThread;
  const file = process.env.MOE_A2A_TASK_FILE;
  if (!file) throw new Error('rank-main needs a task: run it through `moe-a2a verify` or `moe-a2a bench`');
  return JSON.parse(readFileSync(file, 'utf8')) as RankTask;
}

async function report(value: unknown): Promise<void> {
  const dir = process.env.MOE_A2A_RESULT_DIR;
  if (dir && !workerData) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `rank-${process.env.RANK ?? 0}.json`), JSON.stringify(value));
  } else {
    await postRankResult(value);
  }
}

const rank = Number(process.env.RANK ?? 0);
const progress = (line: string) => process.stderr.write(`  .. ${line}\n`);
try {
  const task = loadTask();
  const result =
    task.kind === 'verify'
      ? await runVerify(task, rank, groupIo, progress)
      : await runBenchRank(task, rank, progress);
  await report({ ok: true, result });
} catch (err) {
  await report({ ok: false, error: errorToWire(err) });
}
