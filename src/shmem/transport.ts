/**
 * The symmetric-memory interface the protocol is written against. Every rank allocates the same heap
 * (its layout comes from src/ep/layout.ts); a rank writes into a peer's heap at an offset and raises a
 * 64-bit signal word there; the peer waits on its own word. The cpu transport implements it with
 * SharedArrayBuffers and Atomics; the cuda transport implements the same operations on the device
 * (kernels/shmem.cuh) and uses this interface for setup; a network transport (NCCL) fits the same shape.
 */

/** Signal words hold the call count; a rank that aborts a call writes callCount | ABORT_BIT. */
export const ABORT_BIT = 1n << 63n;

/** What a wait was for, so that a timeout can say which rank, slot and call did not arrive. */
export interface WaitSubject {
  peer: number;
  slot: number;
  callCount: number;
  phase: 'dispatch' | 'combine';
  /** The rank that passes `peer`'s signal on (between hosts: its rail peer), watched for failure too. */
  via?: number;
}

export type WaitResult = 'arrived' | 'aborted';

export interface SymmetricTransport {
  readonly kind: 'cpu' | 'cuda' | 'nccl';
  readonly rank: number;
  readonly world: number;
  /** Bytes of each rank's heap. */
  readonly heapBytes: number;
  /** Copy `src` into `peer`'s heap at byte `offset`. */
  put(peer: number, offset: number, src: Uint8Array): void;
  /** put, then (ordered after it) set `peer`'s signal word at `signalOffset` to `value`. */
  putWithSignal(peer: number, offset: number, src: Uint8Array, signalOffset: number, value: bigint): void;
  /** Set `peer`'s signal word; everything this rank wrote to `peer` before is visible once it is seen. */
  signal(peer: number, signalOffset: number, value: bigint): void;
  /**
   * Wait until my signal word at `signalOffset` equals `value` ('arrived') or `value | ABORT_BIT`
   * ('aborted'). Throws PeerTimeoutError naming `subject` past `deadline` (a performance.now() time),
   * PeerFailedError when a peer rank is known to have died.
   */
  waitUntil(signalOffset: number, value: bigint, deadline: number, subject: WaitSubject): WaitResult;
  /** Orders this rank's earlier puts before its later ones (a no-op where puts are already ordered). */
  fence(): void;
  /** Every rank arrives before any leaves; throws PeerTimeoutError naming the missing ranks past the deadline. */
  barrier(deadline: number): void;
  /**
   * A direct view of `peer`'s heap where this transport maps peer memory into this address space
   * (cpu: every heap), so the protocol can write rows in place instead of staging them; else null.
   */
  mapped(peer: number): Uint8Array | null;
  /** This rank's own heap. */
  local(): Uint8Array;
  close(): void;
}
