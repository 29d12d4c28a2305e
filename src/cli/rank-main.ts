/** The program every rank runs for `moe-a2a verify` and `moe-a2a bench`. */
import { groupIo } from './device-io.js';
import { type BenchTask, runBenchRank } from './rank-bench.js';
import { rankMain } from './rank-io.js';
import { runVerify, type VerifyTask } from './rank-verify.js';

export type RankTask = VerifyTask | BenchTask;

const progress = (line: string) => process.stderr.write(`  .. ${line}\n`);
await rankMain<RankTask, unknown>((task, rank) =>
  task.kind === 'verify' ? runVerify(task, rank, groupIo, progress) : runBenchRank(task, rank, progress),
);
