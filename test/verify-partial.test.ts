import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { VerifyCase } from '../src/cli/cases.js';
import type { CaseOutcome } from '../src/cli/rank-verify.js';
import { runScriptSettled, type SettledRank, siblingModule } from '../src/cli/ranks.js';
import { caseRows } from '../src/cli/verify.js';

const partialRank = siblingModule(import.meta.url, 'helpers/partial-rank');

const kase = (name: string) => ({ name }) as VerifyCase;
const outcome = (name: string, pass = true, message?: string): CaseOutcome => ({
  name,
  pass,
  calls: 3,
  ms: 10,
  message,
  heapBytes: 1024,
});
const list = [kase('a'), kase('b'), kase('c')];

describe('verify: a run stopped part-way keeps what finished', () => {
  test('a whole run: every case from every rank, a mismatch naming its rank', () => {
    const ok = (outs: CaseOutcome[]): SettledRank<CaseOutcome[]> => ({
      report: { ok: true, result: outs },
      died: undefined,
    });
    const { rows, failure } = caseRows(list, 2, [
      ok([outcome('a'), outcome('b'), outcome('c')]),
      ok([outcome('a'), outcome('b', false, 'call 2: y differs'), outcome('c')]),
    ]);
    assert.equal(failure, undefined);
    assert.deepEqual(
      rows.map((r) => [r.name, r.pass]),
      [
        ['a', true],
        ['b', false],
        ['c', true],
      ],
    );
    assert.equal(rows[1].message, 'rank 1: call 2: y differs');
  });

  test('a rank that died: the cases every rank finished keep their verdicts, the rest fail with its death', () => {
    const { rows, failure } = caseRows(list, 2, [
      { report: undefined, died: 'exit code SIGTERM', partial: [outcome('a'), outcome('b')] },
      {
        report: undefined,
        died: 'exit code SIGTERM',
        partial: [outcome('a', false, 'call 0: dispatch differs')],
      },
    ]);
    assert.equal(rows[0].pass, false);
    assert.equal(rows[0].message, 'rank 1: call 0: dispatch differs');
    assert.equal(failure, 'rank 0 ended without a result (exit code SIGTERM)');
    for (const r of rows.slice(1)) {
      assert.equal(r.pass, false);
      assert.match(
        r.message ?? '',
        /rank 0 ended without a result \(exit code SIGTERM\) \(before this case ended\)/,
      );
    }
    // every rank finished 'a' and passed it
    const passed = caseRows(list, 2, [
      { report: undefined, died: 'exit code 1', partial: [outcome('a'), outcome('b')] },
      { report: { ok: true, result: [outcome('a'), outcome('b'), outcome('c')] }, died: undefined },
    ]);
    assert.deepEqual(
      passed.rows.map((r) => r.pass),
      [true, true, false],
    );
    // a rank that died after its last case: every case has its verdict, and the failure is still returned
    const after = caseRows(list, 2, [
      { report: undefined, died: 'exit code 139', partial: [outcome('a'), outcome('b'), outcome('c')] },
      { report: { ok: true, result: [outcome('a'), outcome('b'), outcome('c')] }, died: undefined },
    ]);
    assert.ok(after.rows.every((r) => r.pass));
    // the launcher's word on what stopped the run goes with the failure
    const stopped = caseRows(list, 2, [
      {
        report: undefined,
        died: 'exit code SIGTERM',
        partial: [],
        stop: 'received SIGTERM; forwarding it to ranks 0, 1',
      },
      {
        report: undefined,
        died: 'exit code SIGTERM',
        partial: [],
        stop: 'received SIGTERM; forwarding it to ranks 0, 1',
      },
    ]);
    assert.equal(
      stopped.failure,
      'rank 0 ended without a result (exit code SIGTERM) (the launcher: received SIGTERM; forwarding it to ranks 0, 1)',
    );
    assert.match(after.failure ?? '', /rank 0 ended without a result \(exit code 139\)/);
    // a rank that reported fewer outcomes than cases, with no failure: the case says which rank
    const short = caseRows(list, 2, [
      { report: { ok: true, result: [outcome('a'), outcome('b'), outcome('c')] }, died: undefined },
      { report: { ok: true, result: [outcome('a'), outcome('b')] }, died: undefined },
    ]);
    assert.equal(short.rows[2].message, 'rank 1 gave no outcome for this case (before this case ended)');
  });

  test('rank processes hand their partial reports to the run that started them', async () => {
    // (the 'cuda' transport's process path; the script touches no GPU)
    const settled = await runScriptSettled<unknown[]>('cuda', 2, partialRank, {});
    assert.equal(settled[0].died, undefined);
    assert.deepEqual(settled[0].report, {
      ok: true,
      result: [
        { name: 'first', rank: 0 },
        { name: 'second', rank: 0 },
      ],
    });
    assert.equal(settled[1].report, undefined);
    assert.equal(settled[1].died, 'exit code 3');
    assert.match(settled[1].stop ?? '', /rank 1 exited with code 3/);
    assert.deepEqual(settled[1].partial, [{ name: 'first', rank: 1 }]);
  });
});
