import type { CudaDriver, CuEvent, CuStream } from './driver.js';

const MARKS = 16;

function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Waits for a stream that may never finish: between hosts an NCCL transfer waits for its peer with no
 * deadline of its own. The caller marks the stream after each call; `wait` gives up once no mark has
 * completed for `timeoutMs` (a queue of many calls may take longer than that in all, but each call
 * finishes or fails within it).
 */
export class StreamWatch {
  private readonly events: CuEvent[];
  private marks = 0;
  private done = 0;

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
  ) {
    this.events = Array.from({ length: MARKS }, () => drv.eventCreate({ disableTiming: true }));
  }

  /** Marks the stream here (an event recorded after the work enqueued so far). */
  mark(): void {
    this.drv.eventRecord(this.events[this.marks % MARKS], this.stream);
    this.marks++;
    this.done = Math.max(this.done, this.marks - MARKS); // (older marks' events were recorded again)
  }

  /**
   * True once the stream has finished; false when no mark completed for `timeoutMs`, or at once when
   * `failed()` says the work cannot finish (checked every few milliseconds).
   */
  wait(timeoutMs: number, failed: () => boolean = () => false): boolean {
    let deadline = performance.now() + timeoutMs;
    const spinUntil = performance.now() + 2;
    for (;;) {
      if (this.drv.streamQuery(this.stream)) {
        this.done = this.marks;
        return true;
      }
      let moved = false;
      while (this.done < this.marks && this.drv.eventQuery(this.events[this.done % MARKS])) {
        this.done++;
        moved = true;
      }
      const now = performance.now();
      if (moved) deadline = now + timeoutMs;
      else if (now > deadline) return false;
      if (now > spinUntil) {
        if (failed()) return false;
        pause(1);
      }
    }
  }

  destroy(): void {
    for (const e of this.events) this.drv.eventDestroy(e);
  }
}
