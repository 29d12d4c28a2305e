// The eager launch queue (src/shmem/cuda/launch-queue.ts) against a recording stand-in for the
// driver: which driver calls each eager call makes, with which bytes. The kernels themselves run in
// the GPU tests (cuda.conformance, moe-a2a verify), where eager calls take this path by default.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type {
  CudaDriver,
  CuFunction,
  CuStream,
  Dim3,
  GraphKernelNode,
  KernelLauncher,
} from '../src/shmem/cuda/driver.ts';
import { GRAPHS_PER_SEQUENCE, LaunchQueue } from '../src/shmem/cuda/launch-queue.ts';

interface Call {
  op: string;
  fn?: string;
  grid?: number;
  block?: number;
  shared?: number;
  dependent?: boolean;
  word0?: number;
}

interface DriverOptions {
  /** false: a driver without node updates. */
  canUpdate?: boolean;
  /** The captured graph lacks a node. */
  dropNode?: boolean;
  /** graphInstantiate throws. */
  failInstantiate?: boolean;
  /** graphExecSetKernel throws while this is set. */
  failUpdate?: { on: boolean };
}

/** A driver that records the calls the queue makes, with failures to inject. */
function recordingDriver(opts: DriverOptions = {}) {
  const calls: Call[] = [];
  let capturing: { fn: CuFunction }[] | null = null;
  const name = (fn: CuFunction) => (fn as unknown as { name: string }).name;
  const word0 = (args: Uint8Array) => new Uint32Array(args.buffer, args.byteOffset, 1)[0];
  const drv = {
    prepareLaunch(fn: CuFunction, args: Uint8Array): KernelLauncher {
      return {
        fn,
        args,
        launch(grid: Dim3, block: Dim3, shared: number, _s: CuStream | null, dependent = false) {
          const call = {
            op: 'launch',
            fn: name(fn),
            grid: grid[0],
            block: block[0],
            shared,
            dependent,
            word0: word0(args),
          };
          if (capturing) capturing.push({ fn });
          else calls.push(call);
        },
      };
    },
    streamBeginCapture() {
      capturing = [];
    },
    streamEndCapture() {
      const graph = { nodes: capturing ?? [] };
      capturing = null;
      calls.push({ op: 'capture' });
      return graph;
    },
    graphKernelNodes(graph: { nodes: { fn: CuFunction }[] }): GraphKernelNode[] | null {
      if (opts.canUpdate === false) return null;
      const nodes = opts.dropNode ? graph.nodes.slice(1) : graph.nodes;
      return nodes.map((n) => ({ launches: (fn: CuFunction) => fn === n.fn }));
    },
    graphInstantiate() {
      if (opts.failInstantiate) throw new Error('cuGraphInstantiateWithFlags failed');
      return { exec: true };
    },
    graphLaunch() {
      calls.push({ op: 'graphLaunch' });
    },
    graphExecSetKernel(
      _e: unknown,
      node: GraphKernelNode,
      grid: Dim3,
      block: Dim3,
      shared: number,
      args: Uint8Array,
    ) {
      if (opts.failUpdate?.on) throw new Error('cuGraphExecKernelNodeSetParams_v2 failed');
      const fn = ['route', 'dispatch', 'combine'].find((k) => node.launches(fns[k]));
      calls.push({ op: 'setKernel', fn, grid: grid[0], block: block[0], shared, word0: word0(args) });
    },
    graphExecDestroy() {
      calls.push({ op: 'destroyExec' });
    },
    graphDestroy() {
      calls.push({ op: 'destroyGraph' });
    },
  };
  return { drv: drv as unknown as CudaDriver, calls };
}

const fns: Record<string, CuFunction> = {
  route: { name: 'route' } as unknown as CuFunction,
  dispatch: { name: 'dispatch' } as unknown as CuFunction,
  combine: { name: 'combine' } as unknown as CuFunction,
};

function setup(opts: DriverOptions = {}) {
  const { drv, calls } = recordingDriver(opts);
  const args = new Uint8Array(new ArrayBuffer(64));
  const words = new Uint32Array(args.buffer);
  const launcher = (k: string) => drv.prepareLaunch(fns[k], args);
  const route = launcher('route');
  const dispatch = launcher('dispatch');
  const queue = new LaunchQueue(drv, {} as CuStream, args);
  /** One eager dispatch: route, then dispatch as its dependent, with word 0 of the arguments = value. */
  const call = (value: number, grid = 100) => {
    queue.begin();
    words[0] = value;
    queue.add(0, route, 1, 512, 4096, false);
    queue.add(1, dispatch, grid, 224, 0, true);
    words[0] = 0xdead; // after add: the queue keeps the bytes as they were
    queue.submit();
  };
  return { calls, queue, call, words, launcher };
}

