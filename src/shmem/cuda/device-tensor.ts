import type { DType } from '../../ep/tensor.js';
import { numel } from '../../ep/tensor.js';
import { ArgumentError, ShapeError } from '../../errors.js';

const ELEMENT_BYTES: Record<DType, number> = { bf16: 2, f32: 4, i32: 4, fp8_e4m3: 1 };

export function elementBytes(dtype: DType): number {
  return ELEMENT_BYTES[dtype];
}

/**
 * A tensor in GPU memory: dtype, shape, and the device address (`devicePtr`, for passing to other
 * CUDA code). Tensors a group returns are views of its own buffers (see each method's lifetime);
 * tensors made with group.upload() belong to the caller, who frees them with free().
 */
export class DeviceTensor<D extends DType = DType> {
  readonly bytes: number;
  private freed = false;
  constructor(
    readonly dtype: D,
    readonly shape: readonly number[],
    readonly devicePtr: bigint,
    private readonly release: ((ptr: bigint) => void) | null,
  ) {
    this.bytes = numel(shape) * ELEMENT_BYTES[dtype];
  }

  /** Frees the memory of a tensor made by upload(); a no-op on views the group owns. */
  free(): void {
    if (this.freed || !this.release) return;
    this.freed = true;
    this.release(this.devicePtr);
  }
}

export function isDeviceTensor(t: unknown): t is DeviceTensor {
  return t instanceof DeviceTensor;
}

/** A device tensor of this dtype and shape, or the error that says why not; its shape (a TensorCheck). */
export function deviceTensorShape(
  name: string,
  t: unknown,
  dtype: DType,
  dims: readonly (number | undefined)[],
): readonly number[] {
  if (!(t instanceof DeviceTensor)) {
    throw new ArgumentError(`${name} must be a DeviceTensor (use group.upload() for host data)`, {
      argument: name,
    });
  }
  if (t.dtype !== dtype)
    throw new ShapeError(`${name} must have dtype ${dtype}, got ${t.dtype}`, { argument: name });
  if (t.shape.length !== dims.length || t.shape.some((d, i) => dims[i] !== undefined && d !== dims[i])) {
    throw new ShapeError(
      `${name} must have shape ${dtype} [${dims.map((d) => d ?? '?').join(', ')}], got [${t.shape.join(', ')}]`,
      { argument: name },
    );
  }
  return t.shape;
}
