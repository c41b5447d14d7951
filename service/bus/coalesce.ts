/**
 * Coalescing of "something changed" ticks into PropertiesChanged
 * emissions, shared by the manager and the transaction objects.
 *
 * Two rules, in this order:
 * 1. Nothing is published in the turn of the event loop in which the change
 *    happened. The engine changes state inside a call (StartPreStage turns
 *    the service busy and may reset a transaction) before its promise
 *    resolves, and the reply is sent from that promise's callback, a
 *    microtask of the same turn; publishing on the next turn
 *    (setImmediate) puts the reply on the wire first. The engine starts
 *    its own work the same way, so "no signal before the reply" holds for
 *    properties too.
 * 2. Then at most one emission per interval (leading and trailing), so the
 *    latest state always goes out and the rate is bounded.
 * Publishers read the live state when the tick arrives and send only what
 * differs from what they last sent, so an explicit flush in between
 * leaves the later tick with nothing to send.
 */
import { Observable, asyncScheduler, audit, throttleTime, type MonoTypeOperatorFunction } from 'rxjs';

/** Emits once on the next turn of the event loop, after the current turn's microtasks. */
export function nextTurn(): Observable<void> {
  return new Observable<void>((subscriber) => {
    const handle = setImmediate(() => {
      subscriber.next();
      subscriber.complete();
    });
    return () => clearImmediate(handle);
  });
}

/** See the module comment: defer to the next turn, then throttle to one per `intervalMs`. */
export function coalesceTicks<T>(intervalMs: number): MonoTypeOperatorFunction<T> {
  return (source) => source.pipe(
    audit(() => nextTurn()),
    throttleTime(intervalMs, asyncScheduler, { leading: true, trailing: true }),
  );
}
