/** The program every rank runs for `moe-a2a verify` and `moe-a2a bench`. */
import { groupIo } from './device-io.js';
import { type BenchTask, type FloorsTask, runBenchRank, runFloorsRank } from './rank-bench.js';
import { rankMain, reportPartial } from './rank-io.js';
import { runVerify, type VerifyTask } from './rank-verify.js';

export type RankTask = VerifyTask | BenchTask | FloorsTask;

const progress = (line: string) => process.stderr.write(`  .. ${line}\n`);
await rankMain<RankTask, unknown>((task, rank) => {
  if (task.kind === 'verify') return runVerify(task, rank, groupIo, progress, reportPartial);
  if (task.kind === 'floors') return runFloorsRank(task);
  return runBenchRank(task, rank, progress);
});
