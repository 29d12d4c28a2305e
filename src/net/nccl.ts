import { createRequire } from 'node:module';
import { NcclError, TransportUnavailableError } from '../errors.js';
import type { StoreClient } from '../launch/store.js';
import { NCCL_MIN_CONFIG_VERSION, ncclConfigBytes, ncclVersionName } from './nccl-config.js';

/**
 * NCCL's host API through koffi, loaded only when asked for (the engine between hosts, issue "Between
 * hosts"). Communicators are created non-blocking (config.blocking = 0), so that no call can hang: every
 * call that NCCL leaves in progress is polled with ncclCommGetAsyncError against a deadline, and a
 * communicator that misses it is aborted (ncclCommAbort) and reported as an NcclError naming the call.
 */

type Koffi = typeof import('koffi');
type Ptr = unknown;

/** ncclResult_t (nccl.h). */
export const NcclResult = {
  success: 0,
  unhandledCudaError: 1,
  systemError: 2,
  internalError: 3,
  invalidArgument: 4,
  invalidUsage: 5,
  remoteError: 6,
  inProgress: 7,
} as const;
const RESULT_NAMES: Record<number, string> = {
  0: 'ncclSuccess',
  1: 'ncclUnhandledCudaError',
  2: 'ncclSystemError',
  3: 'ncclInternalError',
  4: 'ncclInvalidArgument',
  5: 'ncclInvalidUsage',
  6: 'ncclRemoteError',
  7: 'ncclInProgress',
};

/** ncclUint8: every transfer here moves bytes. */
const NCCL_UINT8 = 1;
/** Bytes of an ncclUniqueId. */
export const NCCL_UNIQUE_ID_BYTES = 128;

interface Fns {
  ncclGetVersion(out: Int32Array): number;
  ncclGetUniqueId(out: Uint8Array): number;
  ncclCommInitRankConfig(
    out: [Ptr],
    nranks: number,
    id: { internal: Uint8Array },
    rank: number,
    config: Uint8Array,
  ): number;
  ncclCommGetAsyncError(comm: Ptr, out: Int32Array): number;
  ncclCommFinalize(comm: Ptr): number;
  ncclCommDestroy(comm: Ptr): number;
  ncclCommAbort(comm: Ptr): number;
  ncclGetErrorString(result: number): string;
  ncclGetLastError(comm: Ptr): string | null;
  ncclGroupStart(): number;
  ncclGroupEnd(): number;
  ncclSend(buf: bigint, count: number, dtype: number, peer: number, comm: Ptr, stream: unknown): number;
  ncclRecv(buf: bigint, count: number, dtype: number, peer: number, comm: Ptr, stream: unknown): number;
}

const PROTOTYPES = [
  'int ncclGetVersion(int *version)',
  'int ncclGetUniqueId(void *uniqueId)',
  'int ncclCommInitRankConfig(_Out_ moeA2a_ncclComm *comm, int nranks, moeA2a_ncclUniqueId commId, int rank, void *config)',
  'int ncclCommGetAsyncError(moeA2a_ncclComm comm, int *asyncError)',
  'int ncclCommFinalize(moeA2a_ncclComm comm)',
  'int ncclCommDestroy(moeA2a_ncclComm comm)',
  'int ncclCommAbort(moeA2a_ncclComm comm)',
  'const char *ncclGetErrorString(int result)',
  'const char *ncclGetLastError(moeA2a_ncclComm comm)',
  'int ncclGroupStart()',
  'int ncclGroupEnd()',
  // device buffers as integers (an address is passed the same way as a pointer on x86-64 and aarch64);
  // the stream is the CUstream our driver bindings hand out (cudaStream_t is the same handle)
  'int ncclSend(uintptr_t sendbuff, size_t count, int datatype, int peer, moeA2a_ncclComm comm, void *stream)',
  'int ncclRecv(uintptr_t recvbuff, size_t count, int datatype, int peer, moeA2a_ncclComm comm, void *stream)',
];

/** The loaded library: its version and functions. */
export interface NcclLib {
  /** ncclGetVersion: e.g. 22907 for 2.29.7. */
  readonly version: number;
  readonly path: string;
  readonly fns: Fns;
}

let loaded: NcclLib | undefined;

/**
 * Loads NCCL (MOE_A2A_NCCL_LIB, else libnccl.so.2 from the loader's path) once per process. Throws
 * TransportUnavailableError when it cannot be loaded or is older than 2.14 (no ncclCommInitRankConfig).
 */
