// The call order every group keeps (src/ep/call-sequence.ts), with a recording stand-in for the
// transport's aborts: what is refused here is refused on every rank.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CallSequence, checkCombineInputs, checkDispatchInputs } from '../src/ep/call-sequence.js';
import { resolveConfig } from '../src/ep/config.js';
import { expertShape } from '../src/ep/expert-layout.js';
import { checkTensor, hostTensor } from '../src/ep/tensor.js';

function sequence() {
  const aborted: string[] = [];
  const seq = new CallSequence<{ n: number }>({}, 3, {
    abortDispatch: (call) => aborted.push(`dispatch ${call}`),
    abortCombine: (call) => aborted.push(`combine ${call}`),
  });
  return { seq, aborted };
}

describe('the call sequence', () => {
  test('a refused dispatch is aborted on every rank, and still counts as a call', () => {
    const { seq, aborted } = sequence();
    assert.throws(
      () =>
        seq.beginDispatch(() => {
          throw new Error('bad x');
        }),
      /bad x/,
    );
    assert.deepEqual(aborted, ['dispatch 1']);
    const { call, checked } = seq.beginDispatch(() => 'ok');
    assert.equal(call, 2);
    assert.equal(checked, 'ok');
    const h = seq.issue(call, 5, { n: 5 });
    assert.deepEqual([h.callCount, h.numTokens, h.rank], [2, 5, 3]);
  });

  test('combine takes its own dispatch once; a refused handle abandons the pending call on every rank', () => {
    const { seq, aborted } = sequence();
    const first = seq.issue(seq.beginDispatch(() => 0).call, 1, { n: 1 });
    const second = seq.issue(seq.beginDispatch(() => 0).call, 1, { n: 2 });
    // a stale handle while call 2 waits for its combine: call 2 is abandoned everywhere
    assert.throws(() => seq.beginCombine(first, () => 0), {
      code: 'MOE_HANDLE',
      message: /stale.*abandoned/s,
    });
    assert.deepEqual(aborted, ['combine 2']);
    assert.throws(() => seq.beginCombine(second, () => 0), { code: 'MOE_HANDLE', message: /abandoned/ });
    assert.deepEqual(aborted, ['combine 2'], 'nothing pending any more: no second abort');
    const third = seq.issue(seq.beginDispatch(() => 0).call, 1, { n: 3 });
    const { state, call } = seq.beginCombine(third, (s) => s.n * 10);
    assert.deepEqual([state.n, call], [3, 3]);
    assert.throws(() => seq.beginCombine(third, () => 0), { message: /already combined/ });
  });

  test('a combine whose input is refused is aborted on every rank and its call abandoned', () => {
    const { seq, aborted } = sequence();
    const h = seq.issue(seq.beginDispatch(() => 0).call, 1, { n: 1 });
    assert.throws(
      () =>
        seq.beginCombine(h, () => {
          throw new Error('bad expertOut');
        }),
      /bad expertOut/,
    );
    assert.deepEqual(aborted, ['combine 1']);
    assert.throws(() => seq.beginCombine(h, () => 0), { message: /abandoned/ });
  });
});

describe('the input checks every transport shares', () => {
  const c = resolveConfig({
    world: 2,
    numExperts: 8,
    hidden: 16,
    topk: 2,
    maxTokensPerRank: 4,
    fp8: false,
    dedup: false,
  });
  const x = hostTensor('bf16', [3, 16]);
  const idx = hostTensor('i32', [3, 2]);
  const w = hostTensor('f32', [3, 2]);
  const out = hostTensor('bf16', expertShape(c, 16));

  test('dispatch: shapes in order, then the token limit, then weights where dedup needs them', () => {
    assert.equal(checkDispatchInputs(c, checkTensor, x, idx, w), 3);
    assert.equal(checkDispatchInputs(c, checkTensor, x, idx, undefined), 3);
    assert.throws(() => checkDispatchInputs(c, checkTensor, hostTensor('bf16', [5, 16]), idx, w), {
      message: /x has 5 tokens but the group was created for at most maxTokensPerRank = 4/,
    });
    assert.throws(() => checkDispatchInputs(c, checkTensor, x, hostTensor('i32', [3, 3]), w), {
      code: 'MOE_SHAPE',
      message: /topkIdx/,
    });
    const dd = { ...c, dedup: true };
    assert.throws(() => checkDispatchInputs(dd, checkTensor, x, idx, undefined), { message: /dedup/ });
  });

  test('combine: the weights come from this call, from dispatch, or (dedup) never from this call', () => {
    assert.equal(checkCombineInputs(c, checkTensor, out, w, 3, false), 'given');
    assert.equal(checkCombineInputs(c, checkTensor, out, undefined, 3, true), 'dispatch');
    assert.throws(() => checkCombineInputs(c, checkTensor, out, undefined, 3, false), {
      message: /combine needs topkWeights/,
    });
    assert.throws(() => checkCombineInputs(c, checkTensor, out, hostTensor('f32', [2, 2]), 3, true), {
      code: 'MOE_SHAPE',
    });
    const dd = { ...c, dedup: true };
    assert.equal(checkCombineInputs(dd, checkTensor, out, undefined, 3, true), 'dispatch');
    assert.throws(() => checkCombineInputs(dd, checkTensor, out, w, 3, true), { message: /dedup/ });
  });
});
