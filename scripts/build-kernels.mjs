#!/usr/bin/env node
// Builds dist/kernels/ep.fatbin from kernels/ep.cu with nvcc (sm_90 and sm_90a SASS, plus compute_90
// PTX so that newer GPUs can JIT it). No dependencies.
//
// nvcc is looked for in $CUDA_HOME/bin, then /usr/local/cuda/bin, then PATH. Without nvcc this prints
// one line and exits 0: the cpu transport needs no kernels, only the cuda transport does.
// If nvcc fails, its output is shown and the exit code is non-zero.
//
// Usage: node scripts/build-kernels.mjs [--verbose]   (--verbose adds -Xptxas -v: registers, spills)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'kernels', 'ep.cu');
const outDir = join(root, 'dist', 'kernels');
const output = join(outDir, 'ep.fatbin');
const exe = process.platform === 'win32' ? 'nvcc.exe' : 'nvcc';

function isFile(p) {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function findNvcc() {
  const candidates = [];
  if (process.env.CUDA_HOME) candidates.push(join(process.env.CUDA_HOME, 'bin', exe));
  candidates.push(join('/usr/local/cuda/bin', exe));
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) candidates.push(join(dir, exe));
  return candidates.find(isFile) ?? null;
}

const nvcc = findNvcc();
if (nvcc === null) {
  console.log(
    'build-kernels: nvcc not found ($CUDA_HOME/bin, /usr/local/cuda/bin, PATH): the cuda transport will be unavailable (the cpu transport needs no kernels)',
  );
  process.exit(0);
}
if (!existsSync(source)) {
  console.error(`build-kernels: ${source} is missing`);
  process.exit(1);
}

mkdirSync(outDir, { recursive: true });
const args = [
  '-fatbin',
  '-O3',
  '-fmad=false', // the cpu reference rounds every multiply and add: no FMA contraction anywhere
  '-std=c++17',
  '-gencode=arch=compute_90,code=sm_90',
  '-gencode=arch=compute_90a,code=sm_90a',
  '-gencode=arch=compute_90,code=compute_90',
  '-I',
  join(root, 'kernels'),
  ...(process.argv.includes('--verbose') ? ['-Xptxas', '-v'] : []),
  '-o',
  output,
  source,
];
const quote = (a) => (/^[\w./=,+:-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
console.log(`build-kernels: ${[nvcc, ...args].map(quote).join(' ')}`);
const r = spawnSync(nvcc, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
if (r.stdout) process.stdout.write(r.stdout);
if (r.stderr) process.stderr.write(r.stderr);
if (r.error) {
  console.error(`build-kernels: could not run ${nvcc}: ${r.error.message}`);
  process.exit(1);
}
if (r.status !== 0) {
  console.error(`build-kernels: nvcc failed (exit ${r.status ?? r.signal})`);
  process.exit(r.status || 1);
}
console.log(`build-kernels: wrote ${output} (${statSync(output).size} bytes)`);
