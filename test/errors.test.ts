import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  ArgumentError,
  CapacityError,
  ClosedError,
  ConfigError,
  CudaError,
  ErrorCodes,
  type ErrorDetails,
  errorFromWire,
  errorToWire,
  HandleError,
  InternalError,
  isMoeA2aError,
  LaunchError,
  MoeA2aError,
  NcclError,
  PeerFailedError,
  PeerTimeoutError,
  RoutingError,
  ShapeError,
  TransportUnavailableError,
} from '../src/errors.js';

type Ctor = new (message: string, details?: ErrorDetails) => MoeA2aError;

// Written out by hand: the stable codes are a public contract.
const classes: Array<[Ctor, string, string]> = [
  [ConfigError, 'ConfigError', 'MOE_CONFIG'],
  [ShapeError, 'ShapeError', 'MOE_SHAPE'],
  [RoutingError, 'RoutingError', 'MOE_ROUTING'],
  [CapacityError, 'CapacityError', 'MOE_CAPACITY'],
  [PeerTimeoutError, 'PeerTimeoutError', 'MOE_PEER_TIMEOUT'],
  [PeerFailedError, 'PeerFailedError', 'MOE_PEER_FAILED'],
  [HandleError, 'HandleError', 'MOE_HANDLE'],
  [ClosedError, 'ClosedError', 'MOE_CLOSED'],
  [CudaError, 'CudaError', 'MOE_CUDA'],
  [NcclError, 'NcclError', 'MOE_NCCL'],
  [TransportUnavailableError, 'TransportUnavailableError', 'MOE_TRANSPORT_UNAVAILABLE'],
  [LaunchError, 'LaunchError', 'MOE_LAUNCH'],
  [ArgumentError, 'ArgumentError', 'MOE_ARGUMENT'],
  [InternalError, 'InternalError', 'MOE_INTERNAL'],
];

describe('error classes', () => {
  test('every code in ErrorCodes has exactly one class, and the codes are distinct', () => {
    const codes = Object.values(ErrorCodes);
    assert.equal(new Set(codes).size, codes.length);
    assert.deepEqual([...codes].sort(), classes.map(([, , c]) => c).sort());
  });

  for (const [Cls, name, code] of classes) {
    test(`${name} has code ${code}, its name, message and details`, () => {
      const details = { peer: 3, slot: 1, call: 'cuMemcpy', ok: false, none: null };
      const e = new Cls(`something about ${name}`, details);
      assert.ok(e instanceof Cls);
      assert.ok(e instanceof MoeA2aError);
      assert.ok(e instanceof Error);
      assert.ok(isMoeA2aError(e));
      assert.equal(e.code, code);
      assert.equal(e.name, name);
      assert.equal(e.message, `something about ${name}`);
      assert.deepEqual(e.details, details);
      assert.match(String(e.stack), new RegExp(name));
      // default details: an empty object
      assert.deepEqual(new Cls('x').details, {});
    });
  }

  test('isMoeA2aError is false for plain errors and non-errors', () => {
    assert.equal(isMoeA2aError(new Error('x')), false);
    assert.equal(isMoeA2aError({ code: 'MOE_CONFIG', message: 'x' }), false);
    assert.equal(isMoeA2aError(null), false);
  });
});

describe('a wrapped error keeps its cause', () => {
  test('on the error, through the wire form, and through JSON', () => {
    const root = new TypeError('koffi said no');
    const mid = new CudaError('cuModuleGetFunction failed', { call: 'cuModuleGetFunction' }, { cause: root });
    const top = new TransportUnavailableError('no usable driver', {}, { cause: mid });
    assert.equal(top.cause, mid);
    assert.equal(mid.cause, root);
    const back = errorFromWire(JSON.parse(JSON.stringify(errorToWire(top)))) as MoeA2aError;
    assert.ok(back instanceof TransportUnavailableError);
    const c1 = back.cause as MoeA2aError;
    assert.ok(c1 instanceof CudaError, 'the cause is rebuilt as its class');
    assert.equal(c1.message, 'cuModuleGetFunction failed');
    assert.deepEqual(c1.details, { call: 'cuModuleGetFunction' });
    const c2 = c1.cause as Error;
    assert.equal(c2.name, 'TypeError');
    assert.equal(c2.message, 'koffi said no');
    // no cause: none on the wire
    assert.equal('cause' in errorToWire(new ConfigError('x')), false);
  });

  test('a cycle of causes ends on the wire after a few levels', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    (a as { cause?: unknown }).cause = b;
    let w: { cause?: unknown } | undefined = errorToWire(b);
    let depth = 0;
    while (w?.cause) {
      w = w.cause as { cause?: unknown };
      depth++;
    }
    assert.ok(depth > 0 && depth <= 4, `depth ${depth}`);
  });
});

