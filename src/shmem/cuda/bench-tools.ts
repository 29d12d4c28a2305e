import { EP_STAMPS, type EpArgsWriter } from './args.js';
import type { CudaDriver, CuEvent, CuStream } from './driver.js';

/**
 * Benchmarks: phase stamps (EP_STAMP, %globaltimer ns) the kernels write into a small device buffer
 * while EpArgs.stamps points to it. The buffer is made on first use and freed with the group.
 */
export class PhaseStamps {
  /** EP_STAMPS u64 of device memory once stamps were asked for, else null. */
  private buffer: bigint | null = null;

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
    private readonly args: EpArgsWriter,
    /** Hands an allocation to the group, which frees it on close. */
    private readonly own: (ptr: bigint) => void,
  ) {}

  /** See CudaEpGroup.setStamps. */
  set(on: boolean): void {
    if (on && this.buffer === null) {
      this.buffer = this.drv.memAlloc(EP_STAMPS * 8);
      this.own(this.buffer);
    }
    this.args.set('stamps', on && this.buffer !== null ? this.buffer : 0n);
    if (on) this.clear();
  }

  /** Zeroes the stamps (on the stream: before the next call's kernels write them). */
  clear(): void {
    if (this.buffer !== null) this.drv.memsetD8Async(this.buffer, 0, EP_STAMPS * 8, this.stream);
  }

  /** The stamps (ns; 0 = not written since the last clear); the caller has waited for the stream. */
  read(): number[] {
    if (this.buffer === null) return new Array(EP_STAMPS).fill(0);
    const out = new BigUint64Array(EP_STAMPS);
    this.drv.memcpyDtoH(out, this.buffer, EP_STAMPS * 8);
    return Array.from(out, Number);
  }
}

/** Device time of the work a function launches, by a pair of CUDA events on the group's stream. */
export class DeviceTimer {
  /** Made on first use. */
  private events: [CuEvent, CuEvent] | null = null;

  /**
   * Waits for the timed work. The group replaces it where a plain event wait could wait forever
   * (between hosts: an NCCL transfer has no deadline of its own); the stream's end is the end event's.
   */
  wait: (end: CuEvent) => void = (end) => this.drv.eventSynchronize(end);

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
  ) {}

  /** Microseconds; waits for the work, then runs `check` (the group's device-error check). */
  time(fn: () => void, check: () => void): number {
    this.events ??= [this.drv.eventCreate(), this.drv.eventCreate()];
    const [start, end] = this.events;
    this.drv.eventRecord(start, this.stream);
    fn();
    this.drv.eventRecord(end, this.stream);
    this.wait(end);
    check();
    return this.drv.eventElapsedTime(start, end) * 1000;
  }

  destroy(): void {
    for (const e of this.events ?? []) this.drv.eventDestroy(e);
  }
}
