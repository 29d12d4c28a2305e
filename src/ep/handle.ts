import { HandleError } from '../errors.js';

/**
 * What combine needs from its dispatch. The public object is frozen and holds only plain facts
 * (copied, logged and cloned like any object); the internals sit in private class fields, so a
 * handle cannot be forged or edited, and one from another group (or a stale one) is recognised.
 */
export interface CombineHandle {
  /** The dispatch's call count (1, 2, ...) within its group. */
  readonly callCount: number;
  /** Tokens of that dispatch (T). */
  readonly numTokens: number;
  readonly rank: number;
}

type Ending = 'combined' | 'abandoned' | null;

// A class with private fields rather than an object registered in a WeakMap: issuing one costs tens
// of nanoseconds instead of about a microsecond, on the path of every dispatch. The checks read the
// private copies only.
class Handle<S> implements CombineHandle {
  readonly callCount: number;
  readonly numTokens: number;
  readonly rank: number;
  readonly #call: number;
  readonly #owner: object;
  readonly #state: S;
  #ended: Ending = null; // private fields stay writable in a frozen object

  constructor(owner: object, callCount: number, numTokens: number, rank: number, state: S) {
    this.callCount = callCount;
    this.numTokens = numTokens;
    this.rank = rank;
    this.#call = callCount;
    this.#owner = owner;
    this.#state = state;
    Object.freeze(this);
  }

  /** Whether `h` was made by this class (a prototype copy or a proxy is not). */
  static is(h: unknown): h is Handle<unknown> {
    return typeof h === 'object' && h !== null && #owner in h;
  }
  static call<S>(h: Handle<S>): number {
    return h.#call;
  }
  static owner<S>(h: Handle<S>): object {
    return h.#owner;
  }
  static state<S>(h: Handle<S>): S {
    return h.#state;
  }
  static ended<S>(h: Handle<S>): Ending {
    return h.#ended;
  }
  static end<S>(h: Handle<S>, how: Ending): void {
    h.#ended = how;
  }
}

/**
 * Issues handles and enforces their one rule: each dispatch is combined once, before the next
 * dispatch. One registry per group; it also knows the latest dispatch still waiting for its combine,
 * so that a refused combine can abandon that call on every rank instead of leaving peers waiting.
 */
export class HandleRegistry<S> {
  private pending: Handle<S> | null = null;

  issue(owner: object, callCount: number, numTokens: number, rank: number, state: S): CombineHandle {
    const h = new Handle(owner, callCount, numTokens, rank, state);
    if (this.pending) Handle.end(this.pending, 'abandoned'); // a later dispatch: that call can no longer combine
    this.pending = h;
    return h;
  }

  /** The state behind `h`, if `h` is `owner`'s latest dispatch and not yet combined; marks it combined. */
  take(owner: object, h: unknown, latestCall: number): S {
    if (!Handle.is(h) || Handle.owner(h) !== owner) {
      throw new HandleError(
        'this handle did not come from a dispatch of this group: pass the handle dispatch returned',
      );
    }
    const handle = h as Handle<S>;
    const callCount = Handle.call(handle);
    if (callCount !== latestCall) {
      throw new HandleError(
        `stale handle: it belongs to call ${callCount} but the group has dispatched call ${latestCall} since; ` +
          'combine each dispatch before the next one',
        { callCount, latestCall },
      );
    }
    const ended = Handle.ended(handle);
    if (ended === 'combined') {
      throw new HandleError(
        `the handle of call ${callCount} was already combined; each dispatch is combined once`,
        {
          callCount,
        },
      );
    }
    if (ended === 'abandoned') {
      throw new HandleError(`call ${callCount} was abandoned (a combine of it was refused); dispatch again`, {
        callCount,
      });
    }
    Handle.end(handle, 'combined');
    this.pending = null;
    return Handle.state(handle);
  }

  /** Marks a taken call abandoned (its combine was refused after take). */
  abandonTaken(h: CombineHandle): void {
    if (Handle.is(h)) Handle.end(h, 'abandoned');
  }

  /** Abandons the latest dispatch if it still waits for its combine; true when there was one. */
  abandonPending(): boolean {
    if (!this.pending) return false;
    Handle.end(this.pending, 'abandoned');
    this.pending = null;
    return true;
  }
}

/** A HandleError that also says the call waiting for its combine was abandoned on every rank. */
export function withAbandoned(err: unknown, call: number): unknown {
  if (!(err instanceof HandleError)) return err;
  return new HandleError(
    `${err.message}; call ${call}, which was waiting for its combine, was abandoned on every rank: dispatch again`,
    { ...err.details, abandoned: call },
    { cause: err },
  );
}
