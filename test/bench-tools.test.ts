import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { kernelBytes } from '../src/cli/bench.js';
import { parseLastJsonLine } from '../src/cli/bench-baselines.js';
import { callBytes } from '../src/cli/bench-bytes.js';
import { KERNEL_SETTINGS, kernelSettings } from '../src/cli/common.js';
import { SEGMENT_MEANING, STAMP_ORDER, segmentMeaning, stampSplit } from '../src/cli/stamps.js';
import { resolveConfig } from '../src/ep/config.js';
import { EP_STAMP, EP_STAMPS } from '../src/shmem/cuda/args.js';
import { fatbinPath } from '../src/shmem/cuda/available.js';

describe('bench: bytes of a call', () => {
  test('DeepEP counts every selection; the wire only pairs of other ranks (hand-worked)', () => {
    const cfg = resolveConfig({ world: 2, numExperts: 8, hidden: 256, topk: 2, maxTokensPerRank: 3 });
    // rank 1 owns experts 4..7; 5 selections, 2 of them remote (experts 0 and 3), one slot dropped
    const idx = Int32Array.from([4, 0, 5, -1, 3, 7]);
    const b = callBytes(cfg, idx, 1);
    assert.equal(b.selections, 5);
    assert.equal(b.remote, 2);
    assert.equal(b.deepepDispatch, 5 * (256 + 2 * 4 + 16));
    assert.equal(b.deepepCombine, 5 * 512);
    assert.equal(b.wireDispatch, 2 * (256 + 2 * 4));
    assert.equal(b.wireCombine, 2 * 512);
    const bf16 = callBytes(resolveConfig({ ...cfg, fp8: false }), idx, 1);
    assert.equal(bf16.deepepDispatch, 5 * 512);
    assert.equal(bf16.wireDispatch, 2 * 512);
  });

  test('kernelBytes: the staged path adds the pack (every received row read and written once more)', () => {
    const cfg = resolveConfig({ world: 2, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    const direct = kernelBytes(cfg, 128, 'direct');
    const staged = kernelBytes(cfg, 128, 'staged');
    assert.equal(staged.dispatch - direct.dispatch, 2 * 1024 * (7168 + 56 * 4));
    assert.equal(staged.combine, direct.combine);
    const one = resolveConfig({ world: 1, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    assert.deepEqual(
      kernelBytes(one, 128, 'staged'),
      kernelBytes(one, 128, 'direct'),
      'one rank never stages',
    );
  });
});

/** Stamps of one call: `at[name] = ns`, every other slot 0. */
function call(at: Partial<Record<keyof typeof EP_STAMP, number>>): number[] {
  const s = new Array(EP_STAMPS).fill(0);
  for (const [k, v] of Object.entries(at)) s[EP_STAMP[k as keyof typeof EP_STAMP]] = v;
  return s;
}

describe('bench: where the time goes (stamps)', () => {
  test('segments between the stamps a call wrote, in protocol order, the slowest rank per segment', () => {
    // rank 1's clock reads 40 us behind rank 0's; its pack takes longer
    const r0 = [0, 1].map((i) =>
      call({
        BARRIER_END: 1e6 + i,
        DISPATCH_BEGIN: 1e6 + 500 + i,
        DISPATCH_TAIL: 1e6 + 2500,
        DISPATCH_ARRIVED: 1e6 + 4500,
        PACK_BEGIN: 1e6 + 5000,
        PACK_END: 1e6 + 7000,
        REDUCE_END: 1e6 + 9000,
      }),
    );
    const r1 = [0, 1].map((i) =>
      call({
        BARRIER_END: 960_000 + 300 - i,
        DISPATCH_BEGIN: 960_000 + 800,
        DISPATCH_TAIL: 960_000 + 2800,
        DISPATCH_ARRIVED: 960_000 + 4800,
        PACK_BEGIN: 960_000 + 5300,
        PACK_END: 960_000 + 8300,
        REDUCE_END: 960_000 + 9300,
      }),
    );
    const sp = stampSplit([r0, r1]);
    assert.deepEqual(
      sp.segments.map((s) => s.to),
      ['DISPATCH_TAIL', 'DISPATCH_ARRIVED', 'PACK_BEGIN', 'PACK_END', 'REDUCE_END'],
    );
    const pack = sp.segments.find((s) => s.to === 'PACK_END');
    assert.ok(pack);
    assert.deepEqual(pack.perRank, [2, 3]);
    assert.equal(pack.us, 3);
    // rank 0's second call began 1 ns late: (8.5 + 8.499) / 2
    assert.ok(Math.abs(sp.totalPerRank[0] - 8.4995) < 1e-9, String(sp.totalPerRank[0]));
    assert.equal(sp.totalPerRank[1], 8.5);
    // the barrier's end gives the clocks' offset: rank 1 = -40 us + 0.3 us, give or take a call's ns
    assert.ok(sp.clockOffsetUs);
    assert.ok(Math.abs(sp.clockOffsetUs[1] - (-40 + 0.3 - 0.001)) < 1e-9, String(sp.clockOffsetUs[1]));
    // offsets removed: both ranks began 0.5 us after their barrier
    assert.ok(sp.startSkewUs !== null && sp.startSkewUs < 0.01, String(sp.startSkewUs));
  });

  test('one rank: no offsets or skew; the order covers every stamp but the barrier', () => {
    const sp = stampSplit([[call({ DISPATCH_BEGIN: 10, ROWS_BEGIN: 2010 })]]);
    assert.equal(sp.segments.length, 1);
    assert.equal(sp.segments[0].us, 2);
    assert.equal(sp.clockOffsetUs, null);
    assert.equal(sp.startSkewUs, null);
    assert.equal(STAMP_ORDER.length, Object.keys(EP_STAMP).length - 1);
    assert.ok(!STAMP_ORDER.includes('BARRIER_END'));
  });
});

describe('bench: baseline output', () => {
  test('the last JSON line is the result; its error field, or garbage, becomes a reason', () => {
    assert.deepEqual(parseLastJsonLine('noise\n{"results": [1]}\n', 's.py'), { results: [1] });
    assert.equal(parseLastJsonLine('{"error": "no GPU"}', 's.py'), 'no GPU');
    assert.match(parseLastJsonLine('Traceback ...', 's.py') as string, /unexpected output from s.py/);
  });
});

describe('bench: what a run records of its settings', () => {
  test('the kernel settings set in the environment, and only those', () => {
    assert.deepEqual(kernelSettings({}), {});
    const env = {
      MOE_A2A_FLAGGED_MAX_TOKENS: '0',
      MOE_A2A_FATBIN: '/x/ep.fatbin',
      MOE_A2A_EAGER_GRAPHS: '',
      PATH: '/bin',
    };
    assert.deepEqual(kernelSettings(env), {
      MOE_A2A_FLAGGED_MAX_TOKENS: '0',
      MOE_A2A_FATBIN: '/x/ep.fatbin',
    });
    for (const name of KERNEL_SETTINGS)
      assert.deepEqual(Object.keys(kernelSettings({ [name]: '1' })), [name]);
  });

  test('MOE_A2A_FATBIN empty is unset, for the kernels loaded as for the settings recorded', () => {
    const built = fatbinPath({});
    assert.match(built, /dist[/\\]kernels[/\\]ep\.fatbin$/);
    assert.equal(fatbinPath({ MOE_A2A_FATBIN: '' }), built);
    assert.equal(fatbinPath({ MOE_A2A_FATBIN: '/x/ep.fatbin' }), '/x/ep.fatbin');
  });

  test('a segment is named by its end, except the two that flagged partials overlap', () => {
    assert.equal(segmentMeaning({ from: 'PACK_END', to: 'COMBINE_BEGIN' }), SEGMENT_MEANING.COMBINE_BEGIN);
    assert.equal(segmentMeaning({ from: 'REDUCE_BEGIN', to: 'REDUCE_END' }), SEGMENT_MEANING.REDUCE_END);
    assert.match(segmentMeaning({ from: 'COMBINE_TAIL', to: 'REDUCE_END' }), /flagged/);
    assert.match(segmentMeaning({ from: 'COMBINE_BEGIN', to: 'COMBINE_TAIL' }), /unless flagged/);
    // between hosts, the two segments that hold the rail kernels and NCCL's exchange say so; on one host
    // they keep their names
    assert.match(segmentMeaning({ from: 'DISPATCH_TAIL', to: 'DISPATCH_ARRIVED' }, true), /NCCL/);
    assert.match(segmentMeaning({ from: 'COMBINE_ARRIVED', to: 'REDUCE_BEGIN' }, true), /NCCL/);
    assert.equal(
      segmentMeaning({ from: 'DISPATCH_TAIL', to: 'DISPATCH_ARRIVED' }),
      SEGMENT_MEANING.DISPATCH_ARRIVED,
    );
    assert.equal(
      segmentMeaning({ from: 'COMBINE_ARRIVED', to: 'REDUCE_BEGIN' }),
      SEGMENT_MEANING.REDUCE_BEGIN,
    );
    assert.equal(
      segmentMeaning({ from: 'PACK_END', to: 'COMBINE_BEGIN' }, true),
      SEGMENT_MEANING.COMBINE_BEGIN,
    );
  });
});
