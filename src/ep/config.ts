import { ConfigError } from '../errors.js';

/** What a group is sized for. Every rank of a group passes the same values. */
export interface EpConfigInput {
  /** Number of ranks W (one GPU, or one worker thread on the cpu transport, each). */
  world: number;
  /** Total experts E over all ranks; E / W live on each rank. */
  numExperts: number;
  /** Hidden size H: elements per token row. */
  hidden: number;
  /** Experts per token k (columns of topkIdx). */
  topk: number;
  /** The most tokens one rank passes to one dispatch (T <= this). */
  maxTokensPerRank: number;
  /** Quantise dispatched rows to FP8 e4m3 with per-group f32 scales. Default true. */
  fp8?: boolean;
  /** FP8 group size G: values sharing one scale. H must be a multiple. Default 128. */
  fp8GroupSize?: number;
  /**
   * The most (token, expert) rows one rank may send to one other rank in one call (MAX_M). Default:
   * maxTokensPerRank * min(topk, numExperts / world), enough for any routing in which a token picks
   * distinct experts. A smaller value saves memory; a call that needs more throws CapacityError.
   */
  maxRowsPerPeer?: number;
  /**
   * Rows one local expert may receive (padded: its block in expertX, [EPR, maxRowsPerExpert, H]). Default:
   * world * min(maxTokensPerRank, maxRowsPerPeer), enough for any routing (a source sends an expert at
   * most one row per token). Large batches may set it lower to save memory; a dispatch that would give
   * one expert more rows throws CapacityError on the receiving rank.
   */
  maxRowsPerExpert?: number;
  /**
   * De-duplicated protocol. Default true where topk <= 32 (measured no slower at any batch size, and
   * 1.4-1.9x faster from T = 128 on: bench/NOTES.md v9), false above. A token crosses to each rank once,
   * however many of that rank's experts it picked: dispatch sends its row to each owner once (the router
   * weights travel with it, so dispatch needs topkWeights and combine refuses them), and in combine each
   * owner pre-reduces its experts' outputs for the token (f32, in slot order) and returns one bf16
   * partial per (token, rank), which the origin sums in slot order (over several hosts, each other
   * host's partials are summed there first: one row per (token, host) crosses between hosts). expertX,
   * expertScales, expertCounts and the source-major receive view are the same bytes as without it;
   * combine's result rounds differently (a partial is rounded to bf16 before the origin adds it), as the
   * README's protocol section defines: a token whose experts all live on one rank, and any W = 1 group,
   * get exactly the result without dedup. Needs topk <= 32. Every rank passes the same value (it changes
   * combine's rounding and the heap layout).
   */
  dedup?: boolean;
  /**
   * How expertX (and combine's expertOut) hold each local expert's rows. 'padded': [EPR,
   * maxRowsPerExpert, H], every expert a fixed block. 'packed': [expertRows, H], the experts' rows back to
   * back (expertOffsets[e] is where expert e's start, what grouped GEMMs with offsets read), sized for the
   * rows that can really arrive: min(world * maxRowsPerPeer, EPR * maxRowsPerExpert), several times smaller
   * than 'padded' with many experts per rank (8x at the DeepSeek-V3 shape). Default 'packed' (measured
   * as fast as 'padded' at every batch size: bench/NOTES.md v10).
   */
  expertLayout?: ExpertLayout;
  /**
   * Hosts the ranks span (default 1). Ranks 0..G-1 are host 0, G..2G-1 host 1, ... (G = world / nodes).
   * With more than one, a token crosses to each other host once, to its rail peer there (the rank of the
   * same local index), which hands its rows to their owners on that host; combine comes back the same
   * way (README, "Between hosts"). Every rank passes the same value; the results are the same bytes.
   */
  nodes?: number;
}

/** See EpConfigInput.expertLayout. */
export type ExpertLayout = 'padded' | 'packed';

/** An expert layout's name, from an option (`from` names it in the ConfigError otherwise). */
export function parseExpertLayout(v: unknown, from: string): ExpertLayout {
  if (v === 'padded' || v === 'packed') return v;
  throw new ConfigError(`${from} must be 'padded' or 'packed', got '${String(v)}'`, {
    fields: 'expertLayout',
  });
}

/** A validated configuration with every derived size. */
export interface EpConfig {
  readonly world: number;
  readonly numExperts: number;
  readonly expertsPerRank: number;
  readonly hidden: number;
  readonly topk: number;
  readonly maxTokensPerRank: number;
  readonly fp8: boolean;
  readonly fp8GroupSize: number;
  /** H / G: scales per row (FP8 only, but always derived). */
  readonly groupsPerRow: number;
  readonly maxRowsPerPeer: number;
  /** Rows per local expert in the expert-major output at most (maxRowsPerExpert). */
  readonly expertCapacity: number;
  /** How expertX holds the experts' rows (see EpConfigInput.expertLayout). */
  readonly expertLayout: ExpertLayout;
  /** Rows of expertX and expertOut in all: EPR * expertCapacity (padded), or what can arrive (packed). */
  readonly expertRows: number;
  /** Bytes of one dispatched row: H (FP8) or 2H (bf16). */
  readonly dispatchRowBytes: number;
  /** Bytes of one combined row: 2H (bf16). */
  readonly combineRowBytes: number;
  /** The de-duplicated protocol (see EpConfigInput.dedup). */
  readonly dedup: boolean;
  /** Hosts the ranks span (see EpConfigInput.nodes). */
  readonly nodes: number;
  /** Ranks per host: world / nodes. */
  readonly ranksPerNode: number;
}

