import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as A from '../src/shmem/cuda/args.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const kernels = join(root, 'kernels');
const headerText = readFileSync(join(kernels, 'ep_args.h'), 'utf8');
// The kernel sources: ep.cu (the one translation unit nvcc compiles) and the .cuh headers it includes
// (its limits are in ep_limits.cuh), concatenated in name order.
const kernelFiles = readdirSync(kernels)
  .filter((f) => f.endsWith('.cu') || f.endsWith('.cuh'))
  .sort();
const kernelText = kernelFiles.map((f) => readFileSync(join(kernels, f), 'utf8')).join('\n');

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function onPath(exe: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && isFile(join(dir, exe))) return join(dir, exe);
  }
  return null;
}

/** A host C++ compiler: g++ (or c++, clang++), else nvcc compiling host code. */
function findCompiler(): { path: string; nvcc: boolean } | null {
  for (const exe of ['g++', 'c++', 'clang++']) {
    const p = onPath(exe);
    if (p) return { path: p, nvcc: false };
  }
  const nvccs = [
    process.env.CUDA_HOME ? join(process.env.CUDA_HOME, 'bin', 'nvcc') : '',
    '/usr/local/cuda/bin/nvcc',
    onPath('nvcc') ?? '',
  ];
  const nvcc = nvccs.find((p) => p && isFile(p));
  return nvcc ? { path: nvcc, nvcc: true } : null;
}

interface CField {
  offset: number;
  size: number;
  type: string;
}
interface CStruct {
  size: number;
  fields: Record<string, CField>;
}
type CLayout = Record<'EpArgs' | 'EpError' | 'EpState', CStruct>;

const mirrors: Record<keyof CLayout, { fields: readonly A.FieldSpec[]; bytes: number }> = {
  EpArgs: { fields: A.EP_ARGS_FIELDS, bytes: A.EP_ARGS_BYTES },
  EpError: { fields: A.EP_ERROR_FIELDS, bytes: A.EP_ERROR_BYTES },
  EpState: { fields: A.EP_STATE_FIELDS, bytes: A.EP_STATE_BYTES },
};

/**
 * A C++ program printing sizeof, and offsetof / sizeof / type of every field the mirror names, as JSON.
 * A field the header lacks fails to compile; one the mirror lacks changes sizeof or leaves a gap.
 */
function probeSource(): string {
  const lines: string[] = [];
  for (const [struct, m] of Object.entries(mirrors)) {
    const fields = m.fields.map(
      (f) =>
        `  std::printf("%s\\"${f.name}\\": {\\"offset\\": %zu, \\"size\\": %zu, \\"type\\": \\"%s\\"}", ` +
        `${f === m.fields[0] ? '""' : '", "'}, offsetof(${struct}, ${f.name}), ` +
        `sizeof(((${struct}*)0)->${f.name}), TypeName<decltype(${struct}::${f.name})>::get());`,
    );
    lines.push(
      `  std::printf("%s\\"${struct}\\": {\\"size\\": %zu, \\"fields\\": {", ${
        struct === 'EpArgs' ? '""' : '", "'
      }, sizeof(${struct}));`,
      ...fields,
      '  std::printf("}}");',
    );
  }
  return `#include <cstddef>
#include <cstdio>
#include <cstdint>
#include "ep_args.h"
template <typename T> struct TypeName { static const char* get() { return "?"; } };
template <> struct TypeName<int32_t> { static const char* get() { return "i32"; } };
template <> struct TypeName<uint32_t> { static const char* get() { return "u32"; } };
template <> struct TypeName<int64_t> { static const char* get() { return "i64"; } };
template <> struct TypeName<uint64_t> { static const char* get() { return "u64"; } };
template <> struct TypeName<uint32_t[4]> { static const char* get() { return "u32[4]"; } };
template <> struct TypeName<uint32_t[2]> { static const char* get() { return "u32[2]"; } };
template <> struct TypeName<EpError> { static const char* get() { return "EpError"; } };
int main() {
  std::printf("{");
${lines.join('\n')}
  std::printf("}\\n");
  return 0;
}
`;
}

const compiler = findCompiler();
let workDir: string | null = null;
after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function compileAndProbe(): CLayout {
  workDir = mkdtempSync(join(tmpdir(), 'moe-a2a-args-'));
  const src = join(workDir, 'probe.cpp');
  const exe = join(workDir, 'probe');
  writeFileSync(src, probeSource());
  const args = compiler!.nvcc
    ? ['-x', 'c++', '-std=c++17', '-I', kernels, '-o', exe, src]
    : ['-std=c++17', '-Wall', '-I', kernels, '-o', exe, src];
  const cc = spawnSync(compiler!.path, args, { encoding: 'utf8' });
  assert.equal(cc.status, 0, `compiling the layout probe failed:\n${cc.stdout}${cc.stderr}`);
  const run = spawnSync(exe, [], { encoding: 'utf8' });
  assert.equal(run.status, 0, `the layout probe failed:\n${run.stderr}`);
  return JSON.parse(run.stdout) as CLayout;
}

