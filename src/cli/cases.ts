import type { EpConfigInput } from '../ep/config.js';
import type { OracleRankInput } from '../ep/oracle.js';
import { mixSeed, Rng, randomBf16, randomTopk, randomWeights } from '../ep/random.js';

/**
 * How a verify case routes its tokens:
 * - random: every rank T tokens, each slot dropped with probability 0.1
 * - dropped: half the slots dropped, some tokens dropped entirely
 * - skewed: every token of every rank picks the same k experts (on as few ranks as possible): one
 *   destination gets every row, each of those experts exactly its capacity (W * T rows)
 * - ragged: each rank a different T in [0, tokens] (some ranks send nothing)
 */
export type Scenario = 'random' | 'dropped' | 'skewed' | 'ragged';

export interface VerifyCase {
  name: string;
  config: EpConfigInput;
  scenario: Scenario;
  tokens: number;
  calls: number;
  seed: number;
  /** The dispatch path to ask the group for (src/ep/dispatch-path.ts); default: the group's own choice. */
  dispatchPath?: 'staged' | 'direct';
}

/** Every rank's inputs for call `call` of a case: the same on every rank, so each can run the oracle. */
export function caseInputs(kase: VerifyCase, call: number): OracleRankInput[] {
  const c = kase.config;
  const out: OracleRankInput[] = [];
  for (let r = 0; r < c.world; r++) {
    const rng = new Rng(mixSeed(kase.seed, call, r));
    const T = kase.scenario === 'ragged' ? rng.int(kase.tokens + 1) : kase.tokens;
    const x = randomBf16(rng, T * c.hidden);
    let idx: Int32Array;
    if (kase.scenario === 'skewed') {
      const epr = c.numExperts / c.world;
      const first = epr >= c.topk ? (c.world - 1) * epr : 0;
      const only = Array.from({ length: c.topk }, (_, j) => first + j);
      idx = randomTopk(rng, T, c.topk, c.numExperts, 0, only);
    } else {
      idx = randomTopk(rng, T, c.topk, c.numExperts, kase.scenario === 'dropped' ? 0.5 : 0.1);
    }
    out.push({ numTokens: T, x, topkIdx: idx, topkWeights: randomWeights(rng, T * c.topk) });
  }
  return out;
}

export const DEEPSEEK_V3 = { numExperts: 256, hidden: 7168, topk: 8, tokens: 128, world: 4 } as const;

/**
 * The default verify suite: a sweep of small shapes over W, FP8 and every scenario, one rank with FP8
 * groups of 8, then the DeepSeek-V3 shape, all with the padded expert layout; then every one of those
 * cases again with the de-duplicated protocol and the packed layout (named `... dedup packed`).
 */
export function defaultSuite(seed: number, calls: number): VerifyCase[] {
  const cases: VerifyCase[] = [];
  for (const world of [1, 2, 3, 4, 8]) {
    for (const fp8 of [true, false]) {
      const base = { world, numExperts: 4 * world, hidden: 256, topk: Math.min(4, 4 * world), fp8 };
      const tok = 24;
      for (const scenario of ['random', 'dropped', 'skewed', 'ragged'] as const) {
        cases.push(smallCase(base, scenario, tok, calls, seed));
      }
      for (const T of [0, 1]) {
        cases.push({
          ...smallCase(base, 'random', T, calls, seed),
          name: `W=${world} ${fp8 ? 'fp8' : 'bf16'} T=${T}`,
        });
      }
    }
  }
  // One rank with FP8 group size 8: the dispatch takes more chunks per token than its grid has blocks,
  // so a block stores several chunks of one token (T = 1: expert capacity 1)
  for (const T of [1, 3]) {
    cases.push({
      name: `W=1 E=16 H=7168 k=4 G=8 T=${T} fp8 (chunks of one token in one block)`,
      config: {
        world: 1,
        numExperts: 16,
        hidden: 7168,
        topk: 4,
        fp8: true,
        dedup: false,
        expertLayout: 'padded',
        fp8GroupSize: 8,
        maxTokensPerRank: T,
      },
      scenario: 'random',
      tokens: T,
      calls,
      seed,
    });
  }
  for (const fp8 of [true, false]) {
    const { tokens, ...shape } = DEEPSEEK_V3;
    cases.push({
      name: `DeepSeek-V3 W=${shape.world} E=${shape.numExperts} H=${shape.hidden} k=${shape.topk} T=${tokens} ${fp8 ? 'fp8' : 'bf16'}`,
      config: { ...shape, maxTokensPerRank: tokens, fp8, dedup: false, expertLayout: 'padded' },
      scenario: 'random',
      tokens,
      calls,
      seed,
    });
  }
  return [...cases, ...cases.map(withDedup)];
}

/**
 * The same case with the de-duplicated protocol on, and the packed expert layout (the suite's first half
 * runs the padded one), so that one run covers both settings of both without doubling its length.
 */
export function withDedup(kase: VerifyCase): VerifyCase {
  return {
    ...kase,
    name: `${kase.name} dedup packed`,
    config: { ...kase.config, dedup: true, expertLayout: 'packed' },
  };
}

function smallCase(
  base: { world: number; numExperts: number; hidden: number; topk: number; fp8: boolean },
  scenario: Scenario,
  tokens: number,
  calls: number,
  seed: number,
): VerifyCase {
  return {
    name: `W=${base.world} E=${base.numExperts} H=${base.hidden} k=${base.topk} T=${tokens} ${base.fp8 ? 'fp8' : 'bf16'} ${scenario}`,
    config: { ...base, maxTokensPerRank: Math.max(tokens, 1), dedup: false, expertLayout: 'padded' },
    scenario,
    tokens,
    calls,
    seed,
  };
}
