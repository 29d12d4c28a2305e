import type {
  CudaDriver,
  CuGraph,
  CuGraphExec,
  CuStream,
  GraphKernelNode,
  KernelLauncher,
} from './driver.js';

/**
 * How an eager call hands its kernels to the driver:
 * - `graph` (default): the call's launches are recorded, then submitted as one replay of a CUDA
 *   graph. Each sequence of kernels keeps a few instantiated graphs (GRAPHS_PER_SEQUENCE); a call
 *   replays the one captured or last updated with the same arguments and dimensions, or else
 *   updates the least recently used one (only the nodes that differ). One cuGraphLaunch costs the
 *   host less than one cuLaunchKernel (bench/NOTES.md, v6), so a call whose inputs are tensors
 *   seen lately costs one driver call whatever its number of kernels.
 * - `direct`: each kernel is launched as it comes (cuLaunchKernel / cuLaunchKernelEx).
 * Both run the same kernels with the same arguments in the same order; results are identical.
 */
export type LaunchMode = 'graph' | 'direct';

/** The sequences one group can make are few (dispatch, dispatch + view, combine; W = 1 or not). */
const MAX_SEQUENCE = 4;
/**
 * Graphs kept per sequence: callers that rotate a few input buffers (double buffering, a caching
 * allocator) find theirs unchanged, and the graph that is updated is the one launched longest ago,
 * whose earlier replay has most likely finished (an update then costs the driver least).
 */
export const GRAPHS_PER_SEQUENCE = 4;

interface Launch {
  /** A small number naming the kernel (the group's index of it). */
  kernel: number;
  launcher: KernelLauncher;
  grid: [number, number, number];
  block: [number, number, number];
  sharedBytes: number;
  dependent: boolean;
  /** The argument bytes as they were when the launch was recorded. */
  args: Uint8Array;
  words: Uint32Array;
}

/** A launch as a graph holds it. Pending launches have the same shape (one hidden class for both). */
interface Node extends Launch {
  /** Launches this node's own argument copy directly (capture, and a sequence without graphs). */
  own: KernelLauncher | null;
  graphNode: GraphKernelNode | null;
}

/** One instantiated graph of a sequence, with what its nodes launch now. */
interface Instance {
  exec: CuGraphExec;
  graph: CuGraph;
  nodes: Node[];
  lastUsed: number;
}

interface Sequence {
  instances: Instance[];
  /** Set when graphs cannot serve this sequence (no node updates in the driver, nodes not matched). */
  direct: Node[] | null;
}

function newLaunch(argBytes: number): Node {
  const args = new Uint8Array(new ArrayBuffer(argBytes)); // explicit buffer: its address never moves
  return {
    kernel: -1,
    launcher: null as unknown as KernelLauncher,
    grid: [1, 1, 1],
    block: [1, 1, 1],
    sharedBytes: 0,
    dependent: false,
    args,
    words: new Uint32Array(args.buffer),
    own: null,
    graphNode: null,
  };
}

