/**
 * Starts one process per rank on this host, like `torchrun --nproc-per-node N` (one host:
 * `--standalone`; several: `--nnodes`, `--node-rank`, `--master-addr`, `--master-port`, one launcher per
 * host): host 0's launcher serves the rendezvous store itself (so it outlives any rank), every launcher
 * hands each child torchrun's variables, prefixes their output with the rank, and, when one of its ranks
 * fails, stops the others on its host so that nothing waits forever on a dead peer. (Ranks on other
 * hosts learn of it through their group's timeout, which names the rank.)
 *
 * Each child is started in its own process group (POSIX) and signals go to the whole group, so a rank
 * that is itself a wrapper (`npx tsx ...`, a shell script) is stopped along with what it started.
 * Because of that, a Ctrl-C in the terminal reaches the launcher only; the launcher forwards it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import os from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import { LaunchError } from '../errors.js';
import { STORE_OWNER_VAR, STORE_PORT_VAR, storeListenHost } from './env.js';
import { connectStore, startStoreServer } from './store.js';

export type OutputStream = 'stdout' | 'stderr';

export interface LaunchOptions {
  /** Number of ranks (processes) to start, >= 1. */
  nprocs: number;
  /** The program and its arguments, the same for every rank, e.g. [process.execPath, script, ...args]. */
  command: readonly string[];
  /** Extra environment for every rank, on top of this process's (undefined removes a variable). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Working directory of the ranks. Default: this process's. */
  cwd?: string;
  /** Stop every rank when the job runs longer than this (ms). Default: no limit. */
  timeoutMs?: number;
  /** MASTER_PORT for the store. Default 0: a free port (one host only: every host must name the same). */
  masterPort?: number;
  /** Hosts in the job (torchrun --nnodes). Default 1. */
  nnodes?: number;
  /** This host, in [0, nnodes) (--node-rank): its ranks are nodeRank * nprocs + 0 .. nprocs - 1. Default 0. */
  nodeRank?: number;
  /**
   * Host 0's address, where its launcher serves the store (--master-addr). Default 127.0.0.1. Host 0
   * listens on it when it is a loopback address, else on every interface.
   */
  masterAddr?: string;
  /** Host 0: how long to wait, once its own ranks are done, for the other hosts' launchers to finish (ms). Default 10000. */
  lingerMs?: number;
  /**
   * Receives every output line, already prefixed (`[rank 2] text`); `source.text` is the line without
   * the prefix. Default: stdout lines to process.stdout, stderr lines to process.stderr.
   */
  onLine?: (line: string, source: { rank: number; stream: OutputStream; text: string }) => void;
  /**
   * Called once, the moment the launcher starts stopping ranks, with the reason and a message such as
   * `rank 2 exited with code 1; stopping the others` (for a CLI to print right away).
   */
  onStop?: (message: string, cause: StopCause) => void;
  /** After a rank fails or a Ctrl-C, how long the others may run on before SIGTERM (ms). Default 1000. */
  graceMs?: number;
  /** After SIGTERM, how long before SIGKILL (ms). Default 3000. */
  killAfterMs?: number;
  /** Forward SIGINT and SIGTERM sent to this process to the ranks while they run. Default true. */
  forwardSignals?: boolean;
  /** Aborting stops every rank (SIGTERM now, SIGKILL after killAfterMs). */
  signal?: AbortSignal;
}

/** How one rank ended. */
export interface RankExit {
  /** The rank in the job (nodeRank * nprocs + its index on this host). */
  rank: number;
  pid: number | undefined;
  /** Exit code, or null when killed by a signal or never started. */
  code: number | null;
  /** The signal that killed it, or null. */
  signal: NodeJS.Signals | null;
  /** Why it could not be started (spawn error), when it could not. */
  spawnError?: string;
  /** Whether the launcher had signalled it (it was stopped, not failed on its own). */
  stoppedByLauncher: boolean;
  /** Milliseconds from start to exit. */
  durationMs: number;
}

