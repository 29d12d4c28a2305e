import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CudaError, ShapeError, TransportUnavailableError } from '../src/errors.js';
import { type CudaDriver, cudaAvailable, loadDriver } from '../src/shmem/cuda/driver.js';

const driverModule = fileURLToPath(new URL('../src/shmem/cuda/driver.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

describe('cuda driver: without touching a GPU', () => {
  test('importing driver.ts loads neither koffi nor libcuda', () => {
    // A fresh process, so nothing else in this file has loaded anything yet.
    const code = [
      `await import(${JSON.stringify(driverModule)});`,
      `const fs = await import('node:fs');`,
      `const maps = fs.existsSync('/proc/self/maps') ? fs.readFileSync('/proc/self/maps', 'utf8') : '';`,
      `console.log(JSON.stringify({ libcuda: maps.includes('libcuda'), koffi: maps.includes('koffi') }));`,
    ].join('\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: repoRoot,
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}'), {
      libcuda: false,
      koffi: false,
    });
  });

  test('cudaAvailable() never throws and agrees with loadDriver()', () => {
    const available = cudaAvailable();
    assert.equal(typeof available, 'boolean');
    assert.equal(cudaAvailable(), available, 'the answer is cached and stable');
    if (available) {
      assert.equal(typeof loadDriver().deviceCount, 'number');
    } else {
      assert.throws(() => loadDriver(), TransportUnavailableError);
    }
  });

  test('loadDriver() without a driver throws TransportUnavailableError that points to --transport cpu', () => {
    if (cudaAvailable()) {
      // On a GPU machine the failure path cannot be provoked in-process; the success path is checked.
      const d = loadDriver();
      assert.ok(d.deviceCount >= 1);
      assert.equal(loadDriver(), d, 'loaded once and cached');
      return;
    }
    let caught: unknown;
    try {
      loadDriver();
    } catch (err) {
      caught = err;
    }
    assert.ok(
      caught instanceof TransportUnavailableError,
      `expected TransportUnavailableError, got ${caught}`,
    );
    assert.equal(caught.code, 'MOE_TRANSPORT_UNAVAILABLE');
    assert.match(caught.message, /NVIDIA driver and GPU/);
    assert.match(caught.message, /--transport cpu/);
    assert.match(caught.message, /transport: 'cpu'/);
    assert.equal(typeof caught.details.missing, 'string');
    // The failure is cached: the second call throws the same error without retrying.
    assert.throws(
      () => loadDriver(),
      (err: unknown) => err === caught,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// With a driver and a GPU (skipped where there is none, as in CI).
// ---------------------------------------------------------------------------------------------

const noGpu = !cudaAvailable() && 'no CUDA driver';

/**
 * `extern "C" __global__ void fill_u32(FillArgs a) { i = blockIdx.x * blockDim.x + threadIdx.x;
 * if (i < a.n) a.dst[i] = a.value + i; }` with `struct FillArgs { unsigned *dst; unsigned value;
 * unsigned n; }` (16 bytes), compiled by nvcc 13 with -ptx -arch=compute_80 and the PTX ISA version
 * lowered to 7.0 (nothing newer is used) so that any driver since CUDA 11.0 can JIT it.
 */
const FILL_PTX = `
.version 7.0
.target sm_80
.address_size 64

.visible .entry fill_u32(
	.param .align 8 .b8 fill_u32_param_0[16]
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<10>;
	.reg .b64 	%rd<5>;

	ld.param.v2.u32 	{%r4, %r5}, [fill_u32_param_0+8];
	ld.param.u64 	%rd1, [fill_u32_param_0];
	mov.u32 	%r6, %ntid.x;
	mov.u32 	%r7, %ctaid.x;
	mov.u32 	%r8, %tid.x;
	mad.lo.s32 	%r1, %r7, %r6, %r8;
	setp.ge.u32 	%p1, %r1, %r5;
	@%p1 bra 	$L__BB0_2;

	cvta.to.global.u64 	%rd2, %rd1;
	add.s32 	%r9, %r4, %r1;
	mul.wide.u32 	%rd3, %r1, 4;
	add.s64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r9;

$L__BB0_2:
	ret;
}
`;

function writeFillArgs(args: Buffer, dst: bigint, value: number, n: number): void {
  args.writeBigUInt64LE(dst, 0);
  args.writeUInt32LE(value, 8);
  args.writeUInt32LE(n, 12);
}

function readU32(d: CudaDriver, ptr: bigint, n: number): Uint32Array {
  const out = new Uint32Array(n);
  d.memcpyDtoH(out, ptr);
  return out;
}

describe('cuda driver: on a GPU', { skip: noGpu }, () => {
  // Lazily, so that the describe body does nothing when skipped.
  let drv: CudaDriver | undefined;
  function gpu(): CudaDriver {
    if (!drv) {
      drv = loadDriver();
      drv.useDevice(0);
    }
    return drv;
  }

  test('driver version, device count and deviceInfo', () => {
    const d = gpu();
    assert.ok(d.driverVersion >= 11000, `driver version ${d.driverVersion}`);
    assert.ok(d.deviceCount >= 1);
    const info = d.deviceInfo(0);
    assert.ok(info.name.length > 0);
    assert.ok(info.smCount > 0);
    assert.ok(info.ccMajor >= 3);
    assert.ok(info.ccMinor >= 0);
    assert.ok(info.totalMem > 2 ** 30);
    assert.ok(info.maxSharedMemoryPerBlockOptin >= 48 * 1024);
    if (info.pciBusId !== undefined)
      assert.match(info.pciBusId, /^[0-9a-f]+:[0-9a-f]+:[0-9a-f]+\.[0-9a-f]$/i);
    assert.equal(d.canAccessPeer(0, 0), false, 'a device is not its own peer');
    assert.throws(() => d.deviceInfo(d.deviceCount), CudaError);
  });

  test('alloc and HtoD/DtoH/DtoD round trip of random bytes', () => {
    const d = gpu();
    for (const bytes of [1, 4097, 3 << 20]) {
      const src = randomBytes(bytes);
      const a = d.memAlloc(bytes);
      const b = d.memAlloc(bytes);
      try {
        assert.equal(typeof a, 'bigint');
        d.memcpyHtoD(a, src);
        d.memcpyDtoD(b, a, bytes);
        const back = Buffer.alloc(bytes);
        d.memcpyDtoH(back, b);
        assert.ok(back.equals(src), `round trip of ${bytes} bytes`);
      } finally {
        d.memFree(a);
        d.memFree(b);
      }
    }
  });

  test('async copies and memsets on a stream', () => {
    const d = gpu();
    const stream = d.streamCreate();
    const bytes = 1 << 16;
    const a = d.memAlloc(bytes);
    const b = d.memAlloc(bytes);
    try {
      const src = randomBytes(bytes);
      d.memcpyHtoDAsync(a, src, bytes, stream);
      d.memcpyDtoDAsync(b, a, bytes, stream);
      const back = Buffer.alloc(bytes);
      d.memcpyDtoHAsync(back, b, bytes, stream);
      d.streamSynchronize(stream);
      assert.equal(d.streamQuery(stream), true);
      assert.ok(back.equals(src));

      d.memsetD8(a, 0x5a, bytes);
      assert.ok(readU32(d, a, bytes / 4).every((x) => x === 0x5a5a5a5a));
      d.memsetD8Async(a + 16n, 0x01, 16, stream);
      d.memsetD32Async(b, 0xdeadbeef, bytes / 4, stream);
      d.streamSynchronize(stream);
      const head = Buffer.alloc(48);
      d.memcpyDtoH(head, a);
      assert.deepEqual([...head.subarray(0, 16)], new Array(16).fill(0x5a));
      assert.deepEqual([...head.subarray(16, 32)], new Array(16).fill(0x01));
      assert.deepEqual([...head.subarray(32, 48)], new Array(16).fill(0x5a));
      assert.ok(readU32(d, b, bytes / 4).every((x) => x === 0xdeadbeef));
    } finally {
      d.memFree(a);
      d.memFree(b);
      d.streamDestroy(stream);
    }
  });

  test('events: record, query, synchronize, elapsed time', () => {
    const d = gpu();
    const stream = d.streamCreate();
    const start = d.eventCreate();
    const end = d.eventCreate();
    const bytes = 64 << 20;
    const a = d.memAlloc(bytes);
    try {
      d.eventRecord(start, stream);
      d.memsetD8Async(a, 7, bytes, stream);
      d.eventRecord(end, stream);
      d.eventSynchronize(end);
      assert.equal(d.eventQuery(end), true);
      const ms = d.eventElapsedTime(start, end);
      assert.ok(Number.isFinite(ms) && ms >= 0, `elapsed ${ms} ms`);
      const cheap = d.eventCreate({ disableTiming: true });
      d.eventRecord(cheap, stream);
      d.streamSynchronize(stream);
      assert.throws(() => d.eventElapsedTime(start, cheap), CudaError);
      d.eventDestroy(cheap);
    } finally {
      d.memFree(a);
      d.eventDestroy(start);
      d.eventDestroy(end);
      d.streamDestroy(stream);
    }
  });

  test('a failing call throws CudaError naming the call and the result', () => {
    const d = gpu();
    let caught: unknown;
    try {
      d.memFree(0xdead_0000n);
    } catch (err) {
      caught = err;
    }
    assert.ok(caught instanceof CudaError, `expected CudaError, got ${caught}`);
    assert.equal(caught.code, 'MOE_CUDA');
    assert.equal(caught.details.call, 'cuMemFree_v2');
    assert.match(String(caught.details.result), /^CUDA_ERROR_/);
    assert.equal(typeof caught.details.code, 'number');
    assert.match(caught.message, /^cuMemFree_v2 failed: CUDA_ERROR_[A-Z_]+ \(\d+\)/);
    assert.equal(d.errorName(2), 'CUDA_ERROR_OUT_OF_MEMORY');
    assert.throws(() => d.memAlloc(2 ** 52), /cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)/);
    // The context survives both (neither error is sticky).
    const p = d.memAlloc(16);
    d.memFree(p);
  });

  test('host-mapped memory is visible as a view, to copies and to kernels', () => {
    const d = gpu();
    const mapped = d.allocHostMapped(256);
    const dev = d.memAlloc(256);
    const mod = d.moduleLoadData(Buffer.from(`${FILL_PTX}\0`));
    try {
      assert.equal(mapped.view.byteLength, 256);
      assert.equal(typeof mapped.devicePtr, 'bigint');
      mapped.view.fill(0);
      // Host writes, the device reads (through the device pointer).
      mapped.view.set([1, 2, 3, 4], 0);
      d.memcpyDtoD(dev, mapped.devicePtr, 256);
      const back = Buffer.alloc(4);
      d.memcpyDtoH(back, dev, 4);
      assert.deepEqual([...back], [1, 2, 3, 4]);
      // A kernel writes, the host reads the view with no copy call.
      const fn = d.moduleGetFunction(mod, 'fill_u32');
      const args = Buffer.alloc(16);
      writeFillArgs(args, mapped.devicePtr, 1000, 8);
      d.launch(fn, [1, 1, 1], [32, 1, 1], 0, null, args);
      d.synchronizeContext();
      const words = new Uint32Array(mapped.view.buffer, mapped.view.byteOffset, 8);
      assert.deepEqual([...words], [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007]);
    } finally {
      d.moduleUnload(mod);
      d.memFree(dev);
      mapped.free();
      mapped.free(); // idempotent
    }
  });

  test('prepareLaunch reuses one args buffer across launches; graph capture replays it', () => {
    const d = gpu();
    const mod = d.moduleLoadData(Buffer.from(`${FILL_PTX}\0`));
    const stream = d.streamCreate();
    const n = 1000;
    const out = d.memAlloc(n * 4);
    try {
      const fn = d.moduleGetFunction(mod, 'fill_u32');
      assert.throws(
        () => d.moduleGetFunction(mod, 'no_such_kernel'),
        /cuModuleGetFunction failed.*no_such_kernel/,
      );
      assert.ok(d.funcGetAttribute(fn, 0) >= 32, 'max threads per block');
      // a small kernel of 128 threads: an SM holds several of its blocks (at most 32 on sm_90)
      const perSm = d.maxActiveBlocksPerSm(fn, 128, 0);
      assert.ok(Number.isInteger(perSm) && perSm >= 2 && perSm <= 32, `blocks an SM: ${perSm}`);
      d.funcSetAttribute(fn, 8, 0); // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
      const args = Buffer.alloc(16);
      const launcher = d.prepareLaunch(fn, args);
      const grid: [number, number, number] = [Math.ceil(n / 128), 1, 1];
      const block: [number, number, number] = [128, 1, 1];
      for (const value of [10, 20_000, 7]) {
        writeFillArgs(args, out, value, n);
        launcher.launch(grid, block, 0, stream);
        d.streamSynchronize(stream);
        const got = readU32(d, out, n);
        assert.equal(got[0], value);
        assert.equal(got[n - 1], value + n - 1);
      }
      // The driver copies argument bytes at launch: rewriting them right after does not race.
      writeFillArgs(args, out, 1, n);
      launcher.launch(grid, block, 0, stream);
      writeFillArgs(args, out, 999_999, 0);
      d.streamSynchronize(stream);
      assert.equal(readU32(d, out, 1)[0], 1);

      // Capture into a graph, then replay: the graph holds the bytes as they were at capture.
      writeFillArgs(args, out, 500, n);
      d.streamBeginCapture(stream);
      launcher.launch(grid, block, 0, stream);
      const graph = d.streamEndCapture(stream);
      const exec = d.graphInstantiate(graph);
      d.memsetD8(out, 0, n * 4);
      writeFillArgs(args, out, 0, 0);
      d.graphLaunch(exec, stream);
      d.streamSynchronize(stream);
      assert.equal(readU32(d, out, n)[n - 1], 500 + n - 1);
      // Update the instantiated graph's kernel in place (what eager calls do): new argument bytes and
      // a smaller grid, used from the next replay on; the bytes are copied during the call.
      const nodes = d.graphKernelNodes(graph);
      assert.ok(nodes, 'CUDA 12+ drivers can update kernel nodes');
      assert.equal(nodes.length, 1);
      assert.ok(nodes[0].launches(fn));
      const args2 = Buffer.alloc(16);
      writeFillArgs(args2, out, 700, n / 2);
      d.graphExecSetKernel(exec, nodes[0], [Math.ceil(n / 2 / 128), 1, 1], block, 0, args2);
      writeFillArgs(args2, out, 0, 0);
      d.memsetD8(out, 0, n * 4);
      d.graphLaunch(exec, stream);
      d.streamSynchronize(stream);
      const updated = readU32(d, out, n);
      assert.equal(updated[n / 2 - 1], 700 + n / 2 - 1);
      assert.equal(updated[n / 2], 0, 'the new grid and count, not the captured ones');
      d.graphExecDestroy(exec);
      d.graphDestroy(graph);

      // A programmatic dependent launch, eager and captured: it runs after the kernel before it (this
      // kernel never triggers early, so it starts when that one ends) and its value is the one left.
      for (const captured of [false, true]) {
        d.memsetD8(out, 0, n * 4);
        if (captured) d.streamBeginCapture(stream);
        writeFillArgs(args, out, 100, n);
        launcher.launch(grid, block, 0, stream);
        writeFillArgs(args, out, 300, n);
        launcher.launch(grid, block, 0, stream, true);
        if (captured) {
          const g = d.streamEndCapture(stream);
          const e = d.graphInstantiate(g);
          d.graphLaunch(e, stream);
          d.streamSynchronize(stream);
          d.graphExecDestroy(e);
          d.graphDestroy(g);
        }
        d.streamSynchronize(stream);
        assert.equal(readU32(d, out, n)[n - 1], 300 + n - 1, captured ? 'captured' : 'eager');
      }

      // A wrong-sized args struct is caught when the driver can tell the parameter size.
      if (d.driverVersion >= 12040) assert.throws(() => d.prepareLaunch(fn, Buffer.alloc(8)), ShapeError);
    } finally {
      d.memFree(out);
      d.streamDestroy(stream);
      d.moduleUnload(mod);
    }
  });

  test('IPC handle of an allocation is 64 bytes', () => {
    const d = gpu();
    const p = d.memAlloc(1 << 21);
    try {
      const h = d.ipcGetMemHandle(p);
      assert.equal(h.byteLength, 64);
      assert.ok(h.some((x) => x !== 0));
      assert.throws(() => d.ipcOpenMemHandle(new Uint8Array(10)), ShapeError);
    } finally {
      d.memFree(p);
    }
  });
});
