/**
 * "Retry later" (README "Hooks", docs/hooks.md): a step that exits 75
 * (EX_TEMPFAIL, "not now, try again") is run again after RetrySec= while
 * its window, RetryMaxSec= counted from the start of its first attempt, is
 * open. Pure: the engine journals the decision, waits and re-runs.
 *
 * What must stay true: an attempt is only scheduled when it can start
 * before the window closes and before the phase deadline; otherwise the 75
 * is a failure whose message says why, so a client never waits for an
 * attempt that cannot come.
 */

/** sysexits.h EX_TEMPFAIL. */
export const EXIT_TEMPFAIL = 75;

export interface RetryPolicy {
  /** Seconds between the end of an attempt and the start of the next. */
  intervalSec: number;
  /** Seconds from the first attempt's start within which attempts may start; 0: none. */
  windowSec: number;
}

export type RetryDecision =
  | { retry: true; attempt: number; dueUsec: number; windowEndUsec: number; status: string }
  /** `deadline`: the phase deadline comes first (the step then ends as timed out). */
  | { retry: false; message: string; reason: 'disabled' | 'window' | 'deadline' };

/**
 * What to do after attempt `attempt` (1-based) exited 75 at `nowUsec`, the
 * first attempt having started at `firstUsec`. `phaseDeadlineUsec` is when
 * the phase's own deadline cuts everything (null: none).
 */
export function decideRetry(
  policy: RetryPolicy, attempt: number, firstUsec: number, nowUsec: number, phaseDeadlineUsec: number | null,
): RetryDecision {
  const base = `exited with status ${EXIT_TEMPFAIL} (try again later)`;
  if (policy.windowSec <= 0) {
    return { retry: false, reason: 'disabled', message: `${base}; RetryMaxSec= is 0, so it is not retried` };
  }
  const windowEndUsec = firstUsec + policy.windowSec * 1e6;
  const dueUsec = nowUsec + policy.intervalSec * 1e6;
  if (dueUsec > windowEndUsec) {
    return {
      retry: false, reason: 'window',
      message: `${base} at attempt ${attempt}; its retry window of ${policy.windowSec}s (RetryMaxSec=) closes ` +
        `before the next attempt would start, ${policy.intervalSec}s later`,
    };
  }
  if (phaseDeadlineUsec !== null && dueUsec > phaseDeadlineUsec) {
    return {
      retry: false, reason: 'deadline',
      message: `${base} at attempt ${attempt}; the phase deadline comes before the next attempt would start, ${policy.intervalSec}s later`,
    };
  }
  return { retry: true, attempt: attempt + 1, dueUsec, windowEndUsec, status: retryStatus(dueUsec - nowUsec, attempt + 1) };
}

/** "retrying in 30 s (attempt 2)": the status text while a retry waits. */
export function retryStatus(leftUsec: number, attempt: number): string {
  return `retrying in ${Math.max(0, Math.ceil(leftUsec / 1e6))} s (attempt ${attempt})`;
}
