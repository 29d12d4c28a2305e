/** The rows `moe-a2a bench` collects, as its tables, JSON and plot read them. */

import { percentile } from './common.js';

export interface Stats {
  median: number;
  p10: number;
  p90: number;
}

export function stats(v: number[]): Stats {
  return { median: percentile(v, 50), p10: percentile(v, 10), p90: percentile(v, 90) };
}

export type Row = Record<string, unknown>;

/** A row's variant as the tables name it: its dispatch path, and 'packed' for the packed expert layout. */
export function shownPath(r: Row): string {
  const parts = [r.path, r.layout === 'packed' ? 'packed' : undefined].filter((p) => p !== undefined);
  return parts.length ? parts.join(' ') : '-';
}
