/**
 * A rank program for the conformance suite's failure scenarios. Each rank reports what it observed
 * (the error class, code, message and details of each step, and whether the correct call that
 * follows each bad one matched the oracle), and the test asserts on those observations.
 */

import type { VerifyCase } from '../../src/cli/cases.js';
import { groupIo } from '../../src/cli/device-io.js';
import { rankMain } from '../../src/cli/rank-io.js';
import { verifyCall } from '../../src/cli/rank-verify.js';
import { createGroup } from '../../src/create.js';
import type { EpGroup } from '../../src/ep/api.js';
import { resolveConfig } from '../../src/ep/config.js';
import { expertShape } from '../../src/ep/expert-layout.js';
import { hostTensor } from '../../src/ep/tensor.js';
import { type ErrorDetails, errorToWire } from '../../src/errors.js';

export interface ScenarioTask {
  scenario:
    | 'errors'
    | 'large-ids'
    | 'dedup-weights'
    | 'silent-rank'
    | 'throwing-rank'
    | 'refuses-twice'
    | 'silent-in-combine';
  transport: 'cpu' | 'cuda';
  world: number;
  timeoutMs: number;
  /** silent-rank / throwing-rank / silent-in-combine: the rank that misbehaves. */
  culprit?: number;
  /** The dispatch path the groups ask for (errors: the refusals reach peers through either protocol). */
  dispatchPath?: 'staged' | 'direct';
  /** Hosts the ranks span (refusals and failures reach other hosts through the rail peers). */
  nodes?: number;
  /** silent-in-combine: the de-duplicated protocol (default off). */
  dedup?: boolean;
  /** large-ids: k (4 or 12). */
  topk?: number;
  /**
   * silent-rank: the others dispatch a batch past the kernels' shared-memory ids with dedup (T*k = 4400: on cuda,
   * ep_stage_send_large, whose blocks wait for every peer's counts before their rows).
   */
  large?: boolean;
}

export interface Observation {
  step: string;
  /** The error's code and class name, or 'ok'. */
  code: string;
  name?: string;
  message?: string;
  details?: ErrorDetails;
  /** For a correct call after a bad one: undefined when it matched the oracle, else the mismatch. */
  mismatch?: string;
  ms?: number;
}

const io = groupIo;

function small(world: number, extra: Partial<VerifyCase['config']> = {}): VerifyCase {
  return {
    name: 'conformance',
    config: {
      world,
      numExperts: 4 * world,
      hidden: 256,
      topk: 4,
      maxTokensPerRank: 16,
      fp8: true,
      dedup: false,
      ...extra,
    },
    scenario: 'random',
    tokens: 8,
    calls: 1,
    seed: 7,
  };
}

/** Waits for the device (cuda) so that an error the kernels found is reported in this step. */
function checkpoint(g: EpGroup<unknown>): void {
  (g as { synchronize?: () => void }).synchronize?.();
}

let current: EpGroup<unknown> | null = null;

/** Creates the case's group on this rank and makes it the one observe() checkpoints. */
async function openGroup(task: ScenarioTask, kase: VerifyCase) {
  const g: EpGroup<unknown> = await createGroup({
    ...kase.config,
    transport: task.transport,
    timeoutMs: task.timeoutMs,
    ...(task.dispatchPath && kase.config.dedup !== true ? { dispatchPath: task.dispatchPath } : {}),
  });
  current = g;
  return { g, cfg: resolveConfig(kase.config) };
}

async function observe(step: string, fn: () => unknown): Promise<Observation> {
  const t0 = performance.now();
  if (process.env.MOE_A2A_TRACE) process.stderr.write(`rank ${process.env.RANK}: ${step}\n`);
  try {
    await fn();
    if (current) checkpoint(current);
    return { step, code: 'ok', ms: performance.now() - t0 };
  } catch (err) {
    const w = errorToWire(err);
    return {
      step,
      code: w.code,
      name: w.name,
      message: w.message,
      details: w.details,
      ms: performance.now() - t0,
    };
  }
}

