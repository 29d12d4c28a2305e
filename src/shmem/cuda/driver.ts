/**
 * CUDA driver API bindings through koffi (the only file that talks to libcuda).
 *
 * Nothing happens at import time: koffi itself is required lazily, and `libcuda.so.1` is loaded,
 * bound and initialised (`cuInit`) by the first `loadDriver()` call, then cached for the process.
 *
 * Conventions:
 * - Device pointers (`CUdeviceptr`, 64-bit) are `bigint`. Offsets are added with `ptr + BigInt(n)`.
 * - Streams, events, modules, functions, contexts and graphs are opaque koffi pointers behind small
 *   branded types (`CuStream`, ...). `null` as a stream means the legacy default stream.
 * - Every `CUresult` is checked: a non-zero result throws `CudaError` naming the call and the
 *   result's name, e.g. `cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory`, with
 *   `details = { call, result: 'CUDA_ERROR_OUT_OF_MEMORY', code: 2 }`.
 * - The CUDA current context is per OS thread. Each worker thread (or process) that calls the
 *   driver must make its context current (`useDevice(ordinal)`) before anything else.
 * - Sizes are in bytes unless the name says otherwise (`memsetD32Async` counts 32-bit words).
 */
import { createRequire } from 'node:module';
import { CudaError, ShapeError, TransportUnavailableError } from '../../errors.js';

type Koffi = typeof import('koffi');
type KoffiLib = import('koffi').IKoffiLib;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

declare const cudaHandle: unique symbol;
/** An opaque driver handle (a koffi pointer object); `K` names the C type it stands for. */
export type CudaHandle<K extends string> = object & { readonly [cudaHandle]: K };
export type CuContext = CudaHandle<'CUcontext'>;
export type CuStream = CudaHandle<'CUstream'>;
export type CuEvent = CudaHandle<'CUevent'>;
export type CuModule = CudaHandle<'CUmodule'>;
export type CuFunction = CudaHandle<'CUfunction'>;
export type CuGraph = CudaHandle<'CUgraph'>;
export type CuGraphExec = CudaHandle<'CUgraphExec'>;
/** A host pointer returned by the driver (pinned memory), as a koffi pointer object. */
export type HostPointer = CudaHandle<'void*'>;

/** Grid or block dimensions `[x, y, z]`. */
export type Dim3 = readonly [number, number, number];

/** Host memory the driver can read or write: a Buffer, any typed array, a DataView or an ArrayBuffer. */
export type HostMemory = ArrayBufferView | ArrayBuffer;

export interface DeviceInfo {
  ordinal: number;
  /** Marketing name, e.g. 'NVIDIA H100 80GB HBM3'. */
  name: string;
  /** Streaming multiprocessors. */
  smCount: number;
  ccMajor: number;
  ccMinor: number;
  /** Device memory in bytes. */
  totalMem: number;
  /** Largest dynamic shared memory a block may opt into, in bytes. */
  maxSharedMemoryPerBlockOptin: number;
  /** 'dddd:bb:dd.f', when the driver can tell. */
  pciBusId?: string;
}

/** Page-locked host memory mapped into the device address space (`cuMemHostAlloc` + DEVICEMAP). */
export interface HostMappedBuffer {
  /** The host pointer, as a koffi pointer object. */
  readonly hostPtr: HostPointer;
  /** The host address as a number-like bigint (for logs and interop). */
  readonly hostAddress: bigint;
  /** The address kernels use to reach this memory. */
  readonly devicePtr: bigint;
  readonly bytes: number;
  /**
   * The host memory itself, without a copy: reads see what kernels wrote once the writing kernel
   * has finished or fenced (`__threadfence_system()`); writes are seen by later kernels.
   * Invalid after `free()`: touching it then is a use-after-free (the process may crash).
   */
  readonly view: Uint8Array;
  /** Frees the memory (idempotent). Drop every reference to `view` first. */
  free(): void;
}

/** Page-locked host memory (`cuMemAllocHost_v2`): fast staging for async copies. */
export interface HostPinnedBuffer {
  readonly hostPtr: HostPointer;
  readonly hostAddress: bigint;
  readonly bytes: number;
  /** The memory itself; invalid after `free()`. */
  readonly view: Uint8Array;
  free(): void;
}

/**
 * A kernel launch with its argument bytes bound once (see `prepareLaunch`). The caller rewrites
 * `args` in place between launches; the driver copies the bytes at each `launch` call, so the
 * next rewrite can start as soon as `launch` returns (also during graph capture).
 */
export interface KernelLauncher {
  readonly fn: CuFunction;
  readonly args: Uint8Array;
  /**
   * Enqueues the kernel on `stream` (null: the legacy default stream). No allocation.
   * `dependent`: launch it as a programmatic dependent of the kernel before it on the stream
   * (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, sm_90+): it may start once every block of
   * that kernel has run `griddepcontrol.launch_dependents`, so it must itself run `griddepcontrol.wait`
   * before it touches that kernel's memory. Where the driver lacks cuLaunchKernelEx this is an
   * ordinary launch (the kernel's wait then returns at once).
   */
  launch(grid: Dim3, block: Dim3, sharedBytes: number, stream: CuStream | null, dependent?: boolean): void;
}

export type CaptureMode = 'global' | 'thread-local' | 'relaxed';

export interface CudaDriver {
  /** e.g. 13000 for CUDA 13.0. */
  readonly driverVersion: number;
  /** Devices visible to this process (after CUDA_VISIBLE_DEVICES), at least 1. */
  readonly deviceCount: number;

  /** Throws `CudaError` when `res` is not CUDA_SUCCESS; `call` names the driver function. */
  check(call: string, res: number): void;
  /** 'CUDA_ERROR_OUT_OF_MEMORY' for 2, or 'CUDA_ERROR_<code>' when the driver does not know it. */
  errorName(res: number): string;

  // devices and contexts
  deviceInfo(ordinal: number): DeviceInfo;
  deviceAttribute(attribute: number, ordinal: number): number;
  /** Whether device `a` can map device `b`'s memory (`cuDeviceCanAccessPeer`). */
  canAccessPeer(a: number, b: number): boolean;
  retainPrimaryContext(ordinal: number): CuContext;
  releasePrimaryContext(ordinal: number): void;
  setCurrentContext(ctx: CuContext | null): void;
  /** Retains `ordinal`'s primary context and makes it current on this thread; returns it. */
  useDevice(ordinal: number): CuContext;
  synchronizeContext(): void;
  /** Lets the current context reach `peer`'s memory; already enabled counts as success. */
  enablePeerAccess(peer: CuContext): void;

