import type { EpGroup } from './ep/api.js';
import { type EpConfigInput, resolveConfig } from './ep/config.js';
import { chooseCpuDispatchPath, requestedDispatchPath } from './ep/dispatch-path.js';
import { computeLayout, stagedRowsFor } from './ep/layout.js';
import type { HostTensor } from './ep/tensor.js';
import { ConfigError } from './errors.js';
import { HostEpGroup } from './shmem/cpu/group.js';
import { openCpuTransport } from './shmem/cpu/world.js';
import type { CudaEpGroup } from './shmem/cuda/group.js';

export type TransportName = 'auto' | 'cpu' | 'cuda';

export interface GroupOptions extends EpConfigInput {
  /**
   * 'cpu' (worker threads, runs anywhere), 'cuda' (one process per GPU), or 'auto' (the default:
   * cuda when an NVIDIA driver, a GPU and the built kernels are present, else cpu). The environment
   * variable MOE_A2A_TRANSPORT, set by `moe-a2a launch`, is used when this is absent.
   */
  transport?: TransportName;
  /** This rank; default: from the launcher (worker thread or RANK in the environment), else 0. */
  rank?: number;
  /** How long (ms) a rank waits for a peer before PeerTimeoutError names it. Default 30000. */
  timeoutMs?: number;
  /** cuda: the GPU ordinal; default LOCAL_RANK modulo the number of GPUs. */
  device?: number;
  /**
   * How a dispatch moves rows between ranks. 'staged' (rows go to their owners at once and are packed
   * expert-major there), 'direct' (per-expert counts all-gathered first, then each row stored straight
   * into its final place; not with dedup), or 'auto' (the default: cuda stages with dedup and where
   * measured faster; the cpu transport stages). Every rank passes the same value; the outputs are the
   * same bytes either way. MOE_A2A_DISPATCH_PATH is used when this is absent. The cpu transport runs
   * either protocol, at any W; cuda with one rank uses its one-rank kernels whatever is asked.
   */
  dispatchPath?: 'auto' | 'staged' | 'direct';
}

function pickTransport(requested: TransportName | undefined): 'cpu' | 'cuda' | 'auto' {
  const t = requested ?? (process.env.MOE_A2A_TRANSPORT as TransportName | undefined) ?? 'auto';
  if (t !== 'auto' && t !== 'cpu' && t !== 'cuda') {
    throw new ConfigError(`transport must be 'auto', 'cpu' or 'cuda', got '${String(t)}'`, {
      fields: 'transport',
    });
  }
  return t;
}

/**
 * Creates this rank's member of an expert-parallel group and allocates its symmetric heap.
 * Collective: every rank calls it with the same config. Close it with `await group.close()`.
 */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export async function createGroup(options: GroupOptions & { transport: 'cpu' }): Promise<EpGroup<HostTensor>>;
export async function createGroup(options: GroupOptions & { transport: 'cuda' }): Promise<CudaEpGroup>;
export async function createGroup(options: GroupOptions): Promise<EpGroup<unknown>>;
export async function createGroup(options: GroupOptions): Promise<EpGroup<unknown>> {
  const config = resolveConfig(options);
  const timeoutMs = options.timeoutMs ?? 30_000;
  // at most 2^31 - 1 ms (about 24.8 days): the largest a Node timer takes
  if (!(timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS))
    throw new ConfigError(`timeoutMs must be in (0, ${MAX_TIMEOUT_MS}], got ${timeoutMs}`, {
      fields: 'timeoutMs',
    });
  let transport = pickTransport(options.transport);
  if (transport === 'auto') {
    const { cudaTransportReady } = await import('./shmem/cuda/available.js');
    transport = (await cudaTransportReady()) ? 'cuda' : 'cpu';
  }
  if (transport === 'cuda') {
    const { createCudaGroup } = await import('./shmem/cuda/group.js');
    return (await createCudaGroup(config, { ...options, timeoutMs })) as EpGroup<unknown>;
  }
  const path = chooseCpuDispatchPath(config, requestedDispatchPath(options.dispatchPath));
  const layout = computeLayout(config, path === 'staged' ? stagedRowsFor(config) : 0);
  const shmem = await openCpuTransport(config.world, layout.totalBytes, timeoutMs, options.rank);
  return new HostEpGroup(config, layout, shmem, timeoutMs, path) as EpGroup<unknown>;
}
