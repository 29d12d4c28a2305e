/**
 * Starts one process per rank on this host, like `torchrun --standalone --nproc-per-node N`: the
 * launcher serves the rendezvous store itself (so it outlives any rank), hands each child torchrun's
 * variables, prefixes their output with the rank, and, when one rank fails, stops the others so that
 * nothing waits forever on a dead peer.
 *
 * Each child is started in its own process group (POSIX) and signals go to the whole group, so a rank
 * that is itself a wrapper (`npx tsx ...`, a shell script) is stopped along with what it started.
 * Because of that, a Ctrl-C in the terminal reaches the launcher only; the launcher forwards it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import os from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import { LaunchError } from '../errors.js';
import { STORE_OWNER_VAR, STORE_PORT_VAR } from './env.js';
import { startStoreServer } from './store.js';

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
  /** MASTER_PORT for the store. Default 0: a free port. */
  masterPort?: number;
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
  /** Exit code of each rank, by rank (null: killed by a signal or never started). */
  exitCodes: (number | null)[];
  /** How each rank ended, by rank. */
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

const MASTER_ADDR = '127.0.0.1';
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
  const graceMs = options.graceMs ?? 1000;
  const killAfterMs = options.killAfterMs ?? 3000;
  const forwardSignals = options.forwardSignals ?? true;
  const groups = process.platform !== 'win32';

  const server = await startStoreServer({ host: MASTER_ADDR, port: options.masterPort ?? 0 });
  const masterPort = server.port;

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

  const running = (): number[] => exits.flatMap((e, r) => (e === null ? [r] : []));

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
    beginStop({ kind: 'signal', signal: sig, running: running() }, graceMs);
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  const onAbort = () => beginStop({ kind: 'aborted', running: running() }, 0);
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
      rank,
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
      beginStop({ kind: 'timeout', timeoutMs, running: running() }, 0);
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
      RANK: String(rank),
      WORLD_SIZE: String(nprocs),
      LOCAL_RANK: String(rank),
      LOCAL_WORLD_SIZE: String(nprocs),
      MASTER_ADDR,
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
    const prefix = `[rank ${rank}] `;
    const splitters = (['stdout', 'stderr'] as const).map((stream) => {
      const s = lineSplitter((text) => write(prefix + text, { rank, stream, text }));
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
  await server.close();

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
    masterAddr: MASTER_ADDR,
    masterPort,
  };
}