  // device memory
  memAlloc(bytes: number): bigint;
  memFree(ptr: bigint): void;
  memcpyHtoD(dst: bigint, src: HostMemory, bytes?: number): void;
  memcpyDtoH(dst: HostMemory, src: bigint, bytes?: number): void;
  memcpyDtoD(dst: bigint, src: bigint, bytes: number): void;
  /** `src` must stay alive and unchanged until the copy has run (use pinned memory for true async). */
  memcpyHtoDAsync(dst: bigint, src: HostMemory, bytes: number, stream: CuStream | null): void;
  /** `dst` must stay alive until the copy has run. */
  memcpyDtoHAsync(dst: HostMemory, src: bigint, bytes: number, stream: CuStream | null): void;
  memcpyDtoDAsync(dst: bigint, src: bigint, bytes: number, stream: CuStream | null): void;
  memsetD8(dst: bigint, value: number, bytes: number): void;
  memsetD8Async(dst: bigint, value: number, bytes: number, stream: CuStream | null): void;
  /** `words` 32-bit words of `value`; `dst` 4-byte aligned. */
  memsetD32Async(dst: bigint, value: number, words: number, stream: CuStream | null): void;
  /** `cuPointerGetAttribute` for attributes whose value fits 8 bytes (int ones read in the low bits). */
  pointerGetAttribute(attribute: number, ptr: bigint): bigint;

  // host memory
  allocHostMapped(bytes: number): HostMappedBuffer;
  allocHostPinned(bytes: number): HostPinnedBuffer;

  // IPC
  /** The 64-byte `CUipcMemHandle` of an allocation made by `memAlloc` (its base address). */
  ipcGetMemHandle(ptr: bigint): Uint8Array;
  /** Maps a peer process's allocation (with CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS); returns its address here. */
  ipcOpenMemHandle(handle: Uint8Array): bigint;
  ipcCloseMemHandle(ptr: bigint): void;

  // modules and kernels
  /** Loads a fatbin (or cubin / NUL-terminated PTX) image held in memory. */
  moduleLoadData(image: HostMemory): CuModule;
  moduleUnload(mod: CuModule): void;
  moduleGetFunction(mod: CuModule, name: string): CuFunction;
  funcSetAttribute(fn: CuFunction, attribute: number, value: number): void;
  funcGetAttribute(fn: CuFunction, attribute: number): number;
  /** How many blocks of `block` threads (and `sharedBytes` dynamic shared memory) one SM holds at once. */
  maxActiveBlocksPerSm(fn: CuFunction, block: number, sharedBytes: number): number;
  /**
   * Binds `args` (the bytes of the kernel's single by-value struct parameter) to `fn` once and
   * returns a launcher. Checks `args.byteLength` against the kernel's parameter size when the
   * driver can tell (cuFuncGetParamInfo, CUDA >= 12.4).
   */
  prepareLaunch(fn: CuFunction, args: Uint8Array): KernelLauncher;
  /** One-shot form of `prepareLaunch(fn, args).launch(...)`; the pointer array is cached per `args`. */
  launch(
    fn: CuFunction,
    grid: Dim3,
    block: Dim3,
    sharedBytes: number,
    stream: CuStream | null,
    args: Uint8Array,
  ): void;

  // streams and events
  /** `nonBlocking` (default true) sets CU_STREAM_NON_BLOCKING: no implicit sync with the default stream. */
  streamCreate(opts?: { nonBlocking?: boolean }): CuStream;
  streamDestroy(stream: CuStream): void;
  streamSynchronize(stream: CuStream | null): void;
  /** True when all work on `stream` has completed, false while some is pending; throws on error. */
  streamQuery(stream: CuStream | null): boolean;
  /** `disableTiming` (default false) makes record/wait cheaper; `blockingSync` makes sync sleep. */
  eventCreate(opts?: { disableTiming?: boolean; blockingSync?: boolean }): CuEvent;
  eventRecord(event: CuEvent, stream: CuStream | null): void;
  eventSynchronize(event: CuEvent): void;
  /** True when the event has completed, false while pending; throws on error. */
  eventQuery(event: CuEvent): boolean;
  /** Milliseconds between two completed events (resolution about 0.5 us). */
  eventElapsedTime(start: CuEvent, end: CuEvent): number;
  eventDestroy(event: CuEvent): void;

  // graphs
  streamBeginCapture(stream: CuStream, mode?: CaptureMode): void;
  streamEndCapture(stream: CuStream): CuGraph;
  graphInstantiate(graph: CuGraph, flags?: number): CuGraphExec;
  graphLaunch(exec: CuGraphExec, stream: CuStream | null): void;
  graphExecDestroy(exec: CuGraphExec): void;
  graphDestroy(graph: CuGraph): void;
  /**
   * The kernel nodes of `graph`, in no particular order; null where the driver cannot update an
   * instantiated graph's kernels (before CUDA 12). The graph must outlive every use of its nodes.
   */
  graphKernelNodes(graph: CuGraph): GraphKernelNode[] | null;
  /**
   * Makes `node` of `exec` (instantiated from the node's graph) launch `args` (the bytes of the one
   * struct parameter, copied during the call) with these dimensions, from its next launch on. The
   * function stays the node's. No allocation.
   */
  graphExecSetKernel(
    exec: CuGraphExec,
    node: GraphKernelNode,
    grid: Dim3,
    block: Dim3,
    sharedBytes: number,
    args: Uint8Array,
  ): void;
}

/** A kernel node of a graph (see `graphKernelNodes`). */
export interface GraphKernelNode {
  /** Whether this node launches `fn`. */
  launches(fn: CuFunction): boolean;
}

// ---------------------------------------------------------------------------------------------
// Constants (values from cuda.h, CUDA 13)
// ---------------------------------------------------------------------------------------------

export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_INVALID_VALUE = 1;
export const CUDA_ERROR_NO_DEVICE = 100;
export const CUDA_ERROR_NOT_READY = 600;
export const CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704;

export const CU_STREAM_NON_BLOCKING = 0x1;
export const CU_EVENT_BLOCKING_SYNC = 0x1;
export const CU_EVENT_DISABLE_TIMING = 0x2;
export const CU_MEMHOSTALLOC_PORTABLE = 0x1;
export const CU_MEMHOSTALLOC_DEVICEMAP = 0x2;
export const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1;
export const CU_IPC_HANDLE_SIZE = 64;
export const CU_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH = 1;

