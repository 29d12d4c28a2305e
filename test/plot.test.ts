import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { latencyPlotSvg, type PlotSeries } from '../src/cli/plot.js';

const count = (s: string, re: RegExp): number => (s.match(re) ?? []).length;

/** Every opened (non-self-closing) element is closed, in order. */
function assertBalanced(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, close, name, self] = m;
    if (self) continue;
    if (close) assert.equal(stack.pop(), name, `unbalanced </${name}>`);
    else stack.push(name);
  }
  assert.deepEqual(stack, []);
}

/** cy of each marker in the series group named `name` (already-escaped name). */
function markerYs(svg: string, name: string): number[] {
  const start = svg.indexOf(`<g class="series" data-name="${name}">`);
  assert.ok(start >= 0, `series ${name} not found`);
  const group = svg.slice(start, svg.indexOf('</g>', start));
  return [...group.matchAll(/<circle class="pt" cx="[^"]*" cy="([^"]*)"/g)].map((m) => Number(m[1]));
}

const series: PlotSeries[] = [
  {
    name: 'cuda dispatch',
    points: [
      { tokens: 1, us: 20, p10: 18, p90: 25 },
      { tokens: 128, us: 60 },
      { tokens: 4096, us: 900, p10: 800, p90: 1200 },
    ],
  },
  {
    name: 'torch <a2a> & co',
    dashed: true,
    points: [
      { tokens: 32, us: 300 },
      { tokens: 512, us: 2000 },
    ],
  },
  { name: 'empty', points: [] },
];

describe('latencyPlotSvg', () => {
  const svg = latencyPlotSvg(series, { title: 'dispatch <bf16>', subtitle: 'world=8', yLabel: 'us' });

  test('is a balanced, self-contained svg document', () => {
    assert.ok(svg.startsWith('<svg'));
    assert.ok(svg.trimEnd().endsWith('</svg>'));
    assertBalanced(svg);
    assert.ok(!/[<]script/.test(svg));
    assert.equal(count(svg, /&(?!amp;|lt;|gt;|quot;|apos;)/g), 0, 'bare ampersand');
  });

  test('one polyline per non-empty series, dashed where asked', () => {
    assert.equal(count(svg, /<polyline /g), 2);
    assert.equal(count(svg, /<polyline [^>]*stroke-dasharray/g), 1);
  });

  test('title, subtitle and legend text are escaped', () => {
    assert.ok(svg.includes('dispatch &lt;bf16&gt;'));
    assert.ok(svg.includes('world=8'));
    assert.ok(svg.includes('>cuda dispatch</text>'));
    assert.ok(svg.includes('>torch &lt;a2a&gt; &amp; co</text>'));
    assert.ok(!svg.includes('<a2a>'));
    assert.ok(!svg.includes('>empty</text>'));
  });

  test('x tick labels at each distinct token count', () => {
    const ticks = [...svg.matchAll(/<text [^>]*class="xtick"[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
    assert.deepEqual(ticks, ['1', '32', '128', '512', '4096']);
  });

  test('only the data points are drawn, with whiskers where given', () => {
    assert.equal(count(svg, /<circle class="pt"/g), 5);
    assert.equal(markerYs(svg, 'cuda dispatch').length, 3);
    assert.equal(markerYs(svg, 'torch &lt;a2a&gt; &amp; co').length, 2);
    assert.equal(count(svg, /class="whisker"/g), 2);
  });

  test('log-scale y is monotonic: larger us sits higher (smaller y)', () => {
    const ys = markerYs(svg, 'cuda dispatch');
    assert.ok(ys[0] > ys[1] && ys[1] > ys[2], `ys ${ys}`);
    // Equal ratios (1, 10, 100) map to equal distances on a log axis.
    const one = latencyPlotSvg(
      [{ name: 's', points: [1, 10, 100].map((us, i) => ({ tokens: 2 ** i, us })) }],
      {
        title: 't',
      },
    );
    const [a, b, c] = markerYs(one, 's');
    assert.ok(Math.abs(a - b - (b - c)) < 0.05);
  });

  test('decade gridlines labelled', () => {
    for (const v of ['10', '100', '1000', '10000']) assert.ok(svg.includes(`>${v}</text>`), v);
  });

  test('NaN and non-positive values are skipped', () => {
    const s = latencyPlotSvg(
      [
        {
          name: 'n',
          points: [
            { tokens: 1, us: 10 },
            { tokens: 2, us: Number.NaN },
            { tokens: 4, us: 0 },
            { tokens: Number.NaN, us: 5 },
            { tokens: 8, us: 40, p10: Number.NaN, p90: -1 },
          ],
        },
        { name: 'all-nan', points: [{ tokens: 1, us: Number.NaN }] },
      ],
      { title: 't' },
    );
    assert.ok(!s.includes('NaN'));
    assert.equal(count(s, /<polyline /g), 1);
    assert.equal(markerYs(s, 'n').length, 2);
    assert.equal(count(s, /class="whisker"/g), 0);
    const ticks = [...s.matchAll(/class="xtick"[^>]*>([^<]*)</g)].map((m) => m[1]);
    assert.deepEqual(ticks, ['1', '8']);
    assertBalanced(s);
  });

  test('no drawable series still gives a valid svg, and output is deterministic', () => {
    const e = latencyPlotSvg([{ name: 'x', points: [] }], { title: 'empty' });
    assert.ok(e.startsWith('<svg'));
    assertBalanced(e);
    assert.equal(count(e, /<polyline /g), 0);
    assert.equal(
      latencyPlotSvg(series, { title: 'dispatch <bf16>', subtitle: 'world=8', yLabel: 'us' }),
      svg,
    );
  });
});
