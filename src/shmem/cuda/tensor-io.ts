import { type DType, type HostTensor, hostTensor, numel } from '../../ep/tensor.js';
import { ShapeError } from '../../errors.js';
import { DeviceTensor, elementBytes } from './device-tensor.js';
import type { CudaDriver, CuStream } from './driver.js';

/**
 * Tensors in and out of a group: device memory made for the caller (freed by free(), or by freeAll()
 * when the group closes) and the copies between it and the host, ordered with the group's stream.
 * The group checks it is open before each call.
 */
export class TensorIo {
  private readonly buffers = new Set<bigint>();
  /**
   * Waits for the group's stream before a copy from the host. The group replaces it where a plain
   * synchronize could wait forever (between hosts: an NCCL transfer has no deadline of its own).
   */
  drain: () => void = () => this.drv.streamSynchronize(this.stream);

  constructor(
    private readonly drv: CudaDriver,
    private readonly stream: CuStream,
  ) {}

  /** New device memory for the caller (free() returns it; freeAll() frees what is left). */
  newTensor(
    dtype: DType,
    shape: readonly number[],
    bytes = numel(shape) * elementBytes(dtype),
  ): DeviceTensor {
    const p = this.drv.memAlloc(Math.max(bytes, 16));
    this.buffers.add(p);
    return new DeviceTensor(dtype, shape, p, (ptr) => {
      if (this.buffers.delete(ptr)) this.drv.memFree(ptr);
    });
  }

  /** A new tensor with every byte `byte`, filled on the stream (no host copy of what may be gigabytes). */
  filled(dtype: DType, shape: number[], byte: number): DeviceTensor {
    const t = this.newTensor(dtype, shape);
    if (t.bytes > 0) this.drv.memsetD8Async(t.devicePtr, byte, t.bytes, this.stream);
    return t;
  }

  /** Copies a host tensor to new device memory. */
  upload(t: HostTensor): DeviceTensor {
    const bytes = t.data.byteLength;
    const d = this.newTensor(t.dtype, t.shape, bytes);
    if (bytes > 0) this.copyFromHost(d.devicePtr, t.data, bytes);
    return d;
  }

  /** See CudaEpGroup.copyInto. */
  copyInto(dst: DeviceTensor, src: HostTensor | DeviceTensor): void {
    const bytes = src instanceof DeviceTensor ? src.bytes : src.data.byteLength;
    if (src.dtype !== dst.dtype || bytes !== dst.bytes) {
      throw new ShapeError(
        `copyInto needs the same dtype and size: ${dst.dtype} ${dst.bytes} B <- ${src.dtype} ${bytes} B`,
      );
    }
    if (bytes === 0) return;
    if (src instanceof DeviceTensor)
      this.drv.memcpyDtoDAsync(dst.devicePtr, src.devicePtr, bytes, this.stream);
    else this.copyFromHost(dst.devicePtr, src.data, bytes);
  }

  /** Copies `t` to a new host tensor; the caller has waited for the stream. */
  toHost(t: DeviceTensor): HostTensor {
    const host = hostTensor(t.dtype, t.shape);
    if (t.bytes > 0) this.drv.memcpyDtoH(host.data, t.devicePtr, t.bytes);
    return host;
  }

  /** Frees every tensor made here that the caller has not freed (the group is closing). */
  freeAll(): void {
    for (const p of this.buffers) this.drv.memFree(p);
    this.buffers.clear();
  }

  /**
   * A copy from JavaScript memory that the group's kernels see. cuMemcpyHtoD from pageable memory
   * may return before its data lands on the device, and it is not ordered with this group's
   * non-blocking stream: without the wait a kernel launched right after can read the old bytes.
   * (An async copy on the stream would let the driver read the JavaScript memory after the call.)
   */
  private copyFromHost(dst: bigint, src: HostTensor['data'], bytes: number): void {
    // the legacy-stream copy is not ordered with this group's stream either: finish what is queued
    // there first (a replay may still read `dst`, a memset may still fill it)
    this.drain();
    this.drv.memcpyHtoD(dst, src, bytes);
    this.drv.synchronizeContext();
  }
}
