import {
  dedupCombineWeightsError,
  dedupDispatchWeightsError,
  missingWeightsError,
  tooManyTokensError,
} from './call-errors.js';
import type { EpConfig } from './config.js';
import { expertShape } from './expert-layout.js';
import { type CombineHandle, HandleRegistry, withAbandoned } from './handle.js';
import type { DType } from './tensor.js';

/**
 * The order of calls every group keeps, whatever moves its data: dispatch n + 1 ends dispatch n's chance
 * to combine; each dispatch is combined once, before the next; and a call this rank refuses (bad input,
 * a stale handle) is refused on every rank: the transport tells its peers (`abort`), so that none waits
 * for a timeout. The transports supply the tensor check and the abort; the rules live here once.
 */
export interface CallAborts {
  /** Tells every peer this rank abandons dispatch `call` (its input was refused). */
  abortDispatch(call: number): void;
  /** Tells every peer this rank abandons the combine of `call`. */
  abortCombine(call: number): void;
}

/** A transport's tensor check: throws ShapeError (or ArgumentError) unless `t` has this dtype and shape. */
export type TensorCheck<T> = (
  name: string,
  t: T,
  dtype: DType,
  dims: readonly (number | undefined)[],
) => readonly number[];

export class CallSequence<S> {
  /** Dispatches begun (the current call's count: 1, 2, ...). */
  calls = 0;
  private readonly handles = new HandleRegistry<S>();

  constructor(
    private readonly owner: object,
    private readonly rank: number,
    private readonly aborts: CallAborts,
  ) {}

  /**
   * Begins the next dispatch and runs its input checks (`check`, given the call's count); when they
   * throw, every peer is told before the error goes on. Returns the call's count and what check returned.
   */
  beginDispatch<R>(check: (call: number) => R): { call: number; checked: R } {
    const call = this.begin();
    try {
      return { call, checked: check(call) };
    } catch (err) {
      this.aborts.abortDispatch(call);
      throw err;
    }
  }

  /** Ends the pending dispatch's chance to combine (the transport abandoned its combine on every rank). */
  abandon(): void {
    this.handles.abandonPending();
  }

  /** Begins the next dispatch without checks (a graph replay: its inputs were fixed at capture). */
  begin(): number {
    this.handles.abandonPending(); // a new dispatch ends the previous call's chance to combine
    return ++this.calls;
  }

  /** The handle of dispatch `call` (of `numTokens` tokens), carrying `state` to its combine. */
  issue(call: number, numTokens: number, state: S): CombineHandle {
    return this.handles.issue(this.owner, call, numTokens, this.rank, state);
  }

  /**
   * Takes `handle` for a combine and runs the combine's input checks on its dispatch's state. A refused
   * handle abandons the dispatch still waiting for its combine, if any, on every rank (its peers are, or
   * will be, in that combine); a refused input abandons this combine on every rank.
   */
  beginCombine<R>(handle: CombineHandle, check: (state: S) => R): { call: number; state: S; checked: R } {
    const call = this.calls;
    let state: S;
    try {
      state = this.handles.take(this.owner, handle, call);
    } catch (err) {
      if (!this.handles.abandonPending()) throw err;
      this.aborts.abortCombine(call);
      throw withAbandoned(err, call);
    }
    try {
      return { call, state, checked: check(state) };
    } catch (err) {
      this.handles.abandonTaken(handle);
      this.aborts.abortCombine(call);
      throw err;
    }
  }
}

/** dispatch's inputs checked as every transport checks them (the order decides which error wins); returns T. */
export function checkDispatchInputs<T>(
  c: EpConfig,
  check: TensorCheck<T>,
  x: T,
  topkIdx: T,
  topkWeights: T | undefined,
): number {
  const [T] = check('x', x, 'bf16', [undefined, c.hidden]);
  if (T > c.maxTokensPerRank) throw tooManyTokensError(T, c.maxTokensPerRank);
  check('topkIdx', topkIdx, 'i32', [T, c.topk]);
  if (topkWeights !== undefined) check('topkWeights', topkWeights, 'f32', [T, c.topk]);
  else if (c.dedup) throw dedupDispatchWeightsError();
  return T;
}

/**
 * combine's inputs checked as every transport checks them. Returns where the router weights come from:
 * 'given' (this combine's), or 'dispatch' (those given to dispatch; with dedup they already travelled).
 */
export function checkCombineInputs<T>(
  c: EpConfig,
  check: TensorCheck<T>,
  expertOut: T,
  topkWeights: T | undefined,
  numTokens: number,
  dispatchHadWeights: boolean,
): 'given' | 'dispatch' {
  check('expertOut', expertOut, 'bf16', expertShape(c, c.hidden));
  if (c.dedup) {
    if (topkWeights !== undefined) throw dedupCombineWeightsError();
    return 'dispatch';
  }
  if (topkWeights !== undefined) {
    check('topkWeights', topkWeights, 'f32', [numTokens, c.topk]);
    return 'given';
  }
  if (dispatchHadWeights) return 'dispatch';
  throw missingWeightsError();
}
