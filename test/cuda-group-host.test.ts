/**
 * The cuda group's host logic against a recording fake driver (no GPU): which kernels a call launches
 * and with which arguments, how a call the host refuses still tells the peers (hostAbort), the graph
 * replay rules, what capture allocates, one module per process, and what a failed creation frees.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type EpConfigInput, resolveConfig } from '../src/ep/config.js';
import { expertShape } from '../src/ep/expert-layout.js';
import { hostTensor } from '../src/ep/tensor.js';
import * as A from '../src/shmem/cuda/args.js';
import { CudaEpGroup } from '../src/shmem/cuda/group.js';
import { withEnv } from './helpers/env.js';
import { argOf, FakeDriver } from './helpers/fake-driver.js';

const small = { world: 2, numExperts: 8, hidden: 64, topk: 2, maxTokensPerRank: 4, fp8: false, dedup: false };

async function groupOn(
  fake: FakeDriver,
  input: EpConfigInput,
  options: { dispatchPath?: 'staged' | 'direct'; timeoutMs?: number } = {},
  log: string[] = [],
) {
  const g = await CudaEpGroup.create(
    resolveConfig(input),
    { ...input, timeoutMs: 1000, ...options },
    {
      driver: () => fake.asDriver(),
      openHeap: fake.heapOpener(log),
      moduleImage: () => new Uint8Array(16),
      openRail: fake.railOpener(log),
    },
  );
  g.launchMode = 'direct'; // every launch recorded as made (the launch queue's graphs have tests of their own)
  return g;
}

/** One dedup dispatch + combine of T tokens on `g`: each kernel it launched, with its combineFlagged. */
function launchesOfCall(fake: FakeDriver, g: CudaEpGroup, T: number, ids: readonly number[]) {
  const t = inputs(g, T, [...ids]);
  const before = fake.launches.length;
  g.combine(t.out, g.dispatch(t.x, t.idx, { topkWeights: t.w }).handle);
  return fake.launches.slice(before).map((l) => [l.kernel, argOf(l, 'combineFlagged')]);
}

function inputs(g: CudaEpGroup, T: number, ids: number[]) {
  const c = g.config;
  return {
    x: g.upload(hostTensor('bf16', [T, c.hidden])),
    idx: g.upload(hostTensor('i32', [T, c.topk], Int32Array.from(ids))),
    w: g.upload(hostTensor('f32', [T, c.topk], new Float32Array(T * c.topk).fill(0.5))),
    out: g.upload(hostTensor('bf16', expertShape(c, c.hidden))),
  };
}

