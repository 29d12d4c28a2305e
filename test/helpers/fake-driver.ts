/**
 * A recording stand-in for the CUDA driver, for testing the cuda group's host logic without a GPU:
 * device memory is bookkeeping only (addresses and sizes), kernels are not run but every launch is
 * recorded with a copy of its argument bytes, stream capture records launches into graphs that a
 * graph launch replays into the record. A method the group is not expected to call throws.
 */

import { EP_ARGS_FIELDS } from '../../src/shmem/cuda/args.js';
import type { CudaDriver, KernelLauncher } from '../../src/shmem/cuda/driver.js';
import type { CudaHeap } from '../../src/shmem/cuda/heap.js';
import { type openCudaRail, railBuffers } from '../../src/shmem/cuda/rail.js';

export interface Launch {
  kernel: string;
  grid: number;
  block: number;
  sharedBytes: number;
  dependent: boolean;
  args: Uint8Array;
  /** Replayed from a captured graph (not launched directly). */
  fromGraph: boolean;
}

export class FakeDriver {
  readonly deviceCount = 1;
  readonly driverVersion = 13000;
  readonly launches: Launch[] = [];
  readonly memsets: Array<{ ptr: bigint; value: number; bytes: number }> = [];
  readonly copiesToDevice: number[] = [];
  /** The stream-ordering calls in the order made: 'memset' (async, on a stream), 'stream sync', 'copy in'. */
  readonly order: string[] = [];
  /** Live device allocations: address -> bytes. */
  readonly live = new Map<bigint, number>();
  modulesLoaded = 0;
  streamsLive = 0;
  hostMappedLive = 0;
  /** Makes funcSetAttribute throw (a creation that fails half-way). */
  failFuncSetAttribute = false;
  private next = 0x1000_0000n;
  private capture: Launch[] | null = null;
  private readonly graphs = new Map<number, Launch[]>();
  private handles = 0;

  memAlloc(bytes: number): bigint {
    const p = this.next;
    this.next += BigInt(Math.ceil(Math.max(bytes, 1) / 256) * 256);
    this.live.set(p, bytes);
    return p;
  }
  memFree(ptr: bigint): void {
    if (!this.live.delete(ptr)) throw new Error(`memFree of ${ptr}, which is not allocated`);
  }
  memsetD8(ptr: bigint, value: number, bytes: number): void {
    this.memsets.push({ ptr, value, bytes });
  }
  memsetD8Async(ptr: bigint, value: number, bytes: number): void {
    this.memsets.push({ ptr, value, bytes });
    this.order.push('memset');
  }
  memcpyHtoD(_dst: bigint, src: ArrayBufferView, bytes?: number): void {
    this.copiesToDevice.push(bytes ?? src.byteLength);
    this.order.push('copy in');
  }
  memcpyDtoH(dst: ArrayBufferView, _src: bigint, bytes?: number): void {
    new Uint8Array(dst.buffer, dst.byteOffset, bytes ?? dst.byteLength).fill(0);
  }
  memcpyDtoDAsync(): void {}
  synchronizeContext(): void {}
  useDevice(): bigint {
    return 1n;
  }
  deviceAttribute(): number {
    return 132; // SMs
  }
  /** Every host-mapped buffer made, in order (a group's first is its error word). */
  readonly hostMapped: Uint8Array[] = [];
  allocHostMapped(bytes: number) {
    this.hostMappedLive++;
    const view = new Uint8Array(bytes);
    this.hostMapped.push(view);
    let freed = false;
    return {
      hostPtr: null,
      hostAddress: 0n,
      devicePtr: 0x7000_0000_0000n + BigInt(this.hostMappedLive) * 4096n, // (not device memory)
      bytes,
      view,
      free: () => {
        if (freed) return;
        freed = true;
        this.hostMappedLive--;
      },
    };
  }
  moduleLoadData(): object {
    this.modulesLoaded++;
    return { module: this.modulesLoaded };
  }
  moduleGetFunction(_mod: object, name: string): object {
    return { name };
  }
  /** What maxActiveBlocksPerSm answers for a kernel, by name (2 for every kernel unless set). */
  blocksPerSm: (kernel: string) => number = () => 2;
  /** Every occupancy query: the kernel, the block and the dynamic shared memory it was asked for. */
  readonly occupancyQueries: { kernel: string; block: number; sharedBytes: number }[] = [];
  maxActiveBlocksPerSm(fn: { name: string }, block: number, sharedBytes: number): number {
    this.occupancyQueries.push({ kernel: fn.name, block, sharedBytes });
    return this.blocksPerSm(fn.name);
  }
  funcSetAttribute(): void {
    if (this.failFuncSetAttribute) throw new Error('cuFuncSetAttribute failed (fake)');
  }
  prepareLaunch(fn: { name: string }, args: Uint8Array): KernelLauncher {
    return {
      fn: fn as never,
      args,
      launch: (grid, block, sharedBytes, _stream, dependent = false) => {
        const l: Launch = {
          kernel: fn.name,
          grid: grid[0],
          block: block[0],
          sharedBytes,
          dependent,
          args: Uint8Array.from(args), // (a copy: Buffer.slice would share the live bytes)
          fromGraph: false,
        };
        (this.capture ?? this.launches).push(l);
      },
    };
  }
  streamCreate(): object {
    this.streamsLive++;
    return { stream: ++this.handles };
  }
  streamDestroy(): void {
    this.streamsLive--;
  }
  streamSynchronize(): void {
    // (a real one would never return on a stuck stream: the order says so, for tests to refuse)
    this.order.push(this.stuck ? 'stream sync on a stuck stream' : 'stream sync');
  }
  eventCreate(): object {
    return { event: ++this.handles };
  }
  eventRecord(): void {}
  /** Makes the stream never finish (a transfer whose peer never comes): streamQuery and eventQuery say not done. */
  stuck = false;
  /** What the fake rail's NCCL says went wrong (null: nothing). */
  railError: string | null = null;
  eventQuery(): boolean {
    return !this.stuck;
  }
  streamQuery(): boolean {
    this.order.push('stream query');
    return !this.stuck;
  }
  eventSynchronize(): void {}
  eventElapsedTime(): number {
    return 0;
  }
  eventDestroy(): void {}
  streamBeginCapture(): void {
    this.capture = [];
  }
  streamEndCapture(): number {
    const id = ++this.handles;
    this.graphs.set(id, this.capture ?? []);
    this.capture = null;
    return id;
  }
  graphInstantiate(graph: number): number {
    return graph;
  }
  graphDestroy(): void {}
  graphExecDestroy(): void {}
  /** Makes graphLaunch throw (a launch the driver refuses). */
  failGraphLaunch = false;
  graphLaunch(exec: number): void {
    if (this.failGraphLaunch) throw new Error('cuGraphLaunch failed (fake)');
    for (const l of this.graphs.get(exec) ?? []) this.launches.push({ ...l, fromGraph: true });
  }
  graphKernelNodes(): null {
    return null;
  }

