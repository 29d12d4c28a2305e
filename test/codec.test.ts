import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import {
  BF16_DECODE,
  bf16ToF32,
  decodeBf16,
  dequantizeRowsFp8,
  encodeBf16,
  FP8_DECODE,
  FP8_MAX,
  f32Bits,
  f32BitsToBf16,
  f32BitsToFp8,
  f32FromBits,
  f32ToBf16,
  f32ToFp8,
  fp8ToF32,
  groupScale,
  quantizeRowsFp8,
  weightedSumBf16,
  ZERO_GROUP_SCALE,
} from '../src/ep/codec.js';
import { rng } from './helpers/random.js';

/** A golden file as a fresh, aligned ArrayBuffer. */
function golden(name: string): ArrayBuffer {
  const b = readFileSync(new URL(`./golden/${name}`, import.meta.url));
  const out = new ArrayBuffer(b.byteLength);
  new Uint8Array(out).set(b);
  return out;
}

const hex = (n: number, w: number) => `0x${(n >>> 0).toString(16).padStart(w, '0')}`;

function isBf16NaN(h: number): boolean {
  return (h & 0x7fff) > 0x7f80;
}

describe('bf16', () => {
  test('decode is exact: bf16 bits h become f32 bits h << 16 for all 65,536 patterns', () => {
    const u = new Uint32Array(BF16_DECODE.buffer, BF16_DECODE.byteOffset, 65536);
    for (let h = 0; h < 65536; h++) {
      if (u[h] !== (h << 16) >>> 0) assert.fail(`BF16_DECODE[${hex(h, 4)}] bits ${hex(u[h], 8)}`);
      if (isBf16NaN(h)) {
        assert.ok(Number.isNaN(bf16ToF32(h)), hex(h, 4));
      } else if (f32Bits(bf16ToF32(h)) !== (h << 16) >>> 0) {
        assert.fail(`bf16ToF32(${hex(h, 4)}) has bits ${hex(f32Bits(bf16ToF32(h)), 8)}`);
      }
    }
  });

  test('all 65,536 patterns round-trip bf16 -> f32 -> bf16; every NaN comes back as 0x7fff', () => {
    let nans = 0;
    for (let h = 0; h < 65536; h++) {
      const back = f32ToBf16(bf16ToF32(h));
      const backBits = f32BitsToBf16((h << 16) >>> 0);
      const want = isBf16NaN(h) ? 0x7fff : h;
      if (isBf16NaN(h)) nans++;
      if (back !== want)
        assert.fail(`f32ToBf16(bf16ToF32(${hex(h, 4)})) = ${hex(back, 4)}, want ${hex(want, 4)}`);
      if (backBits !== want) assert.fail(`f32BitsToBf16(${hex((h << 16) >>> 0, 8)}) = ${hex(backBits, 4)}`);
    }
    // exponent all ones with a nonzero 7-bit mantissa, both signs
    assert.equal(nans, 2 * 127);
  });

  test('the canonical NaN rule: any f32 NaN (sign, payload, signalling) -> 0x7fff; Inf is not NaN', () => {
    for (const bits of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0xffffffff, 0x7f810000]) {
      assert.equal(f32BitsToBf16(bits), 0x7fff, hex(bits, 8));
    }
    assert.equal(f32ToBf16(Number.NaN), 0x7fff);
    assert.equal(f32ToBf16(Number.POSITIVE_INFINITY), 0x7f80);
    assert.equal(f32ToBf16(Number.NEGATIVE_INFINITY), 0xff80);
  });

  test('hand-worked round to nearest even (bf16 ulp at 1.0 is 2^-7)', () => {
    const cases: Array<[string, number, number]> = [
      ['1.0', 1, 0x3f80],
      ['-0', -0, 0x8000],
      ['1 + 2^-8: tie between 1 (even) and 1 + 2^-7 -> 1', 1 + 2 ** -8, 0x3f80],
      ['1 + 2^-8 + 2^-20: just above the tie -> 1 + 2^-7', 1 + 2 ** -8 + 2 ** -20, 0x3f81],
      ['1 + 2^-8 - 2^-23: just below the tie -> 1', 1 + 2 ** -8 - 2 ** -23, 0x3f80],
      ['1 + 3 * 2^-8: tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6', 1 + 3 * 2 ** -8, 0x3f82],
      ['1 + 5 * 2^-8: tie between 1 + 2 * 2^-7 (even) and 1 + 3 * 2^-7 -> down', 1 + 5 * 2 ** -8, 0x3f82],
      ['-(1 + 3 * 2^-8): sign kept, same magnitude rule', -(1 + 3 * 2 ** -8), 0xbf82],
      ['2 - 2^-8: tie, 0x3fff is odd, carry into the exponent -> 2.0', 2 - 2 ** -8, 0x4000],
      ['3.0 exact', 3, 0x4040],
      ['65504 -> 65536 (2^16: 0x4780)', 65504, 0x4780],
    ];
    for (const [what, x, want] of cases)
      assert.equal(f32ToBf16(x), want, `${what}: got ${hex(f32ToBf16(x), 4)}`);
  });

  test('hand-worked edges by f32 bits: overflow to Inf only from the tie above the largest bf16', () => {
    // largest finite bf16 is 0x7f7f; f32 0x7f7f8000 is the tie between it (odd) and 0x7f80 (Inf, even)
    assert.equal(f32BitsToBf16(0x7f7f7fff), 0x7f7f);
    assert.equal(f32BitsToBf16(0x7f7f8000), 0x7f80);
    assert.equal(f32BitsToBf16(0x7f7fffff), 0x7f80); // FLT_MAX rounds up to Inf
    assert.equal(f32BitsToBf16(0xff7fffff), 0xff80);
    assert.equal(f32BitsToBf16(0x7f800000), 0x7f80);
  });

  test('hand-worked f32 subnormals (bf16 subnormal step 2^-133 = bits 0x00010000)', () => {
    const cases: Array<[string, number, number]> = [
      ['2^-149 (smallest f32 subnormal) -> 0', 0x00000001, 0x0000],
      ['2^-134: tie between 0 (even) and 2^-133 -> 0', 0x00008000, 0x0000],
      ['2^-134 + 2^-149: above the tie -> 2^-133', 0x00008001, 0x0001],
      ['2^-133 exact', 0x00010000, 0x0001],
      ['3 * 2^-134: tie between 0x0001 (odd) and 0x0002 -> 0x0002', 0x00018000, 0x0002],
      ['5 * 2^-134: tie between 0x0002 (even) and 0x0003 -> 0x0002', 0x00028000, 0x0002],
      ['-3 * 2^-134 -> 0x8002', 0x80018000, 0x8002],
      ['largest f32 subnormal -> smallest normal bf16 2^-126', 0x007fffff, 0x0080],
      ['0x007f7fff: below the tie -> largest bf16 subnormal 0x007f', 0x007f7fff, 0x007f],
    ];
    for (const [what, bits, want] of cases) {
      assert.equal(f32BitsToBf16(bits), want, what);
      // the number path agrees: f32 subnormals are exact doubles
      assert.equal(f32ToBf16(f32FromBits(bits)), want, `${what} (via number)`);
    }
    assert.equal(f32ToBf16(2 ** -133), 0x0001);
    assert.equal(f32ToBf16(2 ** -149), 0x0000);
  });

  test('encodeBf16 / decodeBf16 arrays agree with the scalar codec (incl. a sub-array view)', () => {
    const r = rng(11);
    const src = new Float32Array(4096);
    const bits = new Uint32Array(src.buffer);
    for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r.next() * 2 ** 32);
    const view = src.subarray(7, 4000);
    const enc = encodeBf16(view);
    const vbits = new Uint32Array(view.buffer, view.byteOffset, view.length);
    for (let i = 0; i < view.length; i++) assert.equal(enc[i], f32BitsToBf16(vbits[i]));
    const dec = decodeBf16(enc);
    const dbits = new Uint32Array(dec.buffer);
    for (let i = 0; i < enc.length; i++) if (!isBf16NaN(enc[i])) assert.equal(dbits[i], (enc[i] << 16) >>> 0);
    // dst argument is written in place and returned
    const dst = new Uint16Array(view.length);
    assert.equal(encodeBf16(view, dst), dst);
    assert.deepEqual(dst, enc);
  });
});

