import { HandleError } from '../errors.js';

/**
 * What combine needs from its dispatch. The public object is frozen and holds only plain facts; the
 * internals live in a WeakMap keyed by it, so a handle cannot be forged or edited, and one from another
 * group (or a stale one) is recognised.
 */
export interface CombineHandle {
  /** The dispatch's call count (1, 2, ...) within its group. */
  readonly callCount: number;
  /** Tokens of that dispatch (T). */
  readonly numTokens: number;
  readonly rank: number;
}

type Ending = 'combined' | 'abandoned' | null;

interface Entry<S> {
  owner: object;
  state: S;
  ended: Ending;
}

/**
 * Issues handles and enforces their one rule: each dispatch is combined once, before the next
 * dispatch. One registry per group; it also knows the latest dispatch still waiting for its combine,
 * so that a refused combine can abandon that call on every rank instead of leaving peers waiting.
 */
export class HandleRegistry<S> {
  private readonly entries = new WeakMap<CombineHandle, Entry<S>>();
  private pending: Entry<S> | null = null;

  issue(owner: object, callCount: number, numTokens: number, rank: number, state: S): CombineHandle {
    const h: CombineHandle = Object.freeze({ callCount, numTokens, rank });
    const entry: Entry<S> = { owner, state, ended: null };
    this.entries.set(h, entry);
    if (this.pending) this.pending.ended = 'abandoned'; // a later dispatch: that call can no longer combine
    this.pending = entry;
    return h;
  }

  /** The state behind `h`, if `h` is `owner`'s latest dispatch and not yet combined; marks it combined. */
  take(owner: object, h: unknown, latestCall: number): S {
    const entry = h && typeof h === 'object' ? this.entries.get(h as CombineHandle) : undefined;
    if (!entry || entry.owner !== owner) {
      throw new HandleError(
        'this handle did not come from a dispatch of this group: pass the handle dispatch returned',
      );
    }
    const { callCount } = h as CombineHandle;
    if (callCount !== latestCall) {
      throw new HandleError(
        `stale handle: it belongs to call ${callCount} but the group has dispatched call ${latestCall} since; ` +
          'combine each dispatch before the next one',
        { callCount, latestCall },
      );
    }
    if (entry.ended === 'combined') {
      throw new HandleError(
        `the handle of call ${callCount} was already combined; each dispatch is combined once`,
        {
          callCount,
        },
      );
    }
    if (entry.ended === 'abandoned') {
      throw new HandleError(`call ${callCount} was abandoned (a combine of it was refused); dispatch again`, {
        callCount,
      });
    }
    entry.ended = 'combined';
    this.pending = null;
    return entry.state;
  }

  /** Marks a taken call abandoned (its combine was refused after take). */
  abandonTaken(h: CombineHandle): void {
    const entry = this.entries.get(h);
    if (entry) entry.ended = 'abandoned';
  }

  /** Abandons the latest dispatch if it still waits for its combine; true when there was one. */
  abandonPending(): boolean {
    if (!this.pending) return false;
    this.pending.ended = 'abandoned';
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
  );
}
