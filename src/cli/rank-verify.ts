import { createGroup, type TransportName } from '../create.js';
import type { EpGroup } from '../ep/api.js';
import {
  type ActualDispatch,
  bytesEqual,
  compareCombine,
  compareDispatch,
  oracleOutputsFor,
  POISON_BYTE,
  runStandInExperts,
} from '../ep/check.js';
import { type EpConfig, resolveConfig } from '../ep/config.js';
import { expertShape } from '../ep/expert-layout.js';
import { type OracleRankInput, oracleCombine, oracleDispatch } from '../ep/oracle.js';
import { type HostTensor, hostTensor } from '../ep/tensor.js';
import { errorToWire, type WireError } from '../errors.js';
import type { GraphCall } from '../shmem/cuda/graph.js';
import { CudaEpGroup } from '../shmem/cuda/group.js';
import { caseInputs, type VerifyCase } from './cases.js';
import type { DeviceIo } from './device-io.js';

export interface VerifyTask {
  kind: 'verify';
  cases: VerifyCase[];
  transport: TransportName;
  timeoutMs: number;
  /** cuda: run every call as replays of one captured CUDA graph per case (fixed T: not 'ragged'). */
  graph?: boolean;
}

export interface CaseOutcome {
  name: string;
  pass: boolean;
  calls: number;
  ms: number;
  /** The first mismatch or error, naming the call. */
  message?: string;
  /** Bytes of this rank's symmetric heap (0 when the group was not created). */
  heapBytes?: number;
  error?: WireError;
}

/**
 * Runs every case on this rank; returns one outcome per case (a failure never stops the others). `finished`
 * gets the outcomes so far after each case (a run stopped part-way still reports those).
 */
export async function runVerify(
  task: VerifyTask,
  rank: number,
  io: DeviceIo,
  progress: (line: string) => void,
  finished: (sofar: CaseOutcome[]) => void = () => {},
): Promise<CaseOutcome[]> {
  const outcomes: CaseOutcome[] = [];
  for (const [ci, kase] of task.cases.entries()) {
    const t0 = performance.now();
    let group: EpGroup<unknown> | null = null;
    let calls = 0;
    let lastReport = t0;
    try {
      const cfg = resolveConfig(kase.config);
      group = await createGroup({
        ...kase.config,
        transport: task.transport,
        timeoutMs: task.timeoutMs,
        ...(kase.dispatchPath ? { dispatchPath: kase.dispatchPath } : {}),
      });
      let message: string | undefined;
      const graph = task.graph && group instanceof CudaEpGroup ? group.captureGraph(kase.tokens) : null;
      // every call runs even after a mismatch, so that the ranks stay in step; the first one is reported
      for (let call = 0; call < kase.calls; call++) {
        const mismatch =
          graph && group instanceof CudaEpGroup
            ? verifyGraphCall(group, graph, cfg, kase, call, rank)
            : verifyCall(group, cfg, kase, call, rank, io);
        message ??= mismatch;
        calls++;
        const now = performance.now();
        if (rank === 0 && now - lastReport > 2000) {
          lastReport = now;
          progress(`case ${ci + 1}/${task.cases.length} ${kase.name}: call ${call + 1}/${kase.calls}`);
        }
      }
      graph?.close();
      outcomes.push({
        name: kase.name,
        pass: !message,
        calls,
        ms: performance.now() - t0,
        message,
        heapBytes: group.heapBytes,
      });
    } catch (err) {
      const w = errorToWire(err);
      outcomes.push({
        name: kase.name,
        pass: false,
        calls,
        ms: performance.now() - t0,
        message: `call ${calls}: ${w.code}: ${w.message}`,
        error: w,
      });
    } finally {
      await group?.close().catch(() => {});
    }
    finished(outcomes);
  }
  return outcomes;
}

/** verifyCall through graph replays: fresh inputs copied into the graph's bound buffers each call. */
function verifyGraphCall(
  g: CudaEpGroup,
  graph: GraphCall,
  cfg: ReturnType<typeof resolveConfig>,
  kase: VerifyCase,
  call: number,
  rank: number,
): string | undefined {
  const inputs = caseInputs(kase, call);
  const me = inputs[rank];
  const T = me.numTokens;
  g.poisonOutputs(POISON_BYTE);
  g.copyInto(graph.x, hostTensor('bf16', [T, cfg.hidden], me.x));
  g.copyInto(graph.topkIdx, hostTensor('i32', [T, cfg.topk], me.topkIdx));
  g.copyInto(graph.topkWeights, hostTensor('f32', [T, cfg.topk], me.topkWeights));
  graph.dispatch();
  const expertX = g.download(graph.expertX);
  const scales = graph.expertScales ? g.download(graph.expertScales) : null;
  const actual: ActualDispatch = {
    expertX: bytesOf(expertX),
    expertScales: scales ? (scales.data as Float32Array) : null,
    expertCounts: g.download(graph.expertCounts).data as Int32Array,
    expertOffsets: g.download(graph.expertOffsets).data as Int32Array,
  };
  const bad = compareDispatch(cfg, actual, oracleDispatch(cfg, inputs, rank));
  const out = standIn(cfg, rank, actual);
  g.copyInto(graph.expertOut, hostTensor('bf16', expertShape(cfg, cfg.hidden), out));
  graph.combine();
  const y = g.download(graph.y);
  // the same call again as one step() replay (dispatch + combine in one graph, expertOut already in
  // place): every output must come out byte for byte the same. Run on every rank whatever the checks
  // above found, so that all ranks replay the same sequence.
  g.poisonOutputs(POISON_BYTE);
  graph.step();
  const stepped = [
    ['expertX', graph.expertX, expertX],
    ['expertScales', graph.expertScales, scales],
    ['y', graph.y, y],
  ] as const;
  const differs = stepped.find(
    ([, t, before]) => t && before && !bytesEqual(bytesOf(g.download(t)), bytesOf(before)),
  );
  if (bad) return `graph replay ${call}: dispatch: ${bad}`;
  const badY = combineVerdict(cfg, inputs, rank, y);
  if (badY) return `graph replay ${call}: combine: ${badY}`;
  return differs
    ? `graph step ${call}: ${differs[0]} differs from the dispatch + combine replays`
    : undefined;
}

