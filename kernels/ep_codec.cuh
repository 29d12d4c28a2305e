// Number formats: bf16 <-> f32 and f32 -> FP8 e4m3 with group scales, bit for bit as src/ep/codec.ts.
// Part of the ep.cu translation unit: included by kernels/ep.cu only, in its order.
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------
// Number formats (must match src/ep/codec.ts bit for bit)

// 8 bf16 (one 16-byte vector) -> 8 f32, exact.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 w, float* v) {
  v[0] = __uint_as_float(w.x << 16);
  v[1] = __uint_as_float(w.x & 0xffff0000u);
  v[2] = __uint_as_float(w.y << 16);
  v[3] = __uint_as_float(w.y & 0xffff0000u);
  v[4] = __uint_as_float(w.z << 16);
  v[5] = __uint_as_float(w.z & 0xffff0000u);
  v[6] = __uint_as_float(w.w << 16);
  v[7] = __uint_as_float(w.w & 0xffff0000u);
}

// f32 -> e4m3fn, round to nearest even, saturating to +-448 (Inf too), NaN -> 0x7f: the hardware
// cvt.rn.satfinite.e4m3x2.f32, which made the golden vectors. First value in the low byte.
__device__ __forceinline__ uint32_t fp8x2(float lo, float hi) {
  return (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ uint32_t fp8x4(float a, float b, float c, float d) {
  return fp8x2(a, b) | (fp8x2(c, d) << 16);
}

// Group scale: f32(amax / 448) with IEEE division; 1 for an all-zero group.
__device__ __forceinline__ float group_scale(float amax) {
  return amax == 0.0f ? 1.0f : __fdiv_rn(amax, 448.0f);
}

// |x| max ignoring NaN: fmaxf returns the other operand when one is NaN (as codec.ts groupAmax).
__device__ __forceinline__ float amax8(const float* v, float m) {
#pragma unroll
  for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
  return m;
}

// f32 -> bf16 bits, round to nearest even, NaN -> 0x7fff (cvt.rn.bf16x2.f32), packed low first.
__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// 8 f32 -> 8 bf16 in one 16-byte vector, first value in the low half of .x.
__device__ __forceinline__ uint4 pack_bf16x8(const float (&v)[8]) {
  uint4 o;
  o.x = bf16x2_bits(v[0], v[1]);
  o.y = bf16x2_bits(v[2], v[3]);
  o.z = bf16x2_bits(v[4], v[5]);
  o.w = bf16x2_bits(v[6], v[7]);
  return o;
}

}  // namespace
