/**
 * The bus face of one transaction: org.containers.bootc.PreStage.Transaction
 * at /org/containers/bootc/PreStage/Transaction/<id>. It turns the engine's
 * TransactionHandle (a snapshot plus an event stream) into properties and
 * signals, rate-limited so a chatty hook cannot flood the bus.
 *
 * Rate limits (intervals configurable for tests):
 * - HookProgress: per hook, at most one signal per PROGRESS_INTERVAL_MS
 *   (56 ms), leading and trailing, the latest value always sent; the
 *   signals a flush forces (before HookFinished, before Finished) restart
 *   the interval too, so a hook gets at most 20 in any second: 18 spaced
 *   ones and the 2 a flush can force.
 * - PropertiesChanged: never in the turn of the event loop of the change
 *   (so a method's reply goes first; see coalesce.ts), then at most one
 *   per 50 ms for the whole object, counting the emissions that the
 *   ordering rules below force (so a phase of many short hooks sends about
 *   one per hook, not two: each carries the whole Hooks array, and
 *   marshalling 200 of them costs milliseconds); each emission carries
 *   only the properties that differ from what was last sent, read from the
 *   live snapshot at that moment.
 * - Message: at most 50 lines per second per transaction; lines over the
 *   cap are counted per hook and reported as one
 *   `Message(hook, "[N lines suppressed; see GetLog]")` when the window
 *   rolls over or the hook finishes. The full output stays in the log.
 *   The engine applies the same cap to each step's output before decoding
 *   it (message-limiter.ts) and reports the lines it held back as
 *   `messages-suppressed` counts, which join the same notices (at once
 *   when no window is open: its window has ended).
 * - HookStarted, HookFinished and Finished are never dropped, nor delayed
 *   past the turn of the event loop in which they happen: when several
 *   hooks finish in one turn, the signals after the first HookFinished are
 *   held to the end of that turn behind one PropertiesChanged (flush()
 *   sends them at once).
 *
 * Ordering that must hold (clients rely on it):
 * - a hook's pending HookProgress and the object's pending
 *   PropertiesChanged go out before that hook's HookFinished;
 * - every pending PropertiesChanged, carrying the final State, goes out
 *   before Finished (and before the manager's TransactionFinished, which
 *   calls flush()), so a client reacting to Finished by reading properties
 *   sees the final state.
 * Both hold because pending values live in plain "latest value" registers
 * that the throttles only tick: a flush publishes the registers at once,
 * and the throttle's later trailing tick then finds nothing left to send.
 */
import { Subscription, timer } from 'rxjs';
import type { TransactionHandle } from '../engine/api.js';
import type { Logger } from '../model/logger.js';
import { MESSAGE_LINES_PER_WINDOW, MESSAGE_WINDOW_MS } from '../engine/api.js';
import type { HookStatus, TransactionEvent, TransactionSnapshot } from '../model/types.js';
import { errorNameFor } from '../protocol/errors.js';
import { toBusString, toPercent, toUint32, toUint64 } from '../protocol/values.js';
import {
  TRANSACTION, findSignal, signatureOf, transactionPath, type SignalName,
} from '../protocol/members.js';
import type { InterfaceImpl, ObjectRegistry } from './object-server.js';
import { decodeLogOptions } from '../protocol/options.js';

/**
 * Minimum spacing of HookProgress per hook, ms: 18 spaced signals fit in a
 * second (17 x 56 = 952, 18 x 56 > 1000), leaving room for the 2 a flush
 * can force, so a hook never gets more than 20 in any 1 s window.
 */
export const PROGRESS_INTERVAL_MS = 56;

export interface RateLimits {
  /** Minimum spacing of HookProgress per hook, ms. Default PROGRESS_INTERVAL_MS. */
  progressIntervalMs: number;
  /** Minimum spacing of PropertiesChanged per object, ms. Default 50. */
  propertiesIntervalMs: number;
  /** Message lines sent per window per transaction. Default 50. */
  messagesPerWindow: number;
  /** Message window, ms. Default 1000. */
  messageWindowMs: number;
}