export function loadNccl(path = process.env.MOE_A2A_NCCL_LIB ?? 'libnccl.so.2'): NcclLib {
  if (loaded) return loaded;
  const unavailable = (what: string, cause?: unknown) =>
    new TransportUnavailableError(
      `The network engine needs NCCL, but ${what}. Install NCCL (libnccl.so.2) or set MOE_A2A_NCCL_LIB to its path.`,
      { missing: 'nccl', path },
      cause === undefined ? undefined : { cause },
    );
  let koffi: Koffi;
  let fns: Fns;
  try {
    koffi = createRequire(import.meta.url)('koffi') as Koffi;
    const lib = koffi.load(path);
    defineTypes(koffi);
    fns = Object.fromEntries(
      PROTOTYPES.map((p) => {
        const fn = lib.func(p);
        return [fn.info.name, fn];
      }),
    ) as unknown as Fns;
  } catch (err) {
    throw unavailable(
      `${path} could not be loaded (${err instanceof Error ? err.message : String(err)})`,
      err,
    );
  }
  const v = new Int32Array(1);
  const res = fns.ncclGetVersion(v);
  if (res !== NcclResult.success) throw unavailable(`ncclGetVersion failed (${res})`);
  if (v[0] < NCCL_MIN_CONFIG_VERSION)
    throw unavailable(
      `${path} is NCCL ${ncclVersionName(v[0])}, older than 2.14 (no ncclCommInitRankConfig)`,
    );
  loaded = { version: v[0], path, fns };
  return loaded;
}

let typesDefined = false;
function defineTypes(koffi: Koffi): void {
  if (typesDefined) return;
  koffi.pointer('moeA2a_ncclComm', koffi.opaque('moeA2a_ncclComm_st'));
  koffi.struct('moeA2a_ncclUniqueId', { internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES, 'Typed') });
  typesDefined = true;
}

function resultName(res: number): string {
  return RESULT_NAMES[res] ?? `ncclResult ${res}`;
}

/** An NcclError for `call`, with NCCL's string for the result and the communicator's last error. */
function ncclError(lib: NcclLib, call: string, res: number, comm: Ptr | null, extra = ''): NcclError {
  const last = comm ? lib.fns.ncclGetLastError(comm) : null;
  const text = lib.fns.ncclGetErrorString(res);
  return new NcclError(`${call} failed: ${resultName(res)} (${text})${last ? `: ${last}` : ''}${extra}`, {
    call,
    result: resultName(res),
    code: res,
    lastError: last ?? '',
  });
}

/** Sleeps the thread ~`ms` (the polls below run on a rank's own thread, between its calls). */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** One send or receive of a group: `bytes` from or into device address `ptr`, with rank `peer`. */
export interface P2pOp {
  kind: 'send' | 'recv';
  ptr: bigint;
  bytes: number;
  peer: number;
}

/** One NCCL communicator over `world` ranks, created non-blocking. */
export class NcclComm {
  private closed = false;

  private constructor(
    private readonly lib: NcclLib,
    private readonly comm: Ptr,
    readonly rank: number,
    readonly world: number,
    private readonly timeoutMs: number,
  ) {}

  /**
   * Collective: rank 0 makes the unique id and publishes it in the store under `key`; every rank takes
   * it and joins. The current CUDA context must be the rank's device (NCCL takes the current device).
   * Throws NcclError when NCCL fails or the init does not finish within `timeoutMs` (the half-made
   * communicator is aborted), PeerTimeoutError when rank 0's id does not come.
   */
  static async init(opts: {
    store: StoreClient;
    key: string;
    rank: number;
    world: number;
    timeoutMs: number;
    lib?: NcclLib;
  }): Promise<NcclComm> {
    const lib = opts.lib ?? loadNccl();
    let id: Uint8Array;
    if (opts.rank === 0) {
      id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
      const res = lib.fns.ncclGetUniqueId(id);
      if (res !== NcclResult.success) throw ncclError(lib, 'ncclGetUniqueId', res, null);
      await opts.store.set(opts.key, id);
    } else {
      id = await opts.store.get(opts.key, { timeoutMs: opts.timeoutMs });
      if (id.length !== NCCL_UNIQUE_ID_BYTES)
        throw new NcclError(
          `the NCCL unique id under '${opts.key}' has ${id.length} bytes, not ${NCCL_UNIQUE_ID_BYTES}`,
          {
            call: 'ncclCommInitRankConfig',
          },
        );
    }
    const config = ncclConfigBytes(lib.version, { blocking: 0 });
    const out: [Ptr] = [null];
    const res = lib.fns.ncclCommInitRankConfig(out, opts.world, { internal: id }, opts.rank, config);
    if (res !== NcclResult.success && res !== NcclResult.inProgress) {
      if (out[0]) lib.fns.ncclCommAbort(out[0]);
      throw ncclError(lib, 'ncclCommInitRankConfig', res, out[0]);
    }
    const c = new NcclComm(lib, out[0], opts.rank, opts.world, opts.timeoutMs);
    c.settle('ncclCommInitRankConfig');
    return c;
  }

