/**
 * The rendezvous store's client: `connectStore` reaches a server (retrying while it starts), and the
 * StoreClient it returns sets, waits for and counts keys and runs barriers over them.
 */
import net from 'node:net';
import { LaunchError, PeerTimeoutError } from '../errors.js';
import {
  checkKey,
  checkTimeout,
  encodeString,
  errCode,
  FrameReader,
  MAGIC,
  MAX_TIMER_MS,
  Op,
  requestFrame,
  STATUS_OK,
  sleep,
  toBuffer,
  u32,
} from './store-frames.js';
import type { StoreServer } from './store-server.js';

export interface StoreClientOptions {
  /** The server's address (MASTER_ADDR). */
  host: string;
  /** The server's port (MASTER_PORT). */
  port: number;
  /**
   * How long to keep trying to reach the server (it may start after this rank), in ms; also the
   * default timeout of `get` and `barrier`.
   */
  timeoutMs: number;
  /** This client's rank: `barrier` marks its arrival under it. */
  rank?: number;
  /**
   * A server this client owns (rank 0 serving the store): `close()` closes it too, after waiting up
   * to `timeoutMs` for the other clients to close first.
   */
  ownServer?: StoreServer;
}

export interface StoreClient {
  readonly host: string;
  readonly port: number;
  /** The rank given at connect time, if any. */
  readonly rank: number | undefined;
  /** Sets `key` to `value` (bytes are kept as is; a string is stored as UTF-8), waking its waiters. */
  set(key: string, value: Uint8Array | string): Promise<void>;
  /**
   * The value of `key`, waiting until some client sets it. Rejects with PeerTimeoutError
   * (`details.key`, `details.timeoutMs`) when it does not appear within `timeoutMs` (default: the
   * client's timeoutMs), and with LaunchError when the store goes away.
   */
  get(key: string, options?: { timeoutMs?: number }): Promise<Uint8Array>;
  /** `get` decoded as UTF-8. */
  getString(key: string, options?: { timeoutMs?: number }): Promise<string>;
  /**
   * Atomically adds the integer `delta` to the counter `key` (missing counts as 0) and returns the new
   * value. The counter is stored as decimal text, so `getString` reads it.
   */
  add(key: string, delta: number): Promise<number>;
  /** Whether each key exists now (no waiting). */
  check(keys: readonly string[]): Promise<boolean[]>;
  /** Removes `key`; resolves whether it existed. */
  delete(key: string): Promise<boolean>;
  /**
   * Waits until `world` ranks have called `barrier` with this name. Each rank marks its arrival as
   * key `${name}/${rank}`; on timeout the PeerTimeoutError names the ranks that never arrived
   * (`details.missing`, comma-separated; `details.peer`, the first of them). Calling the same name
   * again on the same client starts a fresh barrier (keys `${name}#2/...`, `${name}#3/...`): every
   * rank must call its barriers in the same order. `rank` defaults to the client's rank.
   */
  barrier(name: string, world: number, timeoutMs?: number, rank?: number): Promise<void>;
  /** Closes the connection (and an owned server). Pending requests reject with LaunchError. */
  close(): Promise<void>;
}

interface Pending {
  resolve(payload: Buffer): void;
  reject(err: Error): void;
}

class TcpStoreClient implements StoreClient {
  readonly host: string;
  readonly port: number;
  readonly rank: number | undefined;
  private readonly timeoutMs: number;
  private readonly ownServer: StoreServer | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly barrierUses = new Map<string, number>();
  private nextId = 1;
  private closedReason: string | null = null;
  private closing: Promise<void> | null = null;

