import { cudaTransportReady } from '../src/shmem/cuda/available.js';
import { conformanceSuite } from './conformance/suite.js';

// The same suite as the cpu transport's, on the GPU; ranks are processes sharing the GPUs present.
// Without a driver, a GPU and the built kernels (CI) there is nothing to run it on. Its cases between
// hosts play the hosts on this machine (NCCL between them over the loopback; README, "Between hosts").
process.env.MOE_A2A_SIMULATED_HOSTS ??= '1';
process.env.NCCL_SOCKET_IFNAME ??= 'lo';
const ready = await cudaTransportReady();
conformanceSuite('cuda', ready ? false : 'needs an NVIDIA driver, a GPU and dist/kernels/ep.fatbin');