describe('cuda group host logic (fake driver)', () => {
  test('a dispatch the host refuses still launches the first kernel, with hostAbort and no tokens', async () => {
    for (const [path, first] of [
      ['staged', 'ep_stage_send'],
      ['direct', 'ep_route'],
    ] as const) {
      const fake = new FakeDriver();
      const g = await groupOn(fake, small, { dispatchPath: path });
      const { x, idx, w } = inputs(g, 2, [0, 5, 1, 6]);
      const bad = g.upload(hostTensor('bf16', [2, 32]));
      const before = fake.launches.length;
      assert.throws(() => g.dispatch(bad, idx, { topkWeights: w }), { code: 'MOE_SHAPE' });
      const sent = fake.launches.slice(before);
      assert.deepEqual(
        sent.map((l) => l.kernel),
        [first],
        `${path}: only the kernel whose signal carries the abort`,
      );
      assert.equal(argOf(sent[0], 'hostAbort'), 1);
      assert.equal(argOf(sent[0], 'numTokens'), 0);
      // the next call is an ordinary one: hostAbort back to 0
      g.dispatch(x, idx, { topkWeights: w });
      const next = fake.launches.slice(before + 1);
      assert.equal(next[0].kernel, first);
      assert.ok(next.every((l) => argOf(l, 'hostAbort') === 0));
      assert.equal(argOf(next[0], 'numTokens'), 2);
      await g.close();
    }
  });

  test('tensor I/O and waits on a closed group throw ClosedError, not a driver error', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const { x } = inputs(g, 1, [0, 5]);
    await g.close();
    const closed = { code: 'MOE_CLOSED' };
    assert.throws(() => g.upload(hostTensor('bf16', [1, 64])), closed);
    assert.throws(() => g.download(x), closed);
    assert.throws(() => g.copyInto(x, hostTensor('bf16', [1, 64])), closed);
    assert.throws(() => g.synchronize(), closed);
    assert.throws(() => g.poisonOutputs(0xff), closed);
    assert.throws(() => g.timeOnDevice(() => {}), closed);
  });

  test('a refused combine tells the peers through ep_combine_send alone, with hostAbort', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const { x, idx, w, out } = inputs(g, 2, [0, 5, 1, 6]);
    const first = g.dispatch(x, idx, { topkWeights: w });
    g.dispatch(x, idx, { topkWeights: w }); // the first handle is stale now
    const before = fake.launches.length;
    assert.throws(() => g.combine(out, first.handle), { code: 'MOE_HANDLE' });
    const sent = fake.launches.slice(before);
    assert.deepEqual(
      sent.map((l) => [l.kernel, l.grid, argOf(l, 'hostAbort')]),
      [['ep_combine_send', 1, 1]],
    );
    await g.close();
  });

  test('every pointer a kernel of the call does not read is zero (equal calls, equal argument bytes)', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const { x, idx, w, out } = inputs(g, 3, [0, 5, 1, 6, 2, 7]);
    const before = fake.launches.length;
    const r = g.dispatch(x, idx, { topkWeights: w });
    const mid = fake.launches.length;
    g.combine(out, r.handle);
    const dispatch = fake.launches.slice(before, mid);
    const combine = fake.launches.slice(mid);
    assert.deepEqual(
      dispatch.map((l) => l.kernel),
      ['ep_stage_send', 'ep_stage_pack'],
    );
    assert.deepEqual(
      combine.map((l) => l.kernel),
      ['ep_combine_send', 'ep_combine_reduce'],
    );
    for (const l of dispatch) {
      assert.equal(argOf(l, 'expertOut'), 0n, `${l.kernel}: expertOut`);
      assert.equal(argOf(l, 'x'), x.devicePtr);
    }
    for (const l of combine) {
      assert.equal(argOf(l, 'x'), 0n, `${l.kernel}: x`);
      assert.equal(argOf(l, 'expertOut'), out.devicePtr);
    }
    // the pack and the reduce follow a kernel of the same call: programmatic dependents
    assert.deepEqual(
      [...dispatch, ...combine].map((l) => l.dependent),
      [false, true, false, true],
    );
    await g.close();
  });

  test('dedup: the group stages, takes the weights at dispatch and refuses them at combine', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, { ...small, dedup: true });
    assert.equal(g.dispatchPath, 'staged');
    const { x, idx, w, out } = inputs(g, 2, [0, 1, 4, 6]);
    let before = fake.launches.length;
    assert.throws(() => g.dispatch(x, idx), { code: 'MOE_SHAPE', message: /dedup/ });
    assert.deepEqual(
      fake.launches.slice(before).map((l) => [l.kernel, argOf(l, 'hostAbort')]),
      [['ep_stage_send', 1]],
    );
    before = fake.launches.length;
    const r = g.dispatch(x, idx, { topkWeights: w });
    const send = fake.launches[before];
    assert.equal(argOf(send, 'dedup'), 1);
    assert.equal(argOf(send, 'topkWeights'), w.devicePtr);
    assert.ok((argOf(send, 'carrierPlans') as bigint) !== 0n);
    assert.equal(argOf(send, 'recordBytes'), 32); // 4 * (1 + 2k) = 20 bytes, padded to 16
    assert.throws(() => g.combine(out, r.handle, { topkWeights: w }), {
      code: 'MOE_SHAPE',
      message: /dedup/,
    });
    // the sum of partials has a kernel of its own, flagged for a small batch (the dispatch's records ask
    // for flagged partials, and the combine's kernels expect them); one rank reads its one partial in place
    const ids = [0, 1, 4, 6];
    assert.ok(g.flaggedPartials(0) && g.flaggedPartials(2) && !g.flaggedPartials(33));
    assert.deepEqual(launchesOfCall(fake, g, 2, ids), [
      ['ep_stage_send', 1],
      ['ep_stage_pack', 1],
      ['ep_combine_send', 1],
      ['ep_combine_reduce_flagged', 1],
    ]);
    await g.close();
    // MOE_A2A_FLAGGED_MAX_TOKENS=0: never flagged, not even an empty call
    const unflagged = await withEnv({ MOE_A2A_FLAGGED_MAX_TOKENS: '0' }, () =>
      groupOn(fake, { ...small, dedup: true }),
    );
    for (const [T, tIds] of [
      [2, ids],
      [0, []],
    ] as const) {
      assert.deepEqual(launchesOfCall(fake, unflagged, T, tIds), [
        ['ep_stage_send', 0],
        ['ep_stage_pack', 0],
        ['ep_combine_send', 0],
        ['ep_combine_reduce_dedup', 0],
      ]);
    }
    await unflagged.close();
    // more ranks, more rows in at once: at W = 4 the limit is 16 tokens (flaggedMaxTokens)
    const four = await groupOn(fake, { ...small, world: 4, maxTokensPerRank: 32, dedup: true });
    assert.ok(four.flaggedPartials(16) && !four.flaggedPartials(17));
    await four.close();
    // a group that cannot flag (one rank here) never does, not even for an empty call
    const solo = await groupOn(fake, { ...small, world: 1, dedup: true });
    assert.ok(!solo.flaggedPartials(0) && !solo.flaggedPartials(2));
    assert.deepEqual(launchesOfCall(fake, solo, 0, []), [
      ['ep_dispatch_local', 0],
      ['ep_combine_reduce', 0],
    ]);
    await solo.close();
    await assert.rejects(
      withEnv({ MOE_A2A_FLAGGED_MAX_TOKENS: 'x' }, () => groupOn(fake, { ...small, dedup: true })),
      { code: 'MOE_CONFIG', message: /MOE_A2A_FLAGGED_MAX_TOKENS/ },
    );
    const one = await groupOn(fake, { ...small, world: 1, dedup: true });
    const o = inputs(one, 2, [0, 1, 4, 6]);
    before = fake.launches.length;
    one.combine(o.out, one.dispatch(o.x, o.idx, { topkWeights: o.w }).handle);
    assert.deepEqual(
      fake.launches.slice(before).map((l) => l.kernel),
      ['ep_dispatch_local', 'ep_combine_reduce'],
    );
    await one.close();
  });

  test('a batch past the ids shared memory holds (T*k > EP_STAGE_SMEM_PAIRS) is sent by ep_stage_send_large, in one wave (with dedup, then packed by ep_stage_pack_own)', async () => {
    for (const dedup of [false, true]) {
      const fake = new FakeDriver();
      fake.blocksPerSm = (k) => (k === 'ep_stage_send_large' ? 3 : 2);
      const T = A.EP_STAGE_SMEM_PAIRS / small.topk;
      const g = await groupOn(fake, { ...small, dedup, maxTokensPerRank: T + 1 }, { dispatchPath: 'staged' });
      for (const [tokens, send] of [
        [T, 'ep_stage_send'],
        [T + 1, 'ep_stage_send_large'],
        [1, 'ep_stage_send'],
      ] as const) {
        const ids = Array.from({ length: tokens * small.topk }, (_, i) => i % small.numExperts);
        const { x, idx, w } = inputs(g, tokens, ids);
        const before = fake.launches.length;
        g.dispatch(x, idx, { topkWeights: w });
        const pack = dedup && send === 'ep_stage_send_large' ? 'ep_stage_pack_own' : 'ep_stage_pack';
        assert.deepEqual(
          fake.launches.slice(before).map((l) => l.kernel),
          [send, pack],
          `T = ${tokens}, dedup ${dedup}`,
        );
        const sms = fake.deviceAttribute();
        const rowBlocks = Math.min(tokens, (send === 'ep_stage_send_large' ? 3 : 8) * sms);
        assert.equal(fake.launches[before].grid, rowBlocks + 1, `T = ${tokens}: its grid`);
        if (send === 'ep_stage_send_large') {
          // the occupancy it was sized by was asked at the block it is launched with, no dynamic shared memory
          const q = fake.occupancyQueries.filter((o) => o.kernel === send);
          assert.deepEqual(q, [{ kernel: send, block: fake.launches[before].block, sharedBytes: 0 }]);
        }
      }
      await g.close();
    }
  });

  test('MOE_A2A_SEND_WAVE=0 and MOE_A2A_ONE_WAVE=0 launch the large-batch send at 8 blocks an SM', async () => {
    for (const name of ['MOE_A2A_SEND_WAVE', 'MOE_A2A_ONE_WAVE']) {
      await withEnv({ [name]: '0' }, async () => {
        const fake = new FakeDriver();
        fake.blocksPerSm = () => 3;
        const T = A.EP_STAGE_SMEM_PAIRS / small.topk + 1;
        const g = await groupOn(fake, { ...small, maxTokensPerRank: T }, { dispatchPath: 'staged' });
        const ids = Array.from({ length: T * small.topk }, (_, i) => i % small.numExperts);
        const { x, idx, w } = inputs(g, T, ids);
        const before = fake.launches.length;
        g.dispatch(x, idx, { topkWeights: w });
        assert.equal(fake.launches[before].kernel, 'ep_stage_send_large');
        assert.equal(fake.launches[before].grid, Math.min(T, 8 * fake.deviceAttribute()) + 1, name);
        await g.close();
      });
    }
  });

  test('graph replays follow the protocol: a combine right after its own dispatch, once', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const graph = g.captureGraph(3);
    assert.throws(() => graph.combine(), { code: 'MOE_HANDLE' }, 'no dispatch yet');
    graph.dispatch();
    graph.combine();
    assert.throws(() => graph.combine(), { code: 'MOE_HANDLE' }, 'combined already');
    graph.step();
    assert.throws(() => graph.combine(), { code: 'MOE_HANDLE' }, 'step() combined its dispatch');
    const other = g.captureGraph(3);
    graph.dispatch();
    assert.throws(() => other.combine(), { code: 'MOE_HANDLE' }, "another graph's dispatch");
    graph.combine();
    const replayed = fake.launches.filter((l) => l.fromGraph).map((l) => l.kernel);
    assert.deepEqual(replayed, [
      ...['ep_stage_send', 'ep_stage_pack', 'ep_combine_send', 'ep_combine_reduce'],
      ...['ep_stage_send', 'ep_stage_pack', 'ep_combine_send', 'ep_combine_reduce'],
      ...['ep_stage_send', 'ep_stage_pack', 'ep_combine_send', 'ep_combine_reduce'],
    ]);
    other.close();
    graph.close();
    await g.close();
  });

  test('a refused eager dispatch ends the graph call before it: that graph may not combine', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const graph = g.captureGraph(2);
    graph.dispatch();
    const { idx } = inputs(g, 2, [0, 5, 1, 6]);
    assert.throws(() => g.dispatch(g.upload(hostTensor('bf16', [2, 8])), idx), { code: 'MOE_SHAPE' });
    assert.throws(() => graph.combine(), { code: 'MOE_HANDLE' });
    graph.dispatch();
    graph.combine();
    await g.close();
  });

  test('a copy from the host waits for the group stream first (a fill or a replay may still be on it)', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const graph = g.captureGraph(2);
    fake.order.length = 0;
    g.copyInto(graph.x, hostTensor('bf16', [2, small.hidden]));
    assert.deepEqual(fake.order.slice(0, 2), ['stream sync', 'copy in']);
    await g.close();
  });

  test('captureGraph fills its bound inputs on the device: no host copy of expertOut', async () => {
    const fake = new FakeDriver();
    const big = { ...small, hidden: 1024, maxTokensPerRank: 64 };
    const g = await groupOn(fake, big);
    const c = g.config;
    const copiesBefore = fake.copiesToDevice.length;
    const graph = g.captureGraph(64);
    assert.equal(fake.copiesToDevice.length, copiesBefore, 'nothing copied from the host');
    const outBytes = c.expertRows * c.hidden * 2;
    assert.ok(fake.memsets.some((m) => m.ptr === graph.expertOut.devicePtr && m.bytes === outBytes));
    assert.ok(
      fake.memsets.some((m) => m.ptr === graph.topkIdx.devicePtr && m.value === 0xff),
      'ids start as -1 (every slot dropped)',
    );
    graph.close();
    await g.close();
  });

  test('one kernel module per driver and device, however many groups', async () => {
    const fake = new FakeDriver();
    const a = await groupOn(fake, small);
    const b = await groupOn(fake, { ...small, world: 4, numExperts: 16 });
    assert.equal(fake.modulesLoaded, 1);
    await a.close();
    await b.close();
  });

  test('a creation that fails half-way gives back all it took', async () => {
    const fake = new FakeDriver();
    fake.failFuncSetAttribute = true;
    const log: string[] = [];
    await assert.rejects(groupOn(fake, small, {}, log), /cuFuncSetAttribute failed/);
    assert.equal(fake.live.size, 0, `device allocations left: ${[...fake.live.values()].join(', ')}`);
    assert.equal(fake.streamsLive, 0);
    assert.equal(fake.hostMappedLive, 0);
    assert.ok(log.includes('heap closed'));
  });

  test('close gives back every allocation, the caller-uploaded tensors included', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, small);
    const { x, idx, w, out } = inputs(g, 2, [0, 5, 1, 6]);
    g.combine(out, g.dispatch(x, idx, { topkWeights: w }).handle);
    g.captureGraph(2); // left open: close() closes it
    await g.close();
    assert.equal(fake.live.size, 0);
    assert.equal(fake.streamsLive, 0);
    assert.equal(fake.hostMappedLive, 0);
  });
});

