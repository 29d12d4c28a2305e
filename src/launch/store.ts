/**
 * A small TCP key/value rendezvous store, in the manner of torch's TCPStore: ranks exchange small
 * binary values (CUDA IPC handles, NCCL unique ids, counts) and meet at barriers before the data path
 * starts. It is a control-plane tool, never on the hot path.
 *
 * Who serves it: `moe-a2a launch` (see processes.ts) runs the server inside the launcher process and
 * tells its ranks so through `MOE_A2A_STORE_OWNER=launcher`; a rank started some other way (by hand, by
 * a scheduler) finds no such variable and rank 0 serves it at MASTER_ADDR:MASTER_PORT (see env.ts).
 *
 * Wire format (little-endian), one TCP connection per client, requests multiplexed by id:
 * - every message is a frame: u32 byteLength, then that many bytes;
 * - request: u8 op, u32 id, op-specific fields; strings are u32 byteLength + UTF-8;
 * - response: u32 id, u8 status (0 ok, 1 error), payload (error: a UTF-8 message).
 * A `get` of a missing key is parked on the server until some client sets the key; the client times
 * out on its own clock and sends `cancel` so the server forgets the parked request.
 */
import net from 'node:net';
import { LaunchError, PeerTimeoutError } from '../errors.js';

const MAGIC = 'moe-a2a-store/1';
/** The largest frame either side accepts: a value is a handle or a small table, never tensor data. */
const MAX_FRAME_BYTES = 256 * 1024 * 1024;
const MAX_KEY_BYTES = 64 * 1024;
/** setTimeout's largest delay; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const Op = { hello: 1, set: 2, get: 3, add: 4, check: 5, delete: 6, cancel: 7 } as const;
const STATUS_OK = 0;
const STATUS_ERROR = 1;

// ---------------------------------------------------------------------------------------------------
// Framing

/** Splits a byte stream into frames without re-copying what it has already buffered. */
class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  /** Body length of the frame being read, or -1 while its header is still incomplete. */
  private need = -1;

  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      if (this.need < 0) {
        if (this.size < 4) break;
        this.need = this.take(4).readUInt32LE(0);
        if (this.need > MAX_FRAME_BYTES) {
          throw new LaunchError(
            `store frame of ${this.need} bytes exceeds the ${MAX_FRAME_BYTES}-byte limit`,
          );
        }
      }
      if (this.size < this.need) break;
      frames.push(this.take(this.need));
      this.need = -1;
    }
    return frames;
  }

  private take(n: number): Buffer {
    this.size -= n;
    const first = this.chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const c = this.chunks[0]!;
      const want = n - got;
      if (c.length <= want) {
        parts.push(c);
        got += c.length;
        this.chunks.shift();
      } else {
        parts.push(c.subarray(0, want));
        this.chunks[0] = c.subarray(want);
        got = n;
      }
    }
    return Buffer.concat(parts, n);
  }
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(v, 0);
  return b;
}

function encodeString(s: string): Buffer[] {
  const bytes = Buffer.from(s, 'utf8');
  return [u32(bytes.length), bytes];
}

function frameOf(parts: Buffer[]): Buffer {
  let n = 0;
  for (const p of parts) n += p.length;
  return Buffer.concat([u32(n), ...parts], n + 4);
}

function requestFrame(op: number, id: number, parts: Buffer[]): Buffer {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt8(op, 0);
  head.writeUInt32LE(id, 1);
  return frameOf([head, ...parts]);
}

function responseFrame(id: number, status: number, payload: Buffer): Buffer {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32LE(id, 0);
  head.writeUInt8(status, 4);
  return frameOf([head, payload]);
}

/** Reads a length-prefixed UTF-8 string at `off`; returns it and the offset after it. */
function decodeString(buf: Buffer, off: number): [string, number] {
  const n = buf.readUInt32LE(off);
  const end = off + 4 + n;
  if (end > buf.length) throw new RangeError('string runs past the end of the frame');
  return [buf.toString('utf8', off + 4, end), end];
}

