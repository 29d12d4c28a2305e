// What the host makes of each error record the kernels write (kernels/ep_args.h EP_ERR_*): the class,
// code and details the cpu transport gives the same fault.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import * as A from '../src/shmem/cuda/args.js';
import { deviceError } from '../src/shmem/cuda/device-errors.js';

const cfg = resolveConfig({ world: 4, numExperts: 32, hidden: 256, topk: 4, maxTokensPerRank: 16 });
const rec = (code: number, o: Partial<A.EpErrorRecord> = {}): A.EpErrorRecord => ({
  code,
  peer: 2,
  slot: 1,
  aux: 0,
  callCount: 7n,
  a: 0n,
  b: 0n,
  ...o,
});

test('every device error code becomes the named error, with the record in its details', () => {
  const cases: Array<[A.EpErrorRecord, string, Record<string, unknown>, RegExp]> = [
    [rec(A.EP_ERR_TIMEOUT_DISPATCH), 'MOE_PEER_TIMEOUT', { peer: 2, slot: 1, callCount: 7 }, /rank 2/],
    [rec(A.EP_ERR_TIMEOUT_COMBINE), 'MOE_PEER_TIMEOUT', { peer: 2, phase: 'combine' }, /combine/],
    [rec(A.EP_ERR_TIMEOUT_BARRIER), 'MOE_PEER_TIMEOUT', { peer: 2, phase: 'barrier' }, /barrier 7/],
    [
      rec(A.EP_ERR_CAPACITY, { aux: A.EP_CAPACITY_AUX_SEND, a: 3n, b: 99n }),
      'MOE_CAPACITY',
      { destination: 3, count: 99, limit: cfg.maxRowsPerPeer },
      /99/,
    ],
    [
      rec(A.EP_ERR_CAPACITY, { aux: 1, a: 5n, b: 70n }),
      'MOE_CAPACITY',
      { expert: 5, count: 70, limit: cfg.expertCapacity },
      /70/,
    ],
    [
      rec(A.EP_ERR_EXPERT_ID, { a: 4n, b: 2n, aux: 40 }),
      'MOE_ROUTING',
      { token: 4, slot: 2, expert: 40 },
      /40/,
    ],
    [rec(A.EP_ERR_DUPLICATE, { a: 1n, b: 3n, aux: 9 }), 'MOE_ROUTING', { token: 1, slot: 3 }, /9/],
    [rec(A.EP_ERR_PEER_ABORT_DISPATCH), 'MOE_PEER_FAILED', { peer: 2, callCount: 7 }, /dispatch/],
    [rec(A.EP_ERR_PEER_ABORT_COMBINE), 'MOE_PEER_FAILED', { peer: 2, callCount: 7 }, /combine/],
    [rec(99), 'MOE_INTERNAL', { code: 99 }, /unknown error code 99/],
  ];
  for (const [r, code, details, message] of cases) {
    const e = deviceError(r, cfg);
    assert.equal(e.code, code, `code ${r.code}`);
    assert.match(e.message, message, `code ${r.code}`);
    for (const [k, v] of Object.entries(details)) assert.equal(e.details[k], v, `code ${r.code}: ${k}`);
  }
});
