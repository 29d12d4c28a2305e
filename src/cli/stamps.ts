import { EP_STAMP, type StampName } from '../shmem/cuda/args.js';

/**
 * Where a dispatch + combine spends its time, from the phase stamps the kernels write (EP_STAMP,
 * %globaltimer ns): the stamps a call wrote, in protocol order, and the time between each and the one
 * before it, so one rank's segments add up to its whole call (the slowest rank per segment, as
 * reported, may add up to a little more).
 */
export const STAMP_ORDER: readonly StampName[] = [
  'DISPATCH_BEGIN',
  'COUNTS_SENT',
  'COUNTS_ARRIVED',
  'ROUTE_END',
  'ROWS_BEGIN',
  'DISPATCH_TAIL',
  'DISPATCH_ARRIVED',
  'PACK_BEGIN',
  'PACK_END',
  'COMBINE_BEGIN',
  'COMBINE_TAIL',
  'COMBINE_ARRIVED',
  'REDUCE_BEGIN',
  'REDUCE_END',
];

/** What each segment ending at a stamp is, in words. */
export const SEGMENT_MEANING: Readonly<Record<StampName, string>> = {
  DISPATCH_BEGIN: 'start',
  COUNTS_SENT: 'route: ids, counts, counts sent',
  COUNTS_ARRIVED: 'route: wait for peers\u2019 counts',
  ROUTE_END: 'route: rows placed',
  ROWS_BEGIN: 'to the first row store',
  DISPATCH_TAIL: 'rows stored and fenced',
  DISPATCH_ARRIVED: 'wait for peers\u2019 rows',
  PACK_BEGIN: 'kernel boundary',
  PACK_END: 'pack into expertX',
  COMBINE_BEGIN: 'kernel boundary',
  COMBINE_TAIL: 'combine rows sent and fenced',
  COMBINE_ARRIVED: 'wait for peers\u2019 rows',
  REDUCE_BEGIN: 'kernel boundary',
  REDUCE_END: 'reduce',
  BARRIER_END: 'barrier',
};

/**
 * A segment's meaning in words: by its end, except where flagged partials let two phases overlap, and
 * between hosts (`betweenHosts`), where two segments hold the rail kernels and NCCL's exchange: the
 * dispatch's wait ends in ep_rail_forward (DISPATCH_ARRIVED is stamped again there, after the rows of the
 * other hosts), and the combine's exchange sits between ep_combine_send's wait and the reduction.
 */
export function segmentMeaning(s: { from: StampName; to: StampName }, betweenHosts = false): string {
  if (s.from === 'COMBINE_TAIL' && s.to === 'REDUCE_END') return 'wait for flagged partials and reduce';
  if (s.to === 'COMBINE_TAIL' && s.from === 'COMBINE_BEGIN')
    return 'combine rows sent (and fenced unless flagged)';
  if (betweenHosts && s.to === 'DISPATCH_ARRIVED')
    return 'wait for peers\u2019 rows, this host\u2019s and (rail kernels, NCCL) the other hosts\u2019';
  if (betweenHosts && s.from === 'COMBINE_ARRIVED' && s.to === 'REDUCE_BEGIN')
    return 'the other hosts\u2019 partials: rail kernels, NCCL, kernel boundaries';
  return SEGMENT_MEANING[s.to];
}

export interface Segment {
  /** The stamp the segment ends at. */
  to: StampName;
  /** The stamp before it that the call wrote. */
  from: StampName;
  /** Mean over calls on the slowest rank (the rank with the largest mean for this segment), us. */
  us: number;
  /** The same per rank. */
  perRank: number[];
}

export interface StampSplit {
  segments: Segment[];
  /** Mean whole call (REDUCE_END - DISPATCH_BEGIN, or the last stamp written) per rank, us. */
  totalPerRank: number[];
  /**
   * Per rank, the mean of its device barrier's end (the barrier before each call) minus rank 0's, us.
   * The barrier releases every rank within about one signal trip, so this is the offset between the
   * GPUs' %globaltimer clocks, give or take one trip (they are not one clock: tens of microseconds to a
   * millisecond apart were seen on one host). Skews below are good to about one trip (1.3 us).
   */
  clockOffsetUs: number[] | null;
  /** Mean over calls of max - min over ranks of the barrier's end, offsets removed, us. */
  barrierJitterUs: number | null;
  /** Mean over calls of max - min over ranks of DISPATCH_BEGIN, offsets removed, us: the ranks' start skew. */
  startSkewUs: number | null;
}

function mean(v: number[]): number {
  return v.length === 0 ? Number.NaN : v.reduce((a, b) => a + b, 0) / v.length;
}

/** Mean over calls of (max - min over ranks) of stamp `at` minus each rank's offset (ns), in us. */
function spread(perRank: number[][][], at: number, offsetNs: number[]): number | null {
  const calls = Math.min(...perRank.map((r) => r.length));
  const d: number[] = [];
  for (let i = 0; i < calls; i++) {
    const v = perRank.map((r, k) => r[i][at] - offsetNs[k]);
    if (perRank.some((r) => r[i][at] === 0)) return null;
    d.push((Math.max(...v) - Math.min(...v)) / 1e3);
  }
  return d.length ? mean(d) : null;
}

/**
 * `perRank[r][i]`: the stamps (EP_STAMPS values, ns, 0 = not written) of call i on rank r. Segments
 * run between consecutive stamps in STAMP_ORDER that the first call of rank 0 wrote (the same kernels
 * run on every rank and call); a call missing one of them is left out of that segment's mean.
 * Segments are differences of one rank's own stamps, so the clocks' offsets do not enter them.
 */
export function stampSplit(perRank: number[][][]): StampSplit {
  const first = perRank[0]?.[0] ?? [];
  const present = STAMP_ORDER.filter((n) => first[EP_STAMP[n]] > 0);
  const segments: Segment[] = [];
  for (let k = 1; k < present.length; k++) {
    const from = present[k - 1];
    const to = present[k];
    const per = perRank.map((calls) =>
      mean(
        calls
          .filter((c) => c[EP_STAMP[from]] > 0 && c[EP_STAMP[to]] > 0)
          .map((c) => (c[EP_STAMP[to]] - c[EP_STAMP[from]]) / 1e3),
      ),
    );
    segments.push({ from, to, perRank: per, us: Math.max(...per) });
  }
  const begin = EP_STAMP.DISPATCH_BEGIN;
  const end = present.length ? EP_STAMP[present[present.length - 1]] : begin;
  const totalPerRank = perRank.map((calls) =>
    mean(calls.filter((c) => c[begin] > 0 && c[end] > 0).map((c) => (c[end] - c[begin]) / 1e3)),
  );
  const barrier = EP_STAMP.BARRIER_END;
  const calls = Math.min(...perRank.map((r) => r.length));
  const haveBarrier = perRank.length > 1 && calls > 0 && perRank.every((r) => r.every((c) => c[barrier] > 0));
  const offsetNs = haveBarrier
    ? perRank.map((r) =>
        mean(Array.from({ length: calls }, (_, i) => r[i][barrier] - perRank[0][i][barrier])),
      )
    : null;
  return {
    segments,
    totalPerRank,
    clockOffsetUs: offsetNs ? offsetNs.map((o) => o / 1e3) : null,
    barrierJitterUs: offsetNs ? spread(perRank, barrier, offsetNs) : null,
    startSkewUs: offsetNs ? spread(perRank, begin, offsetNs) : null,
  };
}
