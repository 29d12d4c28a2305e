#!/usr/bin/env node
/**
 * moe-a2a: the command-line tool. `verify` checks a transport bit for bit against the reference,
 * `bench` times it, `launch` starts a script once per rank.
 */
import { isMoeA2aError } from '../errors.js';
import { type FlagSpec, formatFlags, type ParsedFlags, parseFlags, UsageError } from './args.js';
import { benchCommand } from './bench.js';
import { COMMON_FLAGS, kernelSettingsHelp, SHAPE_FLAGS } from './common.js';
import { launchCommand } from './launch-cmd.js';
import { verifyCommand } from './verify.js';

interface Command {
  summary: string;
  usage: string;
  about: string;
  flags: FlagSpec[];
  run(flags: ParsedFlags, rest: string[]): Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  verify: {
    summary: 'check a transport bit for bit against the reference oracle',
    usage: 'moe-a2a verify [flags]',
    about: `Runs dispatch + combine on random inputs from --seed and compares every rank's buffers, splits,
scales, expert-major rows and combine output with a single-process reference, bit for bit. Prints a
PASS/FAIL line per case and exits non-zero on any FAIL. A run stopped part-way (a timeout, a signal)
still prints the verdicts of the cases every rank finished (cuda: each rank keeps them as it goes).

With no shape flags it runs the suite: W in {1, 2, 3, 4, 8}, FP8 on and off, random, mostly-dropped,
skewed (every pair on one rank's experts, each expert filled to capacity) and ragged routing, T = 0
and T = 1, one rank with FP8 groups of 8 at H = 7168, then the DeepSeek-V3 shape (H = 7168, k = 8,
E = 256, T = 128 per rank, W = 4), each case twice: as it is (padded expert layout) and with
de-duplication and the packed layout (dedup packed). With any
shape flag it runs that shape with random, dropped and skewed routing (or those --scenario names).

Examples:
  moe-a2a verify
  moe-a2a verify --world 4 --experts 16 --hidden 256 --topk 4 --tokens 16 --calls 10000
  moe-a2a verify --world 4 --nodes 2 --experts 16 --hidden 256 --topk 4 --tokens 16
  moe-a2a verify --transport cuda --world 2 --no-fp8`,
    flags: [
      ...SHAPE_FLAGS,
      {
        name: 'tokens',
        kind: 'ints',
        help: 'tokens per rank T (a list runs each)',
        default: '128 with shape flags',
      },
      {
        name: 'calls',
        kind: 'int',
        help: 'dispatch + combine calls per case, fresh random data each call',
        default: '2',
      },
      {
        name: 'graph',
        kind: 'bool',
        help: 'cuda: run each call as a replay of one captured CUDA graph per case',
      },
      {
        name: 'nodes',
        kind: 'int',
        help: 'with shape flags: hosts the ranks span (README "Between hosts"; cuda on one machine: MOE_A2A_SIMULATED_HOSTS=1)',
        default: '1',
      },
      {
        name: 'dedup',
        kind: 'bool',
        help: 'only cases with (--dedup) or without (--no-dedup) rank-level de-duplication; default both',
      },
      {
        name: 'expert-layout',
        kind: 'string',
        meta: 'LAYOUT',
        help: 'only cases whose expertX is padded (a fixed block per expert) or packed (rows back to back); default both',
        default: 'both',
      },
      {
        name: 'scenario',
        kind: 'string',
        meta: 'NAME[,NAME...]',
        help: 'routing, with shape flags: random, dropped, skewed (every pair to one rank, experts full), ragged',
        default: 'random,dropped,skewed',
      },
      ...COMMON_FLAGS,
    ],
    run: (f) => verifyCommand(f),
  },
  bench: {
    summary: 'time dispatch and combine: serving loop, per call, floors, peers',
    usage: 'moe-a2a bench [flags]',
    about: `Times dispatch + combine per token count and prints, on cuda:
  - the serving loop first: layers (dispatch + combine) issued back to back with no host barrier
    between them, as one CUDA graph per layer and as eager calls; the mean per layer on the slowest
    rank. At W > 1 each dispatch path (dedup, staged, direct) the shape allows, side by side;
  - per call: dispatch, combine and both as one graph, each right after a barrier on the device (so no
    rank's time holds a peer's late launch); median, p10, p90 of the slowest rank per iteration;
  - the bytes of a call counted as DeepEP does and as they cross NVLink, against the floors measured in
    the same run (all-to-all NVLink write rate, a signal's one-way trip, a graph's kernel-to-kernel gap);
  - where the time goes (--stamps): the kernels' %globaltimer stamps per phase;
  - peers in the same run: PyTorch (W = 1: bench/baselines/torch_w1.py; W > 1: PyTorch + NCCL,
    torch_nccl.py) when python3 has torch, and DeepEP's low-latency kernels with --deepep;
  - the host's cost per call.
On cpu: per-call times (host clock, after a host barrier) and one thread copying the same bytes.
Writes JSON (machine, date, transport, config, every figure) and an SVG plot under bench/results/.
Defaults: the DeepSeek-V3 decode shape (H = 7168, k = 8, E = 256, 128 tokens per rank, FP8 dispatch)
at W = 4.

Kernel settings (environment; the JSON records those set, so each run of an A/B says which it was):
${kernelSettingsHelp()}

Examples:
  moe-a2a bench
  moe-a2a bench --tokens 128,4096 --no-fp8 --iters 20
  moe-a2a bench --transport cuda --world 1 --tokens 1,32,128,512,4096 --iters 200 --warmup 20
  moe-a2a bench --transport cuda --world 2 --tokens 1,32,128,512,4096 --iters 200 --deepep /tmp/deepep_bench/DeepEP`,

    flags: [
      ...SHAPE_FLAGS,
      { name: 'tokens', kind: 'ints', help: 'tokens per rank T (a list runs each)', default: '128' },
      {
        name: 'iters',
        kind: 'int',
        help: 'timed iterations (and layers in each serving loop)',
        default: '50',
      },
      { name: 'warmup', kind: 'int', help: 'untimed iterations first', default: '5' },
      {
        name: 'nodes',
        kind: 'int',
        help: 'hosts the ranks span (README "Between hosts"; cuda on one machine: MOE_A2A_SIMULATED_HOSTS=1): the serving loop, per-call times (aligned within each host only), PyTorch + NCCL over the same hosts; no floors or DeepEP',
        default: '1',
      },
      {
        name: 'path',
        kind: 'string',
        meta: 'PATH',
        help: 'W > 1, what to time: dedup (the default settings: staged, de-duplicated), staged or direct (without dedup), auto, or all',
        default: 'all',
      },
      {
        name: 'expert-layout',
        kind: 'string',
        meta: 'LAYOUT',
        help: "expertX's layout to time: padded, packed or both (side by side)",
        default: 'the config default',
      },
      {
        name: 'stamps',
        kind: 'ints',
        help: 'cuda: token counts whose phase split (kernel stamps) is measured and printed',
        default: '1,128',
      },
      {
        name: 'deepep',
        kind: 'string',
        meta: 'DIR',
        help: 'cuda, W > 1: a built DeepEP checkout (importable deep_ep) to time beside ours (bench/baselines/deepep_ll.py); or MOE_A2A_DEEPEP',
      },
      {
        name: 'baseline',
        kind: 'bool',
        help: 'cuda: also run the PyTorch baseline (W = 1: torch_w1.py; W > 1: torch_nccl.py) when python3 has torch',
        default: 'on',
      },
      ...COMMON_FLAGS,
    ],
    run: (f) => benchCommand(f),
  },
  launch: {
    summary: 'start a script once per rank (threads on cpu, processes on cuda)',
    usage:
      'moe-a2a launch -n N [--transport T] [--nnodes H --node-rank R --master-addr A --master-port P] <script> [args...]',
    about: `Starts <script> N times, once per rank, with torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE and MOE_A2A_TRANSPORT (and on cuda MASTER_ADDR and MASTER_PORT). On the cpu transport
the ranks are worker threads of one process (they share memory); on cuda they are processes that meet
through a TCP store the launcher runs. Arguments after the script are the script's own. If a rank fails, the others are told (cpu: at once; cuda: stopped after a
grace period) and the launcher exits non-zero naming it.

Several hosts (processes only, as torchrun): run one launcher per host with the same --nnodes,
--master-addr (host 0's address) and --master-port, and each its own --node-rank; host 0's launcher
serves the store there, and host h's ranks are h * N .. h * N + N - 1. A rank that fails on one host
stops its host's ranks; the others learn of it through their group's timeout, which names the rank.

Examples:
  moe-a2a launch -n 4 examples/deepseek-all2all.mjs
  moe-a2a launch -n 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 my-rank.mjs`,
    flags: [
      { name: 'n', kind: 'int', help: 'number of ranks', default: '1' },
      { name: 'nproc', kind: 'int', help: 'same as -n' },
      {
        name: 'transport',
        kind: 'string',
        meta: 'auto|cpu|cuda',
        help: 'threads (cpu) or processes (cuda)',
        default: 'auto',
      },
      { name: 'nnodes', kind: 'int', help: 'hosts in the job, one launcher each', default: '1' },
      { name: 'node-rank', kind: 'int', help: "this host's index in [0, nnodes)", default: '0' },
      {
        name: 'master-addr',
        kind: 'string',
        meta: 'ADDR',
        help: "host 0's address, where the store listens",
        default: '127.0.0.1',
      },
      {
        name: 'master-port',
        kind: 'int',
        help: 'the store port, the same on every host (one host: a free one)',
      },
      { name: 'help', kind: 'bool', help: 'show this help' },
    ],
    run: (f, rest) => launchCommand(f, rest),
  },
};