export const DEFAULT_RATE_LIMITS: Readonly<RateLimits> = Object.freeze({
  progressIntervalMs: PROGRESS_INTERVAL_MS,
  propertiesIntervalMs: 50,
  // The engine holds back each step's lines over the same cap (message-limiter.ts).
  messagesPerWindow: MESSAGE_LINES_PER_WINDOW,
  messageWindowMs: MESSAGE_WINDOW_MS,
});

/** Longest Message line or status text sent in a signal; GetLog has the rest. */
const MAX_LINE_BYTES = 4096;
/** GetLog's reply stays well below the bus's message size limit. */
const MAX_LOG_REPLY_BYTES = 8 * 1024 * 1024;

/** The property values of a transaction, as they go on the wire. */
export interface TransactionProperties {
  Id: string;
  Deployment: string;
  Phase: string;
  State: string;
  Progress: number;
  CurrentHook: string;
  Hooks: [string, string, number, string][];
  Error: string;
  ErrorMessage: string;
  StartedUsec: bigint;
  FinishedUsec: bigint;
}

/** A snapshot as property values: errors as D-Bus names, numbers made wire-safe. */
export function transactionProperties(s: TransactionSnapshot): TransactionProperties {
  return {
    Id: s.id,
    Deployment: toBusString(s.deployment),
    Phase: s.phase,
    State: s.state,
    Progress: toPercent(s.progress),
    CurrentHook: toBusString(s.currentHook),
    Hooks: hooksProperty(s.hooks),
    Error: errorNameFor(s.error),
    ErrorMessage: toBusString(s.errorMessage),
    StartedUsec: toUint64(s.startedUsec),
    FinishedUsec: toUint64(s.finishedUsec),
  };
}

/**
 * One entry of Hooks. Snapshots are immutable and a hook's status object is
 * replaced only when it changes, so each is converted once, and an
 * unchanged entry is the very same array in the next Hooks (which makes
 * sameValue cheap). 200 hooks took a JSON.stringify of both arrays per
 * PropertiesChanged before.
 */
type HookEntry = [string, string, number, string];
const hookEntries = new WeakMap<HookStatus, HookEntry>();
function hookEntry(h: HookStatus): HookEntry {
  let e = hookEntries.get(h);
  if (e === undefined) {
    // Frozen: the wire encoder then reuses its bytes in every later Hooks (wire/encoder.ts).
    e = Object.freeze([toBusString(h.name), h.result, toPercent(h.percent), toBusString(h.status, MAX_LINE_BYTES)]) as HookEntry;
    hookEntries.set(h, e);
  }
  return e;
}

/**
 * The Hooks property of a snapshot's hook list. The list is replaced with
 * one status changed at a time: the entries of the last list converted
 * are taken by index where the status is the same object, so a 200-hook
 * transaction's every transition converts one entry, not 200 (the same
 * list, read again for GetAll, is the same frozen array).
 */
const hooksLists = new WeakMap<readonly HookStatus[], readonly HookEntry[]>();
let lastList: { statuses: readonly HookStatus[]; entries: readonly HookEntry[] } | null = null;
function hooksProperty(statuses: readonly HookStatus[]): HookEntry[] {
  let entries = hooksLists.get(statuses);
  if (entries === undefined) {
    const prev = lastList;
    const out: HookEntry[] = new Array(statuses.length);
    for (let i = 0; i < statuses.length; i++) {
      const h = statuses[i]!;
      out[i] = prev !== null && prev.statuses[i] === h ? prev.entries[i]! : hookEntry(h);
    }
    entries = Object.freeze(out);
    hooksLists.set(statuses, entries);
    lastList = { statuses, entries };
  }
  return entries as HookEntry[];
}

