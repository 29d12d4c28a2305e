import { ArgumentError, ShapeError } from '../errors.js';

/** Element types. bf16 is stored as uint16 bit patterns, fp8_e4m3 as uint8 bit patterns. */
export type DType = 'bf16' | 'f32' | 'i32' | 'fp8_e4m3';

export interface StorageOf {
  bf16: Uint16Array;
  f32: Float32Array;
  i32: Int32Array;
  fp8_e4m3: Uint8Array;
}

/** A host tensor: a typed array in row-major order with its shape and dtype. */
export interface HostTensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: StorageOf[D];
}

const ctors = {
  bf16: Uint16Array,
  f32: Float32Array,
  i32: Int32Array,
  fp8_e4m3: Uint8Array,
} as const;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** The most elements this library asks of one typed array (V8 in Node 20 refuses more than 2^32). */
export const MAX_HOST_ELEMENTS = 2 ** 32 - 1;

/** Makes a tensor; with no data, a zero-filled one. */
export function hostTensor<D extends DType>(
  dtype: D,
  shape: readonly number[],
  data?: StorageOf[D],
): HostTensor<D> {
  const n = numel(shape);
  if (data === undefined && n > MAX_HOST_ELEMENTS) {
    // (V8 would throw a bare RangeError: say what was too large, and what makes it smaller)
    throw new ArgumentError(
      `a host ${dtype} tensor of shape [${shape.join(', ')}] would hold ${n} elements, more than one JavaScript typed array can (${MAX_HOST_ELEMENTS}); ` +
        "for a group's expert outputs use expertLayout 'packed' or a smaller maxRowsPerExpert, or copy a part",
      { dtype, shape: shape.join(','), elements: n },
    );
  }
  const d = data ?? (new ctors[dtype](n) as StorageOf[D]);
  if (d.length !== n) {
    throw new ShapeError(
      `a ${dtype} tensor of shape [${shape.join(', ')}] needs ${n} elements, got ${d.length}`,
    );
  }
  return { dtype, shape: [...shape], data: d };
}

/**
 * Checks that `t` is a tensor of `dtype` with `rank` dimensions, each matching `dims` where given
 * (undefined = any). Returns its shape. Throws ShapeError naming the argument.
 */
export function checkTensor(
  name: string,
  t: unknown,
  dtype: DType,
  dims: ReadonlyArray<number | undefined>,
): readonly number[] {
  const want = `${dtype} [${dims.map((d) => d ?? '?').join(', ')}]`;
  if (t === null || typeof t !== 'object' || !('dtype' in t) || !('shape' in t) || !('data' in t)) {
    throw new ShapeError(`${name} must be a tensor { dtype, shape, data } of ${want}`, { argument: name });
  }
  const tt = t as HostTensor;
  if (tt.dtype !== dtype) {
    throw new ShapeError(`${name} must have dtype ${dtype}, got ${String(tt.dtype)}`, {
      argument: name,
      dtype: String(tt.dtype),
    });
  }
  if (!(tt.data instanceof ctors[dtype])) {
    throw new ShapeError(`${name}.data must be a ${ctors[dtype].name} for dtype ${dtype}`, {
      argument: name,
    });
  }
  const s = tt.shape;
  if (
    !Array.isArray(s) ||
    s.length !== dims.length ||
    s.some((d, i) => dims[i] !== undefined && d !== dims[i])
  ) {
    throw new ShapeError(
      `${name} must have shape ${want}, got [${Array.isArray(s) ? s.join(', ') : String(s)}]`,
      {
        argument: name,
        shape: Array.isArray(s) ? s.join(',') : String(s),
      },
    );
  }
  if (s.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new ShapeError(`${name} has an invalid shape [${s.join(', ')}]`, { argument: name });
  }
  if (tt.data.length !== numel(s)) {
    throw new ShapeError(`${name} has shape [${s.join(', ')}] but ${tt.data.length} elements`, {
      argument: name,
    });
  }
  return s;
}
