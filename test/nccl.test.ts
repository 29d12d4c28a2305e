import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { runScriptOnRanks, siblingModule } from '../src/cli/ranks.js';
import { loadNccl } from '../src/net/nccl.js';
import { ncclVersionName } from '../src/net/nccl-config.js';
import { loadDriver } from '../src/shmem/cuda/driver.js';
import type { NcclRankResult, NcclRankTask } from './helpers/nccl-rank.js';

// NCCL through koffi, on the GPUs: needs a driver, two GPUs and libnccl.so.2 (the GPU machines have
// them; CI does not, and skips this file's tests with the reason).
function skipReason(): string | false {
  try {
    if (loadDriver().deviceCount < 2) return 'needs two GPUs';
    loadNccl();
    return false;
  } catch (err) {
    return `needs an NVIDIA driver, two GPUs and NCCL: ${(err as Error).message.split('.')[0]}`;
  }
}
const skip = skipReason();
const script = siblingModule(import.meta.url, 'helpers/nccl-rank');

describe(
  'NCCL bindings: a non-blocking communicator through the store, grouped sends and receives',
  { skip },
  () => {
    for (const simulateHosts of [false, true]) {
      test(`W = 2 ${simulateHosts ? 'as two hosts (NCCL_HOSTID per rank: sockets between them)' : 'on one host (NVLink)'}: every byte arrives`, async () => {
        const task: NcclRankTask = { bytes: 1 << 20, rounds: 3, timeoutMs: 60_000, simulateHosts };
        const out = await runScriptOnRanks<NcclRankResult>('cuda', 2, script, task);
        for (const [r, o] of out.entries()) {
          assert.equal(o.wrong, 0, `rank ${r}: ${o.firstWrong}`);
          assert.equal(o.checked, 3 * 2 * (1 << 20), `rank ${r} checked every byte`);
        }
        process.stderr.write(`NCCL ${ncclVersionName(out[0].version)}\n`);
      });
    }

    test('a rank that never joins: the other fails within its timeout with an NcclError naming the call and the rank', async () => {
      const task: NcclRankTask = {
        bytes: 16,
        rounds: 1,
        timeoutMs: 4000,
        simulateHosts: false,
        absentRank: 1,
      };
      const out = await runScriptOnRanks<NcclRankResult>('cuda', 2, script, task);
      const e = out[0].initError;
      assert.ok(e, 'rank 0 init failed');
      assert.equal(e.code, 'MOE_NCCL');
      assert.equal(e.call, 'ncclCommInitRankConfig');
      assert.match(e.message, /did not finish within 4000 ms on rank 0/);
      assert.ok(e.ms < 15_000, `failed after ${e.ms} ms`);
    });
  },
);