/** Equal property values: primitives by ===, arrays (Hooks, its entries) element by element. */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!sameValue(a[i], b[i])) return false;
  return true;
}

/** Keep the newest lines whose total size fits `budget` bytes. */
function fitLog(lines: string[], budget: number): string[] {
  let total = 0;
  let start = lines.length;
  while (start > 0) {
    const size = Buffer.byteLength(lines[start - 1]!, 'utf8') + 8;
    if (total + size > budget) break;
    total += size;
    start -= 1;
  }
  const kept = lines.slice(start).map((l) => toBusString(l, 65536));
  return start === 0 ? kept : [`[${start} earlier lines omitted: reply size limit; see the log file]`, ...kept];
}

export class TransactionObject {
  readonly id: string;
  readonly path: string;
  private readonly limits: RateLimits;
  private readonly subs = new Subscription();
  /** performance.now() of the last PropertiesChanged sent. */
  private lastPropertiesAt = -Infinity;
  private propertiesTimer: NodeJS.Timeout | null = null;
  private propertiesImmediate: NodeJS.Immediate | null = null;
  /** A HookFinished went out in the current turn of the event loop. */
  private finishedThisTurn = false;
  /** Signals held to the end of the turn (see 'hook-finished'); null when not holding. */
  private held: [SignalName<typeof TRANSACTION>, unknown[]][] | null = null;
  /** Progress not yet sent, per hook (the timers only tick). */
  private readonly pendingProgress = new Map<string, { percent: number; status: string }>();
  /** performance.now() of the last HookProgress sent, per hook. */
  private readonly lastProgressAt = new Map<string, number>();
  /** Per hook: a trailing HookProgress is due. */
  private readonly progressTimers = new Map<string, NodeJS.Timeout>();
  /** Lines over the cap in the current window, per hook. */
  private readonly suppressed = new Map<string, number>();
  private windowSub: Subscription | null = null;
  private windowCount = 0;
  private published: TransactionProperties;
  private exported = false;
  private disposed = false;

  constructor(
    private readonly registry: ObjectRegistry,
    private readonly handle: TransactionHandle,
    private readonly log: Logger,
    limits: Partial<RateLimits> = {},
  ) {
    this.id = handle.id;
    this.path = transactionPath(handle.id);
    this.limits = { ...DEFAULT_RATE_LIMITS, ...limits };
    this.published = transactionProperties(handle.snapshot());
  }

  /** The interface as the object server dispatches it. */
  private impl(): InterfaceImpl<typeof TRANSACTION> {
    return {
      spec: TRANSACTION,
      methods: {
        Cancel: () => {
          this.handle.cancel();
          this.log.info('cancel requested over D-Bus', { transaction: this.id });
        },
        GetLog: async (call) => {
          const opts = decodeLogOptions(call.args[0]);
          const lines = await this.handle.readLog(opts);
          return [fitLog(lines, MAX_LOG_REPLY_BYTES)];
        },
      },
      properties: () => transactionProperties(this.handle.snapshot()),
    };
  }

  /**
   * Export the object and start following the engine. The object answers
   * Get/GetAll from the live snapshot at once; its signals start with the
   * next change (the initial values are what a new object has).
   */
  export(): void {
    if (this.exported || this.disposed) return;
    this.registry.exportObject({ path: this.path, interfaces: [this.impl()] });
    this.exported = true;

    this.subs.add(this.handle.state$.subscribe({
      next: () => this.scheduleProperties(),
      error: (e: unknown) => this.log.error(`state stream failed: ${(e as Error).message}`, { transaction: this.id }),
    }));
    this.subs.add(this.handle.events$.subscribe({
      next: (ev) => this.onEvent(ev),
      error: (e: unknown) => this.log.error(`event stream failed: ${(e as Error).message}`, { transaction: this.id }),
    }));
  }