/** FP8 e4m3fn value of a pattern, worked from the format: bias 7, 3 mantissa bits, no Inf, S.1111.111 NaN. */
function e4m3Value(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >>> 3) & 15;
  const m = b & 7;
  if (e === 15 && m === 7) return Number.NaN;
  return e === 0 ? s * m * 2 ** -9 : s * (1 + m / 8) * 2 ** (e - 7);
}

/** Brute force: the nearest e4m3 pattern to a finite x, ties to the even pattern, |x| >= 448 saturating. */
function nearestE4m3(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= FP8_MAX) return sign | 0x7e;
  let best = 0;
  let bestErr = Number.POSITIVE_INFINITY;
  for (let b = 0; b <= 0x7e; b++) {
    const err = Math.abs(e4m3Value(b) - a);
    if (err < bestErr || (err === bestErr && (b & 1) === 0)) {
      best = b;
      bestErr = err;
    }
  }
  return sign | best;
}

describe('fp8 e4m3fn', () => {
  test('decode table matches the format for all 256 patterns; 0x7f and 0xff are the only NaNs', () => {
    for (let b = 0; b < 256; b++) {
      const want = e4m3Value(b);
      if (Number.isNaN(want)) {
        assert.ok(b === 0x7f || b === 0xff, hex(b, 2));
        assert.ok(Number.isNaN(fp8ToF32(b)), hex(b, 2));
      } else {
        assert.ok(Object.is(fp8ToF32(b), want), `${hex(b, 2)}: ${fp8ToF32(b)} vs ${want}`);
        assert.ok(Object.is(FP8_DECODE[b], want));
      }
    }
    assert.equal(fp8ToF32(0x7e), 448);
    assert.equal(fp8ToF32(0x38), 1);
    assert.equal(fp8ToF32(0x01), 2 ** -9);
    assert.equal(fp8ToF32(0x08), 2 ** -6);
    assert.ok(Object.is(fp8ToF32(0x80), -0));
  });

  test('positive non-NaN patterns decode strictly increasing (0x00 .. 0x7e)', () => {
    for (let b = 1; b <= 0x7e; b++) assert.ok(fp8ToF32(b) > fp8ToF32(b - 1), hex(b, 2));
  });

  test('all 256 patterns decode and re-encode to themselves; NaN (0x7f, 0xff) re-encodes to 0x7f', () => {
    for (let b = 0; b < 256; b++) {
      const want = b === 0x7f || b === 0xff ? 0x7f : b;
      const got = f32ToFp8(fp8ToF32(b));
      if (got !== want)
        assert.fail(`f32ToFp8(fp8ToF32(${hex(b, 2)})) = ${hex(got, 2)}, want ${hex(want, 2)}`);
      assert.equal(f32BitsToFp8(f32Bits(fp8ToF32(b))), want);
    }
  });

  test('hand-worked ties, subnormals, saturation and NaN', () => {
    const cases: Array<[string, number, number]> = [
      ['0', 0, 0x00],
      ['-0', -0, 0x80],
      ['1.0', 1, 0x38],
      ['1.0625: midway 1.0 (0x38, even) / 1.125 (0x39) -> 1.0', 1.0625, 0x38],
      ['1.0625 + 2^-20: above the tie -> 1.125', 1.0625 + 2 ** -20, 0x39],
      ['1.1875: midway 1.125 (0x39, odd) / 1.25 (0x3a) -> 1.25', 1.1875, 0x3a],
      ['-1.1875 -> -1.25', -1.1875, 0xba],
      ['1.9375: midway 1.875 (0x3f, odd) / 2.0 (0x40) -> 2.0 (exponent carry)', 1.9375, 0x40],
      ['2^-9: smallest subnormal', 2 ** -9, 0x01],
      ['2^-10: midway 0 (even) / 2^-9 -> 0', 2 ** -10, 0x00],
      ['-2^-10 -> -0', -(2 ** -10), 0x80],
      ['2^-10 + 2^-20: above the tie -> 2^-9', 2 ** -10 + 2 ** -20, 0x01],
      ['3 * 2^-10: midway 2^-9 (0x01, odd) / 2^-8 (0x02) -> 0x02', 3 * 2 ** -10, 0x02],
      ['5 * 2^-10: midway 0x02 (even) / 0x03 -> 0x02', 5 * 2 ** -10, 0x02],
      ['15 * 2^-10: midway 7 * 2^-9 (0x07) / 2^-6 (0x08, smallest normal) -> 0x08', 15 * 2 ** -10, 0x08],
      ['2^-6: smallest normal', 2 ** -6, 0x08],
      ['2^-149: far below the smallest subnormal -> 0', 2 ** -149, 0x00],
      ['240 = 1.875 * 2^7', 240, 0x77],
      ['448: largest finite', 448, 0x7e],
      ['432: midway 416 (0x7d, odd) / 448 (0x7e) -> 448', 432, 0x7e],
      ['424: nearer 416', 424, 0x7d],
      ['449 saturates', 449, 0x7e],
      ['464 (midway 448 / 480) saturates to 448', 464, 0x7e],
      ['1e9 saturates', 1e9, 0x7e],
      ['Infinity saturates', Number.POSITIVE_INFINITY, 0x7e],
      ['-448', -448, 0xfe],
      ['-1e9', -1e9, 0xfe],
      ['-Infinity saturates', Number.NEGATIVE_INFINITY, 0xfe],
      ['NaN', Number.NaN, 0x7f],
    ];
    for (const [what, x, want] of cases)
      assert.equal(f32ToFp8(x), want, `${what}: got ${hex(f32ToFp8(x), 2)}`);
    // negative NaN and signalling NaN are NaN too, and come back as 0x7f
    for (const bits of [0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff]) {
      assert.equal(f32BitsToFp8(bits), 0x7f, hex(bits, 8));
    }
  });

  test('every bf16 value encodes to the brute-force nearest e4m3 (ties to even, saturating)', () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7fff) >= 0x7f80) continue; // Inf and NaN: covered above
      const x = bf16ToF32(h);
      const got = f32ToFp8(x);
      const want = nearestE4m3(x);
      if (got !== want)
        assert.fail(`f32ToFp8(${x}) (bf16 ${hex(h, 4)}) = ${hex(got, 2)}, want ${hex(want, 2)}`);
    }
  });
});

