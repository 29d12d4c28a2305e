import { resolve } from 'node:path';
import { launchProcesses } from '../launch/processes.js';
import { runThreads } from '../shmem/cpu/threads.js';
import { type ParsedFlags, UsageError } from './args.js';
import { resolveTransport } from './common.js';

/** `moe-a2a launch -n N script args...`: threads for cpu, processes for cuda. Returns the exit code. */
export async function launchCommand(flags: ParsedFlags, rest: string[]): Promise<number> {
  const n = (flags.n as number | undefined) ?? (flags.nproc as number | undefined) ?? 1;
  if (!(n >= 1)) throw new UsageError(`-n must be at least 1, got ${n}`);
  const [script, ...args] = rest;
  if (!script) {
    console.error('moe-a2a launch: name the script to run, e.g. `moe-a2a launch -n 4 my-rank.mjs`');
    return 2;
  }
  const nnodes = (flags.nnodes as number | undefined) ?? 1;
  const hosts = {
    nnodes,
    nodeRank: (flags['node-rank'] as number | undefined) ?? 0,
    masterAddr: flags['master-addr'] as string | undefined,
    masterPort: flags['master-port'] as number | undefined,
  };
  const transport = await resolveTransport(flags.transport);
  if (transport === 'cpu' && nnodes > 1) {
    throw new UsageError(
      "the cpu transport's ranks are threads of one process: --nnodes > 1 needs processes (--transport cuda)",
    );
  }
  if (transport === 'cpu') {
    const outcomes = await runThreads({ world: n, script: resolve(script), argv: args });
    const failed = outcomes.filter((o) => !o.ok);
    for (const o of failed) {
      console.error(
        `moe-a2a launch: rank ${o.rank} failed: ${o.error?.message ?? `exit code ${o.exitCode}`}`,
      );
    }
    return failed.length === 0 ? 0 : 1;
  }
  const result = await launchProcesses({
    ...hosts,
    nprocs: n,
    command: [process.execPath, ...process.execArgv, resolve(script), ...args],
    env: { MOE_A2A_TRANSPORT: transport },
    onStop: (m) => console.error(`moe-a2a launch: ${m}`),
  });
  return result.exitCode;
}
