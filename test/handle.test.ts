// Combine handles (src/ep/handle.ts): what a caller can see and do with one, without a transport.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { HandleRegistry } from '../src/ep/handle.ts';
import { HandleError } from '../src/errors.ts';

describe('combine handles', () => {
  const group = {};
  const state = { tokens: 'state of call 1' };

  test('a handle shows its facts, frozen, and copies keep them', () => {
    const h = new HandleRegistry<object>().issue(group, 1, 24, 3, state);
    assert.deepEqual({ ...h }, { callCount: 1, numTokens: 24, rank: 3 });
    assert.deepEqual(structuredClone(h), { callCount: 1, numTokens: 24, rank: 3 });
    assert.ok(Object.isFrozen(h));
    assert.throws(() => {
      (h as { callCount: number }).callCount = 2;
    }, TypeError);
  });

  test('take returns the state once, for the latest call of its owner only', () => {
    const reg = new HandleRegistry<object>();
    const h = reg.issue(group, 1, 24, 0, state);
    assert.throws(() => reg.take({}, h, 1), HandleError, 'another group');
    assert.throws(() => reg.take(group, h, 2), /stale handle/);
    assert.equal(reg.take(group, h, 1), state);
    assert.throws(() => reg.take(group, h, 1), /already combined/);
  });

  test('a copy, a prototype-made object or a proxy is refused with a HandleError', () => {
    const reg = new HandleRegistry<object>();
    const h = reg.issue(group, 1, 24, 0, state);
    const fakes = [{ ...h }, Object.create(Object.getPrototypeOf(h)), new Proxy(h, {}), null, 7];
    for (const fake of fakes) assert.throws(() => reg.take(group, fake, 1), HandleError);
    assert.equal(reg.take(group, h, 1), state, 'the real one still works');
  });

  test('a later dispatch abandons the call still waiting for its combine', () => {
    const reg = new HandleRegistry<object>();
    const first = reg.issue(group, 1, 8, 0, state);
    reg.issue(group, 2, 8, 0, state);
    assert.throws(() => reg.take(group, first, 1), /abandoned/);
  });
});
