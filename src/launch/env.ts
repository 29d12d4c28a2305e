/**
 * A rank's place in the job, read from torchrun's environment conventions, and the rendezvous store
 * it reaches through them.
 *
 * Variables read:
 * - RANK, WORLD_SIZE (required together): this rank and the number of ranks.
 * - LOCAL_RANK, LOCAL_WORLD_SIZE (optional): the rank on this host and the ranks on this host (the
 *   GPU index to use). Absent, a single host is assumed: LOCAL_WORLD_SIZE = WORLD_SIZE, LOCAL_RANK = RANK;
 *   with only LOCAL_WORLD_SIZE set, ranks are taken to fill hosts in order: LOCAL_RANK = RANK % it.
 * - MASTER_ADDR, MASTER_PORT (required): where the rendezvous store listens.
 * - MOE_A2A_STORE_OWNER: `launcher` when `moe-a2a launch` serves the store; anything else or absent
 *   means rank 0 serves it (a job started by hand or by a scheduler).
 * - MOE_A2A_STORE_PORT (optional): the store's port when it differs from MASTER_PORT. Needed under
 *   torchrun, whose agent already serves torch's own store (another protocol) on MASTER_PORT.
 */
import net from 'node:net';
import { LaunchError } from '../errors.js';
import { connectStore, type StoreClient, startStoreServer } from './store.js';

/** Who serves the rendezvous store. */
export type StoreOwner = 'launcher' | 'rank0';

export interface RankEnv {
  /** This rank, in [0, world). */
  readonly rank: number;
  /** Number of ranks in the job (WORLD_SIZE). */
  readonly world: number;
  /** This rank's index on its host, in [0, localWorld): the GPU to use. */
  readonly localRank: number;
  /** Ranks on this host (LOCAL_WORLD_SIZE). */
  readonly localWorld: number;
  /** The store host (MASTER_ADDR). */
  readonly masterAddr: string;
  /** MASTER_PORT. */
  readonly masterPort: number;
  /** The store's port: MOE_A2A_STORE_PORT when set, else MASTER_PORT. */
  readonly storePort: number;
  /** `launcher` when `moe-a2a launch` serves the store, else `rank0`. */
  readonly storeOwner: StoreOwner;
  /** Started by torchrun with its agent's store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True). */
  readonly torchAgentStore: boolean;
}

/** The environment variable that tells ranks the launcher serves the store. */
export const STORE_OWNER_VAR = 'MOE_A2A_STORE_OWNER';
/** The environment variable that overrides the store's port (MASTER_PORT otherwise). */
export const STORE_PORT_VAR = 'MOE_A2A_STORE_PORT';

type Env = Readonly<Record<string, string | undefined>>;

function present(env: Env, name: string): boolean {
  const v = env[name];
  return v !== undefined && v !== '';
}

function readInt(env: Env, name: string, min: number, max: number, what: string): number {
  const raw = env[name] ?? '';
  const text = raw.trim();
  const v = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new LaunchError(
      `${name} must be ${what} (an integer in [${min}, ${max}]), got ${JSON.stringify(raw)}`,
      { variable: name, value: raw },
    );
  }
  return v;
}

/**
 * Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Returns null when
 * neither RANK nor WORLD_SIZE is set (not started as one rank of a job); throws LaunchError naming the
 * variable when one is missing or malformed (not a non-negative integer, RANK >= WORLD_SIZE, ...).
 */
