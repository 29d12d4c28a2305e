/**
 * Seeded random data for tests, on the library's generator (mulberry32: src/ep/random.ts).
 * Every test passes a fixed seed so a failure replays exactly.
 *
 * API:
 * - `rng(seed)` -> `Rng`
 * - `next()`: a float in [0, 1)
 * - `int(n)`: an integer in [0, n)
 * - `bf16Array(n, opts?)`: bf16 bit patterns (Uint16Array) of finite, normal, nonzero values with a
 *   random sign, an unbiased exponent uniform in [opts.minExp, opts.maxExp] (default [-8, 8]) and a
 *   random 7-bit mantissa.
 * - `topkIdx(tokens, k, numExperts, dropProb = 0)`: i32 [tokens, k]; each token's experts are
 *   distinct (k <= numExperts), and each slot is independently replaced by -1 (dropped) with
 *   probability `dropProb`.
 * - `weights(n)`: f32 [n], multiples of 2^-24 in [0, 1) (exact in f32, so never rounded up to 1).
 */

import { Rng as LibRng, randomTopk } from '../../src/ep/random.js';

export interface Bf16Options {
  /** Smallest unbiased exponent (>= -126). Default -8. */
  minExp?: number;
  /** Largest unbiased exponent (<= 127). Default 8. */
  maxExp?: number;
}

export interface Rng {
  next(): number;
  int(n: number): number;
  bf16Array(n: number, opts?: Bf16Options): Uint16Array;
  topkIdx(tokens: number, k: number, numExperts: number, dropProb?: number): Int32Array;
  weights(n: number): Float32Array;
}

export function rng(seed: number): Rng {
  // the library's own generator (src/ep/random.ts); this adds the test-only shapes of data
  const g = new LibRng(seed);
  const next = (): number => g.next();
  const int = (n: number): number => g.int(n);
  return {
    next,
    int,
    bf16Array(n, opts = {}) {
      const minExp = opts.minExp ?? -8;
      const maxExp = opts.maxExp ?? 8;
      if (minExp < -126 || maxExp > 127 || minExp > maxExp) {
        throw new RangeError(`bf16Array: need -126 <= minExp <= maxExp <= 127, got [${minExp}, ${maxExp}]`);
      }
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const sign = next() < 0.5 ? 0x8000 : 0;
        const biased = minExp + int(maxExp - minExp + 1) + 127;
        out[i] = sign | (biased << 7) | int(128);
      }
      return out;
    },
    topkIdx(tokens, k, numExperts, dropProb = 0) {
      if (k > numExperts) throw new RangeError(`topkIdx: k (${k}) > numExperts (${numExperts})`);
      return randomTopk(g, tokens, k, numExperts, dropProb);
    },
    weights(n) {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = int(2 ** 24) / 2 ** 24; // exact in f32, never rounds to 1
      return out;
    },
  };
}
