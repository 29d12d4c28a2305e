import { cudaTransportReady } from '../src/shmem/cuda/available.js';
import { conformanceSuite } from './conformance/suite.js';

// The same suite as the cpu transport's, on the GPU; ranks are processes sharing the GPUs present.
// Without a driver, a GPU and the built kernels (CI) there is nothing to run it on.
const ready = await cudaTransportReady();
conformanceSuite('cuda', ready ? false : 'needs an NVIDIA driver, a GPU and dist/kernels/ep.fatbin');