  constructor(
    private readonly socket: net.Socket,
    options: StoreClientOptions,
  ) {
    this.host = options.host;
    this.port = options.port;
    this.rank = options.rank;
    this.timeoutMs = options.timeoutMs;
    this.ownServer = options.ownServer;
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => {
      let frames: Buffer[];
      try {
        frames = reader.push(chunk);
      } catch (err) {
        socket.destroy(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      for (const body of frames) this.onResponse(body);
    });
    socket.on('error', () => {
      // Reported through 'close' to every pending request.
    });
    socket.on('close', () => {
      this.closedReason ??=
        `the connection to the rendezvous store at ${this.where()} was lost ` +
        '(did the process serving it, the launcher or rank 0, exit?)';
      const err = new LaunchError(this.closedReason, { host: this.host, port: this.port });
      const all = [...this.pending.values()];
      this.pending.clear();
      for (const p of all) p.reject(err);
    });
  }

  private where(): string {
    return `${this.host}:${this.port}`;
  }

  private onResponse(body: Buffer): void {
    if (body.length < 5) return;
    const id = body.readUInt32LE(0);
    const status = body.readUInt8(4);
    const p = this.pending.get(id);
    if (!p) return; // timed out and cancelled: the answer came too late
    this.pending.delete(id);
    const payload = body.subarray(5);
    if (status === STATUS_OK) p.resolve(payload);
    else p.reject(new LaunchError(`rendezvous store at ${this.where()}: ${payload.toString('utf8')}`));
  }

  /** Sends a request; the promise settles with the response payload. */
  request(op: number, parts: Buffer[]): { id: number; done: Promise<Buffer> } {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    if (this.closedReason !== null) {
      return {
        id,
        done: Promise.reject(new LaunchError(this.closedReason, { host: this.host, port: this.port })),
      };
    }
    const done = new Promise<Buffer>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.socket.write(requestFrame(op, id, parts));
    return { id, done };
  }

  /** The handshake: proves a moe-a2a store (not some other service) answers on this port. */
  async hello(timeoutMs: number): Promise<void> {
    const { id, done } = this.request(Op.hello, [Buffer.from(MAGIC, 'utf8')]);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => {
          this.pending.delete(id);
          reject(
            new LaunchError(
              `something listens on ${this.where()} but did not answer as a moe-a2a store within ${timeoutMs} ms`,
              { host: this.host, port: this.port, timeoutMs },
            ),
          );
        },
        Math.min(timeoutMs, MAX_TIMER_MS),
      );
    });
    // A connection dropped mid-handshake (a server still starting or already stopping) is worth
    // another attempt; an answer that is not ours is not.
    const answered = done.catch((err: Error) => {
      if (this.closedReason === null) throw err;
      throw Object.assign(new Error(err.message), { code: 'ECONNRESET' });
    });
    try {
      const payload = await Promise.race([answered, timeout]);
      if (payload.toString('utf8') !== MAGIC) {
        throw new LaunchError(`the service on ${this.where()} is not a ${MAGIC} store`, {
          host: this.host,
          port: this.port,
        });
      }
    } finally {
      clearTimeout(timer);
    }
  }

  async set(key: string, value: Uint8Array | string): Promise<void> {
    checkKey(key);
    await this.request(Op.set, [...encodeString(key), toBuffer(value)]).done;
  }

  get(key: string, options: { timeoutMs?: number } = {}): Promise<Uint8Array> {
    checkKey(key);
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    checkTimeout('get timeoutMs', timeoutMs);
    const { id, done } = this.request(Op.get, encodeString(key));
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          const p = this.pending.get(id);
          if (!p) return;
          this.pending.delete(id);
          if (this.closedReason === null) this.socket.write(requestFrame(Op.cancel, 0, [u32(id)]));
          p.reject(
            new PeerTimeoutError(
              `store key "${key}" did not appear within ${timeoutMs} ms at ${this.where()}: ` +
                'the rank that should set it is late, failed, or uses another key',
              { key, timeoutMs },
            ),
          );
        },
        Math.min(timeoutMs, MAX_TIMER_MS),
      );
      done.then(
        (payload) => {
          clearTimeout(timer);
          resolve(new Uint8Array(payload));
        },
        (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  async getString(key: string, options?: { timeoutMs?: number }): Promise<string> {
    return Buffer.from(await this.get(key, options)).toString('utf8');
  }

  async add(key: string, delta: number): Promise<number> {
    checkKey(key);
    if (!Number.isSafeInteger(delta)) {
      throw new LaunchError(`store add delta must be a safe integer, got ${String(delta)}`, { key });
    }
    const d = Buffer.allocUnsafe(8);
    d.writeDoubleLE(delta, 0);
    const payload = await this.request(Op.add, [...encodeString(key), d]).done;
    return payload.readDoubleLE(0);
  }

  async check(keys: readonly string[]): Promise<boolean[]> {
    for (const k of keys) checkKey(k);
    const parts = [u32(keys.length), ...keys.flatMap((k) => encodeString(k))];
    const payload = await this.request(Op.check, parts).done;
    return keys.map((_, i) => payload[i] === 1);
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    const payload = await this.request(Op.delete, encodeString(key)).done;
    return payload[0] === 1;
  }

  async barrier(name: string, world: number, timeoutMs = this.timeoutMs, rank = this.rank): Promise<void> {
    checkKey(name);
    checkTimeout('barrier timeoutMs', timeoutMs);
    if (!Number.isInteger(world) || world < 1) {
      throw new LaunchError(`barrier "${name}": world must be an integer >= 1, got ${String(world)}`, {
        barrier: name,
      });
    }
    if (rank === undefined) {
      throw new LaunchError(
        `barrier "${name}" needs this rank: pass rank to connectStore (storeFromEnv does) or to barrier`,
        { barrier: name },
      );
    }
    if (!Number.isInteger(rank) || rank < 0 || rank >= world) {
      throw new LaunchError(`barrier "${name}": rank ${rank} is not in [0, ${world})`, {
        barrier: name,
        rank,
        world,
      });
    }
    const deadline = Date.now() + timeoutMs;
    const use = (this.barrierUses.get(name) ?? 0) + 1;
    this.barrierUses.set(name, use);
    const prefix = use === 1 ? name : `${name}#${use}`;
    await this.set(`${prefix}/${rank}`, '1');
    const arrived = await this.add(`${prefix}/arrived`, 1);
    if (arrived > world) {
      throw new LaunchError(
        `barrier "${prefix}": ${arrived} arrivals for a world of ${world}; two ranks share a rank ` +
          'number, the world sizes disagree, or the name is reused by several clients',
        { barrier: prefix, arrived, world },
      );
    }
    if (arrived === world) await this.set(`${prefix}/done`, '1');
    try {
      await this.get(`${prefix}/done`, { timeoutMs: Math.max(0, deadline - Date.now()) });
    } catch (err) {
      if (!(err instanceof PeerTimeoutError)) throw err;
      const keys = Array.from({ length: world }, (_, r) => `${prefix}/${r}`);
      const present = await this.check(keys);
      const missing = present.flatMap((ok, r) => (ok ? [] : [r]));
      if (missing.length === 0) {
        // Everyone arrived just as the timer fired: the barrier did complete.
        return;
      }
      throw new PeerTimeoutError(
        `barrier "${prefix}" timed out after ${timeoutMs} ms on rank ${rank}: ` +
          `${missing.length === 1 ? 'rank' : 'ranks'} ${missing.join(', ')} of ${world} did not arrive`,
        { barrier: prefix, missing: missing.join(','), peer: missing[0]!, world, rank, timeoutMs },
      );
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closedReason ??= `the store client for ${this.where()} is closed`;
      await new Promise<void>((resolve) => {
        if (this.socket.destroyed) return resolve();
        this.socket.once('close', () => resolve());
        this.socket.end();
        setTimeout(() => this.socket.destroy(), 500).unref();
      });
      await this.ownServer?.close({ waitForClientsMs: this.timeoutMs });
    })();
    return this.closing;
  }
}