/** Why the launcher stopped ranks. */
export type StopCause =
  | {
      kind: 'rank-failed';
      rank: number;
      code: number | null;
      signal: NodeJS.Signals | null;
      spawnError?: string;
    }
  | { kind: 'timeout'; timeoutMs: number; running: number[] }
  | { kind: 'signal'; signal: NodeJS.Signals; running: number[] }
  | { kind: 'aborted'; running: number[] };

export interface LaunchResult {
  /** Every rank exited with code 0 and nothing was stopped. */
  ok: boolean;
  /** Exit code of each rank of this host, by its index here (null: killed by a signal or never started). */
  exitCodes: (number | null)[];
  /** How each rank of this host ended, by its index here. */
  exits: RankExit[];
  /** Why the launcher stopped ranks, or null when every rank ran to its end. */
  stop: StopCause | null;
  /** The first rank that exited non-zero or by a signal on its own, or null. */
  firstFailure: RankExit | null;
  /** The stop message (as given to onStop), or null when nothing was stopped. */
  message: string | null;
  /**
   * A process exit status for a CLI: 0 when ok; the failed rank's code (128 + signal number when
   * killed); 124 on timeout; 128 + signal number on a forwarded signal (130 for Ctrl-C); 1 if aborted.
   */
  exitCode: number;
  /** Where the store listened. */
  masterAddr: string;
  masterPort: number;
}

const LOOPBACK = '127.0.0.1';
/** The store key a launcher of host k > 0 sets once all its ranks have ended (host 0 waits for it). */
const hostDoneKey = (node: number) => `moe-a2a/launch/host/${node}/done`;
/** Longest partial line kept before it is emitted anyway. */
const MAX_LINE_CHARS = 1 << 20;
/** After a rank exits, how long its pipes may stay open (held by a process it left behind). */
const STDIO_DRAIN_MS = 1000;

function signalNumber(sig: NodeJS.Signals): number {
  return (os.constants.signals as Record<string, number | undefined>)[sig] ?? 0;
}

function describeExit(e: {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: string;
}) {
  if (e.spawnError !== undefined) return `rank ${e.rank} could not start (${e.spawnError})`;
  if (e.signal !== null) return `rank ${e.rank} was killed by ${e.signal}`;
  return `rank ${e.rank} exited with code ${e.code}`;
}

function ranksText(ranks: number[]): string {
  return ranks.length === 0 ? 'none' : `${ranks.length === 1 ? 'rank' : 'ranks'} ${ranks.join(', ')}`;
}

function stopMessage(cause: StopCause): string {
  switch (cause.kind) {
    case 'rank-failed':
      return `${describeExit(cause)}; stopping the others`;
    case 'timeout':
      return `timed out after ${cause.timeoutMs} ms with ${ranksText(cause.running)} still running; stopping them`;
    case 'signal':
      return `received ${cause.signal}; forwarding it to ${ranksText(cause.running)}`;
    case 'aborted':
      return `aborted; stopping ${ranksText(cause.running)}`;
  }
}

function checkMs(name: string, v: number | undefined, min: number): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < min)) {
    throw new LaunchError(`${name} must be a finite number of milliseconds >= ${min}, got ${String(v)}`, {
      field: name,
    });
  }
}

/** Calls `emit` once per complete line of a byte stream (and once for an unterminated last line). */
function lineSplitter(emit: (text: string) => void): { write(chunk: Buffer): void; end(): void } {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  const emitLines = (s: string) => {
    const parts = s.split('\n');
    rest = parts.pop() ?? '';
    for (const p of parts) emit(p.endsWith('\r') ? p.slice(0, -1) : p);
    if (rest.length > MAX_LINE_CHARS) {
      emit(rest);
      rest = '';
    }
  };
  return {
    write: (chunk) => emitLines(rest + decoder.write(chunk)),
    end: () => {
      const tail = rest + decoder.end();
      rest = '';
      if (tail.length > 0) emit(tail.endsWith('\r') ? tail.slice(0, -1) : tail);
    },
  };
}

