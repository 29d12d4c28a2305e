import { readFileSync } from 'node:fs';
import type { GroupOptions } from '../../create.js';
import type { EpConfig } from '../../ep/config.js';
import { chooseDispatchPath, type DispatchPath, requestedDispatchPath } from '../../ep/dispatch-path.js';
import { computeLayout, type HeapLayout, stagedRowsFor } from '../../ep/layout.js';
import { ConfigError, PeerTimeoutError } from '../../errors.js';
import { readRankEnv } from '../../launch/env.js';
import { EP_MAX_EXPERTS, EP_MAX_PAIRS, EP_MAX_TOPK, EpArgsWriter } from './args.js';
import { fatbinPath } from './available.js';
import { DeviceTimer, PhaseStamps } from './bench-tools.js';
import { CallLaunches } from './call-launches.js';
import {
  type CudaDriver,
  type CuModule,
  type CuStream,
  type HostMappedBuffer,
  loadDriver,
} from './driver.js';
import { fillGroupArgs } from './group-args.js';
import { allocGroupBuffers, type GroupBuffers } from './group-buffers.js';
import { type CudaHeap, openCudaHeap } from './heap.js';
import { moduleFor } from './kernel-module.js';
import { type CudaRail, openCudaRail, warmUpRail } from './rail.js';
import { StreamWatch } from './stream-watch.js';
import { TensorIo } from './tensor-io.js';

const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;

/**
 * What a group takes from outside itself: the driver, the symmetric heap and the kernel image. The
 * defaults are the real ones; tests pass a recording fake driver and a heap in host-visible memory.
 */
export interface CudaGroupDeps {
  driver(): CudaDriver;
  openHeap: typeof openCudaHeap;
  moduleImage(): Uint8Array;
  /** Between hosts (config.nodes > 1): the NCCL rail and its buffers. */
  openRail: typeof openCudaRail;
}

export const realDeps: CudaGroupDeps = {
  driver: loadDriver,
  openHeap: openCudaHeap,
  moduleImage: () => readFileSync(fatbinPath()),
  openRail: openCudaRail,
};

/** Everything a cuda group holds: made by openGroupParts, given back by releaseGroupParts. */
export interface GroupParts {
  readonly config: EpConfig;
  readonly layout: HeapLayout;
  /** How dispatch moves rows between ranks (the same on every rank; see DispatchPath). */
  readonly dispatchPath: DispatchPath;
  readonly drv: CudaDriver;
  readonly heap: CudaHeap;
  /** The group's one stream: every launch and copy of the group is ordered on it. */
  readonly stream: CuStream;
  /** Host-mapped: where the kernels report an error (EpError), read at the group's checkpoints. */
  readonly errWord: HostMappedBuffer;
  readonly timeoutMs: number;
  readonly module: CuModule;
  readonly smCount: number;
  /** The group's EpArgs, the one argument buffer every kernel launch reads. */
  readonly args: EpArgsWriter;
  readonly buffers: GroupBuffers;
  readonly launches: CallLaunches;
  readonly io: TensorIo;
  readonly stamps: PhaseStamps;
  readonly timer: DeviceTimer;
  /** Between hosts (config.nodes > 1), else null: the rail, and the watch that bounds waits for the stream. */
  readonly rail: CudaRail | null;
  readonly watch: StreamWatch | null;
  /** Device memory freed with the group (the caller's tensors are io's). */
  readonly owned: bigint[];
}

/** The routing kernel runs in one block: its shared memory bounds E and T * k. */
function checkKernelLimits(config: EpConfig): void {
  if (config.nodes > EP_MAX_TOPK) {
    throw new ConfigError(`the cuda transport supports nodes up to ${EP_MAX_TOPK}, got ${config.nodes}`, {
      fields: 'nodes',
    });
  }
  if (config.numExperts > EP_MAX_EXPERTS) {
    throw new ConfigError(
      `the cuda transport supports numExperts up to ${EP_MAX_EXPERTS}, got ${config.numExperts}`,
      {
        fields: 'numExperts',
      },
    );
  }
  if (config.maxTokensPerRank * config.topk > EP_MAX_PAIRS) {
    throw new ConfigError(
      `the cuda transport supports maxTokensPerRank * topk up to ${EP_MAX_PAIRS}, got ${config.maxTokensPerRank * config.topk}`,
      { fields: 'maxTokensPerRank,topk' },
    );
  }
}

/**
 * The hosts the launcher started the ranks on must be the config's: a rank maps only its own host's heaps
 * (CUDA IPC crosses no host). LOCAL_WORLD_SIZE below WORLD_SIZE says the ranks span hosts; one host may
 * still play several (config.nodes > 1 with every rank on it: README, "Between hosts").
 */
function checkHostsAgainstLaunch(config: EpConfig): void {
  const env = readRankEnv();
  if (!env || env.localWorld === env.world || config.ranksPerNode === env.localWorld) return;
  const hosts = env.world / env.localWorld;
  throw new ConfigError(
    `the launcher started the ranks on ${Number.isInteger(hosts) ? hosts : 'several'} hosts, ${env.localWorld} on each (LOCAL_WORLD_SIZE ${env.localWorld}, WORLD_SIZE ${env.world}), but the config has nodes = ${config.nodes} (${config.ranksPerNode} ranks a host)${Number.isInteger(hosts) ? `: pass nodes: ${hosts}` : ''}`,
    { fields: 'nodes', localWorld: env.localWorld, world: env.world },
  );
}

