import type { EpConfig } from '../ep/config.js';
import { railCombineLayout, railMessageLayout, recordBytes, stagedRowsFor } from '../ep/layout.js';

/**
 * What one GPU's call would move at EP sizes beyond one host, computed from its routing: the plan of a
 * rail-aligned hierarchy (DeepEP's normal mode, NCCL EP). GPU g of host a sends a token across hosts
 * once per destination host b, to GPU g of b only; that GPU forwards it over NVLink to each GPU of b that
 * owns one of the token's experts (once per GPU); a token's own host is served over NVLink directly.
 * Combine mirrors it: each owner returns one pre-reduced partial per (token, GPU) over NVLink, and each
 * host one partial per token across hosts. Bytes per call on one GPU, averaged by symmetry: what its own
 * tokens make cross hosts, and what crosses NVLink on their behalf (in the origin's host and, forwarded,
 * in the destination hosts).
 */
export interface HopBytes {
  world: number;
  gpusPerHost: number;
  /** Token rows (with scales and the record of its experts there) sent to other hosts. */
  interDispatch: number;
  /** Partials (bf16 rows) coming back from other hosts. */
  interCombine: number;
  /** Rows crossing NVLink: from the origin to its own host's owners, and forwarded in other hosts. */
  nvlinkDispatch: number;
  nvlinkCombine: number;
  /** The fixed per-destination-host capacity of a graph-capturable exchange: T rows to each other host. */
  interPadded: number;
  /**
   * What this library's messages between hosts take per call (README, "Between hosts"), to all other
   * hosts: the dispatch messages (every token's row once, with its books)
   * and the combine messages (one row per token with dedup, else the padded capacity of one source's
   * rows), whatever the routing needs.
   */
  railDispatch: number;
  railCombine: number;
}

export function hopBytes(
  cfg: EpConfig,
  gpusPerHost: number,
  topkIdx: Int32Array,
  tokens: number,
  /** This GPU's place: its rank (host = rank / gpusPerHost, rail = rank % gpusPerHost). */
  rank = 0,
): HopBytes {
  const W = cfg.world;
  const P = gpusPerHost;
  const k = cfg.topk;
  const epr = cfg.expertsPerRank;
  const myHost = Math.floor(rank / P);
  const rail = rank % P;
  const row = cfg.dispatchRowBytes + (cfg.fp8 ? cfg.groupsPerRow * 4 : 0);
  const wireRow = row + recordBytes(cfg);
  const partial = cfg.combineRowBytes;
  let hostsAway = 0;
  let gpuHops = 0;
  const owners = new Set<number>();
  const hosts = new Set<number>();
  for (let t = 0; t < tokens; t++) {
    owners.clear();
    hosts.clear();
    for (let j = 0; j < k; j++) {
      const e = topkIdx[t * k + j];
      if (e < 0) continue;
      const owner = Math.floor(e / epr);
      owners.add(owner);
      hosts.add(Math.floor(owner / P));
    }
    for (const h of hosts) if (h !== myHost) hostsAway++;
    // NVLink: in each host the token reaches, from the GPU holding it (the origin at home, the rail
    // GPU elsewhere) to every other GPU there that owns one of its experts
    for (const o of owners) {
      const h = Math.floor(o / P);
      const holder = h === myHost ? rank : h * P + rail;
      if (o !== holder) gpuHops++;
    }
  }
  const onHosts = { ...cfg, nodes: W / P, ranksPerNode: P };
  const S = stagedRowsFor(onHosts);
  return {
    world: W,
    gpusPerHost: P,
    interDispatch: hostsAway * wireRow,
    interCombine: hostsAway * partial,
    nvlinkDispatch: gpuHops * wireRow,
    nvlinkCombine: gpuHops * partial,
    interPadded: (W / P - 1) * tokens * wireRow,
    railDispatch: (W / P - 1) * railMessageLayout(onHosts).bytes,
    railCombine: (W / P - 1) * railCombineLayout(onHosts, S).bytes,
  };
}
