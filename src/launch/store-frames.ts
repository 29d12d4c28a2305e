/**
 * The rendezvous store's wire protocol, shared by the server (store-server.ts) and the client
 * (store-client.ts): frame splitting and encoding, op and status codes, and the limits both sides hold
 * keys, frames and timers to.
 *
 * Wire format (little-endian), one TCP connection per client, requests multiplexed by id:
 * - every message is a frame: u32 byteLength, then that many bytes;
 * - request: u8 op, u32 id, op-specific fields; strings are u32 byteLength + UTF-8;
 * - response: u32 id, u8 status (0 ok, 1 error), payload (error: a UTF-8 message).
 * A `get` of a missing key is parked on the server until some client sets the key; the client times
 * out on its own clock and sends `cancel` so the server forgets the parked request.
 */
import { LaunchError } from '../errors.js';

export const MAGIC = 'moe-a2a-store/1';
/** The largest frame either side accepts: a value is a handle or a small table, never tensor data. */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024;
export const MAX_KEY_BYTES = 64 * 1024;
/** setTimeout's largest delay; a longer one would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const Op = { hello: 1, set: 2, get: 3, add: 4, check: 5, delete: 6, cancel: 7 } as const;
export const STATUS_OK = 0;
export const STATUS_ERROR = 1;

// ---------------------------------------------------------------------------------------------------
// Framing

/** Splits a byte stream into frames without re-copying what it has already buffered. */
export class FrameReader {
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

export function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(v, 0);
  return b;
}

export function encodeString(s: string): Buffer[] {
  const bytes = Buffer.from(s, 'utf8');
  return [u32(bytes.length), bytes];
}

export function frameOf(parts: Buffer[]): Buffer {
  let n = 0;
  for (const p of parts) n += p.length;
  return Buffer.concat([u32(n), ...parts], n + 4);
}

export function requestFrame(op: number, id: number, parts: Buffer[]): Buffer {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt8(op, 0);
  head.writeUInt32LE(id, 1);
  return frameOf([head, ...parts]);
}

export function responseFrame(id: number, status: number, payload: Buffer): Buffer {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32LE(id, 0);
  head.writeUInt8(status, 4);
  return frameOf([head, payload]);
}

/** Reads a length-prefixed UTF-8 string at `off`; returns it and the offset after it. */
export function decodeString(buf: Buffer, off: number): [string, number] {
  const n = buf.readUInt32LE(off);
  const end = off + 4 + n;
  if (end > buf.length) throw new RangeError('string runs past the end of the frame');
  return [buf.toString('utf8', off + 4, end), end];
}

export function toBuffer(value: Uint8Array | string): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

export function checkKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0 || Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new LaunchError(`store key must be a non-empty string of at most ${MAX_KEY_BYTES} bytes`, {
      key: String(key).slice(0, 200),
    });
  }
}

export function checkTimeout(name: string, v: number): void {
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) {
    throw new LaunchError(`${name} must be a finite number of milliseconds >= 0, got ${String(v)}`, {
      field: name,
    });
  }
}

export function errCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : err instanceof Error ? err.message : String(err);
}

/** Shared: the client's connect backoff and the server's wait for clients to leave both poll. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}
