/**
 * Every failure the library reports is one of these classes. Each carries a stable string `code`
 * (match on it: `instanceof` does not survive a worker or process boundary, the code does) and a
 * message that says what to change.
 */

export const ErrorCodes = {
  config: 'MOE_CONFIG',
  shape: 'MOE_SHAPE',
  routing: 'MOE_ROUTING',
  capacity: 'MOE_CAPACITY',
  peerTimeout: 'MOE_PEER_TIMEOUT',
  peerFailed: 'MOE_PEER_FAILED',
  handle: 'MOE_HANDLE',
  closed: 'MOE_CLOSED',
  cuda: 'MOE_CUDA',
  nccl: 'MOE_NCCL',
  transportUnavailable: 'MOE_TRANSPORT_UNAVAILABLE',
  launch: 'MOE_LAUNCH',
  argument: 'MOE_ARGUMENT',
  internal: 'MOE_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Structured facts about a failure (which field, rank, slot, ...), kept when the error crosses a boundary. */
export type ErrorDetails = Record<string, string | number | boolean | null>;

/** `cause`: the error this one wraps (kept, as ES2022's Error cause; it also crosses the wire). */
export interface MoeErrorOptions {
  cause?: unknown;
}

export class MoeA2aError extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetails;
  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(message, options);
    this.code = code;
    this.details = details;
    this.name = new.target.name;
  }
}

/** An invalid group configuration (sizes, divisibility, limits). `details.fields` names the fields. */
export class ConfigError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.config, message, details, options);
  }
}

/** A tensor with the wrong shape, dtype or length. */
export class ShapeError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.shape, message, details, options);
  }
}

/** A routing input that names no valid expert (`details.token`, `details.slot`, `details.expert`). */
export class RoutingError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.routing, message, details, options);
  }
}

/** More rows for one destination than the per-peer capacity (`details.destination/count/limit`). */
export class CapacityError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.capacity, message, details, options);
  }
}

/** A peer did not signal in time (`details.peer`, `details.slot`, `details.callCount`). */
export class PeerTimeoutError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.peerTimeout, message, details, options);
  }
}

/** A peer rank failed (threw, exited, or its worker died): `details.peer`. */
export class PeerFailedError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.peerFailed, message, details, options);
  }
}

/** A combine handle that is stale (a later dispatch happened), already used, or from another group. */
export class HandleError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.handle, message, details, options);
  }
}

/** A call on a group that was closed. */
export class ClosedError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.closed, message, details, options);
  }
}

/** A CUDA driver call failed (`details.call`, `details.result` the CUresult name), or a kernel reported an error. */
export class CudaError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.cuda, message, details, options);
  }
}

/**
 * An NCCL call failed (`details.call`, `details.result` the ncclResult_t name, `details.lastError` NCCL's own
 * message when it gave one), or a communicator's operation did not finish within its timeout.
 */
export class NcclError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.nccl, message, details, options);
  }
}

/** The asked-for transport cannot run here (no driver, no GPU). */
export class TransportUnavailableError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.transportUnavailable, message, details, options);
  }
}

/** The launcher or its rendezvous store failed (a rank exited, the store was unreachable). */
export class LaunchError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.launch, message, details, options);
  }
}

/** A call the API does not allow as made: a wrong kind of argument, an option out of its set. */
export class ArgumentError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.argument, message, details, options);
  }
}

/** A fault inside this library (a broken invariant), not the caller's doing: please report it. */
export class InternalError extends MoeA2aError {
  constructor(message: string, details: ErrorDetails = {}, options?: MoeErrorOptions) {
    super(ErrorCodes.internal, message, details, options);
  }
}

type ErrorClass = new (m: string, d?: ErrorDetails, o?: MoeErrorOptions) => MoeA2aError;

const classByCode: Record<ErrorCode, ErrorClass> = {
  MOE_CONFIG: ConfigError,
  MOE_SHAPE: ShapeError,
  MOE_ROUTING: RoutingError,
  MOE_CAPACITY: CapacityError,
  MOE_PEER_TIMEOUT: PeerTimeoutError,
  MOE_PEER_FAILED: PeerFailedError,
  MOE_HANDLE: HandleError,
  MOE_CLOSED: ClosedError,
  MOE_CUDA: CudaError,
  MOE_NCCL: NcclError,
  MOE_TRANSPORT_UNAVAILABLE: TransportUnavailableError,
  MOE_LAUNCH: LaunchError,
  MOE_ARGUMENT: ArgumentError,
  MOE_INTERNAL: InternalError,
};

/** A new error of `err`'s class and code, with its details and another message (e.g. to wrap it). */
export function sameKind(err: MoeA2aError, message: string, options?: MoeErrorOptions): MoeA2aError {
  return new classByCode[err.code](message, err.details, options);
}

/** The plain-object form of an error, safe to post to a worker or write as JSON. */
export interface WireError {
  code: string;
  name: string;
  message: string;
  details: ErrorDetails;
  stack?: string;
  /** The wrapped error's wire form (a few levels deep at most). */
  cause?: WireError;
}

const WIRE_CAUSE_DEPTH = 4;

export function errorToWire(err: unknown, depth = 0): WireError {
  let w: WireError;
  if (err instanceof MoeA2aError) {
    w = { code: err.code, name: err.name, message: err.message, details: err.details, stack: err.stack };
  } else if (err instanceof Error) {
    w = { code: 'ERR_UNKNOWN', name: err.name, message: err.message, details: {}, stack: err.stack };
  } else {
    return { code: 'ERR_UNKNOWN', name: 'Error', message: String(err), details: {} };
  }
  if (err.cause !== undefined && depth < WIRE_CAUSE_DEPTH) w.cause = errorToWire(err.cause, depth + 1);
  return w;
}

/** Rebuilds the error class from its code on this side of the boundary (its cause too). */
export function errorFromWire(w: WireError): Error {
  const cls = classByCode[w.code as ErrorCode];
  const options = w.cause ? { cause: errorFromWire(w.cause) } : undefined;
  const err = cls
    ? new cls(w.message, w.details, options)
    : Object.assign(new Error(w.message, options), { name: w.name });
  if (w.stack) err.stack = w.stack;
  return err;
}

export function isMoeA2aError(err: unknown): err is MoeA2aError {
  return err instanceof MoeA2aError;
}