export function readRankEnv(env: Env = process.env): RankEnv | null {
  if (!present(env, 'RANK') && !present(env, 'WORLD_SIZE')) return null;
  const missing = ['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'].filter((n) => !present(env, n));
  if (missing.length > 0) {
    throw new LaunchError(
      `${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set: a rank needs RANK, ` +
        'WORLD_SIZE, MASTER_ADDR and MASTER_PORT (start ranks with `moe-a2a launch`, or set them all)',
      { variable: missing.join(',') },
    );
  }
  const world = readInt(env, 'WORLD_SIZE', 1, 65536, 'the number of ranks');
  const rank = readInt(env, 'RANK', 0, 65535, 'this rank');
  if (rank >= world) {
    throw new LaunchError(`RANK ${rank} must be less than WORLD_SIZE ${world}`, {
      variable: 'RANK',
      value: rank,
      world,
    });
  }
  const localWorld = present(env, 'LOCAL_WORLD_SIZE')
    ? readInt(env, 'LOCAL_WORLD_SIZE', 1, world, 'the ranks on this host, at most WORLD_SIZE')
    : world;
  const localRank = present(env, 'LOCAL_RANK')
    ? readInt(env, 'LOCAL_RANK', 0, 65535, 'this rank on its host')
    : present(env, 'LOCAL_WORLD_SIZE')
      ? rank % localWorld
      : rank;
  if (localRank >= localWorld) {
    throw new LaunchError(`LOCAL_RANK ${localRank} must be less than LOCAL_WORLD_SIZE ${localWorld}`, {
      variable: 'LOCAL_RANK',
      value: localRank,
      localWorld,
    });
  }
  const masterAddr = (env.MASTER_ADDR ?? '').trim();
  if (/\s/.test(masterAddr)) {
    throw new LaunchError(
      `MASTER_ADDR must be a host name or address, got ${JSON.stringify(env.MASTER_ADDR)}`,
      {
        variable: 'MASTER_ADDR',
        value: env.MASTER_ADDR ?? '',
      },
    );
  }
  const masterPort = readInt(env, 'MASTER_PORT', 1, 65535, 'a TCP port');
  const storePort = present(env, STORE_PORT_VAR)
    ? readInt(env, STORE_PORT_VAR, 1, 65535, 'a TCP port')
    : masterPort;
  return {
    rank,
    world,
    localRank,
    localWorld,
    masterAddr,
    masterPort,
    storePort,
    storeOwner: env[STORE_OWNER_VAR] === 'launcher' ? 'launcher' : 'rank0',
    torchAgentStore: (env.TORCHELASTIC_USE_AGENT_STORE ?? '').toLowerCase() === 'true',
  };
}

/**
 * Where a store reached at `addr` listens: on `addr` itself when it is a loopback address (this host
 * only), else on every interface (IPv6 or IPv4 by the address), like torch's TCPStore.
 */
export function storeListenHost(addr: string): string {
  const loopback = addr === '::1' || (net.isIPv4(addr) && addr.startsWith('127.'));
  return loopback ? addr : net.isIPv6(addr) ? '::' : '0.0.0.0';
}

/**
 * Connects this rank to the job's rendezvous store. When the launcher serves it, just connects (with
 * retry until `timeoutMs`). Otherwise rank 0 serves it at MASTER_ADDR:storePort first (listening on
 * that address when it is a loopback one, else on every interface, like torch's TCPStore), and its
 * client's `close()` closes the server after waiting up to `timeoutMs` for the other ranks to close
 * theirs: close the store on every rank after a final barrier. `localhost` is used as 127.0.0.1.
 */
export async function storeFromEnv(env: RankEnv, timeoutMs: number): Promise<StoreClient> {
  if (env.storeOwner === 'rank0' && env.torchAgentStore && env.storePort === env.masterPort) {
    throw new LaunchError(
      `started by torchrun, whose agent serves its own store on MASTER_PORT ${env.masterPort}: set ` +
        `${STORE_PORT_VAR} to a free port (the same on every rank) for the moe-a2a store, or use \`moe-a2a launch\``,
      { variable: STORE_PORT_VAR },
    );
  }
  const host = env.masterAddr === 'localhost' ? '127.0.0.1' : env.masterAddr;
  if (env.storeOwner === 'launcher' || env.rank !== 0) {
    return connectStore({ host, port: env.storePort, timeoutMs, rank: env.rank });
  }
  const server = await startStoreServer({ host: storeListenHost(host), port: env.storePort });
  try {
    return await connectStore({ host, port: server.port, timeoutMs, rank: env.rank, ownServer: server });
  } catch (err) {
    await server.close();
    throw err;
  }
}
