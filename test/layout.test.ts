import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type EpConfig, resolveConfig } from '../src/ep/config.js';
import {
  ALIGN,
  alignUp,
  combineRowOffset,
  computeDirectLayout,
  computeLayout,
  directRegionsOf,
  type Region,
  recordBytes,
  recvCarrierOffset,
  recvRecordOffset,
  recvRowOffset,
  recvScaleOffset,
  regionsOf,
  signalOffset,
  splitsOffset,
  stagedRowsFor,
} from '../src/ep/layout.js';
import { rng } from './helpers/random.js';

describe('layout: hand-worked W = 2, E = 4, H = 256, k = 2, T = 4, fp8 G = 128', () => {
  // EPR 2; maxRowsPerPeer = 4 * min(2, 2) = 8; groupsPerRow 2; dispatch row 256 B; combine row 512 B.
  //   dispatchSignal: 2 * 8 = 16 B       -> slot 256, offset 0,     bytes 512
  //   combineSignal:  16 B               -> slot 256, offset 512,   bytes 512
  //   recvSplits:     2 * 3 * 4 = 24 B   -> slot 256, offset 1024,  bytes 512
  //   recvData:       2 * 8 * 256 = 4096 -> slot 4096, offset 1536, bytes 8192
  //   recvScales:     2 * 8 * 2 * 4 = 128 -> slot 256, offset 9728, bytes 512
  //   combineRecv:    8 rows * 512 = 4096 -> slot 4096, offset 10240, bytes 8192
  //   total 18432
  const cfg = resolveConfig({
    world: 2,
    numExperts: 4,
    hidden: 256,
    topk: 2,
    maxTokensPerRank: 4,
    dedup: false,
  });
  const l = computeLayout(cfg);

  test('regions', () => {
    assert.deepEqual(l.dispatchSignal, { offset: 0, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.combineSignal, { offset: 512, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.recvSplits, { offset: 1024, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.recvData, { offset: 1536, slotBytes: 4096, bytes: 8192 });
    assert.deepEqual(l.recvScales, { offset: 9728, slotBytes: 256, bytes: 512 });
    assert.deepEqual(l.combineRecv, { offset: 10240, slotBytes: 4096, bytes: 8192 });
    // dedup is off: its regions are empty, after everything else
    assert.deepEqual(l.recvCarrier, { offset: 18432, slotBytes: 0, bytes: 0 });
    assert.deepEqual(l.recvRecords, { offset: 18432, slotBytes: 0, bytes: 0 });
    assert.equal(l.totalBytes, 18432);
    assert.equal(l.splitsPerPeer, 3);
    assert.equal(l.combineRows, 8);
  });

  test('offset helpers at hand-picked indices', () => {
    assert.equal(signalOffset(l.dispatchSignal, 0, 0), 0);
    assert.equal(signalOffset(l.dispatchSignal, 1, 1), 256 + 8);
    assert.equal(signalOffset(l.combineSignal, 1, 1), 512 + 256 + 8);
    assert.equal(splitsOffset(l, 0, 1), 1024 + 12);
    assert.equal(splitsOffset(l, 1, 1), 1024 + 256 + 12);
    assert.equal(recvRowOffset(l, cfg, 0, 0, 0), 1536);
    assert.equal(recvRowOffset(l, cfg, 0, 1, 0), 1536 + 8 * 256);
    assert.equal(recvRowOffset(l, cfg, 1, 1, 7), 1536 + 4096 + 15 * 256);
    assert.equal(recvScaleOffset(l, cfg, 0, 0, 1), 9728 + 8);
    assert.equal(recvScaleOffset(l, cfg, 1, 1, 7), 9728 + 256 + 15 * 8);
    assert.equal(combineRowOffset(l, cfg, 0, 1), 10240 + 512);
    assert.equal(combineRowOffset(l, cfg, 1, 7), 10240 + 4096 + 7 * 512);
  });

  test('the same config with dedup: carrier and record regions after combineRecv, nothing else moves', () => {
    // recordBytes = alignUp(4 * (1 + 2 * 2), 16) = 32
    //   recvCarrier: 2 * 8 * 4 = 64 B    -> slot 256, offset 18432, bytes 512
    //   recvRecords: 2 * 8 * 32 = 512 B  -> slot 512, offset 18944, bytes 1024
    //   total 19968
    const c = resolveConfig({
      world: 2,
      numExperts: 4,
      hidden: 256,
      topk: 2,
      maxTokensPerRank: 4,
      dedup: true,
    });
    const m = computeLayout(c);
    assert.equal(recordBytes(c), 32);
    for (const name of [
      'dispatchSignal',
      'combineSignal',
      'recvSplits',
      'recvData',
      'recvScales',
      'combineRecv',
    ] as const) {
      assert.deepEqual(m[name], l[name], name);
    }
    assert.deepEqual(m.recvCarrier, { offset: 18432, slotBytes: 256, bytes: 512 });
    assert.deepEqual(m.recvRecords, { offset: 18944, slotBytes: 512, bytes: 1024 });
    assert.equal(m.totalBytes, 19968);
    assert.equal(recvCarrierOffset(m, c, 0, 0, 0), 18432);
    assert.equal(recvCarrierOffset(m, c, 0, 1, 0), 18432 + 8 * 4);
    assert.equal(recvCarrierOffset(m, c, 1, 1, 7), 18432 + 256 + 15 * 4);
    assert.equal(recvRecordOffset(m, c, 0, 0, 1), 18944 + 32);
    assert.equal(recvRecordOffset(m, c, 1, 1, 7), 18944 + 512 + 15 * 32);
  });

  test('recordBytes: i32 back, k i32 rows, k f32 weights, padded to 16 bytes', () => {
    const k = (topk: number) =>
      resolveConfig({ world: 1, numExperts: 64, hidden: 8, topk, maxTokensPerRank: 1, fp8: false });
    assert.equal(recordBytes(k(1)), 16); // 12 -> 16
    assert.equal(recordBytes(k(2)), 32); // 20 -> 32
    assert.equal(recordBytes(k(8)), 80); // 68 -> 80
    assert.equal(recordBytes(k(32)), 272); // 260 -> 272
  });

  test('the same config with fp8 off: bf16 rows, an empty recvScales', () => {
    // recvData 2 * 8 * 512 = 8192 -> offset 1536, bytes 16384; recvScales 0 at 17920; combineRecv at 17920
    const c = resolveConfig({
      world: 2,
      numExperts: 4,
      hidden: 256,
      topk: 2,
      maxTokensPerRank: 4,
      fp8: false,
      dedup: false,
    });
    const m = computeLayout(c);
    assert.deepEqual(m.recvData, { offset: 1536, slotBytes: 8192, bytes: 16384 });
    assert.deepEqual(m.recvScales, { offset: 17920, slotBytes: 0, bytes: 0 });
    assert.deepEqual(m.combineRecv, { offset: 17920, slotBytes: 4096, bytes: 8192 });
    assert.equal(m.totalBytes, 26112);
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

/** The bytes of one slot as each region's doc comment describes it. */
function docSlotBytes(cfg: EpConfig): Record<string, number> {
  const W = cfg.world;
  return {
    dispatchSignal: W * 8,
    combineSignal: W * 8,
    recvSplits: W * (cfg.expertsPerRank + 1) * 4,
    recvData: W * cfg.maxRowsPerPeer * cfg.dispatchRowBytes,
    recvScales: cfg.fp8 ? W * cfg.maxRowsPerPeer * (cfg.hidden / cfg.fp8GroupSize) * 4 : 0,
    combineRecv: cfg.maxTokensPerRank * cfg.topk * 2 * cfg.hidden,
    recvCarrier: cfg.dedup ? W * cfg.maxRowsPerPeer * 4 : 0,
    recvRecords: cfg.dedup ? W * cfg.maxRowsPerPeer * Math.ceil((4 + 8 * cfg.topk) / 16) * 16 : 0,
  };
}

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
  return resolveConfig({
    dedup,
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

describe('layout: properties on random configs', () => {
  const r = rng(99);
  const configs: EpConfig[] = [];
  for (let i = 0; i < 300; i++) configs.push(randomConfig(r));
  // extremes
  configs.push(
    resolveConfig({ world: 1, numExperts: 1, hidden: 8, topk: 1, maxTokensPerRank: 1, fp8: false }),
  );
  configs.push(resolveConfig({ world: 8, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 }));

  test('regions are aligned, in order, non-overlapping, inside totalBytes, two slots each, big enough', () => {
    for (const cfg of configs) {
      const l = computeLayout(cfg);
      const what = JSON.stringify(cfg);
      const regions = regionsOf(l);
      assert.deepEqual(
        regions.map(([n]) => n),
        [
          'dispatchSignal',
          'combineSignal',
          'recvSplits',
          'recvData',
          'recvScales',
          'combineRecv',
          'recvCarrier',
          'recvRecords',
        ],
      );
      const doc = docSlotBytes(cfg);
      let end = 0;
      for (const [name, reg] of regions) {
        assert.equal(reg.offset % ALIGN, 0, `${what}: ${name} offset aligned`);
        assert.equal(reg.slotBytes % ALIGN, 0, `${what}: ${name} slot aligned`);
        assert.equal(reg.bytes, 2 * reg.slotBytes, `${what}: ${name} two slots`);
        assert.ok(reg.slotBytes >= doc[name], `${what}: ${name} slot ${reg.slotBytes} >= ${doc[name]}`);
        assert.ok(reg.slotBytes < doc[name] + ALIGN, `${what}: ${name} padded by less than ALIGN`);
        assert.ok(reg.offset >= end, `${what}: ${name} starts after the region before it`);
        end = reg.offset + reg.bytes;
      }
      assert.ok(end <= l.totalBytes, `${what}: inside totalBytes`);
      assert.equal(l.totalBytes % ALIGN, 0);
      assert.equal(l.splitsPerPeer, cfg.expertsPerRank + 1);
      assert.equal(l.combineRows, cfg.maxTokensPerRank * cfg.topk);
      if (!cfg.fp8) {
        assert.equal(l.recvScales.bytes, 0, `${what}: recvScales empty when fp8 is off`);
        assert.equal(l.recvScales.slotBytes, 0);
      }
      if (!cfg.dedup) {
        for (const reg of [l.recvCarrier, l.recvRecords]) {
          assert.equal(reg.bytes, 0, `${what}: dedup regions empty when dedup is off`);
          assert.equal(reg.slotBytes, 0);
        }
      }
    }
  });

  test('dedup adds its regions after the others: a heap without dedup keeps its layout and size', () => {
    for (const cfg of configs) {
      const off = computeLayout({ ...cfg, dedup: false });
      const on = computeLayout({ ...cfg, dedup: true });
      const what = JSON.stringify(cfg);
      const end = off.combineRecv.offset + off.combineRecv.bytes;
      assert.equal(off.totalBytes, end, `${what}: nothing after combineRecv without dedup`);
      const regionsOn = regionsOf(on);
      for (const [i, [name, reg]] of regionsOf(off).entries()) {
        if (name === 'recvCarrier' || name === 'recvRecords') continue;
        assert.deepEqual(regionsOn[i][1], reg, `${what}: ${name} does not move with dedup`);
      }
      assert.equal(on.recvCarrier.offset, end);
      assert.equal(on.recvRecords.offset, on.recvCarrier.offset + on.recvCarrier.bytes);
      assert.equal(on.totalBytes, on.recvRecords.offset + on.recvRecords.bytes);
    }
  });

  test('offset helpers stay inside their region at the extreme indices; one past the last leaves it', () => {
    for (const cfg of configs) {
      const l = computeLayout(cfg);
      const what = JSON.stringify(cfg);
      const W = cfg.world;
      const M = cfg.maxRowsPerPeer;
      const doc = docSlotBytes(cfg);
      for (const slot of [0, 1]) {
        for (const [name, reg] of [
          ['dispatchSignal', l.dispatchSignal],
          ['combineSignal', l.combineSignal],
        ] as const) {
          inSlot(reg, slot, signalOffset(reg, slot, 0), 8, `${what} ${name}`);
          inSlot(reg, slot, signalOffset(reg, slot, W - 1), 8, `${what} ${name}`);
          // the word after the last src is just past the described slot contents
          assert.equal(signalOffset(reg, slot, W), reg.offset + slot * reg.slotBytes + doc[name]);
        }
        const splitBytes = l.splitsPerPeer * 4;
        inSlot(l.recvSplits, slot, splitsOffset(l, slot, W - 1), splitBytes, `${what} splits`);
        assert.equal(
          splitsOffset(l, slot, W),
          l.recvSplits.offset + slot * l.recvSplits.slotBytes + doc.recvSplits,
        );

        const rowBytes = cfg.dispatchRowBytes;
        inSlot(l.recvData, slot, recvRowOffset(l, cfg, slot, 0, 0), rowBytes, `${what} recvData first`);
        inSlot(
          l.recvData,
          slot,
          recvRowOffset(l, cfg, slot, W - 1, M - 1),
          rowBytes,
          `${what} recvData last`,
        );
        // blocks are contiguous: row M of src s is row 0 of src s + 1
        if (W > 1) assert.equal(recvRowOffset(l, cfg, slot, 0, M), recvRowOffset(l, cfg, slot, 1, 0));
        assert.equal(
          recvRowOffset(l, cfg, slot, W - 1, M),
          l.recvData.offset + slot * l.recvData.slotBytes + doc.recvData,
        );

        if (cfg.fp8) {
          const sb = cfg.groupsPerRow * 4;
          inSlot(l.recvScales, slot, recvScaleOffset(l, cfg, slot, 0, 0), sb, `${what} scales first`);
          inSlot(l.recvScales, slot, recvScaleOffset(l, cfg, slot, W - 1, M - 1), sb, `${what} scales last`);
          assert.equal(
            recvScaleOffset(l, cfg, slot, W - 1, M),
            l.recvScales.offset + slot * l.recvScales.slotBytes + doc.recvScales,
          );
        }

        if (cfg.dedup) {
          inSlot(l.recvCarrier, slot, recvCarrierOffset(l, cfg, slot, 0, 0), 4, `${what} carrier first`);
          inSlot(
            l.recvCarrier,
            slot,
            recvCarrierOffset(l, cfg, slot, W - 1, M - 1),
            4,
            `${what} carrier last`,
          );
          assert.equal(
            recvCarrierOffset(l, cfg, slot, W - 1, M),
            l.recvCarrier.offset + slot * l.recvCarrier.slotBytes + doc.recvCarrier,
          );
          const rb = recordBytes(cfg);
          inSlot(l.recvRecords, slot, recvRecordOffset(l, cfg, slot, 0, 0), rb, `${what} record first`);
          inSlot(
            l.recvRecords,
            slot,
            recvRecordOffset(l, cfg, slot, W - 1, M - 1),
            rb,
            `${what} record last`,
          );
          assert.equal(
            recvRecordOffset(l, cfg, slot, W - 1, M),
            l.recvRecords.offset + slot * l.recvRecords.slotBytes + doc.recvRecords,
          );
          assert.equal(recvRecordOffset(l, cfg, slot, 0, 0) % 16, 0, `${what} records 16-byte aligned`);
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
          l.combineRecv.offset + slot * l.combineRecv.slotBytes + doc.combineRecv,
        );
      }
      // slot 2 does not exist: its first element would be past the region's end
      assert.ok(signalOffset(l.dispatchSignal, 2, 0) >= l.dispatchSignal.offset + l.dispatchSignal.bytes);
      assert.ok(splitsOffset(l, 2, 0) >= l.recvSplits.offset + l.recvSplits.bytes);
      assert.ok(recvRowOffset(l, cfg, 2, 0, 0) >= l.recvData.offset + l.recvData.bytes);
      assert.ok(combineRowOffset(l, cfg, 2, 0) >= l.combineRecv.offset + l.combineRecv.bytes);
      if (cfg.fp8) assert.ok(recvScaleOffset(l, cfg, 2, 0, 0) >= l.recvScales.offset + l.recvScales.bytes);
      if (cfg.dedup) {
        assert.ok(recvCarrierOffset(l, cfg, 2, 0, 0) >= l.recvCarrier.offset + l.recvCarrier.bytes);
        assert.ok(recvRecordOffset(l, cfg, 2, 0, 0) >= l.recvRecords.offset + l.recvRecords.bytes);
      }
    }
  });

  for (const dedup of [false, true]) {
    test(`every element of a small config maps to a distinct byte range (no two elements overlap)${dedup ? ', dedup' : ''}`, () => {
      const cfg = resolveConfig({
        world: 3,
        numExperts: 6,
        hidden: 16,
        topk: 2,
        maxTokensPerRank: 3,
        fp8GroupSize: 8,
        dedup,
      });
      const l = computeLayout(cfg);
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
      for (let slot = 0; slot < 2; slot++) {
        for (let s = 0; s < cfg.world; s++) {
          claim(signalOffset(l.dispatchSignal, slot, s), 8);
          claim(signalOffset(l.combineSignal, slot, s), 8);
          claim(splitsOffset(l, slot, s), l.splitsPerPeer * 4);
          for (let row = 0; row < cfg.maxRowsPerPeer; row++) {
            claim(recvRowOffset(l, cfg, slot, s, row), cfg.dispatchRowBytes);
            claim(recvScaleOffset(l, cfg, slot, s, row), cfg.groupsPerRow * 4);
            if (dedup) {
              claim(recvCarrierOffset(l, cfg, slot, s, row), 4);
              claim(recvRecordOffset(l, cfg, slot, s, row), recordBytes(cfg));
            }
          }
        }
        for (let row = 0; row < l.combineRows; row++)
          claim(combineRowOffset(l, cfg, slot, row), cfg.combineRowBytes);
      }
      assert.ok(id > 0);
    });
  }
});

describe('cuda layout: properties on random configs', () => {
  const r = rng(101);
  const configs: EpConfig[] = [];
  for (let i = 0; i < 300; i++) configs.push(randomConfig(r));
  configs.push(resolveConfig({ world: 8, numExperts: 256, hidden: 7168, topk: 8, maxTokensPerRank: 4096 }));

  test('regions are aligned, in order, non-overlapping, sized from the config; expertX has one copy', () => {
    for (const [i, base] of configs.entries()) {
      // every other config stages (W > 1): the stage regions are empty otherwise; every fourth dedups
      const cfg = { ...base, dedup: i % 4 === 0 && base.topk <= 32 };
      const stageRows = i % 2 === 0 && cfg.world > 1 ? stagedRowsFor(cfg) : 0;
      const dedup = stageRows > 0 && cfg.dedup;
      const l = computeDirectLayout(cfg, stageRows);
      const what = JSON.stringify({ ...cfg, stageRows });
      const W = cfg.world;
      const rows = cfg.expertsPerRank * cfg.expertCapacity;
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
      };
      assert.equal(l.stageRows, stageRows);
      const regions = directRegionsOf(l);
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
      assert.equal(l.combineRows, cfg.maxTokensPerRank * cfg.topk);
    }
  });

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
