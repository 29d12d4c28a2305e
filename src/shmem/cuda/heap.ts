import { ConfigError } from '../../errors.js';
import { readRankEnv, storeFromEnv } from '../../launch/env.js';
import type { StoreClient } from '../../launch/store.js';
import type { CudaDriver } from './driver.js';

/**
 * The symmetric heap over CUDA IPC: one device allocation per rank holding the whole layout, exported
 * with cuIpcGetMemHandle and opened by every peer of its host (ranks are processes; several may share one
 * GPU). Handles travel through the launcher's TCP store. `peers[r]` is rank r's heap as mapped here (0n
 * for a rank on another host).
 */
export interface CudaHeap {
  readonly rank: number;
  readonly world: number;
  readonly local: bigint;
  readonly peers: readonly bigint[];
  /** Every rank arrives (through the store) before any leaves. */
  barrier(name: string, timeoutMs: number): Promise<void>;
  /**
   * Waits for every rank to arrive (no rank frees its heap while a peer may still write into it), then
   * unmaps the peers' heaps, frees this one and closes the store. `keepMemory`: only closes the store, for
   * a group whose stream may still use the memory (left to the process's exit); it does not arrive, since
   * a kernel of its may still write into its peers' heaps (they give up on it after the timeout).
   */
  close(timeoutMs: number, keepMemory?: boolean): Promise<void>;
}

let heapsOpened = 0;

export async function openCudaHeap(
  drv: CudaDriver,
  world: number,
  bytes: number,
  timeoutMs: number,
  /** What decides the heap's layout (config, dispatch path): every rank must open the same one. */
  layoutKey = `${bytes} bytes`,
  /** Whether rank `me` maps rank `r`'s heap (between hosts, only those of its own host); the others stay 0n. */
  maps: (r: number, me: number) => boolean = () => true,
): Promise<CudaHeap> {
  const env = readRankEnv();
  const rank = env?.rank ?? 0;
  if (world > 1 && !env) {
    throw new ConfigError(
      `world ${world} on the cuda transport needs one process per rank: start it with \`moe-a2a launch -n ${world} <script>\``,
      { fields: 'world,transport' },
    );
  }
  if (env && env.world !== world) {
    throw new ConfigError(`world is ${world} but the launcher started ${env.world} ranks`, {
      fields: 'world',
    });
  }
  const seq = heapsOpened++;
  const local = drv.memAlloc(bytes);
  drv.memsetD8(local, 0, bytes); // signal words start below any call count
  // a synchronous memset may still be running when it returns: finish it before any peer can write
  drv.synchronizeContext();
  const peers: bigint[] = new Array(world).fill(0n);
  peers[rank] = local;
  let store: StoreClient | null = null;
  const opened: bigint[] = [];
  try {
    if (world > 1 && env) {
      store = await storeFromEnv(env, timeoutMs);
      await store.set(`moe-a2a/heap${seq}/${rank}/layout`, layoutKey);
      await store.set(`moe-a2a/heap${seq}/${rank}`, drv.ipcGetMemHandle(local));
      for (let r = 0; r < world; r++) {
        if (r === rank) continue;
        // a peer with another layout would write past this heap or wait on other signal words
        const theirs = await store.getString(`moe-a2a/heap${seq}/${r}/layout`, { timeoutMs });
        if (theirs !== layoutKey) {
          throw new ConfigError(
            `rank ${r} laid out its heap as "${theirs}" and rank ${rank} as "${layoutKey}": every rank must pass the same config and dispatchPath (or MOE_A2A_DISPATCH_PATH)`,
            { fields: 'dispatchPath', peer: r },
          );
        }
        if (!maps(r, rank)) continue;
        const handle = await store.get(`moe-a2a/heap${seq}/${r}`, { timeoutMs });
        peers[r] = drv.ipcOpenMemHandle(handle);
        opened.push(peers[r]);
      }
      await store.barrier(`moe-a2a/heap${seq}/open`, world, timeoutMs);
    }
  } catch (err) {
    for (const p of opened) drv.ipcCloseMemHandle(p);
    drv.memFree(local);
    await store?.close();
    throw err;
  }
  const s = store;
  return {
    rank,
    world,
    local,
    peers,
    async barrier(name, ms) {
      if (s) await s.barrier(`moe-a2a/heap${seq}/${name}`, world, ms);
    },
    async close(ms, keepMemory = false) {
      try {
        if (s && !keepMemory) await s.barrier(`moe-a2a/heap${seq}/close`, world, ms);
      } finally {
        if (!keepMemory) {
          for (const p of opened) drv.ipcCloseMemHandle(p);
          drv.memFree(local);
        }
        await s?.close();
      }
    },
  };
}
