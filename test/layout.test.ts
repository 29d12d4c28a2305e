import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type EpConfig, resolveConfig } from '../src/ep/config.js';
import {
  ALIGN,
  alignUp,
  combineRowOffset,
  computeLayout,
  FLAGGED_MAX_TOKENS,
  flaggedMaxTokens,
  type HeapLayout,
  type Region,
  railMessageLayout,
  recordBytes,
  regionsOf,
  signalOffset,
  splitsOffset,
  stageCarrierOffset,
  stagedRowsFor,
  stageRecordOffset,
  stageRowOffset,
  stageScaleOffset,
} from '../src/ep/layout.js';
import { rng } from './helpers/random.js';

/** The regions dedup adds, last before the ones between hosts. */
const DEDUP_REGIONS = ['stageCarrier', 'stageRecords', 'flaggedRecv'];

describe('layout: hand-worked W = 2, E = 4, H = 256, k = 2, T = 4, fp8 G = 128, staged', () => {
  // EPR 2; maxRowsPerPeer = 4 * min(2, 2) = 8; expertCapacity = 2 * min(4, 8) = 8; stageRows =
  // min(8, 4 * 2) = 8; groupsPerRow 2; dispatch row 256 B; combine row 512 B.
  //   countSignal:    2 * 8 = 16 B          -> slot 256,  offset 0,     bytes 512
  //   dispatchSignal: 16 B                  -> slot 256,  offset 512,   bytes 512
  //   combineSignal:  16 B                  -> slot 256,  offset 1024,  bytes 512
  //   counts:         2 * 4 * 4 = 32 B      -> slot 256,  offset 1536,  bytes 512
  //   combineRecv:    8 rows * 512 = 4096   -> slot 4096, offset 2048,  bytes 8192
  //   expertX:        16 rows * 256 = 4096  -> one copy,  offset 10240, bytes 4096
  //   expertScales:   16 * 2 * 4 = 128      -> one copy,  offset 14336, bytes 256
  //   barrierSignal:  16 B                  -> one copy,  offset 14592, bytes 256
  //   stageSplits:    2 * 3 * 4 = 24 B      -> slot 256,  offset 14848, bytes 512
  //   stageData:      2 * 8 * 256 = 4096    -> slot 4096, offset 15360, bytes 8192
  //   stageScales:    2 * 8 * 2 * 4 = 128   -> slot 256,  offset 23552, bytes 512
  //   stageCarrier, stageRecords: empty (no dedup) at 24064; total 24064
  const cfg = resolveConfig({
    world: 2,
    numExperts: 4,
    hidden: 256,
    topk: 2,
    maxTokensPerRank: 4,
    dedup: false,
  });
  const l = computeLayout(cfg, stagedRowsFor(cfg));

  test('regions', () => {
    assert.equal(l.stageRows, 8);
    assert.deepEqual(l.countSignal, { offset: 0, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.dispatchSignal, { offset: 512, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.combineSignal, { offset: 1024, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.counts, { offset: 1536, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.combineRecv, { offset: 2048, slotBytes: 4096, bytes: 8192 });
    assert.deepEqual(l.expertX, { offset: 10240, slotBytes: 4096, bytes: 4096 });
    assert.deepEqual(l.expertScales, { offset: 14336, slotBytes: 256, bytes: 256 });
    assert.deepEqual(l.barrierSignal, { offset: 14592, slotBytes: 256, bytes: 256 });
    assert.deepEqual(l.stageSplits, { offset: 14848, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.stageData, { offset: 15360, slotBytes: 4096, bytes: 8192 });
    assert.deepEqual(l.stageScales, { offset: 23552, slotBytes: 256, bytes: 512 });
    // dedup is off: its regions are empty, after everything else
    assert.deepEqual(l.stageCarrier, { offset: 24064, slotBytes: 0, bytes: 0 });
    assert.deepEqual(l.stageRecords, { offset: 24064, slotBytes: 0, bytes: 0 });
    assert.equal(l.totalBytes, 24064);
    assert.equal(l.splitsPerPeer, 3);
    assert.equal(l.combineRows, 8);
  });

  test('offset helpers at hand-picked indices', () => {
    assert.equal(signalOffset(l.dispatchSignal, 0, 0), 512);
    assert.equal(signalOffset(l.dispatchSignal, 1, 1), 512 + 256 + 8);
    assert.equal(signalOffset(l.combineSignal, 1, 1), 1024 + 256 + 8);
    assert.equal(splitsOffset(l, 0, 1), 14848 + 12);
    assert.equal(splitsOffset(l, 1, 1), 14848 + 256 + 12);
    assert.equal(stageRowOffset(l, cfg, 0, 0, 0), 15360);
    assert.equal(stageRowOffset(l, cfg, 0, 1, 0), 15360 + 8 * 256);
    assert.equal(stageRowOffset(l, cfg, 1, 1, 7), 15360 + 4096 + 15 * 256);
    assert.equal(stageScaleOffset(l, cfg, 0, 0, 1), 23552 + 8);
    assert.equal(stageScaleOffset(l, cfg, 1, 1, 7), 23552 + 256 + 15 * 8);
    assert.equal(combineRowOffset(l, cfg, 0, 1), 2048 + 512);
    assert.equal(combineRowOffset(l, cfg, 1, 7), 2048 + 4096 + 7 * 512);
  });

  test('the same config with dedup: carrier, record and flagged regions last, nothing else moves', () => {
    // recordBytes = alignUp(4 * (1 + 2 * 2), 16) = 32
    //   stageCarrier: 2 * 8 * 4 = 64 B    -> slot 256, offset 24064, bytes 512
    //   stageRecords: 2 * 8 * 32 = 512 B  -> slot 512, offset 24576, bytes 1024
    //   flaggedRecv: min(4, FLAGGED_MAX_TOKENS) * k * 2 * 512 = 8192 B -> offset 25600, bytes 16384
    //   total 41984
    const c = resolveConfig({
      world: 2,
      numExperts: 4,
      hidden: 256,
      topk: 2,
      maxTokensPerRank: 4,
      dedup: true,
    });
    const m = computeLayout(c, stagedRowsFor(c));
    assert.equal(recordBytes(c), 32);
    for (const [i, [name, reg]] of regionsOf(l).entries()) {
      // (the regions between hosts are empty on one host: they sit at the end, whatever it is)
      if (!DEDUP_REGIONS.includes(name) && !name.startsWith('rail'))
        assert.deepEqual(regionsOf(m)[i][1], reg, name);
    }
    assert.deepEqual(m.stageCarrier, { offset: 24064, slotBytes: 256, bytes: 512 });
    assert.deepEqual(m.stageRecords, { offset: 24576, slotBytes: 512, bytes: 1024 });
    assert.deepEqual(m.flaggedRecv, { offset: 25600, slotBytes: 8192, bytes: 16384 });
    assert.equal(m.totalBytes, 41984);
    assert.equal(stageCarrierOffset(m, 0, 0, 0), 24064);
    assert.equal(stageCarrierOffset(m, 0, 1, 0), 24064 + 8 * 4);
    assert.equal(stageCarrierOffset(m, 1, 1, 7), 24064 + 256 + 15 * 4);
    assert.equal(stageRecordOffset(m, c, 0, 0, 1), 24576 + 32);
    assert.equal(stageRecordOffset(m, c, 1, 1, 7), 24576 + 512 + 15 * 32);
  });

  test('flagged partials: at most 48 rows in from the other ranks a call, and never more than 32 tokens', () => {
    // T * (W - 1) <= 48: W = 2 is held to 32 tokens, W = 4 to 16, W = 8 to 6; one rank never flags
    assert.deepEqual([1, 2, 3, 4, 5, 8, 49, 64].map(flaggedMaxTokens), [0, 32, 24, 16, 12, 6, 1, 0]);
    const w4 = resolveConfig({
      world: 4,
      numExperts: 8,
      hidden: 256,
      topk: 2,
      maxTokensPerRank: 64,
      dedup: true,
    });
    // its flagged region: 16 tokens * k rows, each 4 bytes of a bf16 row beside a 4-byte flag
    assert.equal(computeLayout(w4, 8).flaggedRecv.slotBytes, 16 * 2 * 2 * w4.combineRowBytes);
  });

  test('recordBytes: i32 back, k i32 rows, k f32 weights, padded to 16 bytes', () => {
    const k = (topk: number) =>
      resolveConfig({ world: 1, numExperts: 64, hidden: 8, topk, maxTokensPerRank: 1, fp8: false });
    assert.equal(recordBytes(k(1)), 16); // 12 -> 16
    assert.equal(recordBytes(k(2)), 32); // 20 -> 32
    assert.equal(recordBytes(k(8)), 80); // 68 -> 80
    assert.equal(recordBytes(k(32)), 272); // 260 -> 272
  });

  test('the same config with fp8 off: bf16 rows, empty scale regions', () => {
    // expertX 16 * 512 = 8192 at 10240; expertScales empty at 18432; barrierSignal 18432 (256);
    // stageSplits 18688 (512); stageData 2 * 8 * 512 = 8192 at 19200, bytes 16384; stageScales empty at 35584
    const c = resolveConfig({
      world: 2,
      numExperts: 4,
      hidden: 256,
      topk: 2,
      maxTokensPerRank: 4,
      fp8: false,
      dedup: false,
    });
    const m = computeLayout(c, stagedRowsFor(c));
    assert.deepEqual(m.expertX, { offset: 10240, slotBytes: 8192, bytes: 8192 });
    assert.deepEqual(m.expertScales, { offset: 18432, slotBytes: 0, bytes: 0 });
    assert.deepEqual(m.stageData, { offset: 19200, slotBytes: 8192, bytes: 16384 });
    assert.deepEqual(m.stageScales, { offset: 35584, slotBytes: 0, bytes: 0 });
    assert.equal(m.totalBytes, 35584);
  });

  test('a group that does not stage (the cuda direct path, or W = 1 there) has empty stage regions', () => {
    const m = computeLayout(cfg, 0);
    for (const name of ['stageSplits', 'stageData', 'stageScales', 'stageCarrier', 'stageRecords'] as const)
      assert.equal(m[name].bytes, 0, name);
    assert.deepEqual(m.barrierSignal, l.barrierSignal);
    assert.equal(m.totalBytes, l.stageSplits.offset);
  });
});

test('alignUp', () => {
  assert.equal(ALIGN, 256);
  assert.equal(alignUp(0), 0);
  assert.equal(alignUp(1), 256);
  assert.equal(alignUp(256), 256);
  assert.equal(alignUp(257), 512);
  assert.equal(alignUp(17, 16), 32);
});

/** [start, start + size) lies inside slot `slot` of region r, and inside r. */
function inSlot(r: Region, slot: number, start: number, size: number, what: string): void {
  const lo = r.offset + slot * r.slotBytes;
  assert.ok(start >= lo && start + size <= lo + r.slotBytes, `${what}: [${start}, +${size}) in slot ${slot}`);
  assert.ok(start >= r.offset && start + size <= r.offset + r.bytes, `${what}: inside the region`);
}

function randomConfig(r: ReturnType<typeof rng>): EpConfig {
  const world = [1, 2, 3, 4, 8, 16][r.int(6)];
  const numExperts = world * (1 + r.int(40));
  const topk = 1 + r.int(Math.min(numExperts, 9));
  const fp8 = r.next() < 0.6;
  const fp8GroupSize = [8, 32, 64, 128][r.int(4)];
  const hidden = fp8 ? fp8GroupSize * (1 + r.int(60)) : 8 * (1 + r.int(1000));
  const maxTokensPerRank = 1 + r.int(300);
  const full = maxTokensPerRank * Math.min(topk, numExperts / world);
  const maxRowsPerPeer = r.next() < 0.3 ? 1 + r.int(full) : undefined;
  const dedup = r.next() < 0.5;
  const expertLayout = r.next() < 0.5 ? 'packed' : 'padded';
  const nodes = [1, 2, 4].filter((n) => world % n === 0)[r.int(3)] ?? 1;
  return resolveConfig({
    nodes,
    dedup,
    expertLayout,
    world,
    numExperts,
    hidden,
    topk,
    maxTokensPerRank,
    fp8,
    fp8GroupSize,
    maxRowsPerPeer,
  });
}

/** Every other config stages (as the cpu transport always does), the rest do not (the cuda direct path). */
function layoutsOf(configs: EpConfig[]): Array<[EpConfig, HeapLayout, string]> {
  return configs.map((cfg, i) => {
    const stageRows = i % 2 === 0 ? stagedRowsFor(cfg) : 0;
    return [cfg, computeLayout(cfg, stageRows), JSON.stringify({ ...cfg, stageRows })];
  });
}

describe('layout: properties on random configs', () => {
  const r = rng(99);
  const configs: EpConfig[] = [];
  for (let i = 0; i < 300; i++) configs.push(randomConfig(r));
  // extremes
  configs.push(
    resolveConfig({ world: 1, numExperts: 1, hidden: 8, topk: 1, maxTokensPerRank: 1, fp8: false }),
  );
  const v3 = { world: 8, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 };
  configs.push(resolveConfig(v3), resolveConfig({ ...v3, expertLayout: 'packed' }));
  const layouts = layoutsOf(configs);

  test('regions are aligned, in order, non-overlapping, sized from the config; expertX has one copy', () => {
    for (const [cfg, l, what] of layouts) {
      const stageRows = l.stageRows;
      const dedup = stageRows > 0 && cfg.dedup;
      const rail = stageRows > 0 && cfg.nodes > 1;
      const W = cfg.world;
      // packed: what can arrive (every source's rows for this rank, at most maxRowsPerPeer each)
      const padded = cfg.expertsPerRank * cfg.expertCapacity;
      const rows = cfg.expertLayout === 'packed' ? Math.min(W * cfg.maxRowsPerPeer, padded) : padded;
      const want: Record<string, [number, number]> = {
        countSignal: [W * 8, 2],
        dispatchSignal: [W * 8, 2],
        combineSignal: [W * 8, 2],
        counts: [W * cfg.numExperts * 4, 2],
        combineRecv: [cfg.maxTokensPerRank * cfg.topk * cfg.combineRowBytes, 2],
        expertX: [rows * cfg.dispatchRowBytes, 1],
        expertScales: [cfg.fp8 ? rows * cfg.groupsPerRow * 4 : 0, 1],
        barrierSignal: [W * 8, 1],
        stageSplits: [stageRows > 0 ? W * (cfg.expertsPerRank + 1) * 4 : 0, 2],
        stageData: [W * stageRows * cfg.dispatchRowBytes, 2],
        stageScales: [cfg.fp8 ? W * stageRows * cfg.groupsPerRow * 4 : 0, 2],
        stageCarrier: [dedup ? W * stageRows * 4 : 0, 2],
        stageRecords: [dedup ? W * stageRows * alignUp(4 * (1 + 2 * cfg.topk), 16) : 0, 2],
        flaggedRecv: [
          dedup && W > 1
            ? Math.min(cfg.maxTokensPerRank, FLAGGED_MAX_TOKENS, Math.floor(48 / (W - 1))) *
              cfg.topk *
              2 *
              cfg.combineRowBytes
            : 0,
          2,
        ],
        // between hosts (staged groups over several hosts only): a message per other host, its rows back
        railInbox: [rail ? cfg.nodes * railMessageLayout(cfg).bytes : 0, 2],
        railInboxSignal: [rail ? cfg.nodes * 8 : 0, 2],
        railOutbox: [rail ? cfg.nodes * cfg.maxTokensPerRank * cfg.topk * cfg.combineRowBytes : 0, 2],
        railOutboxSignal: [rail ? cfg.nodes * cfg.ranksPerNode * 8 : 0, 2],
      };
      const regions = regionsOf(l);
      assert.deepEqual(
        regions.map(([n]) => n),
        Object.keys(want),
      );
      let end = 0;
      for (const [name, reg] of regions) {
        const [bytes, slots] = want[name];
        assert.equal(reg.offset % ALIGN, 0, `${what}: ${name} offset aligned`);
        assert.equal(reg.slotBytes, alignUp(bytes), `${what}: ${name} slot size`);
        assert.equal(reg.bytes, slots * reg.slotBytes, `${what}: ${name} slots`);
        assert.ok(reg.offset >= end, `${what}: ${name} starts after the region before it`);
        end = reg.offset + reg.bytes;
      }
      assert.equal(l.totalBytes, end, `${what}: nothing after the last region`);
      assert.equal(l.totalBytes % ALIGN, 0);
      assert.equal(l.splitsPerPeer, cfg.expertsPerRank + 1);
      assert.equal(l.combineRows, cfg.maxTokensPerRank * cfg.topk);
    }
  });

  test('dedup adds its regions last: a heap without dedup keeps its layout and size', () => {
    for (const [cfg, l] of layouts) {
      if (l.stageRows === 0 || cfg.nodes > 1) continue; // (between hosts: the next test)
      const off = computeLayout({ ...cfg, dedup: false }, l.stageRows);
      const on = computeLayout({ ...cfg, dedup: true }, l.stageRows);
      const what = JSON.stringify(cfg);
      const end = off.stageScales.offset + off.stageScales.bytes;
      assert.equal(off.totalBytes, end, `${what}: nothing after stageScales without dedup`);
      const regionsOn = regionsOf(on);
      for (const [i, [name, reg]] of regionsOf(off).entries()) {
        if (DEDUP_REGIONS.includes(name) || name.startsWith('rail')) continue;
        assert.deepEqual(regionsOn[i][1], reg, `${what}: ${name} does not move with dedup`);
      }
      assert.equal(on.stageCarrier.offset, end);
      assert.equal(on.stageRecords.offset, on.stageCarrier.offset + on.stageCarrier.bytes);
      assert.equal(on.flaggedRecv.offset, on.stageRecords.offset + on.stageRecords.bytes);
      assert.equal(on.totalBytes, on.flaggedRecv.offset + on.flaggedRecv.bytes);
    }
  });

  test('between hosts adds its regions last: a one-host heap of the same config is the prefix', () => {
    let seen = 0;
    for (const [cfg, l] of layouts) {
      if (l.stageRows === 0 || cfg.nodes === 1) continue;
      seen++;
      const one = computeLayout(
        resolveConfig({ ...cfg, maxRowsPerExpert: cfg.expertCapacity, nodes: 1 }),
        l.stageRows,
      );
      const mine = regionsOf(l);
      for (const [i, [name, reg]] of regionsOf(one).entries())
        if (!name.startsWith('rail')) assert.deepEqual(mine[i][1], reg, name);
      assert.equal(l.railInbox.offset, one.totalBytes);
      assert.ok(l.railInbox.bytes > 0 && l.railOutbox.bytes > 0);
      assert.equal(l.totalBytes, l.railOutboxSignal.offset + l.railOutboxSignal.bytes);
    }
    assert.ok(seen > 20, `${seen} configs over several hosts`);
  });

  test('offset helpers stay inside their region at the extreme indices; one past the last leaves it', () => {
    for (const [cfg, l, what] of layouts) {
      const W = cfg.world;
      const M = l.stageRows;
      const staged = M > 0;
      for (const slot of [0, 1]) {
        for (const [name, reg] of [
          ['dispatchSignal', l.dispatchSignal],
          ['combineSignal', l.combineSignal],
          ['countSignal', l.countSignal],
        ] as const) {
          inSlot(reg, slot, signalOffset(reg, slot, 0), 8, `${what} ${name}`);
          inSlot(reg, slot, signalOffset(reg, slot, W - 1), 8, `${what} ${name}`);
          // the word after the last src is just past the described slot contents
          assert.equal(signalOffset(reg, slot, W), reg.offset + slot * reg.slotBytes + W * 8);
        }
        const cb = cfg.combineRowBytes;
        inSlot(l.combineRecv, slot, combineRowOffset(l, cfg, slot, 0), cb, `${what} combine first`);
        inSlot(
          l.combineRecv,
          slot,
          combineRowOffset(l, cfg, slot, l.combineRows - 1),
          cb,
          `${what} combine last`,
        );
        assert.equal(
          combineRowOffset(l, cfg, slot, l.combineRows),
          l.combineRecv.offset + slot * l.combineRecv.slotBytes + l.combineRows * cb,
        );
        if (!staged) continue;

        const splitBytes = l.splitsPerPeer * 4;
        inSlot(l.stageSplits, slot, splitsOffset(l, slot, W - 1), splitBytes, `${what} splits`);
        assert.equal(
          splitsOffset(l, slot, W),
          l.stageSplits.offset + slot * l.stageSplits.slotBytes + W * splitBytes,
        );
        // per entry kind: first and last inside the slot, blocks contiguous, one past the last at the end
        const kinds: Array<[string, Region, number, (s: number, row: number) => number]> = [
          ['stageData', l.stageData, cfg.dispatchRowBytes, (s, row) => stageRowOffset(l, cfg, slot, s, row)],
        ];
        if (cfg.fp8)
          kinds.push([
            'stageScales',
            l.stageScales,
            cfg.groupsPerRow * 4,
            (s, row) => stageScaleOffset(l, cfg, slot, s, row),
          ]);
        if (cfg.dedup) {
          kinds.push(['stageCarrier', l.stageCarrier, 4, (s, row) => stageCarrierOffset(l, slot, s, row)]);
          kinds.push([
            'stageRecords',
            l.stageRecords,
            recordBytes(cfg),
            (s, row) => stageRecordOffset(l, cfg, slot, s, row),
          ]);
        }
        for (const [name, reg, size, at] of kinds) {
          inSlot(reg, slot, at(0, 0), size, `${what} ${name} first`);
          inSlot(reg, slot, at(W - 1, M - 1), size, `${what} ${name} last`);
          if (W > 1) assert.equal(at(0, M), at(1, 0), `${what} ${name}: row M of src 0 is row 0 of src 1`);
          assert.equal(at(W - 1, M), reg.offset + slot * reg.slotBytes + W * M * size, `${what} ${name} end`);
        }
        if (cfg.dedup)
          assert.equal(stageRecordOffset(l, cfg, slot, 0, 0) % 16, 0, `${what} records 16-byte aligned`);
      }
      // slot 2 does not exist: its first element would be past the region's end
      assert.ok(signalOffset(l.dispatchSignal, 2, 0) >= l.dispatchSignal.offset + l.dispatchSignal.bytes);
      assert.ok(combineRowOffset(l, cfg, 2, 0) >= l.combineRecv.offset + l.combineRecv.bytes);
      if (staged) {
        assert.ok(splitsOffset(l, 2, 0) >= l.stageSplits.offset + l.stageSplits.bytes);
        assert.ok(stageRowOffset(l, cfg, 2, 0, 0) >= l.stageData.offset + l.stageData.bytes);
      }
    }
  });

  for (const dedup of [false, true]) {
    test(`every element of a small staged config maps to a distinct byte range (no two elements overlap)${dedup ? ', dedup' : ''}`, () => {
      const cfg = resolveConfig({
        world: 3,
        numExperts: 6,
        hidden: 16,
        topk: 2,
        maxTokensPerRank: 3,
        fp8GroupSize: 8,
        dedup,
      });
      const l = computeLayout(cfg, stagedRowsFor(cfg));
      const owner = new Int32Array(l.totalBytes).fill(-1);
      let id = 0;
      const claim = (start: number, size: number) => {
        assert.ok(start >= 0 && start + size <= l.totalBytes, `[${start}, +${size}) inside the heap`);
        for (let b = start; b < start + size; b++) {
          assert.equal(owner[b], -1, `byte ${b} claimed twice`);
          owner[b] = id;
        }
        id++;
      };
      claim(l.expertX.offset, cfg.expertsPerRank * cfg.expertCapacity * cfg.dispatchRowBytes);
      claim(l.expertScales.offset, cfg.expertsPerRank * cfg.expertCapacity * cfg.groupsPerRow * 4);
      for (let s = 0; s < cfg.world; s++) claim(signalOffset(l.barrierSignal, 0, s), 8);
      for (let slot = 0; slot < 2; slot++) {
        for (let s = 0; s < cfg.world; s++) {
          claim(signalOffset(l.countSignal, slot, s), 8);
          claim(signalOffset(l.dispatchSignal, slot, s), 8);
          claim(signalOffset(l.combineSignal, slot, s), 8);
          claim(l.counts.offset + slot * l.counts.slotBytes + s * cfg.numExperts * 4, cfg.numExperts * 4);
          claim(splitsOffset(l, slot, s), l.splitsPerPeer * 4);
          for (let row = 0; row < l.stageRows; row++) {
            claim(stageRowOffset(l, cfg, slot, s, row), cfg.dispatchRowBytes);
            claim(stageScaleOffset(l, cfg, slot, s, row), cfg.groupsPerRow * 4);
            if (dedup) {
              claim(stageCarrierOffset(l, slot, s, row), 4);
              claim(stageRecordOffset(l, cfg, slot, s, row), recordBytes(cfg));
            }
          }
        }
        for (let row = 0; row < l.combineRows; row++)
          claim(combineRowOffset(l, cfg, slot, row), cfg.combineRowBytes);
      }
      assert.ok(id > 0);
    });
  }

  test('a stage holds what one source can send one rank in a call', () => {
    const cfg = resolveConfig({ world: 4, numExperts: 32, hidden: 256, topk: 4, maxTokensPerRank: 10 });
    // default maxRowsPerPeer = T * min(k, E / W) = 40 = T * k
    assert.equal(stagedRowsFor(cfg), 40);
    const tight = resolveConfig({
      world: 4,
      numExperts: 32,
      hidden: 256,
      topk: 4,
      maxTokensPerRank: 10,
      maxRowsPerPeer: 12,
    });
    assert.equal(stagedRowsFor(tight), 12);
  });
});
