/**
 * Which of a step's output lines become `message` events.
 *
 * The bus sends at most MESSAGE_LINES_PER_WINDOW Message signals per
 * MESSAGE_WINDOW_MS per transaction and reports the rest as
 * "[N lines suppressed; see GetLog]". A hook may write a million lines a
 * second; decoding each one and emitting it as an event only for the bus to
 * count and drop it cost more than the hook itself. So each step's output
 * passes this limiter first, with the same cap: the engine decodes and emits
 * only the lines it admits, and reports the others as a count
 * (`messages-suppressed`) at the end of each window and when the step ends
 * (flush(), which the engine calls before the step's hook-finished).
 *
 * What must stay true:
 * - Every line is admitted or counted exactly once; every count is
 *   reported, at the latest by flush(), so the bus's notices add up to
 *   every line it did not send.
 * - A window opens with the first line after the previous one closed (as
 *   the bus's does), so a step's first lines and the lines after a quiet
 *   spell are admitted, and a hook writing less than the cap loses nothing.
 * The bus keeps its own cap and stays the authority for the transaction (its
 * window also holds other steps' lines and the engine's own messages); this
 * limiter only keeps the engine from doing per-line work for lines the cap
 * would drop anyway.
 */

/** Message signals per window per transaction (the bus's cap; its default). */
export const MESSAGE_LINES_PER_WINDOW = 50;
/** The Message window, ms. */
export const MESSAGE_WINDOW_MS = 1000;

export class MessageLimiter {
  private timer: NodeJS.Timeout | null = null;
  private admitted = 0;
  private suppressed = 0;

  /**
   * `onSuppressed(count)` is called with the number of lines not admitted,
   * at the end of each window that had any, and by flush().
   */
  constructor(
    private readonly onSuppressed: (count: number) => void,
    private readonly perWindow: number = MESSAGE_LINES_PER_WINDOW,
    private readonly windowMs: number = MESSAGE_WINDOW_MS,
  ) {
    if (!Number.isInteger(perWindow) || perWindow < 0) throw new RangeError(`perWindow must be an integer >= 0, not ${perWindow}`);
    if (!(windowMs > 0)) throw new RangeError(`windowMs must be > 0, not ${windowMs}`);
  }

  /**
   * `lines` more lines (in order): returns how many of them, from the
   * first, may become message events now; the others are counted.
   */
  admit(lines = 1): number {
    if (lines <= 0) return 0;
    if (this.timer === null) {
      this.admitted = 0;
      this.timer = setTimeout(() => this.close(), this.windowMs);
      // A window left open must not keep the process alive (flush() ends it anyway).
      this.timer.unref();
    }
    const take = Math.min(lines, this.perWindow - this.admitted);
    this.admitted += take;
    this.suppressed += lines - take;
    return take;
  }

  /** Report what is counted now and close the window: the step ended. */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.close();
  }

  private close(): void {
    this.timer = null;
    const n = this.suppressed;
    this.suppressed = 0;
    if (n > 0) this.onSuppressed(n);
  }
}