function toBuffer(value: Uint8Array | string): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

function checkKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0 || Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new LaunchError(`store key must be a non-empty string of at most ${MAX_KEY_BYTES} bytes`, {
      key: String(key).slice(0, 200),
    });
  }
}

function checkTimeout(name: string, v: number): void {
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) {
    throw new LaunchError(`${name} must be a finite number of milliseconds >= 0, got ${String(v)}`, {
      field: name,
    });
  }
}

function errCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------------
// Server

export interface StoreServerOptions {
  /** Address to listen on. Default '127.0.0.1' (this host only); '0.0.0.0' or '::' for other hosts. */
  host?: string;
  /** TCP port; 0 (the default) lets the OS pick a free one, which `port` on the result then names. */
  port?: number;
}

export interface StoreServer {
  /** The address it listens on, as given. */
  readonly host: string;
  /** The port it listens on (the picked one when asked for port 0). */
  readonly port: number;
  /** Connected clients right now. */
  readonly clientCount: number;
  /**
   * Stops listening and disconnects every client; parked `get`s fail with a "shutting down" error.
   * With `waitForClientsMs`, first waits up to that long for the connected clients to close on their
   * own (rank 0 hosting the store uses this so it does not cut off slower peers).
   */
  close(options?: { waitForClientsMs?: number }): Promise<void>;
}

interface Conn {
  socket: net.Socket;
  /** Parked gets of this connection: request id -> key. */
  waiting: Map<number, string>;
}

