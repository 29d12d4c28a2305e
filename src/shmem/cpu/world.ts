import { type MessagePort, workerData } from 'node:worker_threads';
import { ConfigError, PeerFailedError, PeerTimeoutError } from '../../errors.js';
import { ControlWords } from './control.js';
import { CpuTransport } from './heap.js';

/** What the thread launcher hands each rank's worker (under workerData.moeA2a). */
export interface CpuRankContext {
  kind: 'moe-a2a-cpu-rank';
  rank: number;
  world: number;
  control: SharedArrayBuffer;
  /** Talks to the launcher's coordinator: heap exchange and failure notices. */
  port: MessagePort;
}

/** Messages between a rank and the coordinator. */
export type CoordinatorMessage =
  | { type: 'heap'; seq: number; rank: number; heap: SharedArrayBuffer }
  | { type: 'heaps'; seq: number; heaps: SharedArrayBuffer[] }
  | { type: 'failed'; rank: number; message: string };

/** This thread's rank context when it was started by the cpu thread launcher, else null. */
export function cpuRankContext(): CpuRankContext | null {
  const d = (workerData as { moeA2a?: CpuRankContext } | null)?.moeA2a;
  return d && d.kind === 'moe-a2a-cpu-rank' ? d : null;
}

let groupsCreated = 0;

/**
 * Allocates this rank's heap and exchanges heaps with every other rank. Groups are matched by
 * creation order: every rank creates its groups in the same order, as with every collective.
 */
export async function openCpuTransport(
  world: number,
  heapBytes: number,
  timeoutMs: number,
  rank?: number,
): Promise<CpuTransport> {
  const ctx = cpuRankContext();
  if (!ctx) {
    if (world !== 1) {
      throw new ConfigError(
        `world ${world} on the cpu transport needs one worker thread per rank: start the script with ` +
          `\`moe-a2a launch -n ${world} <script>\` (or runThreads() from the API), or use world 1`,
        { fields: 'world,transport' },
      );
    }
    if (rank !== undefined && rank !== 0) {
      throw new ConfigError(`rank ${rank} was given for a world of 1, whose only rank is 0`, {
        fields: 'rank',
      });
    }
    return new CpuTransport(0, 1, [new SharedArrayBuffer(heapBytes)], null);
  }
  if (rank !== undefined && rank !== ctx.rank) {
    throw new ConfigError(`rank ${rank} was given but this thread was launched as rank ${ctx.rank}`, {
      fields: 'rank',
    });
  }
  if (ctx.world !== world) {
    throw new ConfigError(`world is ${world} but this rank was launched in a world of ${ctx.world}`, {
      fields: 'world',
    });
  }
  const seq = groupsCreated++;
  const heap = new SharedArrayBuffer(heapBytes);
  const control = new ControlWords(ctx.control, ctx.world);
  const port = ctx.port;
  const heaps = await new Promise<SharedArrayBuffer[]>((resolve, reject) => {
    const timer = setTimeout(() => {
      done();
      reject(
        new PeerTimeoutError(`not every rank created its group (number ${seq}) within ${timeoutMs} ms`, {
          peer: -1,
          slot: -1,
        }),
      );
    }, timeoutMs);
    const onMessage = (m: CoordinatorMessage) => {
      if (m.type === 'heaps' && m.seq === seq) {
        done();
        resolve(m.heaps);
      } else if (m.type === 'failed') {
        done();
        reject(
          new PeerFailedError(`rank ${m.rank} failed while the group was being created: ${m.message}`, {
            peer: m.rank,
          }),
        );
      }
    };
    const done = () => {
      clearTimeout(timer);
      port.off('message', onMessage);
      port.unref();
    };
    port.on('message', onMessage);
    port.postMessage({ type: 'heap', seq, rank: ctx.rank, heap } satisfies CoordinatorMessage);
  });
  for (const [r, h] of heaps.entries()) {
    if (h.byteLength !== heapBytes) {
      throw new ConfigError(
        `rank ${r} allocated a ${h.byteLength}-byte heap but this rank expects ${heapBytes}: every rank must pass the same config`,
        { fields: 'config', peer: r },
      );
    }
  }
  return new CpuTransport(ctx.rank, ctx.world, heaps, control);
}