describe('golden vectors (H100 conversion instructions)', () => {
  test('f32 -> fp8 e4m3 satfinite: every input bit for bit', () => {
    const input = new Uint32Array(golden('fp8_e4m3_satfinite.in.f32'));
    const want = new Uint8Array(golden('fp8_e4m3_satfinite.out.u8'));
    assert.equal(input.length, want.length);
    assert.ok(input.length > 65536, 'covers at least every bf16 pattern');
    let bad = 0;
    let first = '';
    for (let i = 0; i < input.length; i++) {
      const got = f32BitsToFp8(input[i]);
      if (got !== want[i]) {
        if (bad++ === 0) first = `in ${hex(input[i], 8)}: got ${hex(got, 2)}, want ${hex(want[i], 2)}`;
      }
    }
    assert.equal(bad, 0, `${bad} mismatches; first: ${first}`);
  });

  test('fp8 e4m3 decode: all 256 patterns bit for bit (NaN patterns: NaN)', () => {
    const want = new Uint32Array(golden('fp8_e4m3_decode.out.f32'));
    assert.equal(want.length, 256);
    for (let b = 0; b < 256; b++) {
      const wantValue = f32FromBits(want[b]);
      if (Number.isNaN(wantValue)) {
        // The hardware writes 0x7fffffff; any NaN payload is the same value once re-encoded.
        assert.ok(b === 0x7f || b === 0xff, hex(b, 2));
        assert.ok(Number.isNaN(fp8ToF32(b)));
        continue;
      }
      assert.equal(f32Bits(fp8ToF32(b)), want[b], `pattern ${hex(b, 2)}`);
    }
  });

  test('f32 -> bf16 round to nearest even: every input bit for bit, by bits, by number and by array', () => {
    const inBuf = golden('bf16_rn.in.f32');
    const input = new Uint32Array(inBuf);
    const want = new Uint16Array(golden('bf16_rn.out.u16'));
    assert.equal(input.length, want.length);
    let bad = 0;
    let first = '';
    for (let i = 0; i < input.length; i++) {
      const a = f32BitsToBf16(input[i]);
      const b = f32ToBf16(f32FromBits(input[i]));
      if (a !== want[i] || b !== want[i]) {
        if (bad++ === 0)
          first = `in ${hex(input[i], 8)}: got ${hex(a, 4)}/${hex(b, 4)}, want ${hex(want[i], 4)}`;
      }
    }
    assert.equal(bad, 0, `${bad} mismatches; first: ${first}`);
    assert.deepEqual(encodeBf16(new Float32Array(inBuf)), want);
  });

  test('group quantisation G = 128 on [32, 7168]: q and scales bit for bit', () => {
    const rows = 32;
    const H = 7168;
    const G = 128;
    const x = new Uint16Array(golden('group_quant.in.bf16'));
    const wantQ = new Uint8Array(golden('group_quant.out.u8'));
    const wantS = new Uint32Array(golden('group_quant.scale.f32'));
    assert.equal(x.length, rows * H);
    assert.equal(wantS.length, rows * (H / G));
    const q = new Uint8Array(rows * H);
    const s = new Float32Array(rows * (H / G));
    quantizeRowsFp8(x, 0, rows, H, G, q, 0, s, 0);
    const sBits = new Uint32Array(s.buffer);
    let badS = 0;
    for (let i = 0; i < s.length; i++) if (sBits[i] !== wantS[i]) badS++;
    assert.equal(badS, 0, 'scale mismatches');
    let badQ = 0;
    for (let i = 0; i < q.length; i++) if (q[i] !== wantQ[i]) badQ++;
    assert.equal(badQ, 0, 'q mismatches');
  });

  test('group quantisation honours srcOffset, qOffset and scalesOffset (rows 5..8 into padded outputs)', () => {
    const H = 7168;
    const G = 128;
    const gpr = H / G;
    const x = new Uint16Array(golden('group_quant.in.bf16'));
    const wantQ = new Uint8Array(golden('group_quant.out.u8'));
    const wantS = new Float32Array(golden('group_quant.scale.f32'));
    const q = new Uint8Array(3 + 4 * H + 5).fill(0xaa);
    const s = new Float32Array(2 + 4 * gpr + 3).fill(-7);
    quantizeRowsFp8(x, 5 * H, 4, H, G, q, 3, s, 2);
    assert.deepEqual(q.subarray(3, 3 + 4 * H), wantQ.subarray(5 * H, 9 * H));
    assert.deepEqual(s.subarray(2, 2 + 4 * gpr), wantS.subarray(5 * gpr, 9 * gpr));
    // nothing outside the asked-for range is touched
    assert.deepEqual([...q.subarray(0, 3), ...q.subarray(3 + 4 * H)], Array(8).fill(0xaa));
    assert.deepEqual([...s.subarray(0, 2), ...s.subarray(2 + 4 * gpr)], Array(5).fill(-7));
  });

  test('combine reduce [16 tokens, k = 8, 7168] via weightedSumBf16: y bit for bit', () => {
    const T = 16;
    const k = 8;
    const H = 7168;
    const outIn = new Uint16Array(golden('combine_reduce.out_in.bf16'));
    const w = new Float32Array(golden('combine_reduce.w.f32'));
    const wantY = new Uint16Array(golden('combine_reduce.y.bf16'));
    assert.equal(outIn.length, T * k * H);
    assert.equal(w.length, T * k);
    const y = new Uint16Array(T * H);
    for (let t = 0; t < T; t++) {
      const rows: Uint16Array[] = [];
      const offs: number[] = [];
      const ws: number[] = [];
      for (let j = 0; j < k; j++) {
        rows.push(outIn);
        offs.push((t * k + j) * H);
        ws.push(w[t * k + j]);
      }
      weightedSumBf16(rows, offs, ws, H, y, t * H);
    }
    let bad = 0;
    for (let i = 0; i < y.length; i++) if (y[i] !== wantY[i]) bad++;
    assert.equal(bad, 0, 'y mismatches');
  });
});

