/** The SVG plot `moe-a2a bench` writes: dispatch + combine latency per T, ours and the baselines. */

import type { DeepepRow, TorchNcclRow, TorchW1Row } from './bench-baselines.js';
import { type Row, type Stats, shownPath } from './bench-rows.js';
import { latencyPlotSvg, type PlotSeries } from './plot.js';

export function plotOf(
  rows: Row[],
  torch: TorchW1Row[] | string | undefined,
  torchNcclRows: TorchNcclRow[] | string | undefined,
  deepep: DeepepRow[] | string | undefined,
  o: {
    world: number;
    hidden: number;
    topk: number;
    numExperts: number;
    fp8: boolean;
    iters: number;
    transport: string;
    device?: string;
    date: string;
  },
): string {
  const series: PlotSeries[] = [];
  const paths = [...new Set(rows.map(shownPath))];
  for (const path of paths) {
    const mine = rows.filter((r) => shownPath(r) === path);
    const name = (v: string) => `moe-a2a ${v}${path !== '-' ? ` (${path})` : ''}`;
    const loop = mine.filter((r) => r.loop);
    if (loop.length) {
      series.push({
        name: name('graph loop'),
        points: loop.map((r) => ({
          tokens: r.tokens as number,
          us: (r.loop as { graphUs: number }).graphUs,
        })),
      });
    }
    for (const v of loop.length ? ['eager'] : ['eager', 'graph']) {
      series.push({
        name: name(v),
        points: mine
          .filter((r) => r.variant === v)
          .map((r) => ({
            tokens: r.tokens as number,
            us: (r.total as Stats).median,
            p10: (r.total as Stats).p10,
            p90: (r.total as Stats).p90,
          })),
      });
    }
  }
  if (Array.isArray(torch)) {
    for (const v of ['eager', 'graph', 'compile']) {
      series.push({
        name: `PyTorch ${v}`,
        dashed: true,
        points: torch
          .filter((r) => r.variant === v && r.median_us !== null)
          .map((r) => ({ tokens: r.tokens, us: r.median_us as number })),
      });
    }
  }
  if (Array.isArray(torchNcclRows))
    series.push({
      name: 'PyTorch + NCCL (eager)',
      dashed: true,
      points: torchNcclRows.map((r) => ({ tokens: r.tokens, us: r.total_median_us })),
    });
  if (Array.isArray(deepep))
    series.push({
      name: 'DeepEP low-latency (graph loop)',
      dashed: true,
      points: deepep.map((r) => ({ tokens: r.tokens, us: r.loop_us })),
    });
  return latencyPlotSvg(series, {
    title: `dispatch + combine, W=${o.world}, H=${o.hidden}, k=${o.topk}, E=${o.numExperts}, ${o.fp8 ? 'FP8' : 'bf16'} dispatch`,
    subtitle: `${o.transport}${o.device ? ` on ${o.device}` : ''}, ${o.date.slice(0, 10)}; us per layer (loops: mean; others: median (p10..p90) of ${o.iters})`,
  });
}
