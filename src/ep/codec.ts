/**
 * Number formats, emulated bit for bit as an H100's conversion instructions do them (the golden
 * vectors in test/golden/ were made by those instructions). Every f32 step goes through a
 * Float32Array or Math.fround so that the GPU kernels can match it exactly.
 *
 * - bf16: stored as uint16 bit patterns. f32 -> bf16 rounds to nearest even; NaN -> 0x7fff.
 * - FP8 e4m3fn: stored as uint8. f32 -> e4m3 rounds to nearest even and saturates to +-448
 *   (Inf too); NaN -> 0x7f.
 * - Group quantisation: per group of G values, scale = f32(amax / 448), q = e4m3(f32(x / scale)).
 *   An all-zero group (amax == 0) gets scale 1, so that no NaN or Inf ever appears in a scale.
 */

export const FP8_MAX = 448;
/** Scale written for a group whose values are all zero (amax == 0): finite, and x / 1 == x. */
export const ZERO_GROUP_SCALE = 1;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bits of the f32 nearest to `x` (as Math.fround). */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}

export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

/** bf16 bits -> the f32 value (exact). */
export function bf16ToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

/** f32 bits -> bf16 bits, round to nearest even; any NaN -> 0x7fff. */
export function f32BitsToBf16(bits: number): number {
  bits >>>= 0;
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** A number (rounded to f32 first) -> bf16 bits. */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  return f32BitsToBf16(u32[0]);
}

/** f32 bits -> FP8 e4m3fn, round to nearest even, saturating to +-448; NaN -> 0x7f. */
export function f32BitsToFp8(bits: number): number {
  bits >>>= 0;
  const sign = (bits >>> 24) & 0x80;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return 0x7f;
  if (abs >= 0x43e00000) return sign | 0x7e; // |x| >= 448 (Inf included) saturates
  const exp = abs >>> 23;
  if (exp < 121) {
    // |x| < 2^-6: e4m3 subnormals, steps of 2^-9. Result 0..8 (8 is the smallest normal, 0x08).
    u32[0] = abs;
    const scaled = f32[0] * 512; // exact in double
    let q = Math.floor(scaled);
    const rem = scaled - q;
    if (rem > 0.5 || (rem === 0.5 && (q & 1) === 1)) q += 1;
    return sign | q;
  }
  // Normal: keep 3 mantissa bits, round the 20 dropped bits to nearest even (a carry moves the exponent).
  const mant = abs & 0x7fffff;
  let q = ((exp - 120) << 3) | (mant >>> 20);
  const dropped = mant & 0xfffff;
  if (dropped > 0x80000 || (dropped === 0x80000 && (q & 1) === 1)) q += 1;
  return sign | q;
}

export function f32ToFp8(x: number): number {
  f32[0] = x;
  return f32BitsToFp8(u32[0]);
}

/** FP8 e4m3fn bits -> f32 value, by table (index = the 8-bit pattern). */
export const FP8_DECODE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const s = b & 0x80 ? -1 : 1;
    const e = (b >>> 3) & 0xf;
    const m = b & 7;
    if (e === 15 && m === 7) t[b] = Number.NaN;
    else if (e === 0) t[b] = s * m * 2 ** -9;
    else t[b] = s * (1 + m / 8) * 2 ** (e - 7);
  }
  return t;
})();

export function fp8ToF32(q: number): number {
  return FP8_DECODE[q & 0xff];
}

/** The bf16 decode table: index = bf16 bits. Built once (256 KiB) because every hot loop uses it. */
export const BF16_DECODE: Float32Array = (() => {
  const t = new Float32Array(65536);
  const u = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) u[h] = h << 16;
  return t;
})();

/** f32 arrays -> bf16 arrays (round to nearest even). */
export function encodeBf16(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToBf16(bits[i]);
  return dst;
}

export function decodeBf16(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) dst[i] = BF16_DECODE[src[i]];
  return dst;
}

/** Largest |x| over a group, ignoring NaN (as the GPU's fmaxf does). */
function groupAmax(src: Uint16Array, start: number, end: number): number {
  let amax = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(BF16_DECODE[src[i]]);
    if (a > amax) amax = a; // NaN compares false: ignored
  }
  return amax;
}

/** The scale of one group from its amax: f32(amax / 448), or ZERO_GROUP_SCALE when amax == 0. */
export function groupScale(amax: number): number {
  return amax === 0 ? ZERO_GROUP_SCALE : Math.fround(amax / FP8_MAX);
}

