// Every kernel's launch size (src/shmem/cuda/launch-sizes.ts) against what kernels/ep.cu's LAUNCH
// CONFIGURATION block requires of it, over random shapes, batches and SM counts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveConfig } from '../src/ep/config.js';
import { stagedRowsFor } from '../src/ep/layout.js';
import { EP_ROUTE_THREADS, routeSharedBytes } from '../src/shmem/cuda/args.js';
import {
  ABORT_COMBINE_SEND,
  ABORT_STAGE_SEND,
  abortRouteSize,
  combineSendSize,
  dispatchSize,
  MAX_BLOCK,
  railWalkSize,
  reduceSize,
  routeSize,
  rowBlock,
  rowWalkSize,
  stagePackSize,
  walkGridCap,
} from '../src/shmem/cuda/launch-sizes.js';
import { rng } from './helpers/random.js';

const blockOk = (b: number) => b % 32 === 0 && b >= 32 && b <= MAX_BLOCK;

describe('kernel launch sizes', () => {
  test('the DeepSeek-V3 row (H = 7168) takes 224 threads in dispatch and reduce, as the kernels document', () => {
    const cfg = resolveConfig({ world: 2, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 128 });
    assert.equal(rowBlock(7168 / 16), 224);
    assert.equal(dispatchSize(cfg, 128, 132, false).block, 224);
    assert.equal(reduceSize(cfg, 128, 132).block, 224);
    // a block per (token, chunk of 224 x 16 values: two per row) up to 8 per SM
    assert.equal(dispatchSize(cfg, 128, 132, false).grid, 256);
    assert.equal(dispatchSize(cfg, 4096, 132, false).grid, 8 * 132);
    assert.equal(dispatchSize(cfg, 4096, 132, true).grid, 8 * 132 + 1, 'plus the bookkeeping block');
    // one wave of ep_stage_send_large (the driver's occupancy for it: 4 an SM), never more than 8 an SM
    assert.equal(dispatchSize(cfg, 4096, 132, true, 4).grid, 4 * 132 + 1);
    assert.equal(dispatchSize(cfg, 4096, 132, true, 16).grid, 8 * 132 + 1);
    assert.equal(dispatchSize(cfg, 100, 132, true, 4).grid, 200 + 1, 'fewer items than a wave');
    assert.equal(
      dispatchSize(cfg, 4096, 132, true, 0).grid,
      132 + 1,
      'an occupancy of 0: still a block an SM',
    );
  });

  test('every size within the kernels limits, for random shapes, batches and SM counts', () => {
    const r = rng(7);
    for (let i = 0; i < 2000; i++) {
      const world = [1, 2, 4, 8][r.int(4)];
      const numExperts = world * (1 + r.int(32));
      const cfg = resolveConfig({
        world,
        numExperts,
        hidden: 8 * (1 + r.int(2048)),
        topk: 1 + r.int(Math.min(8, numExperts)),
        maxTokensPerRank: 1 + r.int(4096),
        fp8: false,
      });
      const T = r.int(cfg.maxTokensPerRank + 1);
      const sms = [1, 78, 132][r.int(3)];
      const what = JSON.stringify({ H: cfg.hidden, T, sms, world });
      for (const books of [false, true]) {
        const d = dispatchSize(cfg, T, sms, books);
        assert.ok(blockOk(d.block), `${what}: dispatch block ${d.block}`);
        assert.ok(
          d.grid >= (books ? 2 : 1) && d.grid <= 8 * sms + (books ? 1 : 0),
          `${what}: dispatch grid ${d.grid}`,
        );
        assert.equal(d.sharedBytes, 0);
      }
      const red = reduceSize(cfg, T, sms);
      assert.ok(
        blockOk(red.block) && red.grid >= 1 && red.grid <= 8 * sms,
        `${what}: reduce ${JSON.stringify(red)}`,
      );
      // one block per (token, chunk) until the grid cap: the kernels grid-stride beyond it
      const chunks = Math.ceil(cfg.hidden / 8 / red.block);
      assert.equal(red.grid, Math.min(8 * sms, Math.max(1, T * chunks)));
      for (const s of [
        rowWalkSize(cfg, sms),
        combineSendSize(cfg, sms),
        stagePackSize(cfg, stagedRowsFor(cfg), sms),
      ]) {
        assert.ok(s.block === 256 && s.grid >= 1 && s.grid <= 4 * sms, `${what}: ${JSON.stringify(s)}`);
      }
      const route = routeSize(cfg, T);
      assert.equal(route.grid, 1);
      assert.equal(route.block, T * cfg.topk <= 4096 ? EP_ROUTE_THREADS / 2 : EP_ROUTE_THREADS);
      // one shared-memory size for every call of the group (a captured graph keeps it)
      assert.equal(route.sharedBytes, routeSharedBytes(cfg.numExperts, cfg.maxTokensPerRank * cfg.topk));
      assert.deepEqual(abortRouteSize(cfg), {
        grid: 1,
        block: EP_ROUTE_THREADS,
        sharedBytes: route.sharedBytes,
      });
    }
  });

  test('the row walkers run in one wave: no more blocks than the SMs hold at once, and at most 4 an SM', () => {
    const cfg = resolveConfig({ world: 2, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 });
    const rows = stagedRowsFor(cfg);
    for (const perSm of [1, 2, 3, 4, 8]) {
      const cap = Math.min(4, perSm) * 132;
      assert.equal(walkGridCap(132, perSm), cap);
      // (enough rows at T = 4096 to fill any cap)
      assert.equal(stagePackSize(cfg, rows, 132, perSm).grid, cap);
      assert.equal(rowWalkSize(cfg, 132, perSm).grid, cap);
      assert.equal(railWalkSize(132, perSm).grid, cap);
    }
    // a kernel the driver says fits no block still gets one wave of one block an SM
    assert.equal(walkGridCap(132, 0), 132);
    // few rows: fewer blocks than the cap
    const small = resolveConfig({ world: 2, numExperts: 8, hidden: 256, topk: 2, maxTokensPerRank: 4 });
    assert.ok(rowWalkSize(small, 132, 2).grid < 2 * 132);
  });

  test('the dedup combine send has a warp for each (carrier, 2 KiB segment) item where one wave holds them', () => {
    // DeepSeek-V3 at T = 128, W = 2, as the bench sizes it: maxRowsPerPeer about 4 selections a token
    const cfg = resolveConfig({
      world: 2,
      numExperts: 256,
      hidden: 7168,
      topk: 8,
      maxTokensPerRank: 128,
      maxRowsPerPeer: 560,
    });
    const items = 2 * 128 * 7; // every carrier a source can send (one a token), 7 segments of a 14 KiB partial
    const s = combineSendSize(cfg, 132, 2);
    assert.equal(s.block, 256);
    assert.equal(s.grid, Math.ceil(items / 8), 'one item a warp');
    assert.ok(rowWalkSize(cfg, 132, 2).grid * 8 < items, 'sized by rows, some warps would take two items');
    // past one wave: the cap, and without dedup the row walk's size
    const big = resolveConfig({ world: 4, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 });
    assert.equal(combineSendSize(big, 132, 2).grid, 2 * 132);
    const rows = resolveConfig({ ...cfg, dedup: false });
    assert.deepEqual(combineSendSize(rows, 132, 2), rowWalkSize(rows, 132, 2));
    // carriers are bounded by maxRowsPerPeer too (a source sends a rank no more rows than that)
    const few = resolveConfig({ ...cfg, maxRowsPerPeer: 16 });
    assert.equal(combineSendSize(few, 132, 2).grid, Math.ceil((2 * 16 * 7) / 8));
  });

  test('an abort launches the fewest threads each kernel allows (ep_stage_send needs two blocks)', () => {
    assert.deepEqual(ABORT_STAGE_SEND, { grid: 2, block: 32, sharedBytes: 0 });
    assert.deepEqual(ABORT_COMBINE_SEND, { grid: 1, block: 32, sharedBytes: 0 });
  });
});
