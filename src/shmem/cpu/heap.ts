import { peerTimeoutError } from '../../ep/call-errors.js';
import { PeerFailedError, PeerTimeoutError } from '../../errors.js';
import { ABORT_BIT, type SymmetricTransport, type WaitResult, type WaitSubject } from '../transport.js';
import { type ControlWords, RANK_EXITED, RANK_FAILED, RANK_RUNNING } from './control.js';

/** How long one Atomics.wait sleeps before looking at the peers' status words again. */
const WAIT_SLICE_MS = 20;

function goneError(peer: number, status: number, what: string): PeerFailedError {
  const how = status === RANK_EXITED ? 'exited' : 'failed (its worker threw or died)';
  return new PeerFailedError(`rank ${peer} ${how} while this rank waited for ${what}`, { peer });
}

/**
 * The cpu transport: every rank's heap is a SharedArrayBuffer that all ranks (worker threads of one
 * process) map, so a put is a TypedArray.set into the peer's buffer and a signal is an Atomics.store
 * (sequentially consistent: every plain write before it is visible to a rank that reads the value).
 */
export class CpuTransport implements SymmetricTransport {
  readonly kind = 'cpu' as const;
  readonly heapBytes: number;
  private readonly views: Uint8Array[];
  private readonly words: BigInt64Array[];
  private closed = false;

  constructor(
    readonly rank: number,
    readonly world: number,
    heaps: readonly SharedArrayBuffer[],
    private readonly control: ControlWords | null,
  ) {
    this.heapBytes = heaps[rank].byteLength;
    this.views = heaps.map((h) => new Uint8Array(h));
    this.words = heaps.map((h) => new BigInt64Array(h));
  }

  put(peer: number, offset: number, src: Uint8Array): void {
    this.views[peer].set(src, offset);
  }

  putWithSignal(peer: number, offset: number, src: Uint8Array, signalOffset: number, value: bigint): void {
    this.put(peer, offset, src);
    this.signal(peer, signalOffset, value);
  }

  signal(peer: number, signalOffset: number, value: bigint): void {
    const w = this.words[peer];
    Atomics.store(w, signalOffset / 8, BigInt.asIntN(64, value));
    Atomics.notify(w, signalOffset / 8);
  }

  waitUntil(signalOffset: number, value: bigint, deadline: number, subject: WaitSubject): WaitResult {
    const w = this.words[this.rank];
    const i = signalOffset / 8;
    const want = BigInt.asIntN(64, value);
    const aborted = BigInt.asIntN(64, value | ABORT_BIT);
    for (;;) {
      const v = Atomics.load(w, i);
      if (v === want) return 'arrived';
      if (v === aborted) return 'aborted';
      const status = this.control?.status(subject.peer) ?? RANK_RUNNING;
      if (status !== RANK_RUNNING) {
        throw goneError(
          subject.peer,
          status,
          `its ${subject.phase} signal (slot ${subject.slot}, call ${subject.callCount})`,
        );
      }
      // a relay that failed (threw, died) is named at once; one that exited had already reported its own
      // error (a peer it waited for did not come): naming it would blame the cascade, not the cause
      const via = subject.via;
      const relay = via === undefined ? RANK_RUNNING : (this.control?.status(via) ?? RANK_RUNNING);
      if (via !== undefined && relay === RANK_FAILED) {
        throw goneError(
          via,
          relay,
          `rank ${subject.peer}'s ${subject.phase} signal, which it passes on (slot ${subject.slot}, call ${subject.callCount})`,
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw peerTimeoutError(subject.peer, subject.phase, subject.slot, subject.callCount, via);
      }
      Atomics.wait(w, i, v, Math.min(left, WAIT_SLICE_MS));
    }
  }

  fence(): void {
    // Puts are plain stores and the signal is a seq-cst Atomics.store: already ordered.
  }

  barrier(deadline: number): void {
    if (this.world === 1 || !this.control) return;
    const r = this.control.barrier(this.rank, deadline, WAIT_SLICE_MS);
    if (r === true) return;
    if (r === false) {
      throw new PeerTimeoutError('not every rank reached the barrier within the timeout', {
        peer: -1,
        slot: -1,
      });
    }
    throw goneError(r.gone, r.status, 'the barrier');
  }

  mapped(peer: number): Uint8Array {
    return this.views[peer];
  }

  local(): Uint8Array {
    return this.views[this.rank];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // The buffers are freed once no rank holds a view: drop ours now rather than at group GC.
    this.views.length = 0;
    this.words.length = 0;
  }
}