describe('launch queue: eager calls through cached graphs', () => {
  test('the first call of a sequence is captured and replayed; the next with the same bytes is one graph launch', () => {
    const { calls, call } = setup();
    call(7);
    assert.deepEqual(calls, [{ op: 'capture' }, { op: 'graphLaunch' }]);
    calls.length = 0;
    call(7);
    call(7);
    assert.deepEqual(calls, [{ op: 'graphLaunch' }, { op: 'graphLaunch' }]);
  });

  test('a call with new arguments gets its own graph, up to GRAPHS_PER_SEQUENCE; then the oldest is updated', () => {
    const { calls, call } = setup();
    // the same route, four dispatch grids: four graphs
    for (let i = 0; i < GRAPHS_PER_SEQUENCE; i++) call(1, 100 + i);
    assert.equal(calls.filter((c) => c.op === 'capture').length, GRAPHS_PER_SEQUENCE);
    calls.length = 0;
    call(1, 101); // any graph whose arguments match is replayed as it is
    assert.deepEqual(calls, [{ op: 'graphLaunch' }]);
    calls.length = 0;
    call(1, 37); // the least recently used graph (grid 100) is updated: only its dispatch node differs
    assert.deepEqual(calls, [
      { op: 'setKernel', fn: 'dispatch', grid: 37, block: 224, shared: 0, word0: 1 },
      { op: 'graphLaunch' },
    ]);
    calls.length = 0;
    call(8, 37); // next oldest (grid 102): both nodes, with the bytes recorded at add
    assert.deepEqual(calls, [
      { op: 'setKernel', fn: 'route', grid: 1, block: 512, shared: 4096, word0: 8 },
      { op: 'setKernel', fn: 'dispatch', grid: 37, block: 224, shared: 0, word0: 8 },
      { op: 'graphLaunch' },
    ]);
    calls.length = 0;
    call(1, 37);
    call(8, 37);
    assert.deepEqual(calls, [{ op: 'graphLaunch' }, { op: 'graphLaunch' }]);
  });

  test('each sequence of kernels has its own graph', () => {
    const { calls, call, queue, launcher, words } = setup();
    call(1);
    queue.begin();
    words[0] = 2;
    queue.add(2, launcher('combine'), 50, 224, 0, false);
    queue.submit();
    call(1);
    assert.deepEqual(calls, [
      { op: 'capture' },
      { op: 'graphLaunch' },
      { op: 'capture' },
      { op: 'graphLaunch' },
      { op: 'graphLaunch' },
    ]);
    calls.length = 0;
    queue.close();
    assert.equal(calls.filter((c) => c.op === 'destroyExec').length, 2);
    assert.equal(calls.filter((c) => c.op === 'destroyGraph').length, 2);
  });

  test("'direct' mode and launches outside begin/submit go to the driver at once, in order", () => {
    const { calls, call, queue, launcher, words } = setup();
    queue.mode = 'direct';
    call(5);
    assert.deepEqual(calls, [
      { op: 'launch', fn: 'route', grid: 1, block: 512, shared: 4096, dependent: false, word0: 5 },
      { op: 'launch', fn: 'dispatch', grid: 100, block: 224, shared: 0, dependent: true, word0: 5 },
    ]);
    calls.length = 0;
    queue.mode = 'graph';
    words[0] = 9;
    queue.add(0, launcher('route'), 1, 32, 0, false); // an abort's launch: not inside a call
    assert.deepEqual(calls, [
      { op: 'launch', fn: 'route', grid: 1, block: 32, shared: 0, dependent: false, word0: 9 },
    ]);
  });

  for (const [why, opts] of [
    ['a driver that cannot update graph nodes', { canUpdate: false }],
    ['a graph whose nodes do not match the launches', { dropNode: true }],
    ['a graph the driver fails to instantiate', { failInstantiate: true }],
  ] as const) {
    test(`with ${why} every call launches its kernels directly, with its own bytes`, () => {
      const { calls, call } = setup(opts);
      call(3);
      call(4);
      assert.deepEqual(
        calls.filter((c) => c.op !== 'capture' && c.op !== 'destroyGraph'),
        [3, 3, 4, 4].map((v, i) => ({
          op: 'launch',
          fn: i % 2 ? 'dispatch' : 'route',
          grid: i % 2 ? 100 : 1,
          block: i % 2 ? 224 : 512,
          shared: i % 2 ? 0 : 4096,
          dependent: i % 2 === 1,
          word0: v,
        })),
      );
      assert.equal(calls.filter((c) => c.op === 'graphLaunch').length, 0);
    });
  }

  test('a failed update leaves the graph as it was recorded: the next equal call updates it again', () => {
    const failUpdate = { on: false };
    const { calls, call } = setup({ failUpdate });
    for (let i = 0; i < GRAPHS_PER_SEQUENCE; i++) call(10 + i);
    calls.length = 0;
    failUpdate.on = true;
    assert.throws(() => call(99), /SetParams/);
    failUpdate.on = false;
    calls.length = 0;
    call(99); // not taken for a graph that already holds 99
    assert.deepEqual(
      calls.map((c) => c.op),
      ['setKernel', 'setKernel', 'graphLaunch'],
    );
  });

  test('sequences of different lengths never share a graph', () => {
    const { calls, call, queue, launcher, words } = setup();
    call(1); // route (kernel 0, not dependent) + dispatch (dependent)
    queue.begin();
    words[0] = 1;
    queue.add(1, launcher('dispatch'), 100, 224, 0, true); // dispatch alone, as the second launch above
    queue.submit();
    assert.deepEqual(
      calls.map((c) => c.op),
      ['capture', 'graphLaunch', 'capture', 'graphLaunch'],
    );
  });
});