function connectOnce(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(
      () => {
        socket.destroy();
        reject(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
      },
      Math.min(timeoutMs, MAX_TIMER_MS),
    );
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/**
 * Connects to a store server, retrying with backoff (25 ms doubling to 500 ms) until `timeoutMs`
 * when it is not up yet. Rejects with LaunchError naming the address, the timeout and the last
 * connection error when it never answers.
 */
export async function connectStore(options: StoreClientOptions): Promise<StoreClient> {
  const { host, port, timeoutMs } = options;
  checkTimeout('timeoutMs', timeoutMs);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new LaunchError(`store port must be an integer in [1, 65535], got ${String(port)}`, { port });
  }
  const deadline = Date.now() + timeoutMs;
  let delay = 25;
  let lastError = 'no attempt';
  for (;;) {
    const left = deadline - Date.now();
    let socket: net.Socket | undefined;
    try {
      socket = await connectOnce(host, port, Math.max(1, left));
      const client = new TcpStoreClient(socket, options);
      await client.hello(Math.max(1000, deadline - Date.now()));
      return client;
    } catch (err) {
      socket?.destroy();
      if (err instanceof LaunchError) throw err;
      lastError = errCode(err);
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new LaunchError(
        `could not reach the rendezvous store at ${host}:${port} within ${timeoutMs} ms (last error: ` +
          `${lastError}); is the launcher or rank 0 running, and do MASTER_ADDR/MASTER_PORT agree on every rank?`,
        { host, port, timeoutMs, cause: lastError },
      );
    }
    await sleep(Math.min(delay, remaining));
    delay = Math.min(delay * 2, 500);
  }
}