/**
 * Makes what a group of this config holds: picks the device, the dispatch path and the heap layout,
 * opens the heap with the peers, and makes the stream, the error word, the buffers, the EpArgs and
 * the kernel launchers. A step that fails gives back all the steps before it took.
 */
export async function openGroupParts(
  config: EpConfig,
  options: GroupOptions & { timeoutMs: number },
  deps: CudaGroupDeps,
): Promise<GroupParts> {
  checkKernelLimits(config);
  checkHostsAgainstLaunch(config);
  const drv = deps.driver();
  const localRank = Number(process.env.LOCAL_RANK ?? 0);
  const ordinal = options.device ?? localRank % drv.deviceCount;
  drv.useDevice(ordinal);
  const path = chooseDispatchPath(config, requestedDispatchPath(options.dispatchPath));
  const module = moduleFor(drv, ordinal, deps.moduleImage);
  const layout = computeLayout(config, path === 'staged' ? stagedRowsFor(config) : 0);
  const timeoutMs = options.timeoutMs;
  const heap = await deps.openHeap(
    drv,
    config.world,
    layout.totalBytes,
    timeoutMs,
    `${path} dispatch${config.dedup && path === 'staged' ? ' with dedup' : ''}, ${layout.totalBytes} bytes`,
    (r, me) => Math.floor(r / config.ranksPerNode) === Math.floor(me / config.ranksPerNode),
  );
  let stream: CuStream | null = null;
  let errWord: HostMappedBuffer | null = null;
  let rail: CudaRail | null = null;
  let watch: StreamWatch | null = null;
  const owned: bigint[] = [];
  try {
    stream = drv.streamCreate({ nonBlocking: true });
    errWord = drv.allocHostMapped(64);
    errWord.view.fill(0);
    const dispatchPath: DispatchPath = layout.stageRows > 0 ? 'staged' : 'direct';
    const smCount = drv.deviceAttribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, ordinal);
    // device memory the group owns, freed with it
    const alloc = (bytes: number) => {
      const p = drv.memAlloc(Math.max(bytes, 16));
      owned.push(p);
      return p;
    };
    const buffers = allocGroupBuffers(drv, config, layout, heap, alloc);
    if (config.nodes > 1) {
      rail = await deps.openRail(config, layout, heap.local, heap.rank, timeoutMs, alloc);
      watch = new StreamWatch(drv, stream);
      const failed = warmUpRail(drv, rail, watch, stream, config.nodes, timeoutMs);
      if (failed !== null) {
        throw new PeerTimeoutError(
          `rank ${heap.rank} (host ${rail.host}): the first exchange between hosts failed (a rank on another host did not create its group?): ${failed}; the NCCL communicator was aborted`,
          { rank: heap.rank, timeoutMs },
        );
      }
    }
    const args = new EpArgsWriter();
    fillGroupArgs(args, config, layout, {
      rank: heap.rank,
      timeoutMs,
      errHost: errWord.devicePtr,
      buffers,
      localBase: heap.local,
      rail,
    });
    const launches = new CallLaunches(drv, stream, module, args, {
      config,
      dispatchPath,
      stageRows: layout.stageRows,
      smCount,
      recvSplits: buffers.recvSplits,
      rail,
    });
    return {
      config,
      layout,
      dispatchPath,
      drv,
      heap,
      stream,
      errWord,
      timeoutMs,
      module,
      smCount,
      args,
      buffers,
      launches,
      io: new TensorIo(drv, stream),
      stamps: new PhaseStamps(drv, stream, args, (p) => owned.push(p)),
      timer: new DeviceTimer(drv, stream),
      rail,
      watch,
      owned,
    };
  } catch (err) {
    rail?.close();
    watch?.destroy();
    for (const p of owned) drv.memFree(p);
    errWord?.free();
    if (stream !== null) drv.streamDestroy(stream);
    await heap.close(timeoutMs).catch(() => {});
    throw err;
  }
}

/**
 * Waits for the group's stream before its memory goes. Between hosts the wait is bounded (the group's
 * close() aborted the rail when it had to, yet an NCCL kernel queued before that abort may never end):
 * false when the stream did not finish; then nothing is freed, since a kernel may still use it, and the
 * process's exit takes it back.
 */
function streamFinished(p: GroupParts): boolean {
  if (p.watch) {
    if (p.watch.wait(p.timeoutMs)) return true;
    process.stderr.write(
      `moe-a2a: rank ${p.heap.rank}: the group's stream did not finish after its NCCL communicator was aborted; its device memory is left to the process's exit\n`,
    );
    return false;
  }
  try {
    p.drv.streamSynchronize(p.stream);
  } catch {
    // the heap is freed below either way
  }
  return true;
}

/**
 * Gives back all a group holds, the caller's tensors made by its io included: after its work on the
 * stream has finished, and after every peer is done with the heap (CudaHeap.close waits for them).
 */
export async function releaseGroupParts(p: GroupParts): Promise<void> {
  if (!streamFinished(p)) {
    p.rail?.close(); // (aborted already: NCCL's own resources)
    // the store's connection goes (it would keep the process alive); the memory stays
    await p.heap.close(p.timeoutMs, true).catch(() => {});
    return;
  }
  p.rail?.close(); // (after the stream: its transfers are done)
  try {
    p.launches.queue.close();
  } catch {
    // (a broken context): the stream and heap still go below
  }
  try {
    await p.heap.close(p.timeoutMs);
  } finally {
    for (const ptr of p.owned) p.drv.memFree(ptr);
    p.io.freeAll();
    p.timer.destroy();
    p.watch?.destroy();
    p.drv.streamDestroy(p.stream);
    p.errWord.free();
  }
}