async function errorSteps(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const obs: Observation[] = [];
  const kase = small(task.world, task.nodes ? { nodes: task.nodes } : {});
  const { g, cfg } = await openGroup(task, kase);
  let call = 0;
  const correct = async (after: string) => {
    if (process.env.MOE_A2A_TRACE) process.stderr.write(`rank ${rank}: correct call after ${after}\n`);
    const mismatch = verifyCall(g, cfg, kase, call++, rank, io);
    obs.push({ step: `correct call after ${after}`, code: 'ok', mismatch });
  };
  const T = 8;
  const H = cfg.hidden;
  const k = cfg.topk;
  const goodX = () => io.upload(g, hostTensor('bf16', [T, H]));
  const goodIdx = () => io.upload(g, goodIds(T, k, task.world, cfg.expertsPerRank));
  const w = () => io.upload(g, hostTensor('f32', [T, k], new Float32Array(T * k).fill(0.5)));

  // 1. rank 0 passes x with the wrong dtype; the others pass good input
  obs.push(
    await observe('x dtype', () =>
      g.dispatch(rank === 0 ? io.upload(g, hostTensor('f32', [T, H])) : goodX(), goodIdx(), {
        topkWeights: w(),
      }),
    ),
  );
  await correct('x dtype');
  // 2. every rank passes x with the wrong hidden size
  obs.push(
    await observe('x shape', () => g.dispatch(io.upload(g, hostTensor('bf16', [T, H + 8])), goodIdx())),
  );
  await correct('x shape');
  // 3. the last rank names an expert id out of range at token 2, slot 1
  obs.push(
    await observe('expert id', () => {
      const idx = new Int32Array(T * k);
      for (let i = 0; i < idx.length; i++) idx[i] = i % k;
      if (rank === task.world - 1) idx[2 * k + 1] = cfg.numExperts;
      return g.dispatch(goodX(), io.upload(g, hostTensor('i32', [T, k], idx)));
    }),
  );
  await correct('expert id');
  // 4. rank 0 passes more tokens than maxTokensPerRank
  obs.push(
    await observe('too many tokens', () => {
      const t = rank === 0 ? cfg.maxTokensPerRank + 1 : T;
      return g.dispatch(
        io.upload(g, hostTensor('bf16', [t, H])),
        io.upload(g, hostTensor('i32', [t, k], new Int32Array(t * k).fill(-1))),
      );
    }),
  );
  await correct('too many tokens');
  // 5. handles: reusing one is refused locally; a stale one also abandons the call that still waits
  // for its combine, on every rank; a foreign one (nothing waiting) is refused locally
  const out = () => io.upload(g, hostTensor('bf16', expertShape(cfg, H)));
  const done = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  obs.push(await observe('combine', () => g.combine(out(), done.handle)));
  obs.push(await observe('handle reused', () => g.combine(out(), done.handle)));
  const first = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  const second = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  obs.push(await observe('stale handle', () => g.combine(out(), first.handle)));
  obs.push(await observe('combine after stale', () => g.combine(out(), second.handle)));
  obs.push(await observe('foreign handle', () => g.combine(out(), { callCount: 1, numTokens: T, rank })));
  await correct('handles');
  // one rank passes a stale handle while its peer combines the right call: the peer is told at once
  const a1 = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  const b1 = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  obs.push(await observe('one stale handle', () => g.combine(out(), (rank === 0 ? a1 : b1).handle)));
  await correct('one stale handle');
  const third = g.dispatch(goodX(), goodIdx(), { topkWeights: w() });
  obs.push(
    await observe('expertOut shape', () =>
      g.combine(
        rank === 0 ? io.upload(g, hostTensor('bf16', [cfg.expertsPerRank, 1, H])) : out(),
        third.handle,
      ),
    ),
  );
  await correct('expertOut shape');
  // 7. no weights anywhere
  const fourth = g.dispatch(goodX(), goodIdx());
  obs.push(await observe('missing weights', () => g.combine(out(), fourth.handle)));
  await correct('missing weights');
  await g.close();
  current = null;
  obs.push(await observe('after close', () => g.dispatch(goodX(), goodIdx())));

  // 8. capacity: a group with room for 16 rows per peer; rank 0 sends all 32 pairs of 8 tokens to one rank
  const capCase = small(task.world, { maxRowsPerPeer: 16 });
  const { g: cg, cfg: capCfg } = await openGroup(task, capCase);
  obs.push(
    await observe('capacity', () => {
      const idx = new Int32Array(T * k);
      const dest = task.world - 1;
      for (let t = 0; t < T; t++)
        for (let j = 0; j < k; j++) idx[t * k + j] = dest * capCfg.expertsPerRank + j;
      return cg.dispatch(
        io.upload(cg, hostTensor('bf16', [T, H])),
        io.upload(cg, hostTensor('i32', [T, k], rank === 0 ? idx : new Int32Array(T * k).fill(-1))),
      );
    }),
  );
  const mismatch = verifyCall(cg, capCfg, { ...capCase, tokens: 2 }, 0, rank, io);
  obs.push({ step: 'correct call after capacity', code: 'ok', mismatch });
  await cg.close();

  // 9. per-expert capacity: room for 4 rows per expert; every rank sends 8 tokens to expert 0 of the
  // last rank, which then holds 8 * world rows for it: that rank's dispatch fails, its peers' combine.
  // Without dedup, and with it (the staged pack finds the expert over capacity; its steps end in " (dedup)")
  for (const dedup of [false, true]) obs.push(...(await expertCapacitySteps(task, rank, dedup)));
  return obs;
}

