import { ClosedError, HandleError } from '../../errors.js';
import type { DeviceTensor } from './device-tensor.js';
import type { CudaDriver, CuStream } from './driver.js';

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
  /** bf16, expertX's shape with H columns: the expert outputs the combine graph reads. */
  readonly expertOut: DeviceTensor;
  /** The dispatch outputs (the group's buffers, as eager dispatch returns them). */
  readonly expertX: DeviceTensor;
  readonly expertScales: DeviceTensor | null;
  readonly expertCounts: DeviceTensor;
  readonly expertOffsets: DeviceTensor;
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

/** What capture takes from its group: the stream, the launches of one call, and the group's call order. */
export interface GraphHost {
  readonly drv: CudaDriver;
  readonly stream: CuStream;
  /** Makes the launches of the graph's dispatch (on the stream, which is capturing). */
  recordDispatch(): void;
  /** ... of its combine; `afterDispatch`: right after the dispatch, in the step graph. */
  recordCombine(afterDispatch: boolean): void;
  /** Throws when the group cannot take a call (closed, broken). */
  usable(): void;
  /**
   * A replay begins a call (`by`: the graph; `combined`: a step, which combines it too). `combineNow`
   * replays the graph's combine as it is, for a group that must combine the call at once (between hosts
   * every rank replays the same captured exchanges: an eager one would not pair with a peer's replay).
   */
  beginCall(by: object, combined: boolean, combineNow: () => void): void;
  /** Makes one graph launch (the group breaks when a launch between hosts fails part-way). */
  launch(run: () => void): void;
  /** The combine replay's rule: true (and the call marked combined) when `by` made the waiting dispatch. */
  takeCombine(by: object): boolean;
  /** The graph is being closed (`by`: as beginCall's): the group lets go of it and waits for its replays. */
  closing(call: GraphCall, by: object): void;
}

/** The tensors a GraphCall binds and shows (the inputs are the graph's: close() frees them). */
type Bound = Pick<
  GraphCall,
  | 'numTokens'
  | 'x'
  | 'topkIdx'
  | 'topkWeights'
  | 'expertOut'
  | 'expertX'
  | 'expertScales'
  | 'expertCounts'
  | 'expertOffsets'
  | 'y'
>;

/** Captures the dispatch, combine and step graphs of one token count and returns them as a GraphCall. */
export function captureGraphCall(host: GraphHost, bound: Bound): GraphCall {
  const { drv, stream } = host;
  const capture = (record: () => void) => {
    drv.streamBeginCapture(stream, 'thread-local');
    let graph: ReturnType<CudaDriver['streamEndCapture']>;
    try {
      record();
    } finally {
      graph = drv.streamEndCapture(stream);
    }
    const exec = drv.graphInstantiate(graph);
    drv.graphDestroy(graph);
    return exec;
  };
  // the captured launches must not change the host's call count or handles: raw launches only
  const dispatchExec = capture(() => host.recordDispatch());
  const combineExec = capture(() => host.recordCombine(false));
  const stepExec = capture(() => {
    host.recordDispatch();
    host.recordCombine(true);
  });
  const owner = {};
  let closed = false;
  const live = () => {
    if (closed) throw new ClosedError('this graph was closed');
    host.usable();
  };
  // a replay that begins a call (the dispatch graph, or the step that also combines it)
  const combineNow = () => host.launch(() => drv.graphLaunch(combineExec, stream));
  const replayDispatch = (exec: typeof dispatchExec, combined: boolean) => {
    live();
    host.beginCall(owner, combined, combineNow);
    host.launch(() => drv.graphLaunch(exec, stream));
  };
  const call: GraphCall = {
    ...bound,
    dispatch: () => replayDispatch(dispatchExec, false),
    combine: () => {
      live();
      if (!host.takeCombine(owner)) {
        throw new HandleError(
          'a combine graph replays only right after its own dispatch graph, once: another dispatch ran in between, or this one was already combined',
        );
      }
      combineNow();
    },
    step: () => replayDispatch(stepExec, true),
    close: () => {
      if (closed) return;
      closed = true;
      try {
        host.closing(call, owner);
      } finally {
        drv.graphExecDestroy(dispatchExec);
        drv.graphExecDestroy(combineExec);
        drv.graphExecDestroy(stepExec);
        for (const t of [bound.x, bound.topkIdx, bound.topkWeights, bound.expertOut]) t.free();
      }
    },
  };
  return call;
}
