/**
 * A push-to-pull bridge: a producer pushes items and finally ends (or
 * fails) the queue; one consumer reads it with `for await`. Nothing is
 * dropped; the producer never waits for the consumer.
 */
export class EventQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: unknown = null;

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.wake();
  }

  /** No more items; the consumer finishes after reading what is queued. */
  end(): void {
    this.ended = true;
    this.wake();
  }

  /** Like end(), but the consumer's loop throws `err` after the queued items. */
  fail(err: unknown): void {
    if (this.ended) return;
    this.error = err;
    this.end();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift()!;
        continue;
      }
      if (this.ended) {
        if (this.error !== null) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
  }
}
