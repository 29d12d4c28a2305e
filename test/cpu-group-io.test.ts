// What every EpGroup offers besides the collectives (upload, download, synchronize, a timer, poisoning),
// as the cpu transport gives it: host memory in and out as it is, the host clock.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { computeLayout, stagedRowsFor } from '../src/ep/layout.js';
import { hostTensor } from '../src/ep/tensor.js';
import { HostEpGroup } from '../src/shmem/cpu/group.js';
import { CpuTransport } from '../src/shmem/cpu/heap.js';

/** A one-rank cpu group on its own heap, without worker threads. */
function oneRankGroup(cfg: ReturnType<typeof resolveConfig>): HostEpGroup {
  const layout = computeLayout(cfg, stagedRowsFor(cfg));
  return new HostEpGroup(
    cfg,
    layout,
    new CpuTransport(0, 1, [new SharedArrayBuffer(layout.totalBytes)], null),
    1000,
  );
}

test('cpu group: upload and download pass host tensors through, the timer counts, poison shows in the outputs', async () => {
  const group = oneRankGroup(
    resolveConfig({ world: 1, numExperts: 4, hidden: 8, topk: 2, maxTokensPerRank: 2, fp8: false }),
  );
  const x = hostTensor('bf16', [2, 8]);
  assert.equal(group.upload(x), x);
  assert.equal(group.download(x), x);
  group.synchronize();
  let ran = 0;
  const us = group.timeOnDevice(() => {
    ran++;
    const until = performance.now() + 2;
    while (performance.now() < until);
  });
  assert.equal(ran, 1);
  assert.ok(us >= 1500 && us < 1e6, `${us} us for a 2 ms busy wait`);
  const r = group.dispatch(x, hostTensor('i32', [2, 2], Int32Array.of(0, 1, 1, 3)), {
    topkWeights: hostTensor('f32', [2, 2]),
  });
  group.poisonOutputs(0x5a);
  const xs = r.expertX.data as Uint16Array;
  assert.ok(new Uint8Array(xs.buffer, xs.byteOffset, xs.byteLength).every((b) => b === 0x5a));
  assert.ok(new Uint8Array((r.expertCounts.data as Int32Array).buffer).every((b) => b === 0x5a));
  await group.close();
  assert.throws(() => group.synchronize(), { code: 'MOE_CLOSED' });
});

test('cpu group: combine depends on nothing the caller can touch in the dispatch outputs (poisoned offsets and counts)', async () => {
  for (const expertLayout of ['packed', 'padded'] as const) {
    const cfg = resolveConfig({
      world: 1,
      numExperts: 4,
      hidden: 8,
      topk: 2,
      maxTokensPerRank: 3,
      fp8: false,
      expertLayout,
    });
    const group = oneRankGroup(cfg);
    const x = hostTensor(
      'bf16',
      [3, 8],
      Uint16Array.from({ length: 24 }, (_, i) => 0x3f80 + i),
    );
    const idx = hostTensor('i32', [3, 2], Int32Array.of(0, 2, 1, 2, 3, 0));
    const w = hostTensor('f32', [3, 2], Float32Array.of(0.5, 0.25, 1, 2, 0.75, 0.125));
    const combineOnce = (poison: boolean) => {
      const r = group.dispatch(x, idx, { topkWeights: w });
      // the experts' outputs: their rows as received (same bits), read through the offsets before poisoning
      const out = hostTensor('bf16', r.expertX.shape, (r.expertX.data as Uint16Array).slice());
      if (poison) group.poisonOutputs(0x7f);
      return [...(group.combine(out, r.handle).data as Uint16Array)];
    };
    const clean = combineOnce(false);
    assert.ok(
      clean.some((v) => v !== 0),
      expertLayout,
    );
    assert.deepEqual(combineOnce(true), clean, `${expertLayout}: the same y after the outputs were poisoned`);
    await group.close();
  }
});
