import type { EpGroup } from '../ep/api.js';
import type { HostTensor } from '../ep/tensor.js';

/**
 * How the CLI moves tensors in and out of a group, whatever its transport: host tensors pass through
 * on cpu; the cuda transport copies to and from device memory. Poisoning fills the group's output
 * buffers before a call so that an element the transport forgot to write cannot match the oracle.
 */
export interface DeviceIo {
  upload(group: EpGroup<unknown>, t: HostTensor): unknown;
  download(group: EpGroup<unknown>, t: unknown): HostTensor;
  poisonOutputs(group: EpGroup<unknown>, byte: number): void;
  /** Frees what upload() made (device memory on cuda; nothing on cpu). */
  free(t: unknown): void;
}

export const groupIo: DeviceIo = {
  upload: (g, t) => g.upload(t),
  download: (g, t) => g.download(t),
  poisonOutputs: (g, byte) => g.poisonOutputs(byte),
  free: (t) => (t as { free?: () => void } | null)?.free?.(),
};