/** The largest topk the de-duplicated protocol takes (one warp lane per slot on the GPU). */
export const MAX_DEDUP_TOPK = 32;

function checkInt(name: string, v: unknown, min: number, max = 2 ** 31 - 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    const range = max === 2 ** 31 - 1 ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`;
    throw new ConfigError(`${name} must be ${range}, got ${String(v)}`, { fields: name, value: String(v) });
  }
  return v;
}

/** Validates a configuration and derives its sizes. Throws ConfigError naming the fields at fault. */
export function resolveConfig(input: EpConfigInput): EpConfig {
  if (input === null || typeof input !== 'object') {
    throw new ConfigError('the configuration must be an object', { fields: 'config' });
  }
  const world = checkInt('world', input.world, 1, 1024);
  const numExperts = checkInt('numExperts', input.numExperts, 1);
  const hidden = checkInt('hidden', input.hidden, 1);
  const topk = checkInt('topk', input.topk, 1, 64);
  const maxTokensPerRank = checkInt('maxTokensPerRank', input.maxTokensPerRank, 1);
  const fp8 = input.fp8 ?? true;
  if (typeof fp8 !== 'boolean')
    throw new ConfigError(`fp8 must be a boolean, got ${String(fp8)}`, { fields: 'fp8' });
  const dedup = input.dedup ?? topk <= MAX_DEDUP_TOPK;
  if (typeof dedup !== 'boolean')
    throw new ConfigError(`dedup must be a boolean, got ${String(dedup)}`, { fields: 'dedup' });
  const expertLayout = parseExpertLayout(input.expertLayout ?? 'packed', 'expertLayout');
  const fp8GroupSize = checkInt('fp8GroupSize', input.fp8GroupSize ?? 128, 1);
  if (numExperts % world !== 0) {
    throw new ConfigError(
      `numExperts (${numExperts}) must be divisible by world (${world}) so every rank holds the same number of experts`,
      { fields: 'numExperts,world', numExperts, world },
    );
  }
  if (topk > numExperts) {
    throw new ConfigError(`topk (${topk}) cannot exceed numExperts (${numExperts})`, {
      fields: 'topk,numExperts',
      topk,
      numExperts,
    });
  }
  if (dedup && topk > MAX_DEDUP_TOPK) {
    throw new ConfigError(
      `topk (${topk}) must be at most ${MAX_DEDUP_TOPK} with dedup: the kernels give each slot of a token one warp lane`,
      { fields: 'topk,dedup', topk, dedup },
    );
  }
  if (hidden % 8 !== 0) {
    throw new ConfigError(
      `hidden (${hidden}) must be a multiple of 8 so every row is a whole number of 16-byte vectors`,
      { fields: 'hidden', hidden },
    );
  }
  if (fp8 && hidden % fp8GroupSize !== 0) {
    throw new ConfigError(`hidden (${hidden}) must be a multiple of fp8GroupSize (${fp8GroupSize})`, {
      fields: 'hidden,fp8GroupSize',
      hidden,
      fp8GroupSize,
    });
  }
  if (fp8 && (fp8GroupSize % 8 !== 0 || fp8GroupSize > 1024)) {
    throw new ConfigError(`fp8GroupSize (${fp8GroupSize}) must be a multiple of 8 and at most 1024`, {
      fields: 'fp8GroupSize',
      fp8GroupSize,
    });
  }
  const nodes = checkInt('nodes', input.nodes ?? 1, 1, world);
  if (world % nodes !== 0) {
    throw new ConfigError(
      `world (${world}) must be divisible by nodes (${nodes}): every host holds as many ranks`,
      {
        fields: 'world,nodes',
        world,
        nodes,
      },
    );
  }
  const expertsPerRank = numExperts / world;
  const defaultRows = maxTokensPerRank * Math.min(topk, expertsPerRank);
  const maxRowsPerPeer = checkInt('maxRowsPerPeer', input.maxRowsPerPeer ?? defaultRows, 1);
  if (maxRowsPerPeer > maxTokensPerRank * topk) {
    throw new ConfigError(
      `maxRowsPerPeer (${maxRowsPerPeer}) cannot exceed maxTokensPerRank * topk (${maxTokensPerRank * topk}): no call sends more rows`,
      { fields: 'maxRowsPerPeer,maxTokensPerRank,topk', maxRowsPerPeer },
    );
  }
  const fullExpertRows = world * Math.min(maxTokensPerRank, maxRowsPerPeer);
  const expertCapacity = checkInt('maxRowsPerExpert', input.maxRowsPerExpert ?? fullExpertRows, 1);
  if (expertCapacity > fullExpertRows) {
    throw new ConfigError(
      `maxRowsPerExpert (${expertCapacity}) cannot exceed world * min(maxTokensPerRank, maxRowsPerPeer) (${fullExpertRows}): no expert can receive more rows`,
      { fields: 'maxRowsPerExpert', maxRowsPerExpert: expertCapacity },
    );
  }
  return {
    world,
    numExperts,
    expertsPerRank,
    hidden,
    topk,
    maxTokensPerRank,
    fp8,
    fp8GroupSize,
    groupsPerRow: fp8 ? hidden / fp8GroupSize : 0,
    maxRowsPerPeer,
    expertCapacity,
    expertLayout,
    expertRows:
      expertLayout === 'packed'
        ? Math.min(world * maxRowsPerPeer, expertsPerRank * expertCapacity)
        : expertsPerRank * expertCapacity,
    dispatchRowBytes: fp8 ? hidden : 2 * hidden,
    combineRowBytes: 2 * hidden,
    dedup,
    nodes,
    ranksPerNode: world / nodes,
  };
}