/** Starts a store server. Rejects with LaunchError when the address cannot be bound (port in use, ...). */
export async function startStoreServer(options: StoreServerOptions = {}): Promise<StoreServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new LaunchError(`store port must be an integer in [0, 65535], got ${String(port)}`, { port });
  }
  const data = new Map<string, Buffer>();
  const parked = new Map<string, Map<Conn, Set<number>>>();
  const conns = new Set<Conn>();
  let closing = false;

  const send = (conn: Conn, id: number, status: number, payload: Buffer): void => {
    if (!conn.socket.destroyed) conn.socket.write(responseFrame(id, status, payload));
  };
  const fail = (conn: Conn, id: number, message: string): void =>
    send(conn, id, STATUS_ERROR, Buffer.from(message, 'utf8'));

  const unpark = (conn: Conn, id: number): void => {
    const key = conn.waiting.get(id);
    if (key === undefined) return;
    conn.waiting.delete(id);
    const byConn = parked.get(key);
    const ids = byConn?.get(conn);
    ids?.delete(id);
    if (ids && ids.size === 0) byConn!.delete(conn);
    if (byConn && byConn.size === 0) parked.delete(key);
  };

  const wake = (key: string): void => {
    const byConn = parked.get(key);
    if (!byConn) return;
    parked.delete(key);
    const value = data.get(key)!;
    for (const [conn, ids] of byConn) {
      for (const id of ids) {
        conn.waiting.delete(id);
        send(conn, id, STATUS_OK, value);
      }
    }
  };

  const handle = (conn: Conn, body: Buffer): void => {
    const op = body.readUInt8(0);
    const id = body.readUInt32LE(1);
    switch (op) {
      case Op.hello: {
        const magic = body.toString('utf8', 5);
        if (magic !== MAGIC) {
          fail(conn, id, `protocol mismatch: this store speaks ${MAGIC}, the client ${magic}`);
          conn.socket.end();
          return;
        }
        send(conn, id, STATUS_OK, Buffer.from(MAGIC, 'utf8'));
        return;
      }
      case Op.set: {
        const [key, off] = decodeString(body, 5);
        data.set(key, Buffer.from(body.subarray(off)));
        send(conn, id, STATUS_OK, Buffer.alloc(0));
        wake(key);
        return;
      }
      case Op.get: {
        const [key] = decodeString(body, 5);
        const value = data.get(key);
        if (value !== undefined) {
          send(conn, id, STATUS_OK, value);
          return;
        }
        if (closing) {
          fail(conn, id, 'the store is shutting down');
          return;
        }
        conn.waiting.set(id, key);
        let byConn = parked.get(key);
        if (!byConn) {
          byConn = new Map();
          parked.set(key, byConn);
        }
        let ids = byConn.get(conn);
        if (!ids) {
          ids = new Set();
          byConn.set(conn, ids);
        }
        ids.add(id);
        return;
      }
      case Op.add: {
        const [key, off] = decodeString(body, 5);
        const delta = body.readDoubleLE(off);
        const cur = data.get(key);
        const text = cur === undefined ? '0' : cur.toString('utf8');
        const base = /^-?\d+$/.test(text) ? Number(text) : Number.NaN;
        const next = base + delta;
        if (!Number.isSafeInteger(base) || !Number.isSafeInteger(next)) {
          fail(
            conn,
            id,
            `add on key "${key}": its value "${text.slice(0, 40)}" is not a safe integer counter`,
          );
          return;
        }
        data.set(key, Buffer.from(String(next), 'utf8'));
        const out = Buffer.allocUnsafe(8);
        out.writeDoubleLE(next, 0);
        send(conn, id, STATUS_OK, out);
        wake(key);
        return;
      }
      case Op.check: {
        const count = body.readUInt32LE(5);
        let off = 9;
        const out = Buffer.alloc(count);
        for (let i = 0; i < count; i++) {
          const [key, next] = decodeString(body, off);
          off = next;
          out[i] = data.has(key) ? 1 : 0;
        }
        send(conn, id, STATUS_OK, out);
        return;
      }
      case Op.delete: {
        const [key] = decodeString(body, 5);
        send(conn, id, STATUS_OK, Buffer.from([data.delete(key) ? 1 : 0]));
        return;
      }
      case Op.cancel:
        unpark(conn, body.readUInt32LE(5));
        return;
      default:
        fail(conn, id, `unknown store op ${op}`);
    }
  };

  const server = net.createServer((socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const conn: Conn = { socket, waiting: new Map() };
    conns.add(conn);
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const body of reader.push(chunk)) handle(conn, body);
      } catch (err) {
        // A malformed frame: nothing later on this connection can be trusted.
        socket.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    });
    socket.on('error', () => {
      // The close handler cleans up; a peer that vanished is not the server's failure.
    });
    socket.on('close', () => {
      conns.delete(conn);
      for (const id of [...conn.waiting.keys()]) unpark(conn, id);
    });
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      reject(
        new LaunchError(
          `the rendezvous store could not listen on ${host}:${port} (${errCode(err)}); ` +
            (errCode(err) === 'EADDRINUSE'
              ? 'the port is taken: pick another MASTER_PORT or pass port 0 for a free one'
              : 'check the address is one of this host'),
          { host, port, cause: errCode(err) },
        ),
      );
    };
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', () => {
    // After listening, errors surface on the sockets; nothing to do here.
  });
  const address = server.address();
  const boundPort = typeof address === 'object' && address ? address.port : port;

  let closed: Promise<void> | null = null;
  return {
    host,
    port: boundPort,
    get clientCount() {
      return conns.size;
    },
    close(opts = {}) {
      closed ??= (async () => {
        closing = true;
        const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
        const waitMs = opts.waitForClientsMs ?? 0;
        if (waitMs > 0 && conns.size > 0) {
          const deadline = Date.now() + waitMs;
          while (conns.size > 0 && Date.now() < deadline) await sleep(Math.min(20, deadline - Date.now()));
        }
        for (const [, byConn] of parked) {
          for (const [conn, ids] of byConn)
            for (const id of ids) fail(conn, id, 'the store is shutting down');
        }
        parked.clear();
        const gone = [...conns].map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.socket.destroyed) return resolve();
              c.socket.once('close', () => resolve());
              c.socket.end();
              setTimeout(() => c.socket.destroy(), 500).unref();
            }),
        );
        await Promise.all(gone);
        await serverClosed;
      })();
      return closed;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Client

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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
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
