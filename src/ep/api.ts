import type { EpConfig } from './config.js';
import type { DispatchPath } from './dispatch-path.js';
import type { CombineHandle } from './handle.js';
import type { HostTensor } from './tensor.js';

/**
 * The source-major receive buffer, returned on request: the cpu transport copies it out of its heap,
 * the cuda transport rebuilds it from expertX. Rows past each source's count are not written.
 */
export interface SourceMajorRecv<T> {
  /** [W, maxRowsPerPeer, H]: block src = the rows rank src sent me, expert-sorted (fp8_e4m3 or bf16). */
  x: T;
  /** f32 [W, maxRowsPerPeer, H/G] scales of those rows (FP8 only). */
  scales: T | null;
  /** i32 [W, EPR + 1]: rows per local expert from src, then src's start offset m_st. */
  splits: T;
}

export interface DispatchResult<T> {
  /**
   * The rows each local expert received (sources in rank order, each source's tokens in order), fp8_e4m3
   * when the group quantises, else bf16: [EPR, expertCapacity, H] (expertLayout 'padded') or [expertRows,
   * H] ('packed'); expert e's rows are rows expertOffsets[e] .. + expertCounts[e] of it viewed as
   * [rows, H]. Other rows are unspecified. A view of the group's output buffer: valid until the next
   * dispatch. After a dispatch that failed, the contents of every output are unspecified.
   */
  expertX: T;
  /** f32 [..., H/G]: per-group scales of expertX's rows, same row order (FP8 only, else null). Same lifetime. */
  expertScales: T | null;
  /** i32 [EPR]: rows received per local expert. */
  expertCounts: T;
  /** i32 [EPR]: the row where each local expert's rows start (padded: e * expertCapacity). Same lifetime. */
  expertOffsets: T;
  /** Pass to combine(); valid until the next dispatch. */
  handle: CombineHandle;
  /** The source-major receive buffer, when asked for with { returnRecv: true }. */
  recv: SourceMajorRecv<T> | null;
}

export interface DispatchOptions<T> {
  /**
   * f32 [T, k] router weights, kept for combine (or pass them to combine). On cuda, combine reads
   * them and topkIdx again from the tensors given here: keep both alive and unchanged until combine.
   */
  topkWeights?: T;
  /** Also return the source-major receive buffer (new tensors; see SourceMajorRecv). */
  returnRecv?: boolean;
}

export interface CombineOptions<T> {
  /** f32 [T, k] router weights; overrides those given to dispatch. */
  topkWeights?: T;
}

/**
 * One rank's member of an expert-parallel group. dispatch and combine are collectives: every rank of
 * the group calls them, in the same order, the same number of times.
 */
export interface EpGroup<T = HostTensor> {
  readonly config: EpConfig;
  readonly rank: number;
  readonly transport: 'cpu' | 'cuda';
  /** How this group's dispatch moves rows (src/ep/dispatch-path.ts); cuda with one rank: 'direct'. */
  readonly dispatchPath: DispatchPath;
  /** Bytes of this rank's symmetric heap (every rank of the group has one of this size). */
  readonly heapBytes: number;
  /**
   * Sends each token to the ranks owning its experts.
   * @param x bf16 [T, H], T <= maxTokensPerRank (T may be 0).
   * @param topkIdx i32 [T, k]: expert ids in [0, E), distinct within a token, or -1 (dropped).
   */
  dispatch(x: T, topkIdx: T, options?: DispatchOptions<T>): DispatchResult<T>;
  /**
   * Returns the expert outputs to their tokens and reduces them: y[t] = sum_j w[t,j] * out[t,j]
   * (f32 accumulation in j order, bf16 result).
   * @param expertOut bf16, expertX's shape with H columns: each row is the output for the same row of expertX.
   * @returns bf16 [T, H], a new tensor.
   */
  combine(expertOut: T, handle: CombineHandle, options?: CombineOptions<T>): T;
  /** Collective: every rank arrives before any returns (to align ranks, e.g. between timed iterations). */
  barrier(): Promise<void>;
  /**
   * A host tensor as a tensor this group's calls take: on cpu the same tensor; on cuda a copy in new
   * device memory (give it back with its free(), or close() does).
   */
  upload(t: HostTensor): T;
  /** A tensor as host memory: on cpu the same tensor; on cuda it waits for the group's work, then copies. */
  download(t: T): HostTensor;
  /** Waits for every call made so far and throws the first error one left (cpu: calls are synchronous). */
  synchronize(): void;
  /** Microseconds the work `fn` issues takes: CUDA events on the group's stream (cuda), the host clock (cpu). */
  timeOnDevice(fn: () => void): number;
  /** Fills the group's output buffers with `byte`, so that a check can tell an element no call wrote (tests). */
  poisonOutputs(byte: number): void;
  /** Frees the heap. Collective: every rank closes. */
  close(): Promise<void>;
}