describe('EpArgs / EpError / EpState mirror (src/shmem/cuda/args.ts) against kernels/ep_args.h', () => {
  test('sizes, offsets and types agree with the compiled header', (t) => {
    if (!compiler) {
      t.skip('no host C++ compiler (g++, c++, clang++) and no nvcc');
      return;
    }
    const c = compileAndProbe();
    for (const [struct, m] of Object.entries(mirrors) as [keyof CLayout, (typeof mirrors)['EpArgs']][]) {
      assert.equal(c[struct].size, m.bytes, `sizeof(${struct})`);
      let end = 0;
      for (const f of m.fields) {
        const cf = c[struct].fields[f.name];
        assert.ok(cf, `${struct}.${f.name} missing from the probe`);
        assert.equal(cf.offset, f.offset, `offsetof(${struct}, ${f.name})`);
        assert.equal(cf.size, f.bytes, `sizeof(${struct}::${f.name})`);
        assert.equal(cf.type, f.type, `type of ${struct}::${f.name}`);
        // fields tile the struct: no unnamed gap where a header-only field could hide
        assert.equal(f.offset, end, `${struct}.${f.name} does not follow the previous field directly`);
        end = f.offset + f.bytes;
      }
      assert.equal(end, m.bytes, `${struct}: bytes after the last field`);
    }
  });

  test('fixed sizes the kernels and host rely on', () => {
    assert.equal(A.EP_ARGS_BYTES, 640);
    assert.equal(A.EP_ERROR_BYTES, 40);
    assert.equal(A.EP_STATE_BYTES, 80);
    assert.equal(A.EP_STATE_OFFSET.err, 40);
  });
});

/** #define NAME value lines of a C source, values as bigint. */
function defines(text: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const m of text.matchAll(/^#define\s+(\w+)\s+(.+?)\s*(?:\/\/.*)?$/gm)) {
    const v = m[2].trim();
    let n: bigint | null = null;
    const plain = /^\(?\s*(\d+)u?(?:ll|ull)?\s*\)?$/i.exec(v);
    const shift = /^\(\s*(\d+)u?(?:ll|ull)?\s*<<\s*(\d+)\s*\)$/i.exec(v);
    if (plain) n = BigInt(plain[1]);
    else if (shift) n = BigInt(shift[1]) << BigInt(shift[2]);
    if (n !== null) out.set(m[1], n);
  }
  return out;
}

describe('constants mirrored from the C sources', () => {
  test('error codes and the abort bit match ep_args.h', () => {
    const d = defines(headerText);
    const errs = [...d.keys()].filter((k) => k.startsWith('EP_ERR_'));
    assert.ok(errs.length >= 8, `expected the EP_ERR_* codes in ep_args.h, found ${errs.join(', ')}`);
    const mirror = A as unknown as Record<string, unknown>;
    for (const name of errs) {
      assert.equal(typeof mirror[name], 'number', `${name} is not mirrored in args.ts`);
      assert.equal(BigInt(mirror[name] as number), d.get(name), name);
    }
    assert.equal(A.EP_ABORT_BIT, d.get('EP_ABORT_BIT'));
  });

  test('kernel limits and capacity aux values match the kernel sources (kernels/*.cu, *.cuh)', () => {
    assert.ok(kernelFiles.includes('ep.cu'), `kernels/ep.cu is missing: ${kernelFiles.join(', ')}`);
    const d = defines(kernelText);
    for (const name of [
      'EP_MAX_EXPERTS',
      'EP_MAX_TOPK',
      'EP_MAX_PAIRS',
      'EP_LOCAL_MAX_PAIRS',
      'EP_STAGE_SMEM_PAIRS',
      'EP_ROUTE_THREADS',
      'EP_MAX_THREADS',
      'EP_CAPACITY_AUX_SEND',
      'EP_CAPACITY_AUX_EXPERT',
    ]) {
      const mirror = (A as unknown as Record<string, number>)[name];
      assert.equal(BigInt(mirror), d.get(name), name);
      // one definition only: with several, the comparison above would check just the last one read
      const count = [...kernelText.matchAll(new RegExp(`^#define\\s+${name}\\b`, 'gm'))].length;
      assert.equal(count, 1, `${name} is defined ${count} times in the kernel sources`);
    }
  });
});