describe('group quantisation', () => {
  test('an all-zero group gets scale exactly ZERO_GROUP_SCALE (1) and q all zero, never NaN/Inf', () => {
    assert.equal(ZERO_GROUP_SCALE, 1);
    assert.equal(groupScale(0), 1);
    const H = 16;
    const G = 8;
    const x = new Uint16Array(H); // group 0 all +0
    for (let i = G; i < H; i++) x[i] = f32ToBf16(i - G + 1); // group 1: 1..8
    const q = new Uint8Array(H).fill(0x55);
    const s = new Float32Array(2);
    quantizeRowsFp8(x, 0, 1, H, G, q, 0, s, 0);
    assert.equal(s[0], 1);
    assert.deepEqual([...q.subarray(0, G)], Array(G).fill(0));
    // group 1: amax 8 -> scale f32(8 / 448) = f32(1 / 56); all finite
    assert.equal(s[1], Math.fround(8 / 448));
    assert.ok(Number.isFinite(s[1]));
    assert.equal(q[H - 1], 0x7e); // 8 / f32(8/448) rounds to 448 in f32
    for (const v of dequantizeRowsFp8(q, s, 1, H, G)) assert.ok(Number.isFinite(v));
  });

  test('a group of -0 also gets scale 1 and keeps the sign: q = 0x80', () => {
    const x = new Uint16Array(8).fill(0x8000);
    const q = new Uint8Array(8);
    const s = new Float32Array(1);
    quantizeRowsFp8(x, 0, 1, 8, 8, q, 0, s, 0);
    assert.equal(s[0], 1);
    assert.deepEqual([...q], Array(8).fill(0x80));
  });

  test('hand-worked groups: scale = amax / 448, q = e4m3(x / scale)', () => {
    // group 0: amax 448 -> scale 1: 448 -> 0x7e, 224 = 1.75 * 2^7 -> 0x76, -112 = -1.75 * 2^6 -> 0xee, 0 -> 0
    // group 1: amax 896 -> scale 2: 896 -> 0x7e, 1 -> 0.5 = 2^-1 -> 0x30, -2 -> -1 -> 0xb8, 0.5 -> 0.25 -> 0x28
    const vals = [448, 224, -112, 0, 896, 1, -2, 0.5];
    const x = Uint16Array.from(vals, (v) => f32ToBf16(v));
    const q = new Uint8Array(8);
    const s = new Float32Array(2);
    quantizeRowsFp8(x, 0, 1, 8, 4, q, 0, s, 0);
    assert.deepEqual([...s], [1, 2]);
    assert.deepEqual([...q], [0x7e, 0x76, 0xee, 0x00, 0x7e, 0x30, 0xb8, 0x28]);
  });

  test('NaN in a group is ignored by amax (as fmaxf) and quantises to 0x7f', () => {
    const x = Uint16Array.from([0x7fc0, f32ToBf16(4.48), f32ToBf16(-2.24), 0]);
    const q = new Uint8Array(4);
    const s = new Float32Array(1);
    quantizeRowsFp8(x, 0, 1, 4, 4, q, 0, s, 0);
    assert.equal(s[0], Math.fround(bf16ToF32(f32ToBf16(4.48)) / 448));
    assert.equal(q[0], 0x7f);
    assert.equal(q[1], 0x7e);
  });

  test('dequantizeRowsFp8: hand-worked values f32(decode(q) * scale)', () => {
    // 2 rows, hidden 4, G = 2: scales row 0 [2, 0.5], row 1 [-1, 3]
    const q = Uint8Array.from([0x38, 0x3a, 0x01, 0xb8, 0x7e, 0x80, 0x39, 0x08]);
    const s = Float32Array.from([2, 0.5, -1, 3]);
    const out = dequantizeRowsFp8(q, s, 2, 4, 2);
    // 1*2, 1.25*2, 2^-9*0.5, -1*0.5, 448*-1, -0*-1 = +0, 1.125*3, 2^-6*3
    assert.deepEqual([...out], [2, 2.5, 2 ** -10, -0.5, -448, 0, 3.375, 3 * 2 ** -6]);
    assert.ok(Object.is(out[5], 0));
    // a product that must round to f32: 1.125 * f32(1/3)
    const third = Math.fround(1 / 3);
    const o2 = dequantizeRowsFp8(Uint8Array.from([0x39]), Float32Array.from([third]), 1, 1, 1);
    assert.equal(o2[0], Math.fround(1.125 * third));
    assert.notEqual(o2[0], 1.125 * third, 'the double product is not an f32 value, so rounding is visible');
    // an out array is written in place
    const dst = new Float32Array(8);
    assert.equal(dequantizeRowsFp8(q, s, 2, 4, 2, dst), dst);
  });

  test('quantise then dequantise stays within half an e4m3 step of each value (random rows)', () => {
    const r = rng(5);
    const rows = 8;
    const H = 512;
    const G = 128;
    const x = r.bf16Array(rows * H, { minExp: -20, maxExp: 20 });
    const q = new Uint8Array(rows * H);
    const s = new Float32Array(rows * (H / G));
    quantizeRowsFp8(x, 0, rows, H, G, q, 0, s, 0);
    const y = dequantizeRowsFp8(q, s, rows, H, G);
    for (let i = 0; i < x.length; i++) {
      const v = bf16ToF32(x[i]);
      const scale = s[Math.floor(i / G)];
      const rel = Math.abs(v / scale);
      // e4m3 relative step is 2^-3 for normals, absolute 2^-9 for subnormals (in units of the scale)
      const tol = Math.max(rel * 2 ** -4, 2 ** -10) * scale * 1.0001 + Math.abs(y[i]) * 2 ** -23;
      assert.ok(Math.abs(y[i] - v) <= tol, `i=${i}: ${v} -> ${y[i]} (scale ${scale})`);
    }
  });
});

