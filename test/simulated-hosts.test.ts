// MOE_A2A_SIMULATED_HOSTS (src/shmem/cuda/rail.ts): each host's ranks get their own NCCL_HOSTID. NCCL reads
// it once per process, so a process that played one host cannot play another: refused with words that
// say so, before any NCCL call (no GPU or NCCL needed here).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { computeLayout, stagedRowsFor } from '../src/ep/layout.js';
import { openCudaRail } from '../src/shmem/cuda/rail.js';
import { withEnv } from './helpers/env.js';

test('a process that played one simulated host is refused another', async () => {
  const launched = {
    RANK: '1',
    WORLD_SIZE: '2',
    LOCAL_RANK: '0',
    LOCAL_WORLD_SIZE: '1',
    MASTER_ADDR: '127.0.0.1',
    MASTER_PORT: '1',
    MOE_A2A_SIMULATED_HOSTS: '1',
    NCCL_HOSTID: 'moe-a2a-simulated-host-0',
  };
  await withEnv(launched, async () => {
    const config = resolveConfig({
      world: 2,
      nodes: 2,
      numExperts: 4,
      hidden: 128,
      topk: 2,
      maxTokensPerRank: 4,
    });
    const layout = computeLayout(config, stagedRowsFor(config));
    const alloc = () => assert.fail('nothing is allocated for a refused rail');
    await assert.rejects(openCudaRail(config, layout, 0n, 1, 1000, alloc), {
      code: 'MOE_CONFIG',
      message:
        /rank 1 would play host 1, but NCCL_HOSTID is already moe-a2a-simulated-host-0 in this process/,
    });
  });
});