  private proxy: CudaDriver | null = null;

  /** The driver as the group sees it (one object, as loadDriver's): a method not written above throws. */
  asDriver(): CudaDriver {
    this.proxy ??= new Proxy(this, {
      get(target, prop, receiver) {
        if (prop in target) {
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        }
        return () => {
          throw new Error(`the fake driver does not do ${String(prop)}`);
        };
      },
    }) as unknown as CudaDriver;
    return this.proxy;
  }

  /** A heap of `world` ranks for rank 0 of this process (peers are addresses only). */
  heapOpener(log: string[]) {
    return async (_drv: CudaDriver, world: number, bytes: number): Promise<CudaHeap> => {
      const local = this.memAlloc(bytes);
      const peers = [
        local,
        ...Array.from({ length: world - 1 }, (_, i) => 0x9000_0000_0000n + BigInt(i) * 2n ** 32n),
      ];
      return {
        rank: 0,
        world,
        local,
        peers,
        barrier: async (name) => {
          log.push(`barrier ${name}`);
        },
        close: async (_ms: number, keepMemory?: boolean) => {
          log.push(keepMemory ? 'heap closed, memory kept' : 'heap closed');
          if (!keepMemory) this.memFree(local);
        },
      };
    };
  }

  /**
   * A rail (between hosts) whose exchanges are recorded among the launches, as 'nccl dispatch' and
   * 'nccl combine' (their other fields empty), so that tests see where they sit between the kernels.
   */
  railOpener(log: string[]): typeof openCudaRail {
    return async (config, layout, local, rank, _timeoutMs, alloc) => {
      return {
        host: Math.floor(rank / config.ranksPerNode),
        ...railBuffers(config, layout, local, alloc),
        exchange: (kind) => {
          const l: Launch = {
            kernel: `nccl ${kind}`,
            grid: 0,
            block: 0,
            sharedBytes: 0,
            dependent: false,
            args: new Uint8Array(0),
            fromGraph: false,
          };
          (this.capture ?? this.launches).push(l);
        },
        asyncError: () => this.railError,
        abort: () => log.push('rail aborted'),
        close: () => log.push('rail closed'),
      };
    };
  }
}

/** A field of a recorded launch's EpArgs bytes, by name (i32 as number, u64 / i64 as bigint). */
export function argOf(l: Launch, name: string): number | bigint {
  const f = EP_ARGS_FIELDS.find((x) => x.name === name);
  if (!f) throw new Error(`no EpArgs field ${name}`);
  const v = new DataView(l.args.buffer, l.args.byteOffset, l.args.byteLength);
  if (f.type === 'i32') return v.getInt32(f.offset, true);
  if (f.type === 'u32') return v.getUint32(f.offset, true);
  return v.getBigUint64(f.offset, true);
}