function toolHelp(): string {
  const names = Object.keys(COMMANDS);
  const w = Math.max(...names.map((n) => n.length)) + 2;
  return `moe-a2a: low-latency all-to-all (dispatch and combine) for mixture-of-experts expert parallelism

Usage: moe-a2a <command> [flags]     (moe-a2a <command> --help for its flags)

Commands:
${names.map((n) => `  ${n.padEnd(w)}${COMMANDS[n].summary}`).join('\n')}

Transports: cpu (worker threads; the bit-exact reference, runs anywhere) and cuda (one process per
GPU, CUDA IPC peer memory). --transport auto, the default, picks cuda when a GPU is present.
Several hosts (--nodes N on verify and bench, and launch's --nnodes): each host's GPUs as above, one
NCCL message a call between hosts (README "Between hosts"; MOE_A2A_SIMULATED_HOSTS=1 tries it on one
machine).`;
}

function commandHelp(name: string): string {
  const c = COMMANDS[name];
  return `${c.usage}\n\n${c.about}\n\nFlags:\n${formatFlags(c.flags)}`;
}

/** Whether args[i] is the value of the flag before it (`--transport cpu`), not a positional. */
function isValueOf(args: readonly string[], i: number, flags: readonly FlagSpec[]): boolean {
  const prev = args[i - 1];
  if (!prev?.startsWith('--') || prev.includes('=')) return false;
  const spec = flags.find((f) => f.name === prev.slice(2));
  return spec !== undefined && spec.kind !== 'bool';
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(toolHelp());
    return name ? 0 : 1;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`moe-a2a: unknown command '${name}'\n\n${toolHelp()}`);
    return 2;
  }
  // launch: flags end at the script, whose own arguments pass through untouched. -n N is the one
  // short flag (torchrun's habit), and only before the script.
  const isLaunch = name === 'launch';
  const script = isLaunch
    ? args.findIndex((a, i) => !a.startsWith('-') && args[i - 1] !== '-n' && !isValueOf(args, i, cmd.flags))
    : -1;
  const ours = script === -1 ? args : args.slice(0, script);
  const normalized = [
    ...ours.map((a) => (a === '-n' ? '--n' : a)),
    ...(script === -1 ? [] : args.slice(script)),
  ];
  try {
    const parsed = parseFlags(normalized, cmd.flags, isLaunch);
    if (parsed.flags.help) {
      console.log(commandHelp(name));
      return 0;
    }
    return await cmd.run(parsed.flags, parsed.rest);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`moe-a2a ${name}: ${err.message}\n\n${commandHelp(name)}`);
      return 2;
    }
    throw err;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (isMoeA2aError(err) || (err as { code?: string })?.code?.startsWith?.('MOE_')) {
    const e = err as Error & { code: string };
    console.error(`moe-a2a: ${e.code}: ${e.message}`);
  } else {
    console.error(err);
  }
  process.exitCode = 1;
}
