/**
 * ncclConfig_t as NCCL's own NCCL_CONFIG_INITIALIZER fills it for the library that is loaded: NCCL appends
 * fields release by release and reads only `size` bytes of what it is given (parseCommConfig), checking
 * `magic` and taking `version` to know which fields the caller knew. So the struct is laid out here for the
 * loaded version (from ncclGetVersion), with every field "unset" (INT_MIN, NULL) except those asked for.
 * The field list and the first release whose nccl.h has each are from nccl.h.in, 2.14 to 2.30.7.
 */

/** NCCL's version code of x.y.z (NCCL_VERSION in nccl.h): 2.30.5 -> 23005; before 2.9, x*1000 + y*100 + z. */
export function ncclVersionCode(x: number, y: number, z: number): number {
  return x <= 2 && y <= 8 ? x * 1000 + y * 100 + z : x * 10000 + y * 100 + z;
}

/** x.y.z of a version code, for messages. */
export function ncclVersionName(code: number): string {
  if (code < 10000) return `${Math.floor(code / 1000)}.${Math.floor((code % 1000) / 100)}.${code % 100}`;
  return `${Math.floor(code / 10000)}.${Math.floor((code % 10000) / 100)}.${code % 100}`;
}

export const NCCL_API_MAGIC = 0xcafebeef;
export const NCCL_CONFIG_UNDEF_INT = -(2 ** 31); // INT_MIN
/** The first release with ncclConfig_t and ncclCommInitRankConfig. */
export const NCCL_MIN_CONFIG_VERSION = ncclVersionCode(2, 14, 0);

type FieldType = 'int' | 'ptr';
/** Every field after size, magic and version, in order, with the release that added it. */
const FIELDS: ReadonlyArray<readonly [name: string, type: FieldType, since: number]> = [
  ['blocking', 'int', ncclVersionCode(2, 14, 0)],
  ['cgaClusterSize', 'int', ncclVersionCode(2, 17, 0)],
  ['minCTAs', 'int', ncclVersionCode(2, 17, 0)],
  ['maxCTAs', 'int', ncclVersionCode(2, 17, 0)],
  ['netName', 'ptr', ncclVersionCode(2, 17, 0)],
  ['splitShare', 'int', ncclVersionCode(2, 18, 0)],
  ['trafficClass', 'int', ncclVersionCode(2, 26, 0)],
  ['commName', 'ptr', ncclVersionCode(2, 27, 0)],
  ['collnetEnable', 'int', ncclVersionCode(2, 27, 0)],
  ['CTAPolicy', 'int', ncclVersionCode(2, 27, 0)],
  ['shrinkShare', 'int', ncclVersionCode(2, 27, 0)],
  ['nvlsCTAs', 'int', ncclVersionCode(2, 27, 0)],
  ['nChannelsPerNetPeer', 'int', ncclVersionCode(2, 28, 0)],
  ['nvlinkCentricSched', 'int', ncclVersionCode(2, 28, 0)],
  ['graphUsageMode', 'int', ncclVersionCode(2, 29, 0)],
  ['numRmaCtx', 'int', ncclVersionCode(2, 29, 0)],
  ['maxP2pPeers', 'int', ncclVersionCode(2, 30, 0)],
  ['graphStreamOrdering', 'int', ncclVersionCode(2, 30, 5)],
];

export interface NcclConfigLayout {
  /** sizeof(ncclConfig_t) in that release (what goes in `size`). */
  readonly bytes: number;
  /** Byte offset of each field that release has. */
  readonly offsets: Readonly<Record<string, number>>;
}

/**
 * The layout of ncclConfig_t for version `code` (x86-64: int 4 bytes, pointers and size_t 8, natural
 * alignment). A release newer than this table gets the newest layout known here: NCCL reads only `size`
 * bytes and treats a smaller, older struct as such.
 */
export function ncclConfigLayout(code: number): NcclConfigLayout {
  const offsets: Record<string, number> = { size: 0, magic: 8, version: 12 };
  let end = 16;
  for (const [name, type, since] of FIELDS) {
    if (code < since) break;
    const size = type === 'ptr' ? 8 : 4;
    const at = Math.ceil(end / size) * size;
    offsets[name] = at;
    end = at + size;
  }
  return { bytes: Math.ceil(end / 8) * 8, offsets };
}

/**
 * The bytes of an ncclConfig_t for version `code` as NCCL_CONFIG_INITIALIZER makes it, with the given int
 * fields set (e.g. { blocking: 0 } for non-blocking calls). A field that release lacks is refused.
 */
export function ncclConfigBytes(code: number, set: Readonly<Record<string, number>> = {}): Uint8Array {
  const layout = ncclConfigLayout(code);
  const buf = new ArrayBuffer(layout.bytes);
  const view = new DataView(buf);
  view.setBigUint64(0, BigInt(layout.bytes), true);
  view.setUint32(8, NCCL_API_MAGIC, true);
  view.setUint32(12, code, true);
  for (const [name, type] of FIELDS) {
    const at = layout.offsets[name];
    if (at === undefined) continue;
    if (type === 'int') view.setInt32(at, NCCL_CONFIG_UNDEF_INT, true);
    else view.setBigUint64(at, 0n, true); // NCCL_CONFIG_UNDEF_PTR
  }
  for (const [name, v] of Object.entries(set)) {
    const at = layout.offsets[name];
    const field = FIELDS.find(([n]) => n === name);
    if (at === undefined || !field || field[1] !== 'int')
      throw new RangeError(`ncclConfig_t of NCCL ${ncclVersionName(code)} has no int field '${name}'`);
    view.setInt32(at, v, true);
  }
  return new Uint8Array(buf);
}
