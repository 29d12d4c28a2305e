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

export class HandleRegistry<S> {
  private readonly states = new WeakMap<CombineHandle, { owner: object; state: S; used: boolean }>();

  issue(owner: object, callCount: number, numTokens: number, rank: number, state: S): CombineHandle {
    const h: CombineHandle = Object.freeze({ callCount, numTokens, rank });
    this.states.set(h, { owner, state, used: false });
    return h;
  }

  /**
   * The state behind `h`, if `h` came from `owner`'s latest dispatch and was not combined yet.
   * Marks it used only when `consume` is called, so a combine rejected for bad input can be retried.
   */
  resolve(owner: object, h: unknown, latestCall: number): { state: S; consume: () => void } {
    const entry = h && typeof h === 'object' ? this.states.get(h as CombineHandle) : undefined;
    if (!entry || entry.owner !== owner) {
      throw new HandleError(
        'this handle did not come from a dispatch of this group: pass the handle dispatch returned',
      );
    }
    const handle = h as CombineHandle;
    if (entry.used) {
      throw new HandleError(
        `the handle of call ${handle.callCount} was already combined; each dispatch is combined once`,
        {
          callCount: handle.callCount,
        },
      );
    }
    if (handle.callCount !== latestCall) {
      throw new HandleError(
        `stale handle: it belongs to call ${handle.callCount} but the group has dispatched call ${latestCall} since; ` +
          'combine each dispatch before the next one',
        { callCount: handle.callCount, latestCall },
      );
    }
    const consume = () => {
      entry.used = true;
    };
    return { state: entry.state, consume };
  }
}