  /**
   * Send everything pending now: every hook's progress, suppressed-line
   * counts, and changed properties. The manager calls it before
   * TransactionFinished.
   */
  flush(): void {
    if (!this.exported || this.disposed) return;
    this.releaseHeld();
    for (const hook of [...this.pendingProgress.keys()]) this.publishProgress(hook);
    for (const hook of [...this.suppressed.keys()]) this.publishSuppressed(hook);
    this.publishProperties();
  }

  /** Flush, stop following the engine (no timer is left), and unexport. */
  dispose(): void {
    if (this.disposed) return;
    this.flush();
    this.disposed = true;
    this.subs.unsubscribe();
    this.windowSub = null;
    this.clearPropertiesSchedule();
    for (const t of this.progressTimers.values()) clearTimeout(t);
    this.progressTimers.clear();
    this.pendingProgress.clear();
    this.lastProgressAt.clear();
    this.suppressed.clear();
    if (this.exported) this.registry.unexportObject(this.path);
    this.exported = false;
  }

  private onEvent(ev: TransactionEvent): void {
    if (this.disposed) return;
    switch (ev.type) {
      case 'phase-started':
        this.publishProperties();
        return;
      case 'hook-started':
        this.emit('HookStarted', [toBusString(ev.hook), toUint32(ev.index), toUint32(ev.count)]);
        return;
      case 'hook-progress':
        this.pendingProgress.set(ev.hook, { percent: toPercent(ev.percent), status: toBusString(ev.status, MAX_LINE_BYTES) });
        this.scheduleProgress(ev.hook);
        return;
      case 'message':
        this.onMessage(ev.hook, ev.line);
        return;
      case 'messages-suppressed':
        this.suppressed.set(ev.hook, (this.suppressed.get(ev.hook) ?? 0) + ev.count);
        // No window open: the engine's window these lines fell in is over.
        if (this.windowSub === null) this.publishSuppressed(ev.hook);
        return;
      case 'hook-finished':
        if (this.finishedThisTurn && this.held === null) {
          // Many hooks finish in one turn (a dry run; hooks refused or
          // without a step): hold the rest of the turn's signals behind ONE
          // PropertiesChanged instead of one per hook, each carrying the
          // whole Hooks array (quadratic: 1,000 hooks took seconds).
          this.held = [];
          queueMicrotask(() => this.releaseHeld());
        }
        if (!this.finishedThisTurn) {
          this.finishedThisTurn = true;
          queueMicrotask(() => { this.finishedThisTurn = false; });
        }
        this.publishProgress(ev.hook);
        this.publishSuppressed(ev.hook);
        if (this.held === null) this.publishProperties();
        this.emit('HookFinished', [toBusString(ev.hook), ev.result, toBusString(ev.message, MAX_LINE_BYTES)]);
        return;
      case 'finished':
        this.flush();
        this.emit('Finished', [ev.state, errorNameFor(ev.error), toBusString(ev.message, MAX_LINE_BYTES)]);
        return;
    }
  }

  private onMessage(hook: string, line: string): void {
    if (this.windowSub === null) {
      this.windowCount = 0;
      const sub = timer(this.limits.messageWindowMs).subscribe(() => this.rollWindow(sub));
      this.windowSub = sub;
      this.subs.add(sub);
    }
    if (this.windowCount < this.limits.messagesPerWindow) {
      this.windowCount += 1;
      this.emit('Message', [toBusString(hook), toBusString(line, MAX_LINE_BYTES)]);
    } else {
      this.suppressed.set(hook, (this.suppressed.get(hook) ?? 0) + 1);
    }
  }

  private rollWindow(sub: Subscription): void {
    this.subs.remove(sub);
    if (this.windowSub === sub) this.windowSub = null;
    for (const hook of [...this.suppressed.keys()]) this.publishSuppressed(hook);
  }

  private publishSuppressed(hook: string): void {
    const n = this.suppressed.get(hook);
    if (n === undefined) return;
    this.suppressed.delete(hook);
    this.emit('Message', [toBusString(hook), `[${n} line${n === 1 ? '' : 's'} suppressed; see GetLog]`]);
  }

