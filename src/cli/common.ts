import { cpus, hostname } from 'node:os';
import type { TransportName } from '../create.js';
import { TransportUnavailableError } from '../errors.js';
import { cudaTransportReady, fatbinPath } from '../shmem/cuda/available.js';
import type { FlagSpec, ParsedFlags } from './args.js';
import { DEEPSEEK_V3 } from './cases.js';

export const SHAPE_FLAGS: FlagSpec[] = [
  {
    name: 'world',
    kind: 'int',
    help: 'ranks W (worker threads on cpu, processes on cuda)',
    default: String(DEEPSEEK_V3.world),
  },
  {
    name: 'experts',
    kind: 'int',
    help: 'experts E over all ranks (a multiple of W)',
    default: String(DEEPSEEK_V3.numExperts),
  },
  {
    name: 'hidden',
    kind: 'int',
    help: 'hidden size H (a multiple of the group size with FP8)',
    default: String(DEEPSEEK_V3.hidden),
  },
  { name: 'topk', kind: 'int', help: 'experts per token k', default: String(DEEPSEEK_V3.topk) },
  { name: 'group-size', kind: 'int', help: 'FP8 group size G: values sharing one f32 scale', default: '128' },
  { name: 'fp8', kind: 'bool', help: 'quantise dispatched rows to FP8 e4m3 (combine stays bf16)' },
];

export const COMMON_FLAGS: FlagSpec[] = [
  {
    name: 'transport',
    kind: 'string',
    meta: 'auto|cpu|cuda',
    help: 'where ranks run; auto picks cuda when a GPU and the kernels are present',
    default: 'auto',
  },
  {
    name: 'seed',
    kind: 'int',
    help: 'seed of the random inputs (the same seed gives the same inputs)',
    default: '1',
  },
  {
    name: 'timeout',
    kind: 'int',
    meta: 'MS',
    help: 'how long a rank waits for a peer before naming it in an error',
    default: '30000',
  },
  { name: 'json', kind: 'bool', help: 'print the result as JSON on stdout instead of a table' },
  { name: 'help', kind: 'bool', help: 'show this help' },
];

/** Resolves --transport auto to a concrete transport; asking for cuda where it cannot run fails here. */
export async function resolveTransport(flag: unknown): Promise<'cpu' | 'cuda'> {
  const t = (flag ?? process.env.MOE_A2A_TRANSPORT ?? 'auto') as TransportName;
  if (t === 'cpu') return 'cpu';
  if (t === 'auto') return (await cudaTransportReady()) ? 'cuda' : 'cpu';
  if (t !== 'cuda')
    throw new TransportUnavailableError(`unknown transport '${String(t)}': use auto, cpu or cuda`);
  const { loadDriver } = await import('../shmem/cuda/driver.js');
  loadDriver(); // throws TransportUnavailableError with the reason and the advice to use --transport cpu
  const { existsSync } = await import('node:fs');
  if (!existsSync(fatbinPath())) {
    throw new TransportUnavailableError(
      `the cuda transport needs the kernels at ${fatbinPath()}: run \`npm run build\` (needs nvcc), or use --transport cpu`,
    );
  }
  return 'cuda';
}

export function anyShapeFlag(flags: ParsedFlags): boolean {
  return ['world', 'experts', 'hidden', 'topk', 'tokens', 'group-size', 'nodes'].some(
    (f) => flags[f] !== undefined,
  );
}

export function machineInfo() {
  const c = cpus();
  return {
    host: hostname(),
    cpu: c[0]?.model ?? 'unknown',
    cores: c.length,
    node: process.version,
    platform: process.platform,
  };
}

/**
 * The variables that change which kernels run or how (README: dispatch path, dependent launches, eager
 * graphs, flagged partials, the row walkers' grids, another kernel build), as this process has them set: a benchmark records them,
 * so that an A/B's runs say what each one was.
 */
export const KERNEL_SETTINGS = [
  'MOE_A2A_DISPATCH_PATH',
  'MOE_A2A_DEPENDENT_LAUNCH',
  'MOE_A2A_EAGER_GRAPHS',
  'MOE_A2A_FLAGGED_MAX_TOKENS',
  'MOE_A2A_ONE_WAVE',
  'MOE_A2A_SEND_WAVE',
  'MOE_A2A_WALK_BLOCKS',
  'MOE_A2A_FATBIN',
] as const;

/** What each kernel setting does, for `bench --help` (README has the longer story of each). */
export const KERNEL_SETTING_HELP: Record<(typeof KERNEL_SETTINGS)[number], string> = {
  MOE_A2A_DISPATCH_PATH: 'auto, staged or direct: the dispatch protocol across ranks (default: auto)',
  MOE_A2A_DEPENDENT_LAUNCH: "0: no programmatic dependent launch between a call's kernels",
  MOE_A2A_EAGER_GRAPHS: '0: eager calls launch their kernels one by one instead of as a cached graph',
  MOE_A2A_FLAGGED_MAX_TOKENS:
    'N: flagged partials for calls of at most N tokens (0: never; at most the default, 48 / (W - 1) up to 32)',
  MOE_A2A_ONE_WAVE:
    '0: the row walkers at 4 blocks an SM, and the large-batch send at 8, instead of one wave',
  MOE_A2A_SEND_WAVE: '0: the large-batch send (T x k > 4096) at 8 blocks an SM instead of one wave',
  MOE_A2A_WALK_BLOCKS: 'N: at most N blocks a row walker (checks of their loops with few warps)',
  MOE_A2A_FATBIN: 'a path: another build of the kernels (an A/B against this one)',
};

/** The kernel settings as lines for a help text: `  NAME  what it does`. */
export function kernelSettingsHelp(): string {
  const width = Math.max(...KERNEL_SETTINGS.map((n) => n.length));
  return KERNEL_SETTINGS.map((n) => `  ${n.padEnd(width)}  ${KERNEL_SETTING_HELP[n]}`).join('\n');
}

export function kernelSettings(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const set: Record<string, string> = {};
  for (const name of KERNEL_SETTINGS) {
    const v = env[name];
    if (v !== undefined && v !== '') set[name] = v;
  }
  return set;
}

/** p-th percentile (0..100) of a sample, by nearest rank on the sorted values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number)[]) => r.map((c, i) => String(c).padStart(widths[i])).join('  ');
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join(
    '\n',
  );
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return '-';
  if (Number.isInteger(n)) return String(n);
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}
