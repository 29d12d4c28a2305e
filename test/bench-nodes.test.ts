// `moe-a2a bench --nodes` on the cpu transport: the plumbing every transport shares (the cuda figures
// need GPUs): the paths a group over several hosts can take, this run's own hosts in the hop table, the
// JSON and file names that say how many hosts.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { benchCommand } from '../src/cli/bench.js';

test('bench --nodes 2 (cpu): staged paths only, its own hosts first in the hops, nodes in the JSON and file name', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-a2a-bench-'));
  const cwd = process.cwd();
  const log = console.log;
  let out = '';
  process.chdir(dir); // (the bench writes under ./bench/results)
  console.log = (line: string) => {
    out += `${line}\n`;
  };
  try {
    const rc = await benchCommand({
      transport: 'cpu',
      world: 4,
      nodes: 2,
      experts: 16,
      hidden: 64,
      topk: 2,
      tokens: [4],
      iters: 2,
      warmup: 0,
      fp8: false,
      json: true,
    });
    assert.equal(rc, 0);
    const files = readdirSync(join(dir, 'bench', 'results'));
    assert.ok(
      files.some((f) => /-cpu-W4-N2\.json$/.test(f)),
      files.join(', '),
    );
  } finally {
    console.log = log;
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
  const r = JSON.parse(out);
  assert.equal(r.config.nodes, 2);
  assert.deepEqual(
    r.rows.map((row: { path: string }) => row.path),
    ['dedup', 'staged'],
    'no direct path between hosts',
  );
  for (const row of r.rows) assert.ok(row.dispatch.median > 0 && row.combine.median > 0);
  const own = r.hops[0];
  assert.deepEqual([own.world, own.gpusPerHost, own.tokens], [4, 2, 4]);
  assert.ok(own.railDispatch > 0 && own.railCombine > 0);
  assert.ok(r.hops.slice(1).every((h: { gpusPerHost: number }) => h.gpusPerHost === 8));
});
