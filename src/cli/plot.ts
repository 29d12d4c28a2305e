/**
 * A small, dependency-free SVG line plot of latency (microseconds, log10 y) against tokens per rank
 * (log2 x). Output is deterministic: the same input gives the same bytes.
 */

export interface PlotPoint {
  tokens: number;
  us: number;
  p10?: number;
  p90?: number;
}

export interface PlotSeries {
  name: string;
  points: PlotPoint[];
  /** Drawn with a dashed line (used for PyTorch baselines). */
  dashed?: boolean;
}

export interface PlotOptions {
  title: string;
  subtitle?: string;
  yLabel?: string;
}

const W = 820;
const H = 520;
const PLOT = { left: 80, right: 620, top: 70, bottom: 460 };
const PALETTE = [
  '#1f77b4',
  '#d62728',
  '#2ca02c',
  '#ff7f0e',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#17becf',
  '#7f7f7f',
  '#bcbd22',
];

/** Escape text for XML element content and attribute values. */
export function escapeXml(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

const ok = (v: number | undefined): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;
const r2 = (v: number): string => String(Math.round(v * 100) / 100);
const fmt = (v: number): string => String(Number(v.toPrecision(6)));

function text(x: number, y: number, s: string, attrs = ''): string {
  return `<text x="${r2(x)}" y="${r2(y)}"${attrs ? ` ${attrs}` : ''}>${escapeXml(s)}</text>`;
}

export function latencyPlotSvg(series: PlotSeries[], opts: PlotOptions): string {
  const drawn = series
    .map((s) => ({ ...s, points: s.points.filter((p) => ok(p.tokens) && ok(p.us)) }))
    .filter((s) => s.points.length > 0);

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`,
    text(W / 2, 28, opts.title, 'text-anchor="middle" font-size="16" font-weight="bold"'),
  ];
  if (opts.subtitle) out.push(text(W / 2, 48, opts.subtitle, 'text-anchor="middle" fill="#555555"'));

  if (drawn.length === 0) {
    out.push(text(W / 2, H / 2, 'no data', 'text-anchor="middle" fill="#888888"'), '</svg>');
    return `${out.join('\n')}\n`;
  }

  // x: log2 of tokens, ticks at every distinct token count.
  const xs = [...new Set(drawn.flatMap((s) => s.points.map((p) => p.tokens)))].sort((a, b) => a - b);
  let x0 = Math.log2(xs[0]);
  let x1 = Math.log2(xs[xs.length - 1]);
  if (x1 - x0 < 1e-9) [x0, x1] = [x0 - 1, x1 + 1];
  const xPad = (x1 - x0) * 0.04;
  x0 -= xPad;
  x1 += xPad;
  const xOf = (t: number) => PLOT.left + ((Math.log2(t) - x0) / (x1 - x0)) * (PLOT.right - PLOT.left);

  // y: log10 of microseconds, bounds widened to whole decades.
  const ys = drawn.flatMap((s) => s.points.flatMap((p) => [p.us, p.p10, p.p90].filter(ok)));
  const d0 = Math.floor(Math.log10(Math.min(...ys)));
  let d1 = Math.ceil(Math.log10(Math.max(...ys)));
  if (d1 <= d0) d1 = d0 + 1;
  const yOf = (us: number) => PLOT.bottom - ((Math.log10(us) - d0) / (d1 - d0)) * (PLOT.bottom - PLOT.top);

  // Gridlines: decades (labelled, darker), 2 and 5 multiples (labelled when the range is small).
  const grid: string[] = [];
  for (let d = d0; d <= d1; d++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (d === d1 && m > 1) break;
      const y = yOf(v);
      const major = m === 1;
      grid.push(
        `<line x1="${PLOT.left}" y1="${r2(y)}" x2="${PLOT.right}" y2="${r2(y)}" stroke="${major ? '#bbbbbb' : '#e6e6e6'}" stroke-width="1"/>`,
      );
      if (major || d1 - d0 <= 2) {
        grid.push(text(PLOT.left - 6, y + 4, fmt(v), `text-anchor="end"${major ? '' : ' fill="#777777"'}`));
      }
    }
  }
  for (const t of xs) {
    const x = xOf(t);
    grid.push(
      `<line x1="${r2(x)}" y1="${PLOT.top}" x2="${r2(x)}" y2="${PLOT.bottom}" stroke="#eeeeee" stroke-width="1"/>`,
      text(x, PLOT.bottom + 18, fmt(t), 'class="xtick" text-anchor="middle"'),
    );
  }
  out.push('<g class="grid">', ...grid, '</g>');
  out.push(
    `<rect x="${PLOT.left}" y="${PLOT.top}" width="${PLOT.right - PLOT.left}" height="${PLOT.bottom - PLOT.top}" fill="none" stroke="#333333"/>`,
    text((PLOT.left + PLOT.right) / 2, PLOT.bottom + 42, 'tokens per rank', 'text-anchor="middle"'),
    text(
      22,
      (PLOT.top + PLOT.bottom) / 2,
      opts.yLabel ?? 'latency (us)',
      `text-anchor="middle" transform="rotate(-90 22 ${(PLOT.top + PLOT.bottom) / 2})"`,
    ),
  );

  // Series: whiskers, polyline, markers; then the legend.
  const legend: string[] = [];
  drawn.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    const pts = [...s.points].sort((a, b) => a.tokens - b.tokens);
    const g: string[] = [`<g class="series" data-name="${escapeXml(s.name)}">`];
    for (const p of pts) {
      if (!ok(p.p10) && !ok(p.p90)) continue;
      const x = xOf(p.tokens);
      const lo = yOf(ok(p.p10) ? p.p10 : p.us);
      const hi = yOf(ok(p.p90) ? p.p90 : p.us);
      g.push(
        `<path class="whisker" d="M${r2(x)} ${r2(lo)}V${r2(hi)}M${r2(x - 4)} ${r2(lo)}H${r2(x + 4)}M${r2(x - 4)} ${r2(hi)}H${r2(x + 4)}" stroke="${color}" stroke-width="1" fill="none"/>`,
      );
    }
    const coords = pts.map((p) => `${r2(xOf(p.tokens))},${r2(yOf(p.us))}`).join(' ');
    g.push(`<polyline points="${coords}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    for (const p of pts) {
      const fill = s.dashed ? '#ffffff' : color;
      g.push(
        `<circle class="pt" cx="${r2(xOf(p.tokens))}" cy="${r2(yOf(p.us))}" r="3.5" fill="${fill}" stroke="${color}" stroke-width="1.5"/>`,
      );
    }
    g.push('</g>');
    out.push(...g);

    const ly = PLOT.top + 10 + i * 22;
    const lx = PLOT.right + 16;
    legend.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 28}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<circle cx="${lx + 14}" cy="${ly}" r="3.5" fill="${s.dashed ? '#ffffff' : color}" stroke="${color}" stroke-width="1.5"/>`,
      text(lx + 36, ly + 4, s.name, 'class="legend"'),
    );
  });
  out.push('<g class="legend">', ...legend, '</g>', '</svg>');
  return `${out.join('\n')}\n`;
}