/** Scenario 9 of errorSteps (its step names end in " (dedup)" with dedup on), then a correct call. */
async function expertCapacitySteps(task: ScenarioTask, rank: number, dedup: boolean): Promise<Observation[]> {
  const obs: Observation[] = [];
  const suffix = dedup ? ' (dedup)' : '';
  const expCase = small(task.world, { maxRowsPerExpert: 4, dedup });
  const { g: eg, cfg: expCfg } = await openGroup(task, expCase);
  const T = expCase.tokens;
  const k = expCfg.topk;
  const H = expCfg.hidden;
  const target = (task.world - 1) * expCfg.expertsPerRank;
  const toOne = new Int32Array(T * k).fill(-1);
  for (let t = 0; t < T; t++) toOne[t * k] = target;
  let pending: ReturnType<EpGroup<unknown>['dispatch']> | null = null;
  const capObs = await observe(`expert capacity${suffix}`, () => {
    pending = eg.dispatch(
      io.upload(eg, hostTensor('bf16', [T, H])),
      io.upload(eg, hostTensor('i32', [T, k], toOne)),
      {
        topkWeights: io.upload(eg, hostTensor('f32', [T, k], new Float32Array(T * k).fill(1))),
      },
    );
  });
  obs.push(capObs);
  const p = pending as ReturnType<EpGroup<unknown>['dispatch']> | null;
  // the rank whose dispatch failed has nothing to combine; its peers do, and learn of the failure
  obs.push(
    await observe(`combine after expert capacity${suffix}`, () => {
      if (p && capObs.code === 'ok') {
        eg.combine(io.upload(eg, hostTensor('bf16', expertShape(expCfg, H))), p.handle);
      }
    }),
  );
  const expMismatch = verifyCall(eg, expCfg, { ...expCase, tokens: 1 }, 0, rank, io);
  obs.push({ step: `correct call after expert capacity${suffix}`, code: 'ok', mismatch: expMismatch });
  await eg.close();
  return obs;
}

/**
 * Bad ids in a batch past the kernels' shared-memory ids (T*k = 4400 or 4800 > 4096: on cuda, ep_stage_send_large,
 * which checks them from L2, a token a thread for k <= 8 and a pair a thread past it): the last rank names one
 * expert twice at token 350 (slot 3 repeats slot 1; k = 12: slot 9 repeats slot 2) and an id out of range at token
 * 370: the first is reported. Correct calls of that size before and after.
 */
