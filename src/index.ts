/**
 * moe-a2a: low-latency all-to-all (dispatch and combine) for mixture-of-experts expert parallelism.
 * The public surface: create a group, dispatch, combine, close; the tensor helpers; the errors.
 */

export { createGroup, type GroupOptions, type TransportName } from './create.js';
export type { CombineOptions, DispatchOptions, DispatchResult, EpGroup, SourceMajorRecv } from './ep/api.js';
export { bf16ToF32, decodeBf16, encodeBf16, f32ToBf16, f32ToFp8, fp8ToF32 } from './ep/codec.js';
export type { EpConfig, EpConfigInput } from './ep/config.js';
export { resolveConfig } from './ep/config.js';
export type { CombineHandle } from './ep/handle.js';
export type { DType, HostTensor } from './ep/tensor.js';
export { hostTensor } from './ep/tensor.js';
export {
  ArgumentError,
  CapacityError,
  ClosedError,
  ConfigError,
  CudaError,
  type ErrorCode,
  ErrorCodes,
  HandleError,
  InternalError,
  LaunchError,
  MoeA2aError,
  type MoeErrorOptions,
  PeerFailedError,
  PeerTimeoutError,
  RoutingError,
  ShapeError,
  TransportUnavailableError,
} from './errors.js';
export { postRankResult, type RankOutcome, type RunThreadsOptions, runThreads } from './shmem/cpu/threads.js';
export type { DeviceTensor } from './shmem/cuda/device-tensor.js';
export type { GraphCall } from './shmem/cuda/graph.js';
export type { CudaEpGroup } from './shmem/cuda/group.js';
export type { LaunchMode } from './shmem/cuda/launch-queue.js';
