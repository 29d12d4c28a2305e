/**
 * The control words every cpu rank shares (one small SharedArrayBuffer per world): a barrier and one
 * status word per rank, set by the thread launcher when a rank's worker dies or exits, so that a rank
 * waiting on a signal learns within one wait slice that the peer is gone instead of waiting forever.
 */
export const RANK_RUNNING = 0;
export const RANK_FAILED = 1;
export const RANK_EXITED = 2;

const BARRIER_COUNT = 0;
const BARRIER_GEN = 1;
const STATUS_BASE = 2;

export function controlBytes(world: number): number {
  return (STATUS_BASE + world) * 4;
}

export class ControlWords {
  readonly words: Int32Array;
  constructor(
    sab: SharedArrayBuffer,
    readonly world: number,
  ) {
    this.words = new Int32Array(sab);
  }

  status(rank: number): number {
    return Atomics.load(this.words, STATUS_BASE + rank);
  }

  setStatus(rank: number, status: number): void {
    Atomics.store(this.words, STATUS_BASE + rank, status);
    Atomics.notify(this.words, BARRIER_GEN);
  }

  /** The first rank other than `self` that failed or exited, or -1. */
  firstGone(self: number): { rank: number; status: number } | null {
    for (let r = 0; r < this.world; r++) {
      if (r === self) continue;
      const s = this.status(r);
      if (s !== RANK_RUNNING) return { rank: r, status: s };
    }
    return null;
  }

  /** Sense-reversing barrier; returns false past the deadline (performance.now() time). */
  barrier(self: number, deadline: number, sliceMs: number): boolean | { gone: number; status: number } {
    const gen = Atomics.load(this.words, BARRIER_GEN);
    if (Atomics.add(this.words, BARRIER_COUNT, 1) === this.world - 1) {
      Atomics.store(this.words, BARRIER_COUNT, 0);
      Atomics.add(this.words, BARRIER_GEN, 1);
      Atomics.notify(this.words, BARRIER_GEN);
      return true;
    }
    for (;;) {
      if (Atomics.load(this.words, BARRIER_GEN) !== gen) return true;
      const gone = this.firstGone(self);
      if (gone) return { gone: gone.rank, status: gone.status };
      const left = deadline - performance.now();
      if (left <= 0) return false;
      Atomics.wait(this.words, BARRIER_GEN, gen, Math.min(left, sliceMs));
    }
  }
}
