import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { KERNEL_SETTINGS } from '../src/cli/common.js';
import { cudaAvailable } from '../src/shmem/cuda/driver.js';

const cli = (...args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });

describe('moe-a2a command line', () => {
  it('--help on each command teaches every flag the issue names', () => {
    for (const cmd of ['verify', 'bench']) {
      const r = cli(cmd, '--help');
      assert.equal(r.status, 0, r.stderr);
      for (const flag of [
        '--transport',
        '--world',
        '--experts',
        '--hidden',
        '--topk',
        '--tokens',
        '--group-size',
        '--fp8',
        '--no-fp8',
        '--seed',
        '--timeout',
        '--json',
      ]) {
        assert.ok(r.stdout.includes(flag), `${cmd} --help lacks ${flag}`);
      }
      assert.ok(r.stdout.includes(cmd === 'verify' ? '--calls' : '--iters'));
      // the bench teaches the kernel settings an A/B flips, each with what it does
      if (cmd === 'bench') {
        for (const name of KERNEL_SETTINGS) assert.match(r.stdout, new RegExp(`\\n  ${name} +\\S`), name);
      }
    }
    const top = cli('--help');
    assert.equal(top.status, 0);
    assert.match(top.stdout, /verify .*\n.*bench .*\n.*launch /s);
  });

  it('an unknown flag is a usage error naming it, with the command help', () => {
    const r = cli('verify', '--wrold', '2');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown flag --wrold/);
    assert.match(r.stderr, /Flags:/);
  });

  it('a shape the library refuses is a usage error before any rank starts', () => {
    const r = cli(...'verify --transport cpu --world 2 --experts 8 --hidden 64 --tokens 4'.split(' '));
    assert.equal(r.status, 2);
    assert.match(
      r.stderr,
      /hidden \(64\) must be a multiple of fp8GroupSize \(128\) \(the FP8 cases only: --no-fp8/,
    );
    assert.doesNotMatch(r.stdout, /FAIL/);
    const dedup = cli(
      ...'verify --transport cpu --world 2 --experts 64 --hidden 256 --topk 40 --tokens 2'.split(' '),
    );
    assert.equal(dedup.status, 2);
    assert.match(dedup.stderr, /\(the dedup cases only: --no-dedup leaves them out\)/);
    const neither = cli(...'verify --transport cpu --world 3 --experts 8 --hidden 256 --tokens 2'.split(' '));
    assert.equal(neither.status, 2);
    assert.match(neither.stderr, /divisible by world \(3\)/);
    assert.doesNotMatch(neither.stderr, /cases only/);
  });

  it(
    '--transport cuda without a driver fails at once and names --transport cpu',
    { skip: cudaAvailable() && 'a CUDA driver is present' },
    () => {
      const r = cli('verify', '--transport', 'cuda');
      assert.equal(r.status, 1);
      assert.match(r.stderr, /MOE_TRANSPORT_UNAVAILABLE/);
      assert.match(r.stderr, /needs an NVIDIA driver and GPU/);
      assert.match(r.stderr, /--transport cpu/);
    },
  );

  it('launch passes the arguments after the script to every rank untouched', () => {
    const dir = mkdtempSync(join(tmpdir(), 'moe-a2a-cli-'));
    const script = join(dir, 'rank.mjs');
    writeFileSync(
      script,
      "const e = process.env;\nconsole.log('rank ' + e.RANK + '/' + e.WORLD_SIZE + ' ' + JSON.stringify(process.argv.slice(2)));\n",
    );
    try {
      const r = cli('launch', '-n', '2', '--transport', 'cpu', script, '--layers', '3', '-n', '5', '--help');
      assert.equal(r.status, 0, r.stderr);
      const lines = r.stdout.trim().split('\n').sort();
      assert.deepEqual(lines, [
        'rank 0/2 ["--layers","3","-n","5","--help"]',
        'rank 1/2 ["--layers","3","-n","5","--help"]',
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('launch across hosts needs processes: the cpu transport refuses --nnodes > 1 with a usage error', () => {
    const r = cli('launch', '-n', '2', '--transport', 'cpu', '--nnodes', '2', '--node-rank', '1', 'rank.mjs');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--nnodes > 1 needs processes \(--transport cuda\)/);
    assert.match(r.stderr, /--master-port N/, 'the help follows, with the host flags');
  });

  it('verify on the cpu transport prints a PASS line per case and a summary', () => {
    const r = cli(
      'verify',
      '--transport',
      'cpu',
      '--world',
      '2',
      '--experts',
      '8',
      '--hidden',
      '256',
      '--topk',
      '2',
      '--tokens',
      '4',
      '--no-fp8',
      '--scenario',
      'random,skewed',
    );
    assert.equal(r.status, 0, r.stderr);
    // each scenario with and without de-duplication, each with both expert layouts
    assert.equal(r.stdout.match(/^PASS .* skewed dedup packed/gm)?.length, 1);
    assert.equal(r.stdout.match(/^PASS .* skewed padded/gm)?.length, 1);
    assert.equal(r.stdout.match(/^PASS /gm)?.length, 8);
    assert.match(r.stdout, /^8 passed, 0 failed$/m);
  });
});

describe('bench kernelBytes (the bytes the GB/s columns divide by)', () => {
  it('hand-worked at the DeepSeek-V3 shape, T = 128', async () => {
    const { kernelBytes } = await import('../src/cli/bench.js');
    const { resolveConfig } = await import('../src/ep/config.js');
    const shape = { numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 };
    // W = 1: dispatch reads x (128 * 14336) and writes 1024 FP8 rows of 7168 B + 56 scales of 4 B;
    // combine reads the 1024 bf16 rows in place and writes y; nothing travels.
    const one = kernelBytes(resolveConfig({ ...shape, world: 1 }), 128);
    assert.equal(one.dispatch, 128 * 14336 + 1024 * (7168 + 56 * 4));
    assert.equal(one.combine, 1024 * 14336 + 128 * 14336);
    // W = 4: three quarters of the rows are copied back to their origin first (read + write)
    const four = kernelBytes(resolveConfig({ ...shape, world: 4 }), 128);
    assert.equal(four.dispatch, one.dispatch);
    assert.equal(four.combine, one.combine + 2 * 1024 * 14336 * 0.75);
  });
});
