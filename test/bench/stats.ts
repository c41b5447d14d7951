/** Small statistics for noisy measurements: median, spread, percentiles. */

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

export const median = (v: readonly number[]): number => quantile(v, 0.5);

/** Nearest-rank percentile (what "p99 latency" usually means). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** Median with min–max, e.g. "412 ms (398–455)". */
export function describe(values: readonly number[], unit: string, digits = 0): string {
  if (values.length === 0) return 'n/a';
  const f = (x: number) => x.toFixed(digits);
  if (values.length === 1) return `${f(values[0]!)} ${unit}`;
  return `${f(median(values))} ${unit} (${f(Math.min(...values))}–${f(Math.max(...values))})`;
}

/**
 * Ratios of paired runs (subject_i / baseline_i, each pair measured
 * back to back), so slow phases of a shared machine hit both sides.
 */
export function pairedRatios(subject: readonly number[], baseline: readonly number[]): number[] {
  const n = Math.min(subject.length, baseline.length);
  return Array.from({ length: n }, (_, i) => subject[i]! / baseline[i]!);
}