describe('errorToWire / errorFromWire', () => {
  for (const [Cls, name, code] of classes) {
    test(`${name} round-trips through the wire form (JSON and structuredClone)`, () => {
      const details = { rank: 2, slot: 0, callCount: 17, fields: 'a,b', flag: true, nothing: null };
      const e = new Cls(`msg ${code}`, details);
      const w = errorToWire(e);
      assert.equal(w.code, code);
      assert.equal(w.name, name);
      for (const wire of [JSON.parse(JSON.stringify(w)), structuredClone(w)]) {
        const back = errorFromWire(wire);
        assert.ok(back instanceof Cls, `instanceof ${name}`);
        assert.ok(back instanceof MoeA2aError);
        assert.ok(isMoeA2aError(back));
        assert.equal((back as MoeA2aError).code, code);
        assert.equal(back.name, name);
        assert.equal(back.message, `msg ${code}`);
        assert.deepEqual((back as MoeA2aError).details, details);
        assert.equal(back.stack, e.stack, 'the original stack is kept');
      }
    });
  }

  test('a plain Error crosses as ERR_UNKNOWN and comes back as a plain Error with its name and message', () => {
    const e = new TypeError('bad thing');
    const w = errorToWire(e);
    assert.equal(w.code, 'ERR_UNKNOWN');
    assert.equal(w.name, 'TypeError');
    assert.deepEqual(w.details, {});
    const back = errorFromWire(JSON.parse(JSON.stringify(w)));
    assert.ok(back instanceof Error);
    assert.ok(!(back instanceof MoeA2aError));
    assert.equal(back.name, 'TypeError');
    assert.equal(back.message, 'bad thing');
    assert.equal(back.stack, e.stack);
  });

  test('a non-Error thrown value crosses as its string', () => {
    const w = errorToWire('just a string');
    assert.deepEqual(w, { code: 'ERR_UNKNOWN', name: 'Error', message: 'just a string', details: {} });
    const back = errorFromWire(w);
    assert.ok(back instanceof Error && !(back instanceof MoeA2aError));
    assert.equal(back.message, 'just a string');
    assert.equal(errorToWire(42).message, '42');
    assert.equal(errorToWire(undefined).message, 'undefined');
  });

  test('an unknown code comes back as a plain Error, keeping name and message', () => {
    const back = errorFromWire({
      code: 'MOE_SOMETHING_NEW',
      name: 'FutureError',
      message: 'from a newer peer',
      details: { a: 1 },
    });
    assert.ok(back instanceof Error);
    assert.ok(!isMoeA2aError(back));
    assert.equal(back.name, 'FutureError');
    assert.equal(back.message, 'from a newer peer');
  });

  test('a wire error without a stack gets a local one', () => {
    const back = errorFromWire({
      code: 'MOE_CAPACITY',
      name: 'CapacityError',
      message: 'm',
      details: { count: 5 },
    });
    assert.ok(back instanceof CapacityError);
    assert.equal(back.details.count, 5);
    assert.equal(typeof back.stack, 'string');
  });
});

describe('a broken group says what broke it', () => {
  test('a peer that timed out: PeerFailedError naming it; a local fault: its own kind; the first failure as cause', async () => {
    const { checkUsable } = await import('../src/ep/call-errors.js');
    const timeout = new PeerTimeoutError('rank 2 did not signal', { peer: 2, slot: 0 });
    assert.throws(
      () => checkUsable(false, timeout),
      (e: MoeA2aError) => e.code === 'MOE_PEER_FAILED' && e.details.peer === 2 && e.cause === timeout,
    );
    const fault = new CudaError('cuStreamSynchronize failed: CUDA_ERROR_ILLEGAL_ADDRESS', {
      call: 'cuStreamSynchronize',
    });
    assert.throws(
      () => checkUsable(false, fault),
      (e: MoeA2aError) =>
        e instanceof CudaError &&
        e.details.call === 'cuStreamSynchronize' &&
        e.cause === fault &&
        /stopped after an earlier failure \(cuStreamSynchronize failed/.test(e.message),
    );
    assert.throws(() => checkUsable(true, null), { code: 'MOE_CLOSED' });
    checkUsable(false, null);
  });
});