  /**
   * A HookProgress is owed for `hook`: now if the last one is an interval
   * old (leading), else when it will be (trailing, with the value latest
   * by then). One timer per hook at most.
   */
  private scheduleProgress(hook: string): void {
    if (this.progressTimers.has(hook)) return;
    const wait = (this.lastProgressAt.get(hook) ?? -Infinity) + this.limits.progressIntervalMs - performance.now();
    if (wait <= 0) {
      this.publishProgress(hook);
      return;
    }
    // +1: a timer may fire up to a millisecond early by performance.now().
    // A flush may have sent meanwhile, which restarts the interval: check again.
    this.progressTimers.set(hook, setTimeout(() => {
      this.progressTimers.delete(hook);
      if (this.pendingProgress.has(hook)) this.scheduleProgress(hook);
    }, Math.ceil(wait) + 1));
  }

  /** Send the hook's pending progress now, if any; a forced send counts for the spacing too. */
  private publishProgress(hook: string): void {
    const p = this.pendingProgress.get(hook);
    if (!p) return;
    this.pendingProgress.delete(hook);
    this.lastProgressAt.set(hook, performance.now());
    this.emit('HookProgress', [toBusString(hook), p.percent, p.status]);
  }

  /**
   * A PropertiesChanged is owed: on the next turn if the last one is at
   * least an interval old, else when it will be (the same rule as
   * coalesce.ts's coalesceTicks, with forced emissions counted).
   */
  private scheduleProperties(): void {
    if (this.disposed || this.propertiesTimer !== null || this.propertiesImmediate !== null) return;
    const wait = this.lastPropertiesAt + this.limits.propertiesIntervalMs - performance.now();
    if (wait <= 0) {
      this.propertiesImmediate = setImmediate(() => {
        this.propertiesImmediate = null;
        this.publishProperties();
      });
    } else {
      this.propertiesTimer = setTimeout(() => {
        this.propertiesTimer = null;
        this.publishProperties();
      }, Math.ceil(wait));
    }
  }

  private clearPropertiesSchedule(): void {
    if (this.propertiesTimer !== null) clearTimeout(this.propertiesTimer);
    if (this.propertiesImmediate !== null) clearImmediate(this.propertiesImmediate);
    this.propertiesTimer = null;
    this.propertiesImmediate = null;
  }

  private publishProperties(): void {
    if (!this.exported || this.disposed) return;
    let current: TransactionProperties;
    try {
      current = transactionProperties(this.handle.snapshot());
    } catch (e) {
      this.log.error(`cannot read the transaction snapshot: ${(e as Error).message}`, { transaction: this.id });
      return;
    }
    const changed: Record<string, unknown> = {};
    for (const key of Object.keys(current) as (keyof TransactionProperties)[]) {
      if (!sameValue(current[key], this.published[key])) changed[key] = current[key];
    }
    this.published = current;
    if (Object.keys(changed).length > 0) {
      this.lastPropertiesAt = performance.now();
      this.registry.emitPropertiesChanged(this.path, TRANSACTION.name, changed);
    }
  }

  /**
   * Send what was held this turn: first the PropertiesChanged that covers
   * every held HookFinished (properties always hold the latest state), then
   * the signals in their order.
   */
  private releaseHeld(): void {
    const held = this.held;
    this.held = null;
    if (held === null || !this.exported || this.disposed) return;
    this.publishProperties();
    for (const [member, body] of held) this.emit(member, body);
  }

  private emit(member: SignalName<typeof TRANSACTION>, body: unknown[]): void {
    if (this.held !== null) {
      this.held.push([member, body]);
      return;
    }
    const spec = findSignal(TRANSACTION, member)!;
    this.registry.emitSignal(this.path, TRANSACTION.name, member, signatureOf(spec.args), body);
  }
}
