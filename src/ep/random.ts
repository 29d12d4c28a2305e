import { f32ToBf16 } from './codec.js';

/** A small seeded generator (mulberry32): the same seed gives the same inputs on every rank and machine. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Mixes numbers into one 32-bit seed (seed, rank, call, ...). */
export function mixSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193);
    h ^= h >>> 13;
  }
  return h >>> 0;
}

/** 2^-8 .. 2^8: randomBf16's magnitudes. */
const MAGNITUDES = Array.from({ length: 17 }, (_, i) => 2 ** (i - 8));

/** bf16 values of varied sign and magnitude (about 2^-8 .. 2^8, a few groups scaled far out). */
export function randomBf16(rng: Rng, n: number): Uint16Array {
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const mag = MAGNITUDES[rng.int(17)];
    out[i] = f32ToBf16((rng.next() * 2 - 1) * mag);
  }
  return out;
}

/**
 * topk ids [T, k], distinct experts per token, each slot dropped (-1) with probability dropProb.
 * With `only` given, experts are drawn from that list (skewed routing).
 */
export function randomTopk(
  rng: Rng,
  tokens: number,
  k: number,
  numExperts: number,
  dropProb = 0,
  only?: readonly number[],
): Int32Array {
  const pool = only ?? Array.from({ length: numExperts }, (_, e) => e);
  const out = new Int32Array(tokens * k);
  const pick = pool.slice();
  for (let t = 0; t < tokens; t++) {
    // partial Fisher-Yates: the first k of a shuffle are distinct
    for (let j = 0; j < k; j++) {
      const r = j + rng.int(pick.length - j);
      [pick[j], pick[r]] = [pick[r], pick[j]];
      out[t * k + j] = rng.next() < dropProb ? -1 : pick[j];
    }
  }
  return out;
}

/** Router-like weights in (0, 1]. */
export function randomWeights(rng: Rng, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = 1 - rng.next();
  return out;
}