describe('weightedSumBf16', () => {
  test('hand-worked: two f32 roundings per step, fixed order, bf16 out', () => {
    // acc = 0.5 * 3 + 0.25 * (-2) = 1.0 -> 0x3f80; second column 1 * 1 + 1 * 2^-8 = 1 + 2^-8 -> tie -> 1.0
    const a = Uint16Array.from([f32ToBf16(3), f32ToBf16(1)]);
    const b = Uint16Array.from([f32ToBf16(-2), f32ToBf16(2 ** -8)]);
    const out = new Uint16Array(4).fill(0xdead);
    weightedSumBf16([a, b], [0, 0], [0.5, 0.25], 1, out, 1);
    assert.equal(out[1], 0x3f80);
    weightedSumBf16([a, b], [1, 1], [1, 1], 1, out, 2);
    assert.equal(out[2], 0x3f80);
    assert.equal(out[0], 0xdead);
    assert.equal(out[3], 0xdead);
    // the order matters in f32: 2^24 + 1 - 2^24 = 0 (1 is lost), but 2^24 - 2^24 + 1 = 1
    const big = Uint16Array.from([f32ToBf16(2 ** 24), f32ToBf16(1), f32ToBf16(-(2 ** 24))]);
    weightedSumBf16([big, big, big], [0, 1, 2], [1, 1, 1], 1, out, 0);
    assert.equal(out[0], 0x0000);
    weightedSumBf16([big, big, big], [0, 2, 1], [1, 1, 1], 1, out, 0);
    assert.equal(out[0], 0x3f80);
  });

  test('the product is rounded to f32 before the add (no fused multiply-add)', () => {
    // x = 1 + 2^-7 (exact in bf16), w = 1 + 2^-17 (exact in f32): the exact product is
    // 1 + 2^-7 + 2^-17 + 2^-24, and the 2^-24 is a tie at ulp 2^-23 that goes to even:
    // f32(w * x) = 1 + 2^-7 + 2^-17. Order: acc = -(1 + 2^-7) first, then acc + f32(w * x) = 2^-17.
    // A fused multiply-add would give 2^-17 + 2^-24 = 2^-17 * (1 + 2^-7), which bf16 holds exactly (0x3701).
    const x = Uint16Array.from([f32ToBf16(1 + 2 ** -7), f32ToBf16(-(1 + 2 ** -7))]);
    const w = 1 + 2 ** -17;
    const out = new Uint16Array(1);
    weightedSumBf16([x, x], [1, 0], [1, w], 1, out, 0);
    assert.equal(out[0], 0x3700);
    assert.equal(bf16ToF32(out[0]), 2 ** -17);
  });
});