function bytesOf(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** One dispatch + combine with fresh inputs, checked bit for bit. Returns a mismatch message or undefined. */
export function verifyCall(
  group: EpGroup<unknown>,
  cfg: ReturnType<typeof resolveConfig>,
  kase: VerifyCase,
  call: number,
  rank: number,
  io: DeviceIo,
): string | undefined {
  const inputs = caseInputs(kase, call);
  const me = inputs[rank];
  io.poisonOutputs(group, POISON_BYTE);
  const T = me.numTokens;
  const uploaded = [
    io.upload(group, hostTensor('bf16', [T, cfg.hidden], me.x)),
    io.upload(group, hostTensor('i32', [T, cfg.topk], me.topkIdx)),
    io.upload(group, hostTensor('f32', [T, cfg.topk], me.topkWeights)),
  ];
  try {
    return checkCall(group, cfg, inputs, uploaded, call, rank, io);
  } finally {
    for (const t of uploaded) io.free(t);
  }
}

function checkCall(
  group: EpGroup<unknown>,
  cfg: ReturnType<typeof resolveConfig>,
  inputs: ReturnType<typeof caseInputs>,
  [x, idx, w]: unknown[],
  call: number,
  rank: number,
  io: DeviceIo,
): string | undefined {
  const res = group.dispatch(x, idx, { topkWeights: w, returnRecv: true });
  const host = (t: unknown) => io.download(group, t);
  const expertX = host(res.expertX) as HostTensor;
  const actual: ActualDispatch = {
    expertX: new Uint8Array(expertX.data.buffer, expertX.data.byteOffset, expertX.data.byteLength),
    expertScales: res.expertScales ? ((host(res.expertScales) as HostTensor).data as Float32Array) : null,
    expertCounts: (host(res.expertCounts) as HostTensor).data as Int32Array,
    expertOffsets: (host(res.expertOffsets) as HostTensor).data as Int32Array,
  };
  if (res.recv) {
    const rx = host(res.recv.x) as HostTensor;
    actual.recvX = new Uint8Array(rx.data.buffer, rx.data.byteOffset, rx.data.byteLength);
    actual.recvScales = res.recv.scales ? ((host(res.recv.scales) as HostTensor).data as Float32Array) : null;
    actual.recvSplits = (host(res.recv.splits) as HostTensor).data as Int32Array;
    for (const t of [res.recv.x, res.recv.scales, res.recv.splits]) io.free(t);
  }
  const bad = compareDispatch(cfg, actual, oracleDispatch(cfg, inputs, rank));
  // combine runs even after a dispatch mismatch: the peers are in this call too
  const out = standIn(cfg, rank, actual);
  const outT = io.upload(group, hostTensor('bf16', expertShape(cfg, cfg.hidden), out));
  let y: HostTensor;
  try {
    y = host(group.combine(outT, res.handle)) as HostTensor;
  } finally {
    io.free(outT);
  }
  if (bad) return `call ${call}: dispatch: ${bad}`;
  const badY = combineVerdict(cfg, inputs, rank, y);
  return badY ? `call ${call}: combine: ${badY}` : undefined;
}

/** The stand-in experts' output for what this rank received (where they are). */
function standIn(cfg: EpConfig, rank: number, a: ActualDispatch): Uint16Array {
  return runStandInExperts(cfg, rank, a.expertX, a.expertScales, a.expertCounts, a.expertOffsets);
}

/** Compares this rank's combine output with the oracle's (the stand-in experts run on this rank's own rows). */
function combineVerdict(
  cfg: EpConfig,
  inputs: OracleRankInput[],
  rank: number,
  y: HostTensor,
): string | null {
  const want = oracleCombine(cfg, inputs, rank, oracleOutputsFor(cfg, inputs, rank));
  return compareCombine(cfg, inputs[rank], y.data as Uint16Array, want);
}
