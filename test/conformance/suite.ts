/**
 * The conformance suite: every protocol test, for any transport. The cpu transport runs it in CI; the
 * cuda transport runs the same suite on a GPU machine (test/cuda.conformance.test.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultSuite, type VerifyCase } from '../../src/cli/cases.js';
import type { CaseOutcome, VerifyTask } from '../../src/cli/rank-verify.js';
import { runScriptSettled, runTaskOnRanks, siblingModule } from '../../src/cli/ranks.js';
import type { Observation, ScenarioTask } from './rank-scenarios.js';

const scenarioScript = siblingModule(import.meta.url, 'rank-scenarios');

async function verifyAll(transport: 'cpu' | 'cuda', cases: VerifyCase[], timeoutMs = 30_000): Promise<void> {
  // one run of processes per world and hosts (NCCL fixes a process's host at its first communicator)
  const byRun = new Map<string, VerifyCase[]>();
  for (const c of cases) {
    const key = `${c.config.world}/${c.config.nodes ?? 1}`;
    byRun.set(key, [...(byRun.get(key) ?? []), c]);
  }
  for (const list of byRun.values()) {
    const world = list[0].config.world;
    const task: VerifyTask = { kind: 'verify', cases: list, transport, timeoutMs };
    const perRank = await runTaskOnRanks<CaseOutcome[]>(transport, world, task);
    for (const [r, outs] of perRank.entries()) {
      for (const o of outs) assert.ok(o.pass, `rank ${r}, ${o.name}: ${o.message}`);
      assert.equal(outs.length, list.length);
    }
  }
}

async function scenario(transport: 'cpu' | 'cuda', task: Omit<ScenarioTask, 'transport'>) {
  // a hard limit on the whole scenario, so that a hang fails the test instead of stalling the run
  return runScriptSettled<Observation[]>(
    transport,
    task.world,
    scenarioScript,
    { ...task, transport },
    120_000,
  );
}

function step(obs: Observation[], name: string): Observation {
  const o = obs.find((x) => x.step === name);
  assert.ok(o, `no observation for step '${name}'`);
  return o;
}

/** Every rank's observations of a scenario; fails, showing every rank's report, unless each rank reported. */
async function observations(
  transport: 'cpu' | 'cuda',
  task: Omit<ScenarioTask, 'transport'>,
): Promise<Observation[][]> {
  const settled = await scenario(transport, task);
  const all = settled.map((s, r) => `rank ${r}: ${JSON.stringify(s.report ?? s.died)}`).join('\n');
  return settled.map((s) => {
    assert.ok(s.report?.ok, all);
    return s.report.result;
  });
}

/** The correct calls a scenario made between its steps: each matched the oracle; returns them. */
function correctCalls(obs: Observation[], rank: number): Observation[] {
  const calls = obs.filter((x) => x.step.startsWith('correct call'));
  for (const o of calls) assert.equal(o.mismatch, undefined, `rank ${rank} ${o.step}: ${o.mismatch}`);
  return calls;
}