export const CuDeviceAttribute = {
  MAX_THREADS_PER_BLOCK: 1,
  MAX_SHARED_MEMORY_PER_BLOCK: 8,
  WARP_SIZE: 10,
  MULTIPROCESSOR_COUNT: 16,
  PCI_BUS_ID: 33,
  PCI_DEVICE_ID: 34,
  UNIFIED_ADDRESSING: 41,
  PCI_DOMAIN_ID: 50,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: 91,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

export const CuFunctionAttribute = {
  MAX_THREADS_PER_BLOCK: 0,
  SHARED_SIZE_BYTES: 1,
  CONST_SIZE_BYTES: 2,
  LOCAL_SIZE_BYTES: 3,
  NUM_REGS: 4,
  PTX_VERSION: 5,
  BINARY_VERSION: 6,
  MAX_DYNAMIC_SHARED_SIZE_BYTES: 8,
} as const;

export const CuPointerAttribute = {
  CONTEXT: 1,
  MEMORY_TYPE: 2,
  DEVICE_POINTER: 3,
  HOST_POINTER: 4,
  DEVICE_ORDINAL: 9,
} as const;

const captureModes: Record<CaptureMode, number> = { global: 0, 'thread-local': 1, relaxed: 2 };

const LIBCUDA = 'libcuda.so.1';

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

let cachedDriver: CudaDriver | undefined;
let cachedFailure: TransportUnavailableError | undefined;

/**
 * Loads libcuda once per process (or worker), runs `cuInit(0)` and returns the bound driver.
 * Throws `TransportUnavailableError` (code MOE_TRANSPORT_UNAVAILABLE) when there is no usable
 * NVIDIA driver or GPU; the failure is cached too (a driver does not appear mid-process).
 */
export function loadDriver(): CudaDriver {
  if (cachedDriver) return cachedDriver;
  if (cachedFailure) throw cachedFailure;
  try {
    cachedDriver = openDriver();
    return cachedDriver;
  } catch (err) {
    if (err instanceof TransportUnavailableError) cachedFailure = err;
    throw err;
  }
}

/** Whether the cuda transport can run here (driver loads, cuInit succeeds, >= 1 device). Never throws. */
export function cudaAvailable(): boolean {
  try {
    loadDriver();
    return true;
  } catch {
    return false;
  }
}

function unavailable(
  what: string,
  details: { missing: string } & Record<string, string | number>,
  cause?: unknown,
): TransportUnavailableError {
  return new TransportUnavailableError(
    `The cuda transport needs an NVIDIA driver and GPU, but ${what}. ` +
      `Use --transport cpu (or transport: 'cpu') to run without a GPU.`,
    details,
    cause === undefined ? undefined : { cause },
  );
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Type names are global in koffi: prefixed so another binding (NCCL) may define its own `CUstream`. */
interface KoffiTypes {
  ipcHandle: ReturnType<Koffi['struct']>;
}
let definedTypes: KoffiTypes | undefined;

function defineTypes(koffi: Koffi): KoffiTypes {
  if (definedTypes) return definedTypes;
  for (const name of ['CUctx', 'CUstream', 'CUevent', 'CUmod', 'CUfunc', 'CUgraph', 'CUgraphExec']) {
    koffi.pointer(`moeA2a_${name}`, koffi.opaque(`moeA2a_${name}_st`));
  }
  const ipcHandle = koffi.struct('moeA2a_CUipcMemHandle', {
    reserved: koffi.array('uint8_t', CU_IPC_HANDLE_SIZE),
  });
  definedTypes = { ipcHandle };
  return definedTypes;
}

function openDriver(): CudaDriver {
  let koffi: Koffi;
  try {
    koffi = createRequire(import.meta.url)('koffi') as Koffi;
  } catch (err) {
    throw unavailable(
      `the koffi native module could not be loaded (${errorMessage(err)})`,
      { missing: 'koffi' },
      err,
    );
  }
  // koffi.address() on a Buffer/typed array (used to pre-build launch argument arrays) is new in
  // koffi 2.16; koffi.view() in 2.11.
  try {
    if (typeof koffi.view !== 'function' || typeof koffi.address(new Uint8Array(8)) !== 'bigint')
      throw new Error();
  } catch {
    throw unavailable('the installed koffi is too old (koffi >= 2.16 is required: npm install koffi@^2.16)', {
      missing: 'koffi',
    });
  }
  let lib: KoffiLib;
  try {
    lib = koffi.load(LIBCUDA);
  } catch (err) {
    throw unavailable(
      `${LIBCUDA} (the NVIDIA driver library) was not found (${errorMessage(err)})`,
      { missing: 'library' },
      err,
    );
  }
  let fns: Fns;
  try {
    defineTypes(koffi);
    fns = bind(lib);
  } catch (err) {
    throw unavailable(
      `${LIBCUDA} lacks a function this library needs; the driver is too old? (${errorMessage(err)})`,
      { missing: 'symbol' },
      err,
    );
  }
  const names = makeErrorNames(fns);
  const init = fns.cuInit(0);
  if (init !== CUDA_SUCCESS) {
    const name = names(init);
    const what =
      init === CUDA_ERROR_NO_DEVICE
        ? `cuInit found no CUDA device (${name} (${init}); check CUDA_VISIBLE_DEVICES and nvidia-smi)`
        : `cuInit failed with ${name} (${init})`;
    throw unavailable(what, {
      missing: init === CUDA_ERROR_NO_DEVICE ? 'device' : 'cuInit',
      result: name,
      code: init,
    });
  }
  const i32 = new Int32Array(1);
  let res = fns.cuDeviceGetCount(i32);
  if (res !== CUDA_SUCCESS) {
    throw unavailable(`cuDeviceGetCount failed with ${names(res)} (${res})`, {
      missing: 'device',
      result: names(res),
      code: res,
    });
  }
  const deviceCount = i32[0];
  if (deviceCount === 0) {
    throw unavailable('no CUDA device is visible (cuDeviceGetCount returned 0; check CUDA_VISIBLE_DEVICES)', {
      missing: 'device',
    });
  }
  res = fns.cuDriverGetVersion(i32);
  const driverVersion = res === CUDA_SUCCESS ? i32[0] : 0;
  return makeDriver(koffi, fns, names, driverVersion, deviceCount);
}

// ---------------------------------------------------------------------------------------------
// Raw bindings
// ---------------------------------------------------------------------------------------------

/** A pointer-sized out slot or in value: koffi passes typed arrays and Buffers as raw pointers. */
type Raw = ArrayBufferView | ArrayBuffer;
/** koffi pointer object, or null for NULL. */
type Ptr = object | null;
/** An address passed as uintptr_t: a number where it is a safe integer (always, for user-space x86-64 and arm64 addresses). */
type Addr = number | bigint;
/** Out parameter for an opaque handle: koffi writes the pointer object into `[0]`. */
type HandleOut = [Ptr];

interface Fns {
  cuGetErrorName(res: number, out: [string | null]): number;
  cuGetErrorString(res: number, out: [string | null]): number;
  cuInit(flags: number): number;
  cuDriverGetVersion(out: Int32Array): number;
  cuDeviceGetCount(out: Int32Array): number;
  cuDeviceGet(out: Int32Array, ordinal: number): number;
  cuDeviceGetName(buf: Uint8Array, len: number, dev: number): number;
  cuDeviceGetAttribute(out: Int32Array, attr: number, dev: number): number;
  cuDeviceGetPCIBusId(buf: Uint8Array, len: number, dev: number): number;
  cuDeviceTotalMem_v2(out: BigUint64Array, dev: number): number;
  cuDevicePrimaryCtxRetain(out: HandleOut, dev: number): number;
  cuDevicePrimaryCtxRelease_v2(dev: number): number;
  cuCtxSetCurrent(ctx: Ptr): number;
  cuCtxSynchronize(): number;
  cuDeviceCanAccessPeer(out: Int32Array, dev: number, peer: number): number;
  cuCtxEnablePeerAccess(peer: Ptr, flags: number): number;
  cuMemAlloc_v2(out: BigUint64Array, bytes: number): number;
  cuMemFree_v2(ptr: bigint): number;
  cuMemAllocHost_v2(out: HandleOut, bytes: number): number;
  cuMemHostAlloc(out: HandleOut, bytes: number, flags: number): number;
  cuMemHostGetDevicePointer_v2(out: BigUint64Array, host: Ptr, flags: number): number;
  cuMemFreeHost(host: Ptr): number;
  cuMemcpyHtoD_v2(dst: bigint, src: Raw, bytes: number): number;
  cuMemcpyDtoH_v2(dst: Raw, src: bigint, bytes: number): number;
  cuMemcpyDtoD_v2(dst: bigint, src: bigint, bytes: number): number;
  cuMemcpyHtoDAsync_v2(dst: bigint, src: Raw, bytes: number, stream: Ptr): number;
  cuMemcpyDtoHAsync_v2(dst: Raw, src: bigint, bytes: number, stream: Ptr): number;
  cuMemcpyDtoDAsync_v2(dst: bigint, src: bigint, bytes: number, stream: Ptr): number;
  cuMemsetD8_v2(dst: bigint, value: number, n: number): number;
  cuMemsetD8Async(dst: bigint, value: number, n: number, stream: Ptr): number;
  cuMemsetD32Async(dst: bigint, value: number, n: number, stream: Ptr): number;
  cuPointerGetAttribute(out: BigUint64Array, attr: number, ptr: bigint): number;
  cuIpcGetMemHandle(out: Uint8Array, ptr: bigint): number;
  cuIpcOpenMemHandle_v2(out: BigUint64Array, handle: { reserved: Uint8Array }, flags: number): number;
  cuIpcCloseMemHandle(ptr: bigint): number;
  cuModuleLoadData(out: HandleOut, image: Raw): number;
  cuModuleUnload(mod: Ptr): number;
  cuModuleGetFunction(out: HandleOut, mod: Ptr, name: string): number;
  cuFuncSetAttribute(fn: Ptr, attr: number, value: number): number;
  cuFuncGetAttribute(out: Int32Array, attr: number, fn: Ptr): number;
  cuOccupancyMaxActiveBlocksPerMultiprocessor(
    out: Int32Array,
    fn: Ptr,
    block: number,
    sharedBytes: number,
  ): number;
  cuFuncGetParamInfo?: (fn: Ptr, index: number, offset: BigUint64Array, size: BigUint64Array) => number;
  cuLaunchKernelEx?: (config: Addr, fn: Addr, kernelParams: Addr, extra: Addr) => number;
  cuLaunchKernel(
    fn: Addr,
    gx: number,
    gy: number,
    gz: number,
    bx: number,
    by: number,
    bz: number,
    shared: number,
    stream: Addr,
    kernelParams: Addr,
    extra: Addr,
  ): number;
  cuStreamCreate(out: HandleOut, flags: number): number;
  cuStreamDestroy_v2(stream: Ptr): number;
  cuStreamSynchronize(stream: Ptr): number;
  cuStreamQuery(stream: Ptr): number;
  cuEventCreate(out: HandleOut, flags: number): number;
  cuEventRecord(event: Addr, stream: Addr): number;
  cuEventSynchronize(event: Ptr): number;
  cuEventQuery(event: Ptr): number;
  cuEventElapsedTime(out: Float32Array, start: Ptr, end: Ptr): number;
  eventElapsedTimeName: string;
  cuEventDestroy_v2(event: Ptr): number;
  cuStreamBeginCapture_v2(stream: Ptr, mode: number): number;
  cuStreamEndCapture(stream: Ptr, out: HandleOut): number;
  cuGraphInstantiateWithFlags(out: HandleOut, graph: Ptr, flags: number): number;
  cuGraphLaunch(exec: Addr, stream: Addr): number;
  cuGraphGetNodes(graph: Ptr, nodes: BigUint64Array | null, count: BigUint64Array): number;
  cuGraphKernelNodeGetParams_v2?: (node: Addr, params: Addr) => number;
  cuGraphExecKernelNodeSetParams_v2?: (exec: Addr, node: Addr, params: Addr) => number;
  cuGraphExecDestroy(exec: Ptr): number;
  cuGraphDestroy(graph: Ptr): number;
}

/**
 * C prototypes as in cuda.h, with the versioned symbol each `#define` names (cuMemAlloc ->
 * cuMemAlloc_v2, ...). CUresult is an `int` enum; CUdeviceptr is `unsigned long long` (uint64_t);
 * CUdevice is `int`. Out parameters for numbers are typed arrays (koffi passes their memory
 * directly); out parameters for handles are `[null]` arrays koffi fills with pointer objects.
 */
const prototypes = [
  'int cuGetErrorName(int error, _Out_ const char **pStr)',
  'int cuGetErrorString(int error, _Out_ const char **pStr)',
  'int cuInit(unsigned int flags)',
  'int cuDriverGetVersion(int *driverVersion)',
  'int cuDeviceGetCount(int *count)',
  'int cuDeviceGet(int *device, int ordinal)',
  'int cuDeviceGetName(uint8_t *name, int len, int dev)',
  'int cuDeviceGetAttribute(int *pi, int attrib, int dev)',
  'int cuDeviceGetPCIBusId(uint8_t *pciBusId, int len, int dev)',
  'int cuDeviceTotalMem_v2(size_t *bytes, int dev)',
  'int cuDevicePrimaryCtxRetain(_Out_ moeA2a_CUctx *pctx, int dev)',
  'int cuDevicePrimaryCtxRelease_v2(int dev)',
  'int cuCtxSetCurrent(moeA2a_CUctx ctx)',
  'int cuCtxSynchronize()',
  'int cuDeviceCanAccessPeer(int *canAccessPeer, int dev, int peerDev)',
  'int cuCtxEnablePeerAccess(moeA2a_CUctx peerContext, unsigned int flags)',
  'int cuMemAlloc_v2(uint64_t *dptr, size_t bytesize)',
  'int cuMemFree_v2(uint64_t dptr)',
  'int cuMemAllocHost_v2(_Out_ void **pp, size_t bytesize)',
  'int cuMemHostAlloc(_Out_ void **pp, size_t bytesize, unsigned int flags)',
  'int cuMemHostGetDevicePointer_v2(uint64_t *pdptr, void *p, unsigned int flags)',
  'int cuMemFreeHost(void *p)',
  'int cuMemcpyHtoD_v2(uint64_t dstDevice, const void *srcHost, size_t byteCount)',
  'int cuMemcpyDtoH_v2(void *dstHost, uint64_t srcDevice, size_t byteCount)',
  'int cuMemcpyDtoD_v2(uint64_t dstDevice, uint64_t srcDevice, size_t byteCount)',
  'int cuMemcpyHtoDAsync_v2(uint64_t dstDevice, const void *srcHost, size_t byteCount, moeA2a_CUstream hStream)',
  'int cuMemcpyDtoHAsync_v2(void *dstHost, uint64_t srcDevice, size_t byteCount, moeA2a_CUstream hStream)',
  'int cuMemcpyDtoDAsync_v2(uint64_t dstDevice, uint64_t srcDevice, size_t byteCount, moeA2a_CUstream hStream)',
  'int cuMemsetD8_v2(uint64_t dstDevice, uint8_t uc, size_t n)',
  'int cuMemsetD8Async(uint64_t dstDevice, uint8_t uc, size_t n, moeA2a_CUstream hStream)',
  'int cuMemsetD32Async(uint64_t dstDevice, unsigned int ui, size_t n, moeA2a_CUstream hStream)',
  'int cuPointerGetAttribute(void *data, int attribute, uint64_t ptr)',
  'int cuIpcGetMemHandle(void *pHandle, uint64_t dptr)',
  'int cuIpcOpenMemHandle_v2(uint64_t *pdptr, moeA2a_CUipcMemHandle handle, unsigned int flags)',
  'int cuIpcCloseMemHandle(uint64_t dptr)',
  'int cuModuleLoadData(_Out_ moeA2a_CUmod *module, const void *image)',
  'int cuModuleUnload(moeA2a_CUmod hmod)',
  'int cuModuleGetFunction(_Out_ moeA2a_CUfunc *hfunc, moeA2a_CUmod hmod, const char *name)',
  'int cuFuncSetAttribute(moeA2a_CUfunc hfunc, int attrib, int value)',
  'int cuFuncGetAttribute(int *pi, int attrib, moeA2a_CUfunc hfunc)',
  'int cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, moeA2a_CUfunc func, int blockSize, size_t dynamicSMemSize)',
  // The hot calls (launches, graph launches, event records) take handles and pointers as addresses:
  // koffi converts a number in tens of nanoseconds, a pointer object or a typed array in hundreds.
  'int cuLaunchKernel(uintptr_t f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, ' +
    'unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ, unsigned int sharedMemBytes, ' +
    'uintptr_t hStream, uintptr_t kernelParams, uintptr_t extra)',
  'int cuStreamCreate(_Out_ moeA2a_CUstream *phStream, unsigned int flags)',
  'int cuStreamDestroy_v2(moeA2a_CUstream hStream)',
  'int cuStreamSynchronize(moeA2a_CUstream hStream)',
  'int cuStreamQuery(moeA2a_CUstream hStream)',
  'int cuEventCreate(_Out_ moeA2a_CUevent *phEvent, unsigned int flags)',
  'int cuEventRecord(uintptr_t hEvent, uintptr_t hStream)',
  'int cuEventSynchronize(moeA2a_CUevent hEvent)',
  'int cuEventQuery(moeA2a_CUevent hEvent)',
  'int cuEventDestroy_v2(moeA2a_CUevent hEvent)',
  'int cuStreamBeginCapture_v2(moeA2a_CUstream hStream, int mode)',
  'int cuStreamEndCapture(moeA2a_CUstream hStream, _Out_ moeA2a_CUgraph *phGraph)',
  'int cuGraphInstantiateWithFlags(_Out_ moeA2a_CUgraphExec *phGraphExec, moeA2a_CUgraph hGraph, uint64_t flags)',
  'int cuGraphLaunch(uintptr_t hGraphExec, uintptr_t hStream)',
  'int cuGraphGetNodes(moeA2a_CUgraph hGraph, uint64_t *nodes, size_t *numNodes)',
  'int cuGraphExecDestroy(moeA2a_CUgraphExec hGraphExec)',
  'int cuGraphDestroy(moeA2a_CUgraph hGraph)',
];

const CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;

/** An address as koffi's `uintptr_t` takes it fastest: a number where it is exact, else the bigint. */
function toAddr(big: bigint): Addr {
  return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** Grid x, y, z, block x, y, z and shared memory bytes as 7 u32 from `at`: both launch structs start so. */
function writeDims(v: DataView, at: number, grid: Dim3, block: Dim3, sharedBytes: number): void {
  for (let i = 0; i < 3; i++) {
    v.setUint32(at + 4 * i, grid[i], true);
    v.setUint32(at + 12 + 4 * i, block[i], true);
  }
  v.setUint32(at + 24, sharedBytes, true);
}

/**
 * The bytes of a `CUlaunchConfig` (cuda.h: 7 x u32 grid/block/shared memory, the stream at 32, the
 * attribute array's address at 40, its length at 48; 56 bytes) followed by its one `CUlaunchAttribute`
 * (id at 0, value at 8; 72 bytes): programmatic stream serialization allowed. The config points at
 * its attribute by address, so both live in one explicitly allocated ArrayBuffer, whose memory V8
 * never moves (a small typed array allocated by length may live in the moving heap).
 */
class LaunchConfig {
  private readonly bytes = new Uint8Array(new ArrayBuffer(128));
  private readonly view = new DataView(this.bytes.buffer);
  private stream: CuStream | null | undefined = undefined;
  /** The config's address, for cuLaunchKernelEx. */
  readonly address: Addr;

  constructor(private readonly addressOf: (p: object | null) => Addr) {
    const attrAt = 56;
    const base = addressOf(this.bytes);
    this.address = base;
    this.view.setBigUint64(40, BigInt(base) + BigInt(attrAt), true);
    this.view.setUint32(48, 1, true);
    this.view.setUint32(attrAt, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, true);
    this.view.setInt32(attrAt + 8, 1, true);
  }

  set(grid: Dim3, block: Dim3, sharedBytes: number, stream: CuStream | null): void {
    const v = this.view;
    writeDims(v, 0, grid, block, sharedBytes);
    if (stream !== this.stream) {
      v.setBigUint64(32, BigInt(this.addressOf(stream)), true);
      this.stream = stream;
    }
  }
}

/**
 * The bytes of a `CUDA_KERNEL_NODE_PARAMS_v2` (cuda.h: the function at 0, 6 x u32 grid/block at 8,
 * shared memory at 32, kernelParams at 40, extra at 48, kernel at 56, context at 64; 72 bytes),
 * in an explicitly allocated ArrayBuffer (its address is passed to the driver).
 */
class KernelNodeParams implements GraphKernelNode {
  private readonly bytes = new Uint8Array(new ArrayBuffer(72));
  private readonly view = new DataView(this.bytes.buffer);
  readonly address: Addr;

  constructor(
    readonly node: Addr,
    private readonly addressOf: (p: object | null) => Addr,
  ) {
    this.address = addressOf(this.bytes);
  }

  launches(fn: CuFunction): boolean {
    return this.view.getBigUint64(0, true) === BigInt(this.addressOf(fn));
  }

  set(grid: Dim3, block: Dim3, sharedBytes: number, kernelParams: Addr): void {
    const v = this.view;
    writeDims(v, 8, grid, block, sharedBytes);
    v.setBigUint64(40, BigInt(kernelParams), true);
    v.setBigUint64(48, 0n, true);
  }
}

function bind(lib: KoffiLib): Fns {
  const out: Record<string, unknown> = {};
  for (const proto of prototypes) {
    const fn = lib.func(proto);
    out[fn.info.name] = fn;
  }
  // Optional: CUDA >= 12.4. Used only to check the size of a kernel's argument struct.
  try {
    out.cuFuncGetParamInfo = lib.func(
      'int cuFuncGetParamInfo(moeA2a_CUfunc func, size_t paramIndex, size_t *paramOffset, size_t *paramSize)',
    );
  } catch {
    out.cuFuncGetParamInfo = undefined;
  }
  // Optional: CUDA >= 12.0. Programmatic dependent launches; without it they are ordinary launches.
  try {
    out.cuLaunchKernelEx = lib.func(
      'int cuLaunchKernelEx(uintptr_t config, uintptr_t f, uintptr_t kernelParams, uintptr_t extra)',
    );
  } catch {
    out.cuLaunchKernelEx = undefined;
  }
  // Optional: CUDA >= 12.0 (the _v2 parameter struct). Eager calls replay cached graphs with them;
  // without them every eager call launches its kernels one by one.
  try {
    out.cuGraphKernelNodeGetParams_v2 = lib.func(
      'int cuGraphKernelNodeGetParams_v2(uintptr_t hNode, uintptr_t nodeParams)',
    );
    out.cuGraphExecKernelNodeSetParams_v2 = lib.func(
      'int cuGraphExecKernelNodeSetParams_v2(uintptr_t hGraphExec, uintptr_t hNode, uintptr_t nodeParams)',
    );
  } catch {
    out.cuGraphKernelNodeGetParams_v2 = undefined;
    out.cuGraphExecKernelNodeSetParams_v2 = undefined;
  }
  // cuda.h (12.8+) maps cuEventElapsedTime to cuEventElapsedTime_v2; older drivers only have v1.
  // Same signature and meaning.
  const elapsed = 'int %s(float *pMilliseconds, moeA2a_CUevent hStart, moeA2a_CUevent hEnd)';
  try {
    out.cuEventElapsedTime = lib.func(elapsed.replace('%s', 'cuEventElapsedTime_v2'));
    out.eventElapsedTimeName = 'cuEventElapsedTime_v2';
  } catch {
    out.cuEventElapsedTime = lib.func(elapsed.replace('%s', 'cuEventElapsedTime'));
    out.eventElapsedTimeName = 'cuEventElapsedTime';
  }
  return out as unknown as Fns;
}

function makeErrorNames(fns: Fns): (res: number) => string {
  const cache = new Map<number, string>();
  return (res: number) => {
    let name = cache.get(res);
    if (name === undefined) {
      const out: [string | null] = [null];
      name = fns.cuGetErrorName(res, out) === CUDA_SUCCESS && out[0] ? out[0] : `CUDA_ERROR_${res}`;
      cache.set(res, name);
    }
    return name;
  };
}

// ---------------------------------------------------------------------------------------------
// The typed driver
// ---------------------------------------------------------------------------------------------

function byteLengthOf(mem: HostMemory): number {
  return mem.byteLength;
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return Buffer.from(buf.buffer, buf.byteOffset, end < 0 ? buf.length : end).toString('utf8');
}

function makeDriver(
  koffi: Koffi,
  fns: Fns,
  errorName: (res: number) => string,
  driverVersion: number,
  deviceCount: number,
): CudaDriver {
  // Scratch out-slots, reused: the driver fills them synchronously and JS is single-threaded here
  // (each worker has its own module instance).
  const i32 = new Int32Array(1);
  const u64 = new BigUint64Array(1);
  const u64b = new BigUint64Array(1);
  const f32 = new Float32Array(1);

  function fail(call: string, res: number): never {
    const name = errorName(res);
    const out: [string | null] = [null];
    const text = fns.cuGetErrorString(res, out) === CUDA_SUCCESS && out[0] ? `: ${out[0]}` : '';
    throw new CudaError(`${call} failed: ${name} (${res})${text}`, { call, result: name, code: res });
  }

  function check(call: string, res: number): void {
    if (res !== CUDA_SUCCESS) fail(call, res);
  }

  function handle<T>(call: string, f: (out: HandleOut) => number): T {
    const out: HandleOut = [null];
    check(call, f(out));
    if (out[0] === null)
      throw new CudaError(`${call} returned a NULL handle`, { call, result: 'NULL', code: 0 });
    return out[0] as T;
  }

  function device(ordinal: number): number {
    if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= deviceCount) {
      throw new CudaError(
        `device ordinal ${ordinal} is out of range: this process sees ${deviceCount} device(s) (check CUDA_VISIBLE_DEVICES)`,
        { call: 'cuDeviceGet', result: 'CUDA_ERROR_INVALID_DEVICE', code: 101 },
      );
    }
    check('cuDeviceGet', fns.cuDeviceGet(i32, ordinal));
    return i32[0];
  }

  function deviceAttribute(attribute: number, ordinal: number): number {
    const dev = device(ordinal);
    check('cuDeviceGetAttribute', fns.cuDeviceGetAttribute(i32, attribute, dev));
    return i32[0];
  }

  function hostBytes(mem: HostMemory, bytes: number | undefined, call: string): number {
    const n = bytes ?? byteLengthOf(mem);
    if (n > byteLengthOf(mem)) {
      throw new ShapeError(`${call}: ${n} bytes asked but the host buffer holds ${byteLengthOf(mem)}`, {
        call,
        bytes: n,
        hostBytes: byteLengthOf(mem),
      });
    }
    return n;
  }

  // Addresses of handles and buffers for the hot calls (see the prototypes), cached per object: a
  // handle's address never changes, nor does the memory of an ArrayBuffer (V8 never moves a backing
  // store once its address has been taken; buffers passed here are allocated as ArrayBuffers).
  const addresses = new WeakMap<object, Addr>();
  function addressOf(p: object | null): Addr {
    if (p === null) return 0;
    let a = addresses.get(p);
    if (a === undefined) {
      const big = koffi.address(p);
      a = toAddr(big);
      addresses.set(p, a);
    }
    return a;
  }

  // kernelParams for each args buffer: `void **`, an array of one pointer, to the bytes of the single
  // struct parameter. Built once per args buffer, in memory that does not move, and kept alive with
  // it; later launches pass the same address. The driver copies the argument bytes during the call
  // (also when capturing into a graph), so the caller may rewrite `args` right after.
  const paramsByArgs = new WeakMap<Uint8Array, { array: BigUint64Array; address: Addr }>();

  function kernelParamsFor(args: Uint8Array): Addr {
    let params = paramsByArgs.get(args);
    if (!params) {
      if (args.byteLength === 0) {
        throw new ShapeError('kernel args buffer is empty: the kernel takes one struct by value', {
          bytes: 0,
        });
      }
      const array = new BigUint64Array(new ArrayBuffer(8));
      array[0] = koffi.address(args);
      params = { array, address: addressOf(array) };
      paramsByArgs.set(args, params);
    }
    return params.address;
  }

  function prepareLaunch(fn: CuFunction, args: Uint8Array): KernelLauncher {
    const getParamInfo = fns.cuFuncGetParamInfo;
    if (getParamInfo) {
      const res = getParamInfo(fn, 0, u64, u64b);
      if (res === CUDA_SUCCESS) {
        const size = Number(u64b[0]);
        if (size !== args.byteLength) {
          throw new ShapeError(
            `kernel argument struct is ${size} bytes but the args buffer holds ${args.byteLength}: ` +
              'the TypeScript mirror of the kernel argument struct is out of date',
            { expectedBytes: size, bytes: args.byteLength },
          );
        }
        // (not probing index 1 for a second parameter: the failing call it needs shows up as an
        // API error in compute-sanitizer; our kernels take one struct by design)
      } else if (res === CUDA_ERROR_INVALID_VALUE) {
        throw new ShapeError('kernel takes no parameter; launch expects one struct by value', {
          bytes: args.byteLength,
        });
      } else {
        check('cuFuncGetParamInfo', res);
      }
    }
    const params = kernelParamsFor(args);
    const launchEx = fns.cuLaunchKernelEx;
    let dependentConfig: LaunchConfig | null = null;
    return {
      fn,
      args,
      launch(grid, block, sharedBytes, stream, dependent = false) {
        if (!dependent || !launchEx) {
          launchKernel(fn, grid, block, sharedBytes, stream, params);
          return;
        }
        dependentConfig ??= new LaunchConfig(addressOf);
        dependentConfig.set(grid, block, sharedBytes, stream);
        const res = launchEx(dependentConfig.address, addressOf(fn), params, 0);
        if (res !== CUDA_SUCCESS) fail('cuLaunchKernelEx', res);
      },
    };
  }

  /** One cuLaunchKernel with a prepared kernelParams array (its address). */
  function launchKernel(
    fn: CuFunction,
    grid: Dim3,
    block: Dim3,
    sharedBytes: number,
    stream: CuStream | null,
    params: Addr,
  ): void {
    const res = fns.cuLaunchKernel(
      addressOf(fn),
      grid[0],
      grid[1],
      grid[2],
      block[0],
      block[1],
      block[2],
      sharedBytes,
      addressOf(stream),
      params,
      0,
    );
    if (res !== CUDA_SUCCESS) fail('cuLaunchKernel', res);
  }

  function eventOrStreamDone(call: string, res: number): boolean {
    if (res === CUDA_SUCCESS) return true;
    if (res === CUDA_ERROR_NOT_READY) return false;
    return fail(call, res);
  }

  function hostAlloc(call: string, bytes: number, alloc: (out: HandleOut) => number): HostPointer {
    if (!Number.isInteger(bytes) || bytes <= 0) {
      throw new ShapeError(`${call}: bytes must be a positive integer, got ${bytes}`, { call, bytes });
    }
    return handle<HostPointer>(call, alloc);
  }

  function freeOnce(host: HostPointer): () => void {
    let freed = false;
    return () => {
      if (freed) return;
      freed = true;
      check('cuMemFreeHost', fns.cuMemFreeHost(host));
    };
  }

  const driver: CudaDriver = {
    driverVersion,
    deviceCount,
    check,
    errorName,

    deviceInfo(ordinal) {
      const dev = device(ordinal);
      const name = new Uint8Array(256);
      check('cuDeviceGetName', fns.cuDeviceGetName(name, name.length, dev));
      check('cuDeviceTotalMem_v2', fns.cuDeviceTotalMem_v2(u64, dev));
      const info: DeviceInfo = {
        ordinal,
        name: cString(name),
        smCount: deviceAttribute(CuDeviceAttribute.MULTIPROCESSOR_COUNT, ordinal),
        ccMajor: deviceAttribute(CuDeviceAttribute.COMPUTE_CAPABILITY_MAJOR, ordinal),
        ccMinor: deviceAttribute(CuDeviceAttribute.COMPUTE_CAPABILITY_MINOR, ordinal),
        totalMem: Number(u64[0]),
        maxSharedMemoryPerBlockOptin: deviceAttribute(
          CuDeviceAttribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
          ordinal,
        ),
      };
      const bus = new Uint8Array(64);
      if (fns.cuDeviceGetPCIBusId(bus, bus.length, dev) === CUDA_SUCCESS) info.pciBusId = cString(bus);
      return info;
    },
    deviceAttribute,
    canAccessPeer(a, b) {
      const da = device(a);
      const db = device(b);
      check('cuDeviceCanAccessPeer', fns.cuDeviceCanAccessPeer(i32, da, db));
      return i32[0] !== 0;
    },
    retainPrimaryContext(ordinal) {
      const dev = device(ordinal);
      return handle<CuContext>('cuDevicePrimaryCtxRetain', (out) => fns.cuDevicePrimaryCtxRetain(out, dev));
    },
    releasePrimaryContext(ordinal) {
      check('cuDevicePrimaryCtxRelease_v2', fns.cuDevicePrimaryCtxRelease_v2(device(ordinal)));
    },
    setCurrentContext(ctx) {
      check('cuCtxSetCurrent', fns.cuCtxSetCurrent(ctx));
    },
    useDevice(ordinal) {
      const ctx = driver.retainPrimaryContext(ordinal);
      check('cuCtxSetCurrent', fns.cuCtxSetCurrent(ctx));
      return ctx;
    },
    synchronizeContext() {
      check('cuCtxSynchronize', fns.cuCtxSynchronize());
    },
    enablePeerAccess(peer) {
      const res = fns.cuCtxEnablePeerAccess(peer, 0);
      if (res !== CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) check('cuCtxEnablePeerAccess', res);
    },

    memAlloc(bytes) {
      check('cuMemAlloc_v2', fns.cuMemAlloc_v2(u64, bytes));
      return u64[0];
    },
    memFree(ptr) {
      check('cuMemFree_v2', fns.cuMemFree_v2(ptr));
    },
    memcpyHtoD(dst, src, bytes) {
      const n = hostBytes(src, bytes, 'cuMemcpyHtoD_v2');
      check('cuMemcpyHtoD_v2', fns.cuMemcpyHtoD_v2(dst, src, n));
    },
    memcpyDtoH(dst, src, bytes) {
      const n = hostBytes(dst, bytes, 'cuMemcpyDtoH_v2');
      check('cuMemcpyDtoH_v2', fns.cuMemcpyDtoH_v2(dst, src, n));
    },
    memcpyDtoD(dst, src, bytes) {
      check('cuMemcpyDtoD_v2', fns.cuMemcpyDtoD_v2(dst, src, bytes));
    },
    memcpyHtoDAsync(dst, src, bytes, stream) {
      const n = hostBytes(src, bytes, 'cuMemcpyHtoDAsync_v2');
      check('cuMemcpyHtoDAsync_v2', fns.cuMemcpyHtoDAsync_v2(dst, src, n, stream));
    },
    memcpyDtoHAsync(dst, src, bytes, stream) {
      const n = hostBytes(dst, bytes, 'cuMemcpyDtoHAsync_v2');
      check('cuMemcpyDtoHAsync_v2', fns.cuMemcpyDtoHAsync_v2(dst, src, n, stream));
    },
    memcpyDtoDAsync(dst, src, bytes, stream) {
      check('cuMemcpyDtoDAsync_v2', fns.cuMemcpyDtoDAsync_v2(dst, src, bytes, stream));
    },
    memsetD8(dst, value, bytes) {
      check('cuMemsetD8_v2', fns.cuMemsetD8_v2(dst, value & 0xff, bytes));
    },
    memsetD8Async(dst, value, bytes, stream) {
      check('cuMemsetD8Async', fns.cuMemsetD8Async(dst, value & 0xff, bytes, stream));
    },
    memsetD32Async(dst, value, words, stream) {
      check('cuMemsetD32Async', fns.cuMemsetD32Async(dst, value >>> 0, words, stream));
    },
    pointerGetAttribute(attribute, ptr) {
      u64[0] = 0n;
      check('cuPointerGetAttribute', fns.cuPointerGetAttribute(u64, attribute, ptr));
      return u64[0];
    },

    allocHostMapped(bytes) {
      const flags = CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP;
      const hostPtr = hostAlloc('cuMemHostAlloc', bytes, (out) => fns.cuMemHostAlloc(out, bytes, flags));
      const free = freeOnce(hostPtr);
      try {
        check('cuMemHostGetDevicePointer_v2', fns.cuMemHostGetDevicePointer_v2(u64, hostPtr, 0));
        const devicePtr = u64[0];
        // koffi.view (koffi >= 2.11) wraps external memory in an ArrayBuffer without a copy.
        const view = new Uint8Array(koffi.view(hostPtr, bytes));
        return { hostPtr, hostAddress: koffi.address(hostPtr), devicePtr, bytes, view, free };
      } catch (err) {
        free();
        throw err;
      }
    },
    allocHostPinned(bytes) {
      const hostPtr = hostAlloc('cuMemAllocHost_v2', bytes, (out) => fns.cuMemAllocHost_v2(out, bytes));
      const free = freeOnce(hostPtr);
      const view = new Uint8Array(koffi.view(hostPtr, bytes));
      return { hostPtr, hostAddress: koffi.address(hostPtr), bytes, view, free };
    },

    ipcGetMemHandle(ptr) {
      const out = new Uint8Array(CU_IPC_HANDLE_SIZE);
      check('cuIpcGetMemHandle', fns.cuIpcGetMemHandle(out, ptr));
      return out;
    },
    ipcOpenMemHandle(h) {
      if (h.byteLength !== CU_IPC_HANDLE_SIZE) {
        throw new ShapeError(`a CUipcMemHandle is ${CU_IPC_HANDLE_SIZE} bytes, got ${h.byteLength}`, {
          bytes: h.byteLength,
        });
      }
      const res = fns.cuIpcOpenMemHandle_v2(u64, { reserved: h }, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
      check('cuIpcOpenMemHandle_v2', res);
      return u64[0];
    },
    ipcCloseMemHandle(ptr) {
      check('cuIpcCloseMemHandle', fns.cuIpcCloseMemHandle(ptr));
    },

    moduleLoadData(image) {
      return handle<CuModule>('cuModuleLoadData', (out) => fns.cuModuleLoadData(out, image));
    },
    moduleUnload(mod) {
      check('cuModuleUnload', fns.cuModuleUnload(mod));
    },
    moduleGetFunction(mod, name) {
      try {
        return handle<CuFunction>('cuModuleGetFunction', (out) => fns.cuModuleGetFunction(out, mod, name));
      } catch (err) {
        if (err instanceof CudaError) {
          throw new CudaError(
            `${err.message} (kernel '${name}'; is it extern "C" and in this fatbin?)`,
            { ...err.details, kernel: name },
            { cause: err },
          );
        }
        throw err;
      }
    },
    funcSetAttribute(fn, attribute, value) {
      check('cuFuncSetAttribute', fns.cuFuncSetAttribute(fn, attribute, value));
    },
    funcGetAttribute(fn, attribute) {
      check('cuFuncGetAttribute', fns.cuFuncGetAttribute(i32, attribute, fn));
      return i32[0];
    },
    maxActiveBlocksPerSm(fn, block, sharedBytes) {
      check(
        'cuOccupancyMaxActiveBlocksPerMultiprocessor',
        fns.cuOccupancyMaxActiveBlocksPerMultiprocessor(i32, fn, block, sharedBytes),
      );
      return i32[0];
    },
    prepareLaunch,
    launch(fn, grid, block, sharedBytes, stream, args) {
      launchKernel(fn, grid, block, sharedBytes, stream, kernelParamsFor(args));
    },

    streamCreate(opts = {}) {
      const flags = (opts.nonBlocking ?? true) ? CU_STREAM_NON_BLOCKING : 0;
      return handle<CuStream>('cuStreamCreate', (out) => fns.cuStreamCreate(out, flags));
    },
    streamDestroy(stream) {
      check('cuStreamDestroy_v2', fns.cuStreamDestroy_v2(stream));
    },
    streamSynchronize(stream) {
      check('cuStreamSynchronize', fns.cuStreamSynchronize(stream));
    },
    streamQuery(stream) {
      return eventOrStreamDone('cuStreamQuery', fns.cuStreamQuery(stream));
    },
    eventCreate(opts = {}) {
      const flags =
        (opts.disableTiming ? CU_EVENT_DISABLE_TIMING : 0) | (opts.blockingSync ? CU_EVENT_BLOCKING_SYNC : 0);
      return handle<CuEvent>('cuEventCreate', (out) => fns.cuEventCreate(out, flags));
    },
    eventRecord(event, stream) {
      const res = fns.cuEventRecord(addressOf(event), addressOf(stream));
      if (res !== CUDA_SUCCESS) fail('cuEventRecord', res);
    },
    eventSynchronize(event) {
      check('cuEventSynchronize', fns.cuEventSynchronize(event));
    },
    eventQuery(event) {
      return eventOrStreamDone('cuEventQuery', fns.cuEventQuery(event));
    },
    eventElapsedTime(start, end) {
      check(fns.eventElapsedTimeName, fns.cuEventElapsedTime(f32, start, end));
      return f32[0];
    },
    eventDestroy(event) {
      check('cuEventDestroy_v2', fns.cuEventDestroy_v2(event));
    },

    streamBeginCapture(stream, mode = 'global') {
      check('cuStreamBeginCapture_v2', fns.cuStreamBeginCapture_v2(stream, captureModes[mode]));
    },
    streamEndCapture(stream) {
      return handle<CuGraph>('cuStreamEndCapture', (out) => fns.cuStreamEndCapture(stream, out));
    },
    graphInstantiate(graph, flags = 0) {
      return handle<CuGraphExec>('cuGraphInstantiateWithFlags', (out) =>
        fns.cuGraphInstantiateWithFlags(out, graph, flags),
      );
    },
    graphLaunch(exec, stream) {
      const res = fns.cuGraphLaunch(addressOf(exec), addressOf(stream));
      if (res !== CUDA_SUCCESS) fail('cuGraphLaunch', res);
    },
    graphExecDestroy(exec) {
      check('cuGraphExecDestroy', fns.cuGraphExecDestroy(exec));
    },
    graphDestroy(graph) {
      check('cuGraphDestroy', fns.cuGraphDestroy(graph));
    },
    graphKernelNodes(graph) {
      const getParams = fns.cuGraphKernelNodeGetParams_v2;
      if (!getParams || !fns.cuGraphExecKernelNodeSetParams_v2) return null;
      const count = new BigUint64Array(1);
      check('cuGraphGetNodes', fns.cuGraphGetNodes(graph, null, count));
      const handles = new BigUint64Array(Number(count[0]));
      if (handles.length > 0) check('cuGraphGetNodes', fns.cuGraphGetNodes(graph, handles, count));
      return Array.from(handles, (h) => {
        const node = new KernelNodeParams(toAddr(h), addressOf);
        check('cuGraphKernelNodeGetParams_v2', getParams(node.node, node.address));
        return node;
      });
    },
    graphExecSetKernel(exec, node, grid, block, sharedBytes, args) {
      const setParams = fns.cuGraphExecKernelNodeSetParams_v2;
      if (!setParams || !(node instanceof KernelNodeParams)) {
        throw new CudaError('graphExecSetKernel: not a node from graphKernelNodes');
      }
      node.set(grid, block, sharedBytes, kernelParamsFor(args));
      const res = setParams(addressOf(exec), node.node, node.address);
      if (res !== CUDA_SUCCESS) fail('cuGraphExecKernelNodeSetParams_v2', res);
    },
  };
  return driver;
}
