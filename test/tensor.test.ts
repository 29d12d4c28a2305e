import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hostTensor, MAX_HOST_ELEMENTS } from '../src/ep/tensor.js';
import { ArgumentError, ShapeError } from '../src/errors.js';

describe('host tensors', () => {
  test('a tensor larger than one typed array is refused with a named error, before any allocation', () => {
    // padded expert outputs at W = 4, T = 4096, DeepSeek-V3: 64 x 16384 x 7168 bytes
    const shape = [64, 16384, 7168];
    assert.ok(64 * 16384 * 7168 > MAX_HOST_ELEMENTS);
    assert.throws(
      () => hostTensor('fp8_e4m3', shape),
      (e: unknown) =>
        e instanceof ArgumentError &&
        e.code === 'MOE_ARGUMENT' &&
        /\[64, 16384, 7168\]/.test(e.message) &&
        /expertLayout 'packed'/.test(e.message),
    );
  });

  test('a zero-filled tensor of the shape asked; given data must match it', () => {
    const t = hostTensor('i32', [2, 3]);
    assert.deepEqual(t.shape, [2, 3]);
    assert.equal(t.data.length, 6);
    assert.ok(t.data.every((v) => v === 0));
    assert.throws(() => hostTensor('i32', [2, 3], new Int32Array(5)), ShapeError);
  });
});