export function conformanceSuite(transport: 'cpu' | 'cuda', skip: string | false): void {
  describe(`conformance: ${transport} transport`, { skip }, () => {
    // every verify-based test runs with the plain protocol and with de-duplication (config.dedup)
    for (const dedup of [false, true]) {
      const tag = dedup ? ', dedup' : '';
      const ofKind = (c: VerifyCase) => (c.config.dedup ?? false) === dedup;

      it(`matches the oracle bit for bit over W, FP8 and every routing scenario (small shapes${tag})`, async () => {
        const cases = defaultSuite(11, 3).filter(
          (c) => c.config.hidden === 256 && c.config.world <= 4 && ofKind(c),
        );
        assert.ok(cases.length >= 40);
        // (the suite pairs dedup with the packed expert layout, the plain protocol with the padded one)
        for (const c of cases) assert.equal(c.name.endsWith(' dedup packed'), dedup, c.name);
        for (const c of cases) assert.equal(c.config.expertLayout, dedup ? 'packed' : 'padded', c.name);
        await verifyAll(transport, cases);
      });

      if (!dedup) {
        it('matches the oracle bit for bit over the direct protocol too (count exchange, rows straight into expertX), both expert layouts', async () => {
          const seen = new Map<string, number>();
          const cases = defaultSuite(13, 2)
            .filter((c) => c.config.hidden === 256 && c.config.world <= 4 && ofKind(c))
            .map((c) => {
              // half the cases of each scenario packed, spread over W and FP8 (padded, packed, packed,
              // padded, ...): rows stored straight into a packed expertX need every count first
              const n = seen.get(c.scenario) ?? 0;
              seen.set(c.scenario, n + 1);
              const expertLayout = n % 4 === 1 || n % 4 === 2 ? ('packed' as const) : ('padded' as const);
              const config = { ...c.config, expertLayout };
              return {
                ...c,
                name: `${c.name} direct ${expertLayout}`,
                config,
                dispatchPath: 'direct' as const,
              };
            });
          assert.ok(cases.length >= 40);
          for (const fp8 of [true, false])
            assert.ok(
              cases.some(
                (c) => c.config.expertLayout === 'packed' && c.config.fp8 === fp8 && c.scenario === 'skewed',
              ),
            );
          await verifyAll(transport, cases);
        });
      }

      it(`stays bit-exact over 200 consecutive calls with fresh data (W = 4${tag})`, async () => {
        const base = defaultSuite(5, 200).find(
          (c) => c.config.world === 4 && c.scenario === 'random' && c.config.fp8 && ofKind(c),
        );
        assert.ok(base);
        const bf16 = {
          ...base,
          name: `${base.name} (bf16)`,
          config: { ...base.config, fp8: false },
          calls: 50,
        };
        await verifyAll(transport, [base, bf16]);
      });
    }
    it('between hosts: matches the oracle bit for bit over W, hosts, FP8, dedup and every routing scenario', async () => {
      const cases = defaultSuite(17, 2)
        .filter((c) => c.config.hidden === 256 && (c.config.world === 2 || c.config.world === 4))
        .flatMap((c) =>
          [2, 4]
            .filter((nodes) => c.config.world % nodes === 0)
            .map((nodes) => ({ ...c, name: `${c.name} nodes=${nodes}`, config: { ...c.config, nodes } })),
        );
      assert.ok(cases.length >= 48);
      assert.ok(cases.some((c) => c.config.nodes === 4 && c.config.dedup && c.scenario === 'skewed'));
      await verifyAll(transport, cases);
    });

    it('between hosts: stays bit-exact over 200 consecutive calls (W = 4 on 2 hosts, dedup and without)', async () => {
      const base = defaultSuite(19, 200).filter(
        (c) =>
          c.config.world === 4 &&
          c.config.hidden === 256 &&
          c.scenario === 'random' &&
          c.config.fp8 &&
          c.tokens > 1,
      );
      assert.equal(base.length, 2);
      await verifyAll(
        transport,
        base.map((c) => ({ ...c, name: `${c.name} nodes=2`, config: { ...c.config, nodes: 2 } })),
      );
    });

    it('matches the oracle bit for bit past the shared-memory ids (T*k > 4096: on cuda, ep_stage_send_large)', async () => {
      const at = (world: number, numExperts: number, hidden: number, topk: number, tokens: number) => ({
        world,
        numExperts,
        hidden,
        topk,
        maxTokensPerRank: tokens,
        fp8: true,
        dedup: true,
      });
      const cases: VerifyCase[] = [
        // T*k not a multiple of 4 (one id a load), bf16
        {
          name: 'k=3',
          config: { ...at(2, 32, 256, 3, 1400), fp8: false },
          scenario: 'skewed',
          tokens: 1400,
          calls: 2,
          seed: 23,
        },
        // slots past 8
        {
          name: 'k=12',
          config: at(2, 64, 256, 12, 400),
          scenario: 'random',
          tokens: 400,
          calls: 2,
          seed: 29,
        },
        // without dedup, on the stage
        {
          name: 'plain',
          config: { ...at(2, 32, 256, 8, 600), dedup: false },
          scenario: 'dropped',
          tokens: 600,
          calls: 2,
          seed: 31,
          dispatchPath: 'staged',
        },
        // three chunks a row: row blocks whose run starts inside a token
        {
          name: 'H=9216',
          config: at(2, 32, 9216, 4, 1100),
          scenario: 'random',
          tokens: 1100,
          calls: 1,
          seed: 37,
        },
        { name: 'W=4', config: at(4, 32, 256, 8, 600), scenario: 'ragged', tokens: 600, calls: 3, seed: 41 },
      ];
      await verifyAll(transport, cases, 60_000);
    });

    for (const [topk, slot] of [
      [4, 3],
      [12, 9],
    ] as const) {
      it(`names the first bad id of a batch past the shared-memory ids (k = ${topk}, T*k > 4096), and the next call is correct (W = 2)`, async () => {
        const perRank = await observations(transport, {
          scenario: 'large-ids',
          world: 2,
          timeoutMs: 10_000,
          topk,
        });
        for (const [rank, obs] of perRank.entries()) {
          correctCalls(obs, rank);
          const bad = step(obs, 'bad ids');
          if (rank === 1) {
            assert.equal(bad.code, 'MOE_ROUTING', bad.message);
            assert.deepEqual([bad.details?.token, bad.details?.slot], [350, slot], bad.message);
            assert.match(bad.message ?? '', /token 350 names expert \d+ twice/);
          } else {
            assert.equal(bad.code, 'MOE_PEER_FAILED', bad.message);
            assert.equal(bad.details?.peer, 1);
          }
        }
      });
    }

    for (const world of [1, 3]) {
      it(`dedup: dispatch without topkWeights or combine with them is refused on that rank, its peers fail the call at once, the next call is correct (W = ${world})`, async () => {
        const perRank = await observations(transport, {
          scenario: 'dedup-weights',
          world,
          timeoutMs: 10_000,
        });
        for (const [rank, obs] of perRank.entries()) {
          assert.equal(correctCalls(obs, rank).length, 4);
          const noW = step(obs, 'dispatch without weights');
          if (rank === 0) {
            assert.equal(noW.code, 'MOE_SHAPE', noW.message);
            assert.equal(noW.details?.argument, 'topkWeights');
            assert.match(noW.message ?? '', /dispatch needs topkWeights f32 \[T, k\] with dedup/);
          } else {
            assert.equal(noW.code, 'MOE_PEER_FAILED', noW.message);
            assert.equal(noW.details?.peer, 0);
            assert.match(noW.message ?? '', /rank 0 abandoned dispatch call \d+/);
            assert.ok((noW.ms ?? 0) < 5000, `the peer learned it after ${noW.ms} ms`);
          }
          const none = step(obs, 'no weights anywhere');
          assert.equal(none.code, 'MOE_SHAPE', none.message);
          assert.match(none.message ?? '', /with dedup/);
          const withW = step(obs, 'combine with weights');
          if (rank === 0) {
            assert.equal(withW.code, 'MOE_SHAPE', withW.message);
            assert.equal(withW.details?.argument, 'topkWeights');
            assert.match(withW.message ?? '', /with dedup the router weights travel with dispatch/);
          } else {
            assert.equal(withW.code, 'MOE_PEER_FAILED', withW.message);
            assert.equal(withW.details?.peer, 0);
            assert.match(withW.message ?? '', /rank 0 abandoned combine call \d+/);
            assert.ok((withW.ms ?? 0) < 5000, `the peer learned it after ${withW.ms} ms`);
          }
          // the refused call is over on every rank: its handle cannot combine any more
          const again = step(obs, 'combine after refusal');
          assert.equal(again.code, 'MOE_HANDLE', again.message);
        }
      });
    }

    for (const [world, dispatchPath, nodes] of [
      [1, undefined, 1],
      [2, undefined, 1],
      [2, 'direct', 1],
      // between hosts: refusals cross through rail peers
      [4, undefined, 2],
    ] as const) {
      const tag = `${dispatchPath ? `, ${dispatchPath}` : ''}${nodes > 1 ? `, ${nodes} hosts` : ''}`;
      it(`rejects bad inputs with named errors, and the next call on the same group is correct (W = ${world}${tag})`, async () => {
        const perRank = await observations(transport, {
          scenario: 'errors',
          world,
          timeoutMs: 10_000,
          dispatchPath,
          nodes,
        });
        for (const [rank, obs] of perRank.entries()) {
          correctCalls(obs, rank);
          // x dtype: rank 0 was wrong; its peer learns which rank abandoned the call
          const dtype = step(obs, 'x dtype');
          if (rank === 0) {
            assert.equal(dtype.code, 'MOE_SHAPE');
            assert.equal(dtype.name, 'ShapeError');
            assert.match(dtype.message ?? '', /x must have dtype bf16, got f32/);
          } else {
            assert.equal(dtype.code, 'MOE_PEER_FAILED');
            assert.equal(dtype.details?.peer, 0);
            assert.match(
              dtype.message ?? '',
              /rank 0 abandoned dispatch call 1: it rejected its input or failed/,
            );
          }
          const shape = step(obs, 'x shape');
          assert.equal(shape.code, 'MOE_SHAPE');
          assert.match(shape.message ?? '', /x must have shape bf16 \[\?, 256\], got \[8, 264\]/);
          const id = step(obs, 'expert id');
          if (rank === world - 1) {
            assert.equal(id.code, 'MOE_ROUTING');
            assert.equal(id.name, 'RoutingError');
            assert.deepEqual([id.details?.token, id.details?.slot, id.details?.expert], [2, 1, 4 * world]);
            assert.match(
              id.message ?? '',
              new RegExp(`topkIdx\\[2\\]\\[1\\] = ${4 * world} is not an expert id`),
            );
          } else {
            assert.equal(id.code, 'MOE_PEER_FAILED');
            assert.equal(id.details?.peer, world - 1);
          }
          const many = step(obs, 'too many tokens');
          if (rank === 0) {
            assert.equal(many.code, 'MOE_SHAPE');
            assert.match(
              many.message ?? '',
              /x has 17 tokens but the group was created for at most maxTokensPerRank = 16/,
            );
          } else {
            assert.equal(many.code, 'MOE_PEER_FAILED');
          }
          assert.equal(step(obs, 'combine').code, 'ok');
          const reused = step(obs, 'handle reused');
          assert.equal(reused.code, 'MOE_HANDLE');
          assert.match(reused.message ?? '', /already combined/);
          const stale = step(obs, 'stale handle');
          assert.equal(stale.code, 'MOE_HANDLE');
          assert.match(
            stale.message ?? '',
            /stale handle: it belongs to call \d+ but the group has dispatched call \d+ since/,
          );
          assert.match(stale.message ?? '', /was abandoned on every rank: dispatch again/);
          const after = step(obs, 'combine after stale');
          assert.equal(after.code, 'MOE_HANDLE');
          assert.match(after.message ?? '', /call \d+ was abandoned .*dispatch again/);
          const foreign = step(obs, 'foreign handle');
          assert.equal(foreign.code, 'MOE_HANDLE');
          assert.match(foreign.message ?? '', /did not come from a dispatch of this group/);
          assert.doesNotMatch(foreign.message ?? '', /abandoned/);
          const oneStale = step(obs, 'one stale handle');
          if (rank === 0) {
            assert.equal(oneStale.code, 'MOE_HANDLE');
          } else {
            assert.equal(oneStale.code, 'MOE_PEER_FAILED');
            assert.equal(oneStale.details?.peer, 0);
            assert.ok((oneStale.ms ?? 0) < 5000, `the peer learned it after ${oneStale.ms} ms`);
          }
          const outShape = step(obs, 'expertOut shape');
          if (rank === 0) {
            assert.equal(outShape.code, 'MOE_SHAPE');
            assert.match(
              outShape.message ?? '',
              // packed (the default): 4 experts of at most 16 rows from each of W ranks, back to back
              new RegExp(`expertOut must have shape bf16 \\[${64 * world}, 256\\], got \\[4, 1, 256\\]`),
            );
          } else {
            assert.equal(outShape.code, 'MOE_PEER_FAILED');
            assert.match(outShape.message ?? '', /rank 0 abandoned combine call \d+/);
          }
          const weights = step(obs, 'missing weights');
          assert.ok(weights.code === 'MOE_SHAPE' || weights.code === 'MOE_PEER_FAILED', weights.code);
          if (weights.code === 'MOE_SHAPE') assert.match(weights.message ?? '', /combine needs topkWeights/);
          const closed = step(obs, 'after close');
          assert.equal(closed.code, 'MOE_CLOSED');
          assert.match(closed.message ?? '', /closed/);
          for (const suffix of ['', ' (dedup)']) {
            const ecap = step(obs, `expert capacity${suffix}`);
            const ecomb = step(obs, `combine after expert capacity${suffix}`);
            if (rank === world - 1) {
              assert.equal(ecap.code, 'MOE_CAPACITY', `expert capacity${suffix}: ${ecap.message}`);
              assert.deepEqual(
                [ecap.details?.expert, ecap.details?.count, ecap.details?.limit],
                [(world - 1) * 4, 8 * world, 4],
              );
              assert.match(ecap.message ?? '', /expert \d+ received \d+ rows but maxRowsPerExpert is 4/);
            } else {
              assert.equal(ecap.code, 'ok', `expert capacity${suffix}: ${ecap.message}`);
              assert.equal(
                ecomb.code,
                'MOE_PEER_FAILED',
                `combine after expert capacity${suffix}: ${ecomb.message}`,
              );
              assert.equal(ecomb.details?.peer, world - 1);
              assert.match(ecomb.message ?? '', /abandoned combine call/);
            }
          }
          const cap = step(obs, 'capacity');
          if (rank === 0) {
            assert.equal(cap.code, 'MOE_CAPACITY');
            assert.equal(cap.name, 'CapacityError');
            assert.deepEqual(
              [cap.details?.destination, cap.details?.count, cap.details?.limit],
              [world - 1, 32, 16],
            );
            assert.match(
              cap.message ?? '',
              new RegExp(`destination rank ${world - 1} would receive 32 rows but maxRowsPerPeer is 16`),
            );
          } else {
            assert.equal(cap.code, 'MOE_PEER_FAILED');
          }
        }
      });
    }

    for (const [world, nodes] of [
      [3, 1],
      [4, 2],
    ]) {
      it(`a rank that refuses two dispatches in a row does not run ahead of slower peers (W = ${world}${nodes > 1 ? `, ${nodes} hosts` : ''})`, async () => {
        const perRank = await observations(transport, {
          scenario: 'refuses-twice',
          world,
          timeoutMs: 10_000,
          nodes,
        });
        for (const [rank, obs] of perRank.entries()) {
          for (const name of ['first refusal', 'second refusal']) {
            const o = step(obs, name);
            if (rank === world - 1) assert.equal(o.code, 'MOE_SHAPE', `${name}: ${o.message}`);
            else {
              assert.equal(o.code, 'MOE_PEER_FAILED', `rank ${rank} ${name}: ${o.message}`);
              assert.equal(o.details?.peer, world - 1);
              assert.ok((o.ms ?? 0) < 5000, `rank ${rank} ${name}: ${o.ms} ms`);
            }
          }
          assert.equal(step(obs, 'correct call after').mismatch, undefined, `rank ${rank}`);
        }
      });
    }

    // (between hosts, rank 2 is host 1's first rank, the rail peer of rank 0)
    for (const [world, nodes] of [
      [3, 1],
      [4, 2],
    ]) {
      // cuda between hosts: a rank on another host learns it through NCCL, which has no deadline of its
      // own: the host gives up after three timeouts and the kernels' waits name the rank after that
      const viaNccl = transport === 'cuda' && nodes > 1;
      it(`a rank that never calls dispatch: the others throw PeerTimeoutError naming it, within the timeout (W = ${world}${nodes > 1 ? `, ${nodes} hosts` : ''})`, async () => {
        const timeoutMs = 1500;
        const t0 = performance.now();
        const settled = await scenario(transport, {
          scenario: 'silent-rank',
          world,
          timeoutMs,
          culprit: 2,
          nodes,
        });
        for (const r of [0, 1, 3].filter((x) => x < world)) {
          const s = settled[r];
          assert.ok(s.report?.ok, `rank ${r}: ${JSON.stringify(s.report ?? s.died)}`);
          const o = s.report.result[0];
          assert.equal(o.code, 'MOE_PEER_TIMEOUT');
          assert.equal(o.name, 'PeerTimeoutError');
          assert.equal(o.details?.peer, 2);
          assert.equal(o.details?.callCount, 1);
          assert.match(o.message ?? '', /rank 2 did not signal its dispatch rows for call 1/);
          assert.ok(
            (o.ms ?? 0) >= timeoutMs * 0.9 && (o.ms ?? 0) < (viaNccl ? 4 : 1) * timeoutMs + 3000,
            `timed out after ${o.ms} ms`,
          );
        }
        assert.ok(settled[2].report?.ok);
        assert.ok(performance.now() - t0 < timeoutMs * (viaNccl ? 6 : 3) + 15_000);
      });

      if (nodes === 1)
        it(`a rank that never calls dispatch while the others send a batch past the shared-memory ids (dedup, T*k > 4096): they throw PeerTimeoutError naming it, within the timeout (W = ${world})`, async () => {
          const timeoutMs = 1500;
          const settled = await scenario(transport, {
            scenario: 'silent-rank',
            world,
            timeoutMs,
            culprit: 2,
            large: true,
          });
          for (const r of [0, 1]) {
            const s = settled[r];
            assert.ok(s.report?.ok, `rank ${r}: ${JSON.stringify(s.report ?? s.died)}`);
            const o = s.report.result[0];
            assert.equal(o.code, 'MOE_PEER_TIMEOUT');
            assert.equal(o.details?.peer, 2);
            assert.equal(o.details?.callCount, 1);
            assert.ok(
              (o.ms ?? 0) >= timeoutMs * 0.9 && (o.ms ?? 0) < timeoutMs + 3000,
              `timed out after ${o.ms} ms`,
            );
          }
          assert.ok(settled[2].report?.ok);
        });

      it(`a rank that throws: the others fail with an error naming it, at once on its own host (W = ${world}${nodes > 1 ? `, ${nodes} hosts` : ''})`, async () => {
        const timeoutMs = viaNccl ? 3000 : 20_000;
        const settled = await scenario(transport, {
          scenario: 'throwing-rank',
          world,
          timeoutMs,
          culprit: 1,
          nodes,
        });
        assert.equal(settled[1].report?.ok, false);
        for (const r of [0, 2, 3].filter((x) => x < world)) {
          const s = settled[r];
          assert.ok(s.report?.ok, `rank ${r}: ${JSON.stringify(s.report ?? s.died)}`);
          const o = s.report.result[0];
          assert.equal(o.details?.peer, 1, o.message);
          // (cuda: rank 0 shares rank 1's host; ranks 2 and 3 hear of it through NCCL, or its silence)
          const G = world / nodes;
          if (viaNccl && Math.floor(r / G) !== Math.floor(1 / G)) {
            assert.ok(
              o.code === 'MOE_PEER_FAILED' || o.code === 'MOE_PEER_TIMEOUT',
              `${o.code}: ${o.message}`,
            );
            assert.ok((o.ms ?? 0) < 4 * timeoutMs + 3000, `took ${o.ms} ms`);
            continue;
          }
          assert.equal(o.code, 'MOE_PEER_FAILED', o.message);
          assert.match(o.message ?? '', /rank 1 (failed|exited|abandoned)/);
          assert.ok((o.ms ?? 0) < 10_000, `took ${o.ms} ms: the failure must not wait for the timeout`);
        }
      });
    }

    // between hosts, in combine: rank 3 (on host 1) dispatches, then never combines. The others hear of it
    // through their rail peers on its host, which must still pass on what its other owners sent; the ranks
    // whose rail peer there is rank 3 itself may name it as the one that passes rows on.
    for (const [world, nodes] of [
      [4, 2],
      [6, 3],
    ]) {
      for (const dedup of [false, true]) {
        it(`a rank that never calls combine on another host is named by every rank (W = ${world}, ${nodes} hosts${dedup ? ', dedup' : ''})`, async () => {
          const viaNccl = transport === 'cuda';
          const timeoutMs = viaNccl ? 3000 : 1500;
          const settled = await scenario(transport, {
            scenario: 'silent-in-combine',
            world,
            timeoutMs,
            culprit: 3,
            nodes,
            dedup,
          });
          const G = world / nodes;
          for (let r = 0; r < world; r++) {
            if (r === 3) continue;
            const s = settled[r];
            assert.ok(s.report?.ok, `rank ${r}: ${JSON.stringify(s.report ?? s.died)}`);
            const o = s.report.result[0];
            assert.ok(
              o.code === 'MOE_PEER_TIMEOUT' || o.code === 'MOE_PEER_FAILED',
              `rank ${r}: ${o.code}: ${o.message}`,
            );
            const relayedByIt = r % G === 3 % G && Math.floor(r / G) !== Math.floor(3 / G);
            if (relayedByIt) assert.match(o.message ?? '', /rank 3/, `rank ${r}`);
            else assert.equal(o.details?.peer, 3, `rank ${r}: ${o.message}`);
            assert.ok((o.ms ?? 0) < (viaNccl ? 4 : 2) * timeoutMs + 3000, `rank ${r} took ${o.ms} ms`);
          }
        });
      }
    }
  });
}