async function largeIdSteps(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const obs: Observation[] = [];
  const k = task.topk ?? 4;
  const T = k === 12 ? 400 : 1100;
  const kase: VerifyCase = {
    ...small(task.world, { dedup: true, maxTokensPerRank: T, topk: k, numExperts: 16 * task.world }),
    name: 'conformance large ids',
    tokens: T,
  };
  const { g, cfg } = await openGroup(task, kase);
  let call = 0;
  const correct = (after: string) => {
    const mismatch = verifyCall(g, cfg, kase, call++, rank, io);
    obs.push({ step: `correct call after ${after}`, code: 'ok', mismatch });
  };
  correct('group open');
  const ids = goodIds(T, k, task.world, cfg.expertsPerRank);
  if (rank === task.world - 1) {
    const v = ids.data;
    const [slot, earlier] = k === 12 ? [9, 2] : [3, 1];
    v[350 * k + slot] = v[350 * k + earlier];
    v[370 * k] = cfg.numExperts;
  }
  obs.push(
    await observe('bad ids', () =>
      g.dispatch(io.upload(g, hostTensor('bf16', [T, cfg.hidden])), io.upload(g, ids), {
        topkWeights: io.upload(g, hostTensor('f32', [T, k], new Float32Array(T * k).fill(0.5))),
      }),
    ),
  );
  correct('bad ids');
  await g.close();
  current = null;
  return obs;
}

/**
 * Weights under dedup: they travel with dispatch, so a dispatch without them and a combine given them
 * are refused on the rank at fault, and its peers abandon that call at once; the next call is correct.
 */
async function dedupWeightSteps(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const obs: Observation[] = [];
  const kase: VerifyCase = { ...small(task.world, { dedup: true }), name: 'conformance dedup' };
  const { g, cfg } = await openGroup(task, kase);
  let call = 0;
  const correct = (after: string) => {
    const mismatch = verifyCall(g, cfg, kase, call++, rank, io);
    obs.push({ step: `correct call after ${after}`, code: 'ok', mismatch });
  };
  const T = 8;
  const H = cfg.hidden;
  const k = cfg.topk;
  const x = () => io.upload(g, hostTensor('bf16', [T, H]));
  const idx = () => {
    // each token's slots on two ranks (one when W = 1), so that dedup has tokens to merge
    const ids = new Int32Array(T * k);
    for (let i = 0; i < ids.length; i++) {
      const owner = (Math.floor(i / k) + (i % k >= 2 ? 1 : 0)) % task.world;
      ids[i] = owner * cfg.expertsPerRank + (i % k);
    }
    return io.upload(g, hostTensor('i32', [T, k], ids));
  };
  const w = () => io.upload(g, hostTensor('f32', [T, k], new Float32Array(T * k).fill(0.5)));
  const out = () => io.upload(g, hostTensor('bf16', expertShape(cfg, H)));
  correct('group open');
  // 1. rank 0 dispatches without topkWeights; its peers pass them
  obs.push(
    await observe('dispatch without weights', () =>
      g.dispatch(x(), idx(), rank === 0 ? {} : { topkWeights: w() }),
    ),
  );
  correct('dispatch without weights');
  // 2. no rank passes them
  obs.push(await observe('no weights anywhere', () => g.dispatch(x(), idx())));
  correct('no weights anywhere');
  // 3. rank 0 passes topkWeights to combine as well: refused there, abandoned on every rank
  const d = g.dispatch(x(), idx(), { topkWeights: w() });
  obs.push(
    await observe('combine with weights', () =>
      g.combine(out(), d.handle, rank === 0 ? { topkWeights: w() } : {}),
    ),
  );
  obs.push(await observe('combine after refusal', () => g.combine(out(), d.handle)));
  correct('combine with weights');
  await g.close();
  current = null;
  return obs;
}

/**
 * The last rank refuses two dispatches in a row with a small batch while its peers take a large one (so
 * they are still in the first call when it refuses the second): every rank fails both calls naming the
 * right rank within the timeout, then the third call is correct everywhere.
 */