describe('cuda group between hosts (fake driver and rail)', () => {
  const hosts = { ...small, world: 4, numExperts: 8, nodes: 2 };
  const kernels = (fake: FakeDriver, from: number) => fake.launches.slice(from).map((l) => l.kernel);
  const railDispatch = ['ep_rail_plan', 'ep_rail_rows', 'nccl dispatch', 'ep_rail_forward'];
  // (a combine's launches, and its abort's: the same without the reduction)
  const combineAbort = ['ep_combine_send', 'ep_rail_combine', 'nccl combine', 'ep_rail_land'];

  test("a call's NCCL exchanges sit between its kernels, after a warm-up exchange at creation", async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged' });
    assert.deepEqual(kernels(fake, 0), ['nccl dispatch', 'nccl combine'], 'the warm-up');
    const { x, idx, w, out } = inputs(g, 2, [0, 5, 1, 6]);
    let at = fake.launches.length;
    const r = g.dispatch(x, idx, { topkWeights: w });
    assert.deepEqual(kernels(fake, at), ['ep_stage_send', ...railDispatch, 'ep_stage_pack']);
    const sent = fake.launches.slice(at);
    // a kernel after NCCL's is never a programmatic dependent (its wait covers only a kernel of ours)
    assert.deepEqual(
      sent.map((l) => l.dependent),
      [false, true, true, false, false, true],
    );
    for (const l of sent.filter((l) => l.kernel.startsWith('ep_'))) {
      assert.ok(
        Number.isInteger(l.grid) && l.grid >= 1 && l.block >= 32,
        `${l.kernel}: ${l.grid} x ${l.block}`,
      );
      assert.equal(argOf(l, 'nodes'), 2);
      assert.equal(argOf(l, 'ranksPerNode'), 2);
      assert.notEqual(argOf(l, 'railSend'), 0n);
    }
    at = fake.launches.length;
    g.combine(out, r.handle);
    assert.deepEqual(kernels(fake, at), [...combineAbort, 'ep_combine_reduce']);
    assert.deepEqual(
      fake.launches.slice(at).map((l) => l.dependent),
      [false, true, false, false, true],
    );
    assert.throws(() => {
      g.launchMode = 'graph';
    }, /launchMode stays 'direct'/);
    await g.close();
  });

  test('every dispatch is followed by one combine on the stream: refused, skipped, or left at close', async () => {
    const fake = new FakeDriver();
    const log: string[] = [];
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged' }, log);
    const { x, idx, w } = inputs(g, 2, [0, 5, 1, 6]);
    const bad = g.upload(hostTensor('bf16', [2, 32]));
    let at = fake.launches.length;
    assert.throws(() => g.dispatch(bad, idx, { topkWeights: w }), { code: 'MOE_SHAPE' });
    assert.deepEqual(kernels(fake, at), ['ep_stage_send', ...railDispatch, ...combineAbort], 'refused');
    const refused = fake.launches.slice(at);
    assert.equal(argOf(refused[0], 'hostAbort'), 1);
    assert.equal(argOf(refused[1], 'hostAbort'), 0, 'the rail kernels relay as usual');
    assert.equal(argOf(refused[5], 'hostAbort'), 1);
    g.dispatch(x, idx, { topkWeights: w });
    at = fake.launches.length;
    g.dispatch(x, idx, { topkWeights: w }); // the first one's combine skipped
    assert.deepEqual(kernels(fake, at).slice(0, 4), combineAbort, 'skipped');
    assert.equal(argOf(fake.launches[at], 'hostAbort'), 1);
    at = fake.launches.length;
    await g.close();
    assert.deepEqual(kernels(fake, at), combineAbort, 'left at close');
    assert.ok(log.includes('rail closed'));
  });

  test('a stream that never finishes: the rail is aborted after the timeout, the error names this rank, the group is broken', async () => {
    const { fake, log, g, x, idx, w } = await dispatched({ timeoutMs: 200 });
    fake.stuck = true;
    const t0 = performance.now();
    assert.throws(() => g.synchronize(), {
      code: 'MOE_PEER_TIMEOUT',
      message:
        /rank 0: the exchange between hosts failed: it made no progress within 600 ms .*NCCL communicator was aborted/,
    });
    const ms = performance.now() - t0;
    assert.ok(ms >= 590 && ms < 3000, `gave up after ${ms} ms`);
    assert.ok(log.includes('rail aborted'));
    assert.throws(() => g.dispatch(x, idx, { topkWeights: w }), { code: 'MOE_PEER_TIMEOUT' });
    fake.stuck = false;
    await g.close();
  });

  /** What the device would write into the group's error word (the fake's first host-mapped buffer). */
  function deviceError(fake: FakeDriver, code: number, peer: number, call: bigint) {
    const v = fake.hostMapped[0];
    const dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
    dv.setUint32(A.EP_ERROR_OFFSET.peer, peer, true);
    dv.setBigUint64(A.EP_ERROR_OFFSET.callCount, call, true);
    dv.setUint32(A.EP_ERROR_OFFSET.code, code, true);
  }

  /** A group between hosts (fake driver and rail) that has just dispatched once. */
  async function dispatched(options: { timeoutMs?: number } = {}) {
    const fake = new FakeDriver();
    const log: string[] = [];
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged', ...options }, log);
    const io = inputs(g, 2, [0, 5, 1, 6]);
    const r = g.dispatch(io.x, io.idx, { topkWeights: io.w });
    return { fake, log, g, ...io, r };
  }

  test('a dispatch that failed on the device gets its combine abort as soon as the host sees it; its handle is over', async () => {
    const { fake, g, x, idx, w, out, r } = await dispatched();
    deviceError(fake, A.EP_ERR_PEER_ABORT_DISPATCH, 3, 1n);
    let at = fake.launches.length;
    assert.throws(() => g.combine(out, r.handle), { code: 'MOE_PEER_FAILED' });
    assert.deepEqual(kernels(fake, at), combineAbort, 'the exchange its peers wait in');
    at = fake.launches.length;
    assert.throws(() => g.combine(out, r.handle), { code: 'MOE_HANDLE' });
    assert.equal(fake.launches.length, at, 'no second combine');
    g.dispatch(x, idx, { topkWeights: w });
    assert.equal(kernels(fake, at)[0], 'ep_stage_send', 'nothing left to settle');
    await g.close();
  });

  test("an earlier call's error read late does not abandon the dispatch still open", async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged' });
    const { x, idx, w, out } = inputs(g, 2, [0, 5, 1, 6]);
    g.combine(out, g.dispatch(x, idx, { topkWeights: w }).handle);
    const r = g.dispatch(x, idx, { topkWeights: w });
    deviceError(fake, A.EP_ERR_PEER_ABORT_COMBINE, 3, 1n); // (call 1's combine, seen only now)
    let at = fake.launches.length;
    assert.throws(() => g.combine(out, r.handle), { code: 'MOE_PEER_FAILED' });
    assert.equal(fake.launches.length, at, 'nothing launched for call 2');
    at = fake.launches.length;
    g.combine(out, r.handle); // call 2 combines as usual
    assert.deepEqual(kernels(fake, at), [...combineAbort, 'ep_combine_reduce']);
    assert.equal(argOf(fake.launches[at], 'hostAbort'), 0);
    await g.close();
  });

  test("this rank's own bad input: its combine abort goes as soon as the error is seen", async () => {
    const { fake, g, out, r } = await dispatched();
    deviceError(fake, A.EP_ERR_EXPERT_ID, 0, 1n);
    const at = fake.launches.length;
    assert.throws(() => g.synchronize(), { code: 'MOE_ROUTING' });
    assert.deepEqual(kernels(fake, at), combineAbort);
    assert.throws(() => g.combine(out, r.handle), { code: 'MOE_HANDLE' });
    await g.close();
  });

  test("a graph's dispatch that failed is combined by its own combine graph (peers replay the same capture)", async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged' });
    const graph = g.captureGraph(2);
    let at = fake.launches.length;
    graph.dispatch();
    assert.deepEqual(kernels(fake, at), ['ep_stage_send', ...railDispatch, 'ep_stage_pack']);
    deviceError(fake, A.EP_ERR_PEER_ABORT_DISPATCH, 3, 1n);
    at = fake.launches.length;
    assert.throws(() => g.synchronize(), { code: 'MOE_PEER_FAILED' });
    const replayed = fake.launches.slice(at);
    assert.deepEqual(
      replayed.map((l) => l.kernel),
      [...combineAbort, 'ep_combine_reduce'],
    );
    assert.ok(
      replayed.every((l) => l.fromGraph),
      'the captured combine, not an eager abort',
    );
    assert.throws(() => graph.combine(), { code: 'MOE_HANDLE' });
    graph.close();
    await g.close();
  });

  test('a graph launch that fails between hosts breaks the group', async () => {
    const fake = new FakeDriver();
    const g = await groupOn(fake, hosts, { dispatchPath: 'staged' });
    const graph = g.captureGraph(2);
    fake.failGraphLaunch = true;
    assert.throws(() => graph.step(), /cuGraphLaunch failed/);
    fake.failGraphLaunch = false;
    assert.throws(() => graph.step(), /cuGraphLaunch failed/, 'broken: the error it broke with');
    await g.close();
  });

  test('ranks the launcher started on several hosts need the same hosts in the config', async () => {
    const launched = {
      RANK: '0',
      WORLD_SIZE: '4',
      LOCAL_RANK: '0',
      LOCAL_WORLD_SIZE: '2',
      MASTER_ADDR: '127.0.0.1',
      MASTER_PORT: '29500',
    };
    await withEnv(launched, async () => {
      for (const nodes of [1, 4]) {
        await assert.rejects(groupOn(new FakeDriver(), { ...hosts, nodes }, { dispatchPath: 'staged' }), {
          code: 'MOE_CONFIG',
          message: /started the ranks on 2 hosts, 2 on each .* pass nodes: 2/,
        });
      }
      const g = await groupOn(new FakeDriver(), hosts, { dispatchPath: 'staged' }); // nodes: 2 agrees
      await g.close();
    });
  });

  test('close() of a broken group whose stream never finishes aborts the rail and returns', async () => {
    const { fake, log, g, x, idx, w } = await dispatched({ timeoutMs: 100 });
    deviceError(fake, A.EP_ERR_TIMEOUT_DISPATCH, 2, 1n);
    assert.throws(() => g.dispatch(x, idx, { topkWeights: w }), { code: 'MOE_PEER_TIMEOUT' });
    fake.stuck = true;
    await g.close();
    assert.ok(log.includes('rail aborted'));
    assert.ok(log.includes('rail closed'));
    assert.ok(!fake.order.includes('stream sync on a stuck stream'), 'no unbounded wait for the stream');
    assert.ok(log.includes('heap closed, memory kept'), 'the store goes, the memory stays');
  });

  test('a dispatch that timed out on the device also gets its combine abort: its rail peer, failed by an abort, posts its own', async () => {
    const { fake, g, x, idx, w, out, r } = await dispatched();
    deviceError(fake, A.EP_ERR_TIMEOUT_DISPATCH, 3, 1n);
    const at = fake.launches.length;
    assert.throws(() => g.combine(out, r.handle), { code: 'MOE_PEER_TIMEOUT' });
    assert.deepEqual(kernels(fake, at), combineAbort, 'the exchange its peers wait in');
    assert.throws(
      () => g.dispatch(x, idx, { topkWeights: w }),
      /stopped after an earlier failure \(rank 3 did not signal/,
      'broken',
    );
    await g.close();
    assert.equal(kernels(fake, at).length, combineAbort.length, 'nothing more at close');
  });

  test("a broken connection NCCL reports ends the wait at once, with NCCL's words", async () => {
    const { fake, log, g } = await dispatched({ timeoutMs: 300 });
    fake.stuck = true;
    fake.railError = 'ncclRemoteError: connection closed by remote peer';
    const t0 = performance.now();
    assert.throws(() => g.synchronize(), {
      code: 'MOE_PEER_TIMEOUT',
      message: /the exchange between hosts failed: NCCL reported: ncclRemoteError: connection closed/,
    });
    // at once, not after 3 x 300 ms; then the stream is waited for again after the abort (3 x 300 ms here:
    // this fake stream never finishes)
    const ms = performance.now() - t0;
    assert.ok(ms < 1500, `took ${ms} ms`);
    assert.ok(log.includes('rail aborted'));
    fake.stuck = false;
    await g.close();
  });

  test('with dedup the combine send gets a warp for each (carrier, 2 KiB segment) item, not one a row', async () => {
    // W = 2, T = 128, H = 7168 (7 segments of a 14 KiB partial), maxRowsPerPeer 560 as the bench gives it: rows
    // would size the grid at 2 * 560 / 8 = 140 blocks, the items at 2 * 128 * 7 / 8 = 224 (one wave holds 528)
    const input = {
      world: 2,
      numExperts: 16,
      hidden: 7168,
      topk: 8,
      maxTokensPerRank: 128,
      maxRowsPerPeer: 560,
      fp8: true,
      dedup: true,
    };
    const fake = new FakeDriver();
    const g = await groupOn(fake, input, { dispatchPath: 'staged' });
    const t = inputs(g, 1, [0, 1, 2, 3, 8, 9, 10, 11]);
    const before = fake.launches.length;
    g.combine(t.out, g.dispatch(t.x, t.idx, { topkWeights: t.w }).handle);
    await g.close();
    const send = fake.launches.slice(before).find((l) => l.kernel === 'ep_combine_send');
    assert.ok(send, 'ep_combine_send launched');
    assert.equal(send.grid, 224);
  });

  test('the row walkers take their grids from the occupancy the driver reports for each (one wave), unless MOE_A2A_ONE_WAVE=0', async () => {
    // enough rows that no walker's grid is cut by the rows that can exist
    const big = {
      world: 4,
      numExperts: 8,
      hidden: 4096,
      topk: 2,
      maxTokensPerRank: 2100,
      fp8: false,
      dedup: true,
    };
    // every walker its own answer, so that one kernel's cap given to another is caught
    const perSm: Record<string, number> = {
      ep_stage_pack: 1,
      ep_stage_pack_own: 2,
      ep_combine_send: 2,
      ep_recv_view: 3,
      ep_rail_forward: 1,
      ep_rail_combine: 3,
      ep_rail_land: 2,
    };
    const walkers = Object.keys(perSm);
    const ids = [0, 5, 1, 6];
    // (one host: a batch past 4096 ids too, whose pack is ep_stage_pack_own)
    const largeIds = Array.from({ length: 2100 * big.topk }, (_, i) => [0, 5][i % 2]);
    const gridsOf = async (fake: FakeDriver, nodes: number) => {
      const g = await groupOn(fake, { ...big, nodes }, { dispatchPath: 'staged' });
      const t = inputs(g, 2, ids);
      const before = fake.launches.length;
      g.combine(t.out, g.dispatch(t.x, t.idx, { topkWeights: t.w, returnRecv: nodes === 1 }).handle);
      if (nodes === 1) {
        const l = inputs(g, 2100, largeIds);
        g.combine(l.out, g.dispatch(l.x, l.idx, { topkWeights: l.w }).handle);
      }
      await g.close();
      const grids: Record<string, number> = {};
      for (const l of fake.launches.slice(before)) if (walkers.includes(l.kernel)) grids[l.kernel] = l.grid;
      return grids;
    };
    const oneWave = new FakeDriver();
    oneWave.blocksPerSm = (k) => perSm[k] ?? 8;
    const grids = { ...(await gridsOf(oneWave, 1)), ...(await gridsOf(oneWave, 2)) };
    assert.deepEqual(Object.keys(grids).sort(), [...walkers].sort(), 'every walker launched');
    for (const k of walkers) assert.equal(grids[k], perSm[k] * 132, k);
    // MOE_A2A_ONE_WAVE=0: 4 blocks an SM, whatever the occupancy
    const fourPerSm = new FakeDriver();
    fourPerSm.blocksPerSm = () => 1;
    const old = await withEnv({ MOE_A2A_ONE_WAVE: '0' }, async () => ({
      ...(await gridsOf(fourPerSm, 1)),
      ...(await gridsOf(fourPerSm, 2)),
    }));
    for (const k of walkers) assert.equal(old[k], 4 * 132, k);
    // MOE_A2A_WALK_BLOCKS=n: at most n blocks each (checks of the grid-stride loops with few warps)
    const few = await withEnv({ MOE_A2A_WALK_BLOCKS: '3' }, async () => ({
      ...(await gridsOf(new FakeDriver(), 1)),
      ...(await gridsOf(new FakeDriver(), 2)),
    }));
    for (const k of walkers) assert.equal(few[k], 3, k);
    for (const bad of ['0', '1.5', 'x']) {
      await withEnv({ MOE_A2A_WALK_BLOCKS: bad }, async () => {
        await assert.rejects(groupOn(new FakeDriver(), big, { dispatchPath: 'staged' }), {
          code: 'MOE_CONFIG',
          message: /MOE_A2A_WALK_BLOCKS/,
        });
      });
    }
  });
});
