/**
 * Work handed over now and done at the end of this turn of the event loop
 * (setImmediate), in order, or earlier when the owner flushes: the daemon's
 * signals (bus/object-server.ts, flushed before any reply) and its log
 * lines (daemon/log.ts, flushed before an error line and at exit). Either
 * way the work runs after the turn's critical path, while the spawn helper
 * syncs the journal (docs/architecture.md, "Cost per step").
 */
export class TurnQueue<T> {
  private items: T[] = [];
  private timer: NodeJS.Immediate | null = null;

  /** `run` gets what was queued, oldest first; it is not called with nothing. */
  constructor(private readonly run: (items: T[]) => void) {}

  push(item: T): void {
    this.items.push(item);
    this.timer ??= setImmediate(() => {
      this.timer = null;
      this.flush();
    });
  }

  /** Run what is queued now; what `run` queues meanwhile waits for the next flush. */
  flush(): void {
    if (this.timer !== null) {
      clearImmediate(this.timer);
      this.timer = null;
    }
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    this.run(items);
  }
}
