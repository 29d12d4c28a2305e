import { pathToFileURL } from 'node:url';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { ControlWords, controlBytes, RANK_EXITED, RANK_FAILED } from './control.js';
import type { CoordinatorMessage, CpuRankContext } from './world.js';

export interface RunThreadsOptions {
  /** Number of ranks, one worker thread each. */
  world: number;
  /** The module each rank runs (a path or file URL). It calls createGroup({ transport: 'cpu', ... }). */
  script: string | URL;
  /** process.argv tail for each worker. */
  argv?: string[];
  /** Passed to every rank as workerData.data (structured clone). */
  data?: unknown;
  /** Extra environment for the ranks (RANK, WORLD_SIZE, LOCAL_RANK are set). */
  env?: Record<string, string>;
  /** Stop every rank after this long (ms); default: no limit. */
  timeoutMs?: number;
  /** Messages a rank posts with postRankResult() arrive here too. */
  onResult?: (rank: number, value: unknown) => void;
}

export interface RankOutcome {
  rank: number;
  ok: boolean;
  /** What the rank posted last with postRankResult(). */
  result?: unknown;
  error?: Error;
  exitCode: number;
}

/** Marks a message from a rank to the launcher as its result. */
export interface RankResultMessage {
  moeA2aResult: unknown;
}

/**
 * Runs `world` ranks as worker threads of this process: the cpu transport's launcher. It coordinates
 * the heap exchange of createGroup, and when a rank throws or exits early it marks it in the shared
 * control words (so peers waiting on it fail at once with PeerFailedError naming it) and tells the others.
 * Resolves when every rank has exited.
 */
export async function runThreads(opts: RunThreadsOptions): Promise<RankOutcome[]> {
  const { world } = opts;
  const controlSab = new SharedArrayBuffer(controlBytes(world));
  const control = new ControlWords(controlSab, world);
  const ports: MessagePort[] = [];
  const pending = new Map<number, SharedArrayBuffer[]>();
  const outcomes: RankOutcome[] = Array.from({ length: world }, (_, rank) => ({
    rank,
    ok: false,
    exitCode: -1,
  }));
  const workers: Worker[] = [];
  let finished = 0;

  const broadcastFailure = (rank: number, message: string) => {
    for (const [r, p] of ports.entries()) {
      if (r !== rank) p.postMessage({ type: 'failed', rank, message } satisfies CoordinatorMessage);
    }
  };

  const entry = workerEntry(opts.script);
  return await new Promise<RankOutcome[]>((resolve) => {
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            for (const [r, w] of workers.entries()) {
              if (outcomes[r].exitCode === -1) {
                outcomes[r].error ??= new Error(
                  `rank ${r} was still running after ${opts.timeoutMs} ms and was stopped`,
                );
                void w.terminate();
              }
            }
          }, opts.timeoutMs);
    for (let rank = 0; rank < world; rank++) {
      const channel = new MessageChannel();
      ports.push(channel.port1);
      channel.port1.on('message', (m: CoordinatorMessage) => {
        if (m.type !== 'heap') return;
        const list = pending.get(m.seq) ?? new Array<SharedArrayBuffer>(world);
        list[m.rank] = m.heap;
        pending.set(m.seq, list);
        if (Object.keys(list).length === world) {
          pending.delete(m.seq);
          for (const p of ports)
            p.postMessage({ type: 'heaps', seq: m.seq, heaps: list } satisfies CoordinatorMessage);
        }
      });
      const ctx: CpuRankContext = {
        kind: 'moe-a2a-cpu-rank',
        rank,
        world,
        control: controlSab,
        port: channel.port2,
      };
      const worker = new Worker(entry.code, {
        eval: entry.eval,
        workerData: { moeA2a: ctx, data: opts.data },
        transferList: [channel.port2],
        argv: opts.argv ?? [],
        env: {
          ...process.env,
          ...opts.env,
          RANK: String(rank),
          WORLD_SIZE: String(world),
          LOCAL_RANK: String(rank),
          LOCAL_WORLD_SIZE: String(world),
          MOE_A2A_TRANSPORT: 'cpu',
        },
        execArgv: process.execArgv,
      });
      workers.push(worker);
      worker.on('message', (m: RankResultMessage) => {
        if (m && typeof m === 'object' && 'moeA2aResult' in m) {
          outcomes[rank].result = m.moeA2aResult;
          opts.onResult?.(rank, m.moeA2aResult);
        }
      });
      worker.on('error', (err) => {
        outcomes[rank].error ??= err;
        control.setStatus(rank, RANK_FAILED);
        broadcastFailure(rank, err.message);
      });
      worker.on('exit', (code) => {
        outcomes[rank].exitCode = code;
        outcomes[rank].ok = code === 0 && !outcomes[rank].error;
        if (outcomes[rank].ok) {
          control.setStatus(rank, RANK_EXITED);
        } else {
          control.setStatus(rank, RANK_FAILED);
          broadcastFailure(rank, outcomes[rank].error?.message ?? `exit code ${code}`);
        }
        channel.port1.close();
        if (++finished === world) {
          if (timer) clearTimeout(timer);
          resolve(outcomes);
        }
      });
    }
  });
}

/**
 * A worker runs built JavaScript as is. A TypeScript file (tests and development run the sources
 * through tsx) gets a small bootstrap that registers tsx's loader in the worker first: Node 20 does
 * not carry a loader registered with --import into worker threads.
 */
function workerEntry(script: string | URL): { code: string | URL; eval: boolean } {
  const url = script instanceof URL ? script : pathToFileURL(script);
  if (!url.pathname.endsWith('.ts')) return { code: url, eval: false };
  const api = import.meta.resolve('tsx/esm/api');
  return {
    code: `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`,
    eval: true,
  };
}

/** In a rank: hands a result (structured-cloneable) to the launcher. */
export async function postRankResult(value: unknown): Promise<void> {
  const { parentPort } = await import('node:worker_threads');
  parentPort?.postMessage({ moeA2aResult: value } satisfies RankResultMessage);
}
