/** The tables `moe-a2a bench` prints (stdout) from its rows, the floors, the baselines and the hops. */

import type { Floors } from '../shmem/cuda/floors.js';
import type { DeepepRow, TorchNcclRow, TorchW1Row } from './bench-baselines.js';
import type { CallBytes } from './bench-bytes.js';
import type { HopBytes } from './bench-hops.js';
import { type Row, type Stats, shownPath } from './bench-rows.js';
import { table } from './common.js';
import { type StampSplit, segmentMeaning } from './stamps.js';

const fmt = (v: number | null | undefined, digits = 1) =>
  v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(digits);

export function printTables(
  rows: Row[],
  o: {
    transport: string;
    /** Hosts the ranks span (the stamps' segments name NCCL's exchanges between hosts). */
    nodes?: number;
    copyGBs?: number;
    floors?: Floors[];
    a2aGBs: number;
    torch?: TorchW1Row[] | string;
    torchNcclRows?: TorchNcclRow[] | string;
    deepep?: DeepepRow[] | string;
    hops: Array<HopBytes & { tokens: number }>;
  },
): void {
  const loops = rows.filter((r) => r.loop);
  const deepepAt = (t: number) =>
    Array.isArray(o.deepep) ? o.deepep.find((d) => d.tokens === t) : undefined;
  const ncclAt = (t: number) =>
    Array.isArray(o.torchNcclRows) ? o.torchNcclRows.find((d) => d.tokens === t) : undefined;
  if (loops.length) {
    console.log('serving loop: us per layer (dispatch + combine), layers back to back, the slowest rank');
    console.log(
      table(
        [
          'T',
          'dispatch path',
          'graph loop',
          'eager loop',
          'DeepEP graph loop',
          'x DeepEP',
          'PyTorch+NCCL eager',
          'heap MiB/rank',
          'flagged partials',
        ],
        loops.map((r) => {
          const l = r.loop as { graphUs: number; eagerUs: number };
          const d = deepepAt(r.tokens as number);
          const n = ncclAt(r.tokens as number);
          return [
            r.tokens as number,
            shownPath(r),
            fmt(l.graphUs),
            fmt(l.eagerUs),
            fmt(d?.loop_us),
            d ? fmt(d.loop_us / l.graphUs, 2) : '-',
            fmt(n?.total_median_us),
            fmt((r.heapBytes as number) / 2 ** 20, 0),
            r.flagged === true ? 'yes' : '-',
          ];
        }),
      ),
    );
  }
  console.log(
    o.transport === 'cuda'
      ? 'per call: CUDA events around each call, ranks aligned on the device first; median of the slowest rank'
      : 'per call: the host clock around each call, ranks aligned by a barrier first; median of the slowest rank',
  );
  console.log(
    table(
      [
        'T',
        'variant',
        'path',
        'dispatch p50 us',
        'p10',
        'p90',
        'combine p50 us',
        'p10',
        'p90',
        'total p50',
        'one-graph step p50',
        'dispatch GB/s',
        'combine GB/s',
      ],
      rows.map((r) => {
        const d = r.dispatch as Stats;
        const c = r.combine as Stats;
        const kb = r.kernelBytes as { dispatch: number; combine: number };
        return [
          r.tokens as number,
          r.variant as string,
          shownPath(r),
          fmt(d.median),
          fmt(d.p10),
          fmt(d.p90),
          fmt(c.median),
          fmt(c.p10),
          fmt(c.p90),
          fmt((r.total as Stats).median),
          fmt((r.step as Stats | undefined)?.median),
          fmt(kb.dispatch / (d.median * 1e3), 0),
          fmt(kb.combine / (c.median * 1e3), 0),
        ];
      }),
    ),
  );
  if (o.deepep !== undefined && Array.isArray(o.deepep)) {
    console.log(
      'DeepEP low-latency: one graph of dispatch + combine, replayed right after a device-side alignment (median of the slowest rank) and back to back',
    );
    console.log(
      table(
        ['T', 'one-graph step p50 us', 'graph loop us/layer', 'check'],
        o.deepep.map((d) => [d.tokens, fmt(d.step_median_us), fmt(d.loop_us), d.check]),
      ),
    );
  }
  if (loops.length) {
    console.log(
      `bytes per call on the busiest rank, MB: counted as DeepEP does (every selection) and crossing NVLink; floor = NVLink bytes at the all-to-all rate ${fmt(o.a2aGBs, 0)} GB/s`,
    );
    console.log(
      table(
        ['T', 'path', 'DeepEP-counted d / c', 'NVLink d / c', 'NVLink floor us', 'graph loop / floor'],
        loops.map((r) => {
          const b = r.callBytes as Pick<
            CallBytes,
            | 'deepepDispatch'
            | 'deepepCombine'
            | 'wireDispatch'
            | 'wireCombine'
            | 'wireDispatchDedup'
            | 'wireCombineDedup'
          >;
          const dd = r.path === 'dedup';
          const wd = dd ? b.wireDispatchDedup : b.wireDispatch;
          const wc = dd ? b.wireCombineDedup : b.wireCombine;
          const floorUs = (wd + wc) / (o.a2aGBs * 1e3);
          return [
            r.tokens as number,
            shownPath(r),
            `${fmt(b.deepepDispatch / 1e6, 2)} / ${fmt(b.deepepCombine / 1e6, 2)}`,
            `${fmt(wd / 1e6, 2)} / ${fmt(wc / 1e6, 2)}`,
            fmt(floorUs, 2),
            fmt((r.loop as { graphUs: number }).graphUs / floorUs, 2),
          ];
        }),
      ),
    );
  }
  if (o.floors) {
    const f0 = o.floors[0];
    const a2a = o.floors.map((f) => fmt(f.alltoallGBs, 0)).join(' / ');
    console.log(
      `floors: all-to-all write rate per rank ${a2a} GB/s (${fmt(f0.bytesPerPeer / 2 ** 20, 0)} MiB to each peer), one pair ${fmt(f0.onePairGBs, 0)} GB/s; ` +
        `signal one way ${fmt(f0.signalOneWayUs, 2)} us; graph kernel start-to-start ${fmt(f0.graphKernelUs, 2)} us (${fmt(f0.graphKernelPdlUs, 2)} with dependent launch)`,
    );
  }
  for (const r of rows.filter((x) => x.stampSplit)) {
    const sp = r.stampSplit as StampSplit;
    console.log(
      `where the time goes, T=${r.tokens as number}${r.path || r.layout === 'packed' ? ` ${shownPath(r)}` : ''} (stamps, mean of 50 step replays after a device barrier; per segment the slowest rank; ` +
        `GPU clock offsets ${sp.clockOffsetUs?.map((v) => fmt(v, 1)).join(' / ') ?? '-'} us, start skew ${fmt(sp.startSkewUs, 2)} us with them removed)`,
    );
    console.log(
      table(
        ['segment', 'us', 'per rank'],
        [
          ...sp.segments.map((s) => [
            segmentMeaning(s, (o.nodes ?? 1) > 1),
            fmt(s.us, 2),
            s.perRank.map((v) => fmt(v, 2)).join(' '),
          ]),
          [
            'whole call',
            fmt(Math.max(...sp.totalPerRank), 2),
            sp.totalPerRank.map((v) => fmt(v, 2)).join(' '),
          ],
        ],
      ),
    );
  }
  if (o.transport === 'cpu') {
    console.log(
      table(
        ['T', 'MB dispatched', '1-thread TypedArray.set us', 'dispatch / copy'],
        rows.map((r) => [
          r.tokens as number,
          (r.bytesDispatched as number) / 1e6,
          r.typedArrayCopyUs as number,
          r.dispatchOverCopy as number,
        ]),
      ),
    );
  }
  if (o.hops.length) {
    console.log(
      'beyond one host, computed from the same routing: one GPU per call, rail-aligned (a token crosses to each host once, then NVLink), de-duplicated, one partial per (token, host) back; MB. Our messages: what this library sends between hosts per call (fixed sizes, padded; README "Between hosts")',
    );
    console.log(
      table(
        [
          'T',
          'EP',
          'GPUs a host',
          'across hosts d / c',
          'padded capacity d',
          'our messages d / c',
          'NVLink d / c',
        ],
        o.hops.map((h) => [
          h.tokens,
          h.world,
          h.gpusPerHost,
          `${fmt(h.interDispatch / 1e6, 2)} / ${fmt(h.interCombine / 1e6, 2)}`,
          fmt(h.interPadded / 1e6, 2),
          `${fmt(h.railDispatch / 1e6, 2)} / ${fmt(h.railCombine / 1e6, 2)}`,
          `${fmt(h.nvlinkDispatch / 1e6, 2)} / ${fmt(h.nvlinkCombine / 1e6, 2)}`,
        ]),
      ),
    );
  }
  if (o.copyGBs !== undefined)
    console.log(`device copy bandwidth (ep_copy_bench, 512 MiB, read + write): ${o.copyGBs.toFixed(0)} GB/s`);
  const host = rows.filter((r) => r.hostUs);
  if (host.length > 0) {
    console.log(
      table(
        [
          'T',
          'path',
          'host us: dispatch',
          'combine',
          'dispatch, new args',
          'combine, new args',
          'dispatch, direct launches',
          'combine, direct',
          'graph dispatch replay',
          'graph combine replay',
          'one bare launch',
        ],
        host.map((r) => {
          const h = r.hostUs as Record<string, number>;
          return [
            r.tokens as number,
            shownPath(r),
            fmt(h.dispatch),
            fmt(h.combine),
            fmt(h.freshDispatch),
            fmt(h.freshCombine),
            fmt(h.directDispatch),
            fmt(h.directCombine),
            fmt(h.graphDispatch),
            fmt(h.graphCombine),
            fmt(h.bareLaunch),
          ];
        }),
      ),
    );
  }
  if (Array.isArray(o.torch)) {
    console.log(
      table(
        [
          'T',
          'PyTorch variant',
          'p50 us',
          'p10',
          'p90',
          'moe-a2a d + c graphs p50',
          'one-graph step p50',
          'speed-up (one graph each)',
        ],
        o.torch.map((t) => {
          const ours = rows.find((r) => r.tokens === t.tokens && r.variant === 'graph');
          const us = ours ? (ours.total as Stats).median : Number.NaN;
          const step = (ours?.step as Stats | undefined)?.median ?? Number.NaN;
          return [
            t.tokens,
            t.variant,
            fmt(t.median_us),
            fmt(t.p10_us),
            fmt(t.p90_us),
            fmt(us),
            fmt(step),
            fmt((t.median_us ?? Number.NaN) / step, 2),
          ];
        }),
      ),
    );
  }
}