/** Whether `a` launches with the same dimensions and argument bytes as `b`. */
function same(a: Launch, b: Launch): boolean {
  if (a.sharedBytes !== b.sharedBytes || a.grid[0] !== b.grid[0] || a.block[0] !== b.block[0]) return false;
  const x = a.words;
  const y = b.words;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Copies `from`'s dimensions and argument bytes into `to` (grids and blocks are 1-D here). */
function assign(to: Launch, from: Launch): void {
  to.grid[0] = from.grid[0];
  to.block[0] = from.block[0];
  to.sharedBytes = from.sharedBytes;
  to.words.set(from.words);
}

/**
 * The kernels of one eager call, recorded by `add` between `begin` and `submit` and handed to the
 * driver by `submit` (see LaunchMode). Outside a begin/submit pair, or in `direct` mode, `add`
 * launches at once. One queue per group and stream; not reentrant.
 */
export class LaunchQueue {
  mode: LaunchMode = 'graph';
  private recording = false;
  private readonly pending: Launch[];
  private count = 0;
  private tick = 0;
  private readonly sequences = new Map<number, Sequence>();

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
    /** The group's argument bytes, which every launcher in `add` is bound to. */
    private readonly args: Uint8Array,
  ) {
    this.pending = Array.from({ length: MAX_SEQUENCE }, () => newLaunch(args.byteLength));
  }

  /** Starts recording an eager call's launches (a no-op in `direct` mode). */
  begin(): void {
    this.recording = this.mode === 'graph';
    this.count = 0;
  }

  /** Records one launch of `launcher` (bound to the group's argument bytes), or makes it now. */
  add(
    kernel: number,
    launcher: KernelLauncher,
    grid: number,
    block: number,
    sharedBytes: number,
    dependent: boolean,
  ) {
    if (!this.recording || this.count === MAX_SEQUENCE) {
      if (this.recording) this.submit(); // (not reached with the group's sequences)
      launcher.launch([grid, 1, 1], [block, 1, 1], sharedBytes, this.stream, dependent);
      return;
    }
    const l = this.pending[this.count++];
    l.kernel = kernel;
    l.launcher = launcher;
    l.grid[0] = grid;
    l.block[0] = block;
    l.sharedBytes = sharedBytes;
    l.dependent = dependent;
    l.args.set(this.args);
  }

  /** Hands the recorded launches to the driver and stops recording. */
  submit(): void {
    const n = this.count;
    this.recording = false;
    this.count = 0;
    if (n === 0) return;
    const pending = this.pending;
    let key = 0;
    // one digit in base 64 per launch, never 0: sequences of different lengths never share a key
    for (let i = 0; i < n; i++) key = key * 64 + 1 + pending[i].kernel * 2 + (pending[i].dependent ? 1 : 0);
    let seq = this.sequences.get(key);
    if (seq === undefined) {
      seq = { instances: [], direct: null };
      this.sequences.set(key, seq);
    }
    if (seq.direct) {
      for (let i = 0; i < n; i++) {
        assign(seq.direct[i], pending[i]);
        this.launchNode(seq.direct[i]);
      }
      return;
    }
    let inst: Instance | null = null;
    let oldest: Instance | null = null;
    const instances = seq.instances;
    for (let c = 0; c < instances.length; c++) {
      const candidate = instances[c];
      let hit = true;
      for (let i = 0; i < n && hit; i++) hit = same(candidate.nodes[i], pending[i]);
      if (hit) {
        inst = candidate;
        break;
      }
      if (!oldest || candidate.lastUsed < oldest.lastUsed) oldest = candidate;
    }
    if (!inst && seq.instances.length < GRAPHS_PER_SEQUENCE) {
      inst = this.capture(n, seq);
      if (!inst) return; // launched directly
      seq.instances.push(inst);
    } else if (!inst && oldest) {
      inst = oldest;
      for (let i = 0; i < n; i++) {
        const node = inst.nodes[i];
        const p = pending[i];
        if (same(node, p)) continue;
        // the record changes only once the driver took the update: a node never claims bytes it lacks
        this.drv.graphExecSetKernel(
          inst.exec,
          node.graphNode as GraphKernelNode,
          p.grid,
          p.block,
          p.sharedBytes,
          p.args,
        );
        assign(node, p);
      }
    }
    if (!inst) return;
    inst.lastUsed = ++this.tick;
    this.drv.graphLaunch(inst.exec, this.stream);
  }

  private launchNode(node: Node): void {
    (node.own as KernelLauncher).launch(node.grid, node.block, node.sharedBytes, this.stream, node.dependent);
  }

  /**
   * A graph of the pending launches, captured with each node holding its own copy of the argument
   * bytes (so that later updates never touch the group's). When graphs cannot serve the sequence,
   * marks it direct and launches the nodes now; returns null then.
   */
  private capture(n: number, seq: Sequence): Instance | null {
    const nodes: Node[] = this.pending.slice(0, n).map((p) => {
      const node = newLaunch(p.args.byteLength);
      node.kernel = p.kernel;
      node.launcher = p.launcher;
      node.dependent = p.dependent;
      assign(node, p);
      node.own = this.drv.prepareLaunch(p.launcher.fn, node.args);
      return node;
    });
    const direct = () => {
      seq.direct = nodes;
      for (const node of nodes) this.launchNode(node);
      return null;
    };
    const fns = nodes.map((node) => node.launcher.fn);
    if (new Set(fns).size !== fns.length) return direct(); // nodes are told apart by their kernel
    let graph: CuGraph | null = null;
    try {
      this.drv.streamBeginCapture(this.stream, 'thread-local');
      try {
        for (const node of nodes) this.launchNode(node);
      } finally {
        graph = this.drv.streamEndCapture(this.stream);
      }
      const graphNodes = this.drv.graphKernelNodes(graph);
      for (const node of nodes) {
        const matches = graphNodes?.filter((g) => g.launches(node.launcher.fn)) ?? [];
        node.graphNode = matches.length === 1 ? matches[0] : null;
      }
      if (graphNodes && graphNodes.length === n && nodes.every((node) => node.graphNode)) {
        return { exec: this.drv.graphInstantiate(graph), graph, nodes, lastUsed: 0 };
      }
    } catch {
      // a driver that cannot capture or instantiate these launches still runs them directly (below)
    }
    if (graph) this.drv.graphDestroy(graph);
    return direct();
  }

  /** Frees the cached graphs (after the stream has finished them). */
  close(): void {
    for (const seq of this.sequences.values()) {
      for (const inst of seq.instances) {
        this.drv.graphExecDestroy(inst.exec);
        this.drv.graphDestroy(inst.graph);
      }
    }
    this.sequences.clear();
  }
}
