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

interface WithIo {
  upload?(t: HostTensor): unknown;
  download?(t: unknown): HostTensor;
  poisonOutputs?(byte: number): void;
}

export const groupIo: DeviceIo = {
  upload: (g, t) => ((g as WithIo).upload ? (g as WithIo).upload!(t) : t),
  download: (g, t) => ((g as WithIo).download ? (g as WithIo).download!(t) : (t as HostTensor)),
  poisonOutputs: (g, byte) => (g as WithIo).poisonOutputs?.(byte),
  free: (t) => (t as { free?: () => void } | null)?.free?.(),
};