const quotient = new Float32Array(1);
const quotientBits = new Uint32Array(quotient.buffer);

/**
 * Quantises `rows` rows of bf16 [rows, hidden] (starting at element `srcOffset`) to FP8 with one f32
 * scale per group of `groupSize` values. Writes q [rows, hidden] and scales [rows, hidden/groupSize].
 */
export function quantizeRowsFp8(
  src: Uint16Array,
  srcOffset: number,
  rows: number,
  hidden: number,
  groupSize: number,
  qOut: Uint8Array,
  qOffset: number,
  scalesOut: Float32Array,
  scalesOffset: number,
): void {
  const groups = hidden / groupSize;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const start = srcOffset + r * hidden + g * groupSize;
      const end = start + groupSize;
      const scale = groupScale(groupAmax(src, start, end));
      scalesOut[scalesOffset + r * groups + g] = scale;
      let o = qOffset + r * hidden + g * groupSize;
      for (let i = start; i < end; i++) {
        quotient[0] = BF16_DECODE[src[i]] / scale; // double division rounded to f32 == IEEE f32 division
        qOut[o++] = f32BitsToFp8(quotientBits[0]);
      }
    }
  }
}

/** FP8 [rows, hidden] with scales [rows, hidden/groupSize] -> f32 values f32(decode(q) * scale). */
export function dequantizeRowsFp8(
  q: Uint8Array,
  scales: Float32Array,
  rows: number,
  hidden: number,
  groupSize: number,
  out = new Float32Array(rows * hidden),
): Float32Array {
  const groups = hidden / groupSize;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const s = scales[r * groups + g];
      const base = r * hidden + g * groupSize;
      for (let i = 0; i < groupSize; i++) out[base + i] = FP8_DECODE[q[base + i]] * s;
    }
  }
  return out;
}

/**
 * The combine reduction for one token: acc = 0; for j in order: acc = f32(acc + f32(w[j] * f32(row_j[h])));
 * y[h] = bf16(acc). Rows come as (bf16 array, element offset) pairs; `weights[j]` are f32 values.
 * Two roundings per step, never a fused multiply-add: the GPU uses __fmul_rn / __fadd_rn to match.
 */
export function weightedSumBf16(
  rows: readonly Uint16Array[],
  rowOffsets: readonly number[],
  weights: readonly number[],
  hidden: number,
  out: Uint16Array,
  outOffset: number,
): void {
  // Row by row (j outer) for locality. Storing into a Float32Array rounds the double sum of two f32
  // values to f32: exactly one IEEE f32 addition, so each step still rounds twice, as the GPU does.
  if (reduceAcc.length < hidden) {
    reduceAcc = new Float32Array(hidden);
    reduceBits = new Uint32Array(reduceAcc.buffer);
  }
  const acc = reduceAcc;
  acc.fill(0, 0, hidden);
  for (let j = 0; j < rows.length; j++) {
    const row = rows[j];
    const base = rowOffsets[j];
    const w = weights[j];
    for (let h = 0; h < hidden; h++) acc[h] += Math.fround(w * BF16_DECODE[row[base + h]]);
  }
  for (let h = 0; h < hidden; h++) out[outOffset + h] = f32BitsToBf16(reduceBits[h]);
}

let reduceAcc = new Float32Array(0);
let reduceBits = new Uint32Array(0);

/**
 * The sum of dedup partials (bf16 rows at `rowOffsets` of `rows`, in order): f32, the first taken as it
 * is, then acc = f32(acc + row_j[h]); out[h] = bf16(acc). Nothing is written for no rows.
 */
export function sumPartialsBf16(
  rows: Uint16Array,
  rowOffsets: readonly number[],
  hidden: number,
  out: Uint16Array,
  outOffset: number,
): void {
  if (rowOffsets.length === 0) return;
  if (reduceAcc.length < hidden) {
    reduceAcc = new Float32Array(hidden);
    reduceBits = new Uint32Array(reduceAcc.buffer);
  }
  const acc = reduceAcc;
  for (let h = 0; h < hidden; h++) acc[h] = BF16_DECODE[rows[rowOffsets[0] + h]];
  for (let j = 1; j < rowOffsets.length; j++) {
    const base = rowOffsets[j];
    for (let h = 0; h < hidden; h++) acc[h] += BF16_DECODE[rows[base + h]];
  }
  for (let h = 0; h < hidden; h++) out[outOffset + h] = f32BitsToBf16(reduceBits[h]);
}
