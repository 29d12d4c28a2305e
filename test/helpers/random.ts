/**
 * A small seeded PRNG for tests (mulberry32: 32-bit state, period 2^32, fast and reproducible).
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
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
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
      const out = new Int32Array(tokens * k);
      const perm = Array.from({ length: numExperts }, (_, i) => i);
      for (let t = 0; t < tokens; t++) {
        // partial Fisher-Yates: the first k entries become a uniform random k-subset, in random order
        for (let j = 0; j < k; j++) {
          const r = j + int(numExperts - j);
          const tmp = perm[j];
          perm[j] = perm[r];
          perm[r] = tmp;
          out[t * k + j] = dropProb > 0 && next() < dropProb ? -1 : perm[j];
        }
      }
      return out;
    },
    weights(n) {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = int(2 ** 24) / 2 ** 24; // exact in f32, never rounds to 1
      return out;
    },
  };
}
