import type { EpGroup } from '../../ep/api.js';
import type { EpConfig } from '../../ep/config.js';
import type { HeapLayout } from '../../ep/layout.js';
import { TransportUnavailableError } from '../../errors.js';

export async function createCudaGroup(_c: EpConfig, _l: HeapLayout, _o: unknown): Promise<EpGroup<unknown>> {
  throw new TransportUnavailableError('the cuda group is not built yet');
}
