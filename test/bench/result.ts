/** What a benchmark reports: rows of one table, each a measurement against its baseline. */

export interface Row {
  /** The benchmark, as the table names it. */
  benchmark: string;
  /** The baseline and its measurement ("run-parts: 412 ms (398–455)"), or '—'. */
  baseline: string;
  /** bootc-prestaged's measurement. */
  measured: string;
  /** Median of paired ratios (measured / baseline) with its range, or the metric itself. */
  result: string;
  /** The target, as the issue states it. */
  target: string;
  /** null: no target (a report). */
  met: boolean | null;
  /** The raw numbers, for --json and the smoke test. */
  numbers: Record<string, number>;
}

/** Sizes and repetitions: the full benchmark or the CI smoke version. */
export interface Sizes {
  smoke: boolean;
  reps: number;
  /** Repetitions of the progress and output benchmarks (short runs, noisy: more of them). */
  ioReps: number;
  prepareHooks: number;
  progressLines: number;
  outputBytes: number;
  clients: number;
  loadMs: number;
  startupReps: number;
  hookCounts: number[];
  historyCounts: number[];
}

export const FULL: Sizes = {
  smoke: false,
  reps: 3,
  ioReps: 7,
  prepareHooks: 200,
  progressLines: 1_000_000,
  outputBytes: 100_000_000,
  clients: 32,
  loadMs: 3000,
  startupReps: 5,
  hookCounts: [100, 1000, 3000],
  historyCounts: [100, 1000, 10_000],
};

export const SMOKE: Sizes = {
  smoke: true,
  reps: 1,
  ioReps: 1,
  prepareHooks: 5,
  progressLines: 10_000,
  outputBytes: 1_000_000,
  clients: 4,
  loadMs: 300,
  startupReps: 1,
  hookCounts: [5, 20],
  historyCounts: [5, 25],
};

export function ratioText(ratios: number[]): string {
  if (ratios.length === 0) return 'n/a';
  const s = [...ratios].sort((a, b) => a - b);
  const med = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return s.length === 1 ? `${med.toFixed(2)}×` : `${med.toFixed(2)}× (${s[0]!.toFixed(2)}–${s[s.length - 1]!.toFixed(2)})`;
}
