/**
 * The rendezvous store's server: holds the keys, answers requests, and parks a `get` of a missing key
 * until some client sets it. `moe-a2a launch` runs it in the launcher process, else rank 0 does (see
 * store.ts).
 */
import net from 'node:net';
import { LaunchError } from '../errors.js';
import {
  decodeString,
  errCode,
  FrameReader,
  MAGIC,
  Op,
  responseFrame,
  STATUS_ERROR,
  STATUS_OK,
  sleep,
} from './store-frames.js';

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