/**
 * Runs `command` as `nprocs` ranks and resolves, once every rank has exited and the store is closed,
 * with how each ended. It never rejects for a rank's failure (that is in the result); it rejects with
 * LaunchError only for bad options or a store that cannot listen.
 */
export async function launchProcesses(options: LaunchOptions): Promise<LaunchResult> {
  const { nprocs, command } = options;
  if (!Number.isInteger(nprocs) || nprocs < 1 || nprocs > 65536) {
    throw new LaunchError(`nprocs must be an integer in [1, 65536], got ${String(nprocs)}`, {
      field: 'nprocs',
    });
  }
  if (!Array.isArray(command) || command.length === 0 || command.some((c) => typeof c !== 'string')) {
    throw new LaunchError('command must be a non-empty array of strings: the program, then its arguments', {
      field: 'command',
    });
  }
  checkMs('timeoutMs', options.timeoutMs, 1);
  checkMs('graceMs', options.graceMs, 0);
  checkMs('killAfterMs', options.killAfterMs, 0);
  checkMs('lingerMs', options.lingerMs, 0);
  const nnodes = options.nnodes ?? 1;
  const nodeRank = options.nodeRank ?? 0;
  if (!Number.isInteger(nnodes) || nnodes < 1 || nnodes * nprocs > 65536) {
    throw new LaunchError(
      `nnodes must be an integer >= 1 with nnodes * nprocs <= 65536, got ${String(nnodes)}`,
      {
        field: 'nnodes',
      },
    );
  }
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    throw new LaunchError(`nodeRank must be an integer in [0, ${nnodes - 1}], got ${String(nodeRank)}`, {
      field: 'nodeRank',
    });
  }
  if (nnodes > 1 && !(Number.isInteger(options.masterPort) && (options.masterPort as number) > 0)) {
    throw new LaunchError(
      `with ${nnodes} hosts every launcher must name the same store port: set masterPort (--master-port), got ${String(options.masterPort)}`,
      { field: 'masterPort' },
    );
  }
  const addr = (options.masterAddr ?? LOOPBACK).trim();
  const masterAddr = addr === 'localhost' ? LOOPBACK : addr;
  if (masterAddr === '' || /\s/.test(masterAddr)) {
    throw new LaunchError(
      `masterAddr must be a host name or address, got ${JSON.stringify(options.masterAddr)}`,
      {
        field: 'masterAddr',
      },
    );
  }
  const lingerMs = options.lingerMs ?? 10000;
  const graceMs = options.graceMs ?? 1000;
  const killAfterMs = options.killAfterMs ?? 3000;
  const forwardSignals = options.forwardSignals ?? true;
  const groups = process.platform !== 'win32';

  // host 0 serves the store; the other hosts' ranks reach it at masterAddr
  const server =
    nodeRank === 0
      ? await startStoreServer({
          host: nnodes === 1 ? masterAddr : storeListenHost(masterAddr),
          port: options.masterPort ?? 0,
        })
      : null;
  const masterPort = server?.port ?? (options.masterPort as number);
  const firstRank = nodeRank * nprocs;

  const baseEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...options.env }))
    if (v !== undefined) baseEnv[k] = v;
  delete baseEnv.TORCHELASTIC_USE_AGENT_STORE;

  const write =
    options.onLine ??
    ((line: string, source: { stream: OutputStream }) => {
      (source.stream === 'stdout' ? process.stdout : process.stderr).write(`${line}\n`);
    });

  const started = Date.now();
  const children: (ChildProcess | null)[] = [];
  const exits: (RankExit | null)[] = new Array(nprocs).fill(null);
  const signalled = new Array<boolean>(nprocs).fill(false);
  /** The rank's own process has exited (its pipes may still be draining): never signal its pid again. */
  const exited = new Array<boolean>(nprocs).fill(false);
  let stop = null as StopCause | null;
  let firstFailure = null as RankExit | null;
  let interrupts = 0;
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(
      () => {
        timers.delete(t);
        fn();
      },
      Math.min(ms, 2 ** 31 - 1),
    );
    timers.add(t);
  };

  /** This host's ranks still running, by index here; `runningRanks` as ranks of the job (for messages). */
  const running = (): number[] => exits.flatMap((e, r) => (e === null ? [r] : []));
  const runningRanks = (): number[] => running().map((r) => firstRank + r);

  const signalRank = (rank: number, sig: NodeJS.Signals): void => {
    const child = children[rank];
    if (!child || exited[rank] || exits[rank] !== null || child.pid === undefined) return;
    signalled[rank] = true;
    try {
      if (groups) process.kill(-child.pid, sig);
      else child.kill(sig);
    } catch {
      try {
        child.kill(sig);
      } catch {
        // Already gone.
      }
    }
  };
  const signalAll = (sig: NodeJS.Signals): void => {
    for (const r of running()) signalRank(r, sig);
  };

  /** Begins stopping: optional first signal now, SIGTERM after `termAfterMs`, SIGKILL after that. */
  const beginStop = (cause: StopCause, termAfterMs: number): void => {
    if (stop !== null) return;
    stop = cause;
    options.onStop?.(stopMessage(cause), cause);
    later(termAfterMs, () => {
      signalAll('SIGTERM');
      later(killAfterMs, () => signalAll('SIGKILL'));
    });
  };

  const onSignal = (sig: NodeJS.Signals): void => {
    interrupts++;
    if (interrupts > 1) {
      signalAll('SIGKILL');
      return;
    }
    signalAll(sig);
    beginStop({ kind: 'signal', signal: sig, running: runningRanks() }, graceMs);
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  const onAbort = () => beginStop({ kind: 'aborted', running: runningRanks() }, 0);
  // If this process exits while ranks run (process.exit elsewhere), do not leave them behind.
  const onExit = () => signalAll('SIGKILL');

  let allDone!: () => void;
  const done = new Promise<void>((resolve) => {
    allDone = resolve;
  });
  let remaining = nprocs;

  const finishRank = (rank: number, exit: Omit<RankExit, 'rank' | 'stoppedByLauncher' | 'durationMs'>) => {
    if (exits[rank] !== null) return;
    const e: RankExit = {
      rank: firstRank + rank,
      ...exit,
      stoppedByLauncher: signalled[rank]!,
      durationMs: Date.now() - started,
    };
    exits[rank] = e;
    const failed = e.code !== 0;
    if (failed && stop === null) {
      firstFailure = e;
      beginStop(
        {
          kind: 'rank-failed',
          rank,
          code: e.code,
          signal: e.signal,
          ...(e.spawnError ? { spawnError: e.spawnError } : {}),
        },
        graceMs,
      );
    }
    remaining--;
    if (remaining === 0) allDone();
  };

  process.on('exit', onExit);
  if (forwardSignals) {
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigterm);
  }
  if (options.signal) {
    if (options.signal.aborted) onAbort();
    else options.signal.addEventListener('abort', onAbort, { once: true });
  }
  if (options.timeoutMs !== undefined) {
    const timeoutMs = options.timeoutMs;
    later(timeoutMs, () => {
      if (stop !== null) return;
      beginStop({ kind: 'timeout', timeoutMs, running: runningRanks() }, 0);
    });
  }

  const [program, ...args] = command as [string, ...string[]];
  for (let rank = 0; rank < nprocs; rank++) {
    if (stop !== null) {
      // Aborted before this rank started: it never runs.
      children.push(null);
      finishRank(rank, {
        pid: undefined,
        code: null,
        signal: null,
        spawnError: 'not started: the launch was stopped',
      });
      continue;
    }
    const env: Record<string, string> = {
      ...baseEnv,
      RANK: String(firstRank + rank),
      WORLD_SIZE: String(nnodes * nprocs),
      LOCAL_RANK: String(rank),
      LOCAL_WORLD_SIZE: String(nprocs),
      GROUP_RANK: String(nodeRank),
      MASTER_ADDR: masterAddr,
      MASTER_PORT: String(masterPort),
      [STORE_OWNER_VAR]: 'launcher',
      [STORE_PORT_VAR]: String(masterPort),
    };
    const child = spawn(program, args, {
      env,
      cwd: options.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: groups,
    });
    children.push(child);
    const prefix = `[rank ${firstRank + rank}] `;
    const splitters = (['stdout', 'stderr'] as const).map((stream) => {
      const s = lineSplitter((text) => write(prefix + text, { rank: firstRank + rank, stream, text }));
      child[stream]?.on('data', (chunk: Buffer) => s.write(chunk));
      return s;
    });
    let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let closed = false;
    const settle = () => {
      if (closed) return;
      closed = true;
      for (const s of splitters) s.end();
      finishRank(rank, { pid: child.pid, code: exitInfo?.code ?? null, signal: exitInfo?.signal ?? null });
    };
    child.on('error', (err) => {
      if (child.pid === undefined && !closed) {
        // Never started (no such program, not executable).
        closed = true;
        for (const s of splitters) s.end();
        finishRank(rank, { pid: undefined, code: null, signal: null, spawnError: err.message });
      }
    });
    child.on('exit', (code, signal) => {
      exited[rank] = true;
      exitInfo = { code, signal };
      // 'close' follows once its pipes end; a process it left behind may hold them open, so do not wait
      // for that forever.
      later(STDIO_DRAIN_MS, () => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        settle();
      });
    });
    child.on('close', (code, signal) => {
      exited[rank] = true;
      exitInfo ??= { code, signal };
      settle();
    });
  }

  await done;
  for (const t of timers) clearTimeout(t);
  timers.clear();
  process.off('exit', onExit);
  if (forwardSignals) {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
  }
  options.signal?.removeEventListener('abort', onAbort);
  await settleHosts(nnodes, nodeRank, masterAddr, masterPort, lingerMs);
  await server?.close();

  const finalExits = exits as RankExit[];
  const cause = stop;
  let exitCode = 0;
  if (cause?.kind === 'rank-failed') {
    exitCode = cause.code ?? (cause.signal ? 128 + signalNumber(cause.signal) : 1);
    if (exitCode === 0) exitCode = 1;
  } else if (cause?.kind === 'timeout') exitCode = 124;
  else if (cause?.kind === 'signal') exitCode = 128 + signalNumber(cause.signal);
  else if (cause?.kind === 'aborted') exitCode = 1;
  return {
    ok: cause === null && finalExits.every((e) => e.code === 0),
    exitCodes: finalExits.map((e) => e.code),
    exits: finalExits,
    stop: cause,
    firstFailure,
    message: cause ? stopMessage(cause) : null,
    exitCode,
    masterAddr,
    masterPort,
  };
}

/**
 * With several hosts the store lives with host 0's launcher: the others tell it when their ranks have
 * ended, and host 0 waits up to `lingerMs` for that before it closes the store under them. Best effort:
 * a host that cannot be reached is not waited for longer.
 */
async function settleHosts(
  nnodes: number,
  nodeRank: number,
  host: string,
  port: number,
  lingerMs: number,
): Promise<void> {
  if (nnodes === 1) return;
  let store: Awaited<ReturnType<typeof connectStore>> | null = null;
  try {
    store = await connectStore({ host, port, timeoutMs: Math.max(1, lingerMs) });
    if (nodeRank !== 0) {
      await store.set(hostDoneKey(nodeRank), '1');
      return;
    }
    const deadline = Date.now() + lingerMs;
    for (let node = 1; node < nnodes; node++)
      await store.get(hostDoneKey(node), { timeoutMs: Math.max(1, deadline - Date.now()) });
  } catch {
    // (a host that is gone or late: its ranks failed or will, through their own timeouts)
  } finally {
    await store?.close().catch(() => {});
  }
}
