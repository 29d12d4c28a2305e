import type { DeviceTensor } from './device-tensor.js';

/**
 * A dispatch, a combine, and both together (step) captured as CUDA graphs for a fixed token count T.
 * The graphs bind the input tensors below (owned by the group): write new inputs into them
 * (upload / copy), then replay.
 *
 * Rules (checked on the host, so breaking one is an error, not corruption):
 * - Replays follow the protocol: dispatch(), then combine(), then the next dispatch. A combine replay
 *   must follow this graph's own dispatch replay with no other dispatch of the group (eager or another
 *   graph's) in between: the device keeps one call count per group and combine reads it. step() is a
 *   whole call by itself (dispatch and its combine).
 * - Several graphs may share a group's heap under that rule; they never run concurrently, because a
 *   group launches everything on its one stream.
 * - The call count lives on the device and advances on every replay, so a graph replays correctly any
 *   number of times; every rank must replay the same sequence.
 */
export interface GraphCall {
  readonly numTokens: number;
  /** bf16 [T, H]: the tokens the dispatch graph reads. */
  readonly x: DeviceTensor;
  /** i32 [T, k]. */
  readonly topkIdx: DeviceTensor;
  /** f32 [T, k]. */
  readonly topkWeights: DeviceTensor;
  /** bf16 [EPR, maxRowsPerExpert, H]: the expert outputs the combine graph reads. */
  readonly expertOut: DeviceTensor;
  /** The dispatch outputs (the group's buffers, as eager dispatch returns them). */
  readonly expertX: DeviceTensor;
  readonly expertScales: DeviceTensor | null;
  readonly expertCounts: DeviceTensor;
  /** bf16 [T, H]: where the combine graph writes y. */
  readonly y: DeviceTensor;
  /** Replays the dispatch graph (asynchronous; synchronize() or download() to wait and check). */
  dispatch(): void;
  /** Replays the combine graph. */
  combine(): void;
  /**
   * Replays dispatch and combine captured together as one graph: for a caller whose expert outputs
   * are already in `expertOut` when the step starts (a pipeline whose experts run elsewhere, or a
   * benchmark comparing with a framework's one-graph step). Counts as a dispatch followed by its combine.
   */
  step(): void;
  /** Frees the graphs and the bound inputs. */
  close(): void;
}