async function refusesTwice(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const culprit = task.world - 1;
  const base = small(task.world, task.nodes ? { nodes: task.nodes } : {});
  const kase: VerifyCase = {
    ...base,
    config: { ...base.config, maxTokensPerRank: 256, hidden: 2048, fp8: false },
  };
  const { g, cfg } = await openGroup(task, kase);
  const obs: Observation[] = [];
  const T = rank === culprit ? 1 : 256;
  // the peers come late to the first call, so that the culprit would be two calls ahead of them
  if (rank !== culprit) await new Promise((r) => setTimeout(r, 300));
  for (const step of ['first refusal', 'second refusal']) {
    const idx =
      rank === culprit
        ? hostTensor('i32', [T, cfg.topk + 1])
        : goodIds(T, cfg.topk, task.world, cfg.expertsPerRank);
    obs.push(
      await observe(step, () => {
        const d = g.dispatch(io.upload(g, hostTensor('bf16', [T, cfg.hidden])), io.upload(g, idx), {
          topkWeights: io.upload(g, hostTensor('f32', [T, cfg.topk])),
        });
        g.combine(io.upload(g, hostTensor('bf16', expertShape(cfg, cfg.hidden))), d.handle);
      }),
    );
  }
  const mismatch = verifyCall(g, cfg, { ...kase, tokens: 8 }, 0, rank, io);
  obs.push({ step: 'correct call after', code: 'ok', mismatch });
  await g.close();
  return obs;
}

/** T tokens, each of its k slots on a distinct expert, spread over the ranks. */
function goodIds(T: number, k: number, world: number, epr: number) {
  const idx = new Int32Array(T * k);
  for (let i = 0; i < idx.length; i++) idx[i] = (i % k) + (Math.floor(i / k) % world) * epr;
  return hostTensor('i32', [T, k], idx);
}

async function silentOrThrowing(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const base = small(task.world, task.nodes ? { nodes: task.nodes } : {});
  const kase: VerifyCase = task.large
    ? { ...base, config: { ...base.config, dedup: true, maxTokensPerRank: 1100 }, tokens: 1100 }
    : base;
  const { g, cfg } = await openGroup(task, kase);
  if (rank === task.culprit) {
    if (task.scenario === 'throwing-rank') throw new Error(`rank ${rank} fails on purpose before dispatch`);
    // silent: stay alive well past the others' timeout without ever calling dispatch
    await new Promise((r) => setTimeout(r, task.timeoutMs * 3));
    return [{ step: 'silent', code: 'ok' }];
  }
  const obs = await observe('dispatch', () => {
    const mismatch = verifyCall(g, cfg, kase, 0, rank, io);
    if (mismatch) throw new Error(mismatch);
  });
  await g.close().catch(() => {});
  return [obs];
}

/** Every rank dispatches; the culprit then never combines, staying alive past the others' timeouts. */
async function silentInCombine(task: ScenarioTask, rank: number): Promise<Observation[]> {
  const kase = small(task.world, { nodes: task.nodes ?? 1, dedup: task.dedup ?? false });
  const { g, cfg } = await openGroup(task, kase);
  const T = 8;
  const d = g.dispatch(
    io.upload(g, hostTensor('bf16', [T, cfg.hidden])),
    io.upload(g, goodIds(T, cfg.topk, task.world, cfg.expertsPerRank)),
    { topkWeights: io.upload(g, hostTensor('f32', [T, cfg.topk], new Float32Array(T * cfg.topk).fill(0.5))) },
  );
  if (rank === task.culprit) {
    // (past the others' detection: on cuda a rank on another host may take three timeouts and more)
    await new Promise((r) => setTimeout(r, task.timeoutMs * (task.transport === 'cuda' ? 6 : 2.5)));
    return [{ step: 'silent', code: 'ok' }];
  }
  const obs = await observe('combine', () => {
    const y = g.combine(io.upload(g, hostTensor('bf16', expertShape(cfg, cfg.hidden))), d.handle);
    io.download(g, y);
  });
  await g.close().catch(() => {});
  return [obs];
}

await rankMain<ScenarioTask, Observation[]>((task, rank) => {
  if (task.scenario === 'errors') return errorSteps(task, rank);
  if (task.scenario === 'large-ids') return largeIdSteps(task, rank);
  if (task.scenario === 'dedup-weights') return dedupWeightSteps(task, rank);
  if (task.scenario === 'refuses-twice') return refusesTwice(task, rank);
  if (task.scenario === 'silent-in-combine') return silentInCombine(task, rank);
  return silentOrThrowing(task, rank);
});