describe('phase stamps', () => {
  test('every EP_STAMP_* index of ep_args.h is mirrored, distinct and inside EP_STAMPS', () => {
    const d = defines(headerText);
    const names = [...d.keys()].filter((k) => k.startsWith('EP_STAMP_'));
    assert.equal(names.length, Object.keys(A.EP_STAMP).length, `ep_args.h has ${names.join(', ')}`);
    for (const name of names) {
      const key = name.slice('EP_STAMP_'.length) as A.StampName;
      assert.equal(BigInt(A.EP_STAMP[key]), d.get(name), name);
      assert.ok(A.EP_STAMP[key] < A.EP_STAMPS, `${name} fits the stamps array`);
    }
    assert.equal(new Set(Object.values(A.EP_STAMP)).size, names.length, 'no two stamps share a slot');
    assert.equal(BigInt(A.EP_STAMPS), d.get('EP_STAMPS'));
  });
});

describe('EpArgsWriter and readEpError', () => {
  test('setters write little-endian at the mirrored offsets into one reused buffer', () => {
    const w = new A.EpArgsWriter();
    const buf = w.bytes;
    assert.equal(buf.length, A.EP_ARGS_BYTES);
    w.rank = 3;
    w.numTokens = 128;
    w.timeoutNs = 5_000_000_000n;
    w.countsOff = 4096;
    w.x = 0x7f00_1234_5678n;
    w.errHost = 0xffff_ffff_ffff_fff0n;
    assert.equal(buf.readInt32LE(A.EP_ARGS_OFFSET.rank), 3);
    assert.equal(buf.readInt32LE(A.EP_ARGS_OFFSET.numTokens), 128);
    assert.equal(buf.readBigInt64LE(A.EP_ARGS_OFFSET.timeoutNs), 5_000_000_000n);
    assert.equal(buf.readBigUInt64LE(A.EP_ARGS_OFFSET.countsOff), 4096n);
    assert.equal(buf.readBigUInt64LE(A.EP_ARGS_OFFSET.x), 0x7f00_1234_5678n);
    assert.equal(buf.readBigUInt64LE(A.EP_ARGS_OFFSET.errHost), 0xffff_ffff_ffff_fff0n);
    assert.equal(w.bytes, buf, 'the same buffer after every set');
  });

  test('every field has a setter, and set/get round-trip each field without touching others', () => {
    const w = new A.EpArgsWriter();
    const proto = Object.getOwnPropertyDescriptors(A.EpArgsWriter.prototype);
    A.EP_ARGS_FIELDS.forEach((f, i) => {
      assert.ok(proto[f.name]?.set, `EpArgsWriter has no setter for ${f.name}`);
      const v = f.type === 'i32' ? -(i + 1) : BigInt(i + 1) * 0x1_0000_0001n;
      w.set(f.name as A.EpArgsField, v);
    });
    A.EP_ARGS_FIELDS.forEach((f, i) => {
      const v = f.type === 'i32' ? -(i + 1) : BigInt(i + 1) * 0x1_0000_0001n;
      assert.equal(w.get(f.name as A.EpArgsField), v, f.name);
    });
  });

  test('readEpError decodes every field from a DataView or bytes', () => {
    const bytes = new Uint8Array(8 + A.EP_ERROR_BYTES);
    const dv = new DataView(bytes.buffer, 8);
    const o = A.EP_ERROR_OFFSET;
    dv.setUint32(o.code, A.EP_ERR_TIMEOUT_COMBINE, true);
    dv.setUint32(o.peer, 7, true);
    dv.setUint32(o.slot, 1, true);
    dv.setUint32(o.aux, 0xffff_ffff, true);
    dv.setBigUint64(o.callCount, 12345678901n, true);
    dv.setBigInt64(o.a, -2n, true);
    dv.setBigInt64(o.b, 1n << 40n, true);
    const want = {
      code: 2,
      peer: 7,
      slot: 1,
      aux: 0xffff_ffff,
      callCount: 12345678901n,
      a: -2n,
      b: 1n << 40n,
    };
    assert.deepEqual(A.readEpError(dv), want);
    assert.deepEqual(A.readEpError(bytes.subarray(8)), want);
    assert.throws(() => A.readEpError(new Uint8Array(8)), RangeError);
  });

  test('routeSharedBytes follows the documented formula', () => {
    assert.equal(A.routeSharedBytes(256, 32768), 4 * (32 * 256 + 257) + 65536);
    assert.ok(A.routeSharedBytes(1024, 32768) <= 232448, 'the largest case fits an H100 block');
  });
});