  /**
   * Waits until the communicator has no operation in progress (non-blocking mode), up to the timeout;
   * it polls for 2 ms before it sleeps between polls;
   * throws NcclError naming `call` on an error or on the deadline (after aborting the communicator).
   */
  private settle(call: string): void {
    const deadline = performance.now() + this.timeoutMs;
    // a group of sends and receives is enqueued within microseconds: poll without sleeping at first (a
    // sleep of 1 ms after each exchange cost an eager call between hosts 1.2 ms on an H200)
    const spinUntil = performance.now() + 2;
    const state = new Int32Array(1);
    for (;;) {
      const res = this.lib.fns.ncclCommGetAsyncError(this.comm, state);
      if (res !== NcclResult.success) throw this.fail(call, res);
      if (state[0] === NcclResult.success) return;
      if (state[0] !== NcclResult.inProgress) throw this.fail(call, state[0]);
      if (performance.now() > deadline) {
        this.abort();
        throw new NcclError(
          `${call} did not finish within ${this.timeoutMs} ms on rank ${this.rank} (a peer did not join or stopped answering); the communicator was aborted`,
          { call, result: 'timeout', rank: this.rank, timeoutMs: this.timeoutMs },
        );
      }
      if (performance.now() > spinUntil) pause(1);
    }
  }

  private fail(call: string, res: number): NcclError {
    const err = ncclError(this.lib, call, res, this.comm, ` (rank ${this.rank})`);
    this.abort();
    return err;
  }

  /**
   * Enqueues the sends and receives as one NCCL group on `stream` (a CUstream from the cuda driver
   * bindings), for the device to run in order with the stream's other work. Returns once NCCL has taken
   * them (the transfers themselves complete on the stream).
   */
  groupP2p(ops: readonly P2pOp[], stream: unknown): void {
    if (this.closed) throw new NcclError('the NCCL communicator was closed', { call: 'ncclGroupStart' });
    const f = this.lib.fns;
    let res = f.ncclGroupStart();
    if (res !== NcclResult.success) throw this.fail('ncclGroupStart', res);
    for (const op of ops) {
      const call = op.kind === 'send' ? 'ncclSend' : 'ncclRecv';
      res = (op.kind === 'send' ? f.ncclSend : f.ncclRecv)(
        op.ptr,
        op.bytes,
        NCCL_UINT8,
        op.peer,
        this.comm,
        stream,
      );
      if (res !== NcclResult.success && res !== NcclResult.inProgress) {
        f.ncclGroupEnd();
        throw this.fail(call, res);
      }
    }
    res = f.ncclGroupEnd();
    if (res !== NcclResult.success && res !== NcclResult.inProgress) throw this.fail('ncclGroupEnd', res);
    this.settle('ncclGroupEnd');
  }

  /**
   * The communicator's asynchronous error, as NCCL's message, or null while it is healthy (in progress
   * counts as healthy). For a caller that waits on the stream: a peer whose connection broke shows here
   * before any deadline.
   */
  asyncError(): string | null {
    if (this.closed) return null;
    const state = new Int32Array(1);
    const res = this.lib.fns.ncclCommGetAsyncError(this.comm, state);
    const r = res !== NcclResult.success ? res : state[0];
    if (r === NcclResult.success || r === NcclResult.inProgress) return null;
    return ncclError(this.lib, 'ncclCommGetAsyncError', r, this.comm, ` (rank ${this.rank})`).message;
  }

  /** Aborts the communicator: pending work is dropped and peers' operations with it fail. Idempotent. */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    this.lib.fns.ncclCommAbort(this.comm);
  }

  /** Finishes outstanding work (within the timeout) and frees the communicator. */
  destroy(): void {
    if (this.closed) return;
    const res = this.lib.fns.ncclCommFinalize(this.comm);
    if (res !== NcclResult.success && res !== NcclResult.inProgress) throw this.fail('ncclCommFinalize', res);
    this.settle('ncclCommFinalize');
    this.closed = true;
    const d = this.lib.fns.ncclCommDestroy(this.comm);
    if (d !== NcclResult.success) throw ncclError(this.lib, 'ncclCommDestroy', d, null);
  }
}
