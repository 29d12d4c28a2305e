import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  NCCL_API_MAGIC,
  NCCL_CONFIG_UNDEF_INT,
  ncclConfigBytes,
  ncclConfigLayout,
  ncclVersionCode,
  ncclVersionName,
} from '../src/net/nccl-config.js';

// sizeof and offsetof of ncclConfig_t, printed by gcc (x86-64) from the nccl.h of each release
const HEADERS: Array<[string, number, number, Record<string, number>]> = [
  ['2.14.3', 21403, 24, { blocking: 16 }],
  ['2.17.1', 21701, 40, { maxCTAs: 28, netName: 32 }],
  ['2.18.1', 21801, 48, { splitShare: 40 }],
  ['2.23.4', 22304, 48, { splitShare: 40 }],
  ['2.26.2', 22602, 48, { trafficClass: 44 }],
  ['2.27.3', 22703, 72, { commName: 48, collnetEnable: 56, nvlsCTAs: 68 }],
  ['2.28.3', 22803, 80, { nChannelsPerNetPeer: 72, nvlinkCentricSched: 76 }],
  ['2.29.7', 22907, 88, { graphUsageMode: 80, numRmaCtx: 84 }],
  ['2.30.7', 23007, 96, { maxP2pPeers: 88, graphStreamOrdering: 92 }],
];

describe('ncclConfig_t as NCCL_CONFIG_INITIALIZER makes it, per loaded release', () => {
  test('version codes as NCCL_VERSION', () => {
    assert.equal(ncclVersionCode(2, 30, 5), 23005);
    assert.equal(ncclVersionCode(2, 8, 4), 2804);
    assert.equal(ncclVersionName(23005), '2.30.5');
    assert.equal(ncclVersionName(2804), '2.8.4');
  });

  for (const [name, code, size, offsets] of HEADERS) {
    test(`NCCL ${name}: size ${size} and the offsets of its header`, () => {
      // (the header's version code of x.y.z is the same whatever the patch level past the field's release)
      const [x, y, z] = name.split('.').map(Number);
      assert.equal(ncclVersionCode(x, y, z), code);
      const l = ncclConfigLayout(code);
      assert.equal(l.bytes, size);
      for (const [f, at] of Object.entries(offsets)) assert.equal(l.offsets[f], at, f);
    });
  }

  test('bytes: size, magic, version, every field unset but those given', () => {
    const b = ncclConfigBytes(22907, { blocking: 0 });
    const v = new DataView(b.buffer);
    assert.equal(b.length, 88);
    assert.equal(v.getBigUint64(0, true), 88n);
    assert.equal(v.getUint32(8, true), NCCL_API_MAGIC);
    assert.equal(v.getUint32(12, true), 22907);
    assert.equal(v.getInt32(16, true), 0); // blocking = 0: non-blocking
    assert.equal(v.getInt32(20, true), NCCL_CONFIG_UNDEF_INT); // cgaClusterSize
    assert.equal(v.getBigUint64(32, true), 0n); // netName: NULL
    assert.equal(v.getBigUint64(48, true), 0n); // commName: NULL
    assert.equal(v.getInt32(84, true), NCCL_CONFIG_UNDEF_INT); // numRmaCtx
    assert.throws(
      () => ncclConfigBytes(22304, { trafficClass: 1 }),
      /2\.23\.4 has no int field 'trafficClass'/,
    );
  });
});
