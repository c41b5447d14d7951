/**
 * Progress for tools that read bootc's own progress stream
 * (`bootc upgrade --progress-fd N`), in the protocol of bootc's
 * crates/lib/src/progress_jsonl.rs (API version 0.1.0; schema
 * docs/src/progress-v0.schema.json, vendored for the tests in
 * test/fixtures/bootc/progress-v0.schema.json):
 *
 *     {"type":"Start","version":"0.1.0"}                      once, first
 *     {"type":"ProgressSteps","task":"pre-stage","description":"Pre-stage prepare",
 *      "id":"7","stepsCached":0,"steps":1,"stepsTotal":3,
 *      "subtasks":[{"subtask":"hook","description":"compat-check","id":"compat-check","completed":true},
 *                  {"subtask":"hook","description":"bound-images","id":"bound-images","completed":false}]}
 *
 * serde `tag = "type"`, variants in PascalCase, fields in camelCase, no
 * per-event `apiVersion` (bootc dropped it in v1.1.4). A step is a hook:
 * every event lists each hook of the phase that has started, in run order,
 * `completed` false while it runs and true once it has finished, as bootc
 * lists its own steps. Each event is a full snapshot, so throttling loses
 * nothing: like bootc's `send_lossy`, at most 5 events a second are
 * written (REFRESH_HZ), a throttled event is written when its interval
 * ends, and the final state of each phase is always written at once
 * (bootc's `send`). Hooks report percentages, not bytes: no
 * `ProgressBytes` events are written.
 *
 * Like bootc, a write error stops the stream and nothing else.
 */
import { writeSync, fstatSync } from 'node:fs';
import type { FollowEvent, TransactionProperties } from '../client/types.js';

/** bootc's progress_jsonl.rs API_VERSION. */
export const BOOTC_PROGRESS_VERSION = '0.1.0';
/** bootc's REFRESH_HZ: lossy events per second at most. */
export const REFRESH_HZ = 5;

/** bootc's SubTaskStep. */
export interface SubTaskStep {
  subtask: string;
  description: string;
  id: string;
  completed: boolean;
}

/** bootc's Event::ProgressSteps. */
export interface ProgressStepsEvent {
  type: 'ProgressSteps';
  task: string;
  description: string;
  id: string;
  stepsCached: number;
  steps: number;
  stepsTotal: number;
  subtasks: SubTaskStep[];
}

/** Throws when `fd` is not an open file descriptor (a usage error for the caller). */
export function checkFdOpen(fd: number): void {
  fstatSync(fd);
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(t: unknown): void;
}

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout),
};

/**
 * One progress stream on one descriptor, shared by every phase a command
 * follows (and, in `upgrade`, by bootc's own events): exactly one `Start`,
 * written before the first event.
 */
export class ProgressStream {
  private started = false;
  private lastWrite: number | null = null;
  private pending: object | null = null;
  private timer: unknown = null;
  private readonly intervalMs = 1000 / REFRESH_HZ;

  constructor(private readonly writeLine: (line: string) => void, private readonly clock: Clock = realClock) {}

  private out(ev: object): void {
    if (!this.started) {
      this.started = true;
      this.writeLine(JSON.stringify({ type: 'Start', version: BOOTC_PROGRESS_VERSION }));
    }
    this.writeLine(JSON.stringify(ev));
  }

  private cancelPending(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.pending = null;
  }

  /** An event that may be delayed (and replaced by a later one) to keep to REFRESH_HZ. */
  lossy(ev: object): void {
    const now = this.clock.now();
    if (this.lastWrite === null || now - this.lastWrite >= this.intervalMs) {
      this.cancelPending();
      this.lastWrite = now;
      this.out(ev);
      return;
    }
    this.pending = ev;
    if (this.timer === null) {
      this.timer = this.clock.setTimeout(() => {
        this.timer = null;
        const p = this.pending;
        this.pending = null;
        if (p !== null) {
          this.lastWrite = this.clock.now();
          this.out(p);
        }
      }, this.intervalMs - (now - this.lastWrite));
    }
  }

  /** An event written at once (a phase's final state): it replaces any pending one. */
  required(ev: object): void {
    this.cancelPending();
    this.lastWrite = this.clock.now();
    this.out(ev);
  }

  /**
   * A line of bootc's own progress stream (`upgrade` gives bootc a pipe and
   * relays it): its `Start` is dropped (this stream has written, or now
   * writes, its own), every other JSON object line is passed through as
   * bootc wrote it (bootc throttles its own events). Other lines are dropped.
   */
  relay(line: string): void {
    let ev: unknown;
    try {
      ev = JSON.parse(line);
    } catch {
      return;
    }
    if (ev === null || typeof ev !== 'object' || Array.isArray(ev)) return;
    const type = (ev as { type?: unknown }).type;
    if (type === 'Start') {
      if (!this.started) {
        this.started = true;
        this.writeLine(JSON.stringify({ type: 'Start', version: BOOTC_PROGRESS_VERSION }));
      }
      return;
    }
    if (!this.started) {
      this.started = true;
      this.writeLine(JSON.stringify({ type: 'Start', version: BOOTC_PROGRESS_VERSION }));
    }
    this.writeLine(JSON.stringify(ev));
  }

  /** Write what is pending now (the command is about to exit). */
  flush(): void {
    const p = this.pending;
    this.cancelPending();
    if (p !== null) {
      this.lastWrite = this.clock.now();
      this.out(p);
    }
  }
}

const PHASE_DESCRIPTION: Record<string, string> = {
  prepare: 'Pre-stage prepare',
  commit: 'Pre-stage commit',
  abort: 'Pre-stage abort',
};

/** The ProgressSteps snapshot of a transaction's hooks. */
export function stepsEvent(tx: TransactionProperties, id = tx.id): ProgressStepsEvent {
  const subtasks: SubTaskStep[] = [];
  let steps = 0;
  for (const h of tx.hooks) {
    if (h.result === 'pending') continue;
    const completed = h.result !== 'running';
    if (completed) steps++;
    subtasks.push({ subtask: 'hook', description: h.name, id: h.name, completed });
  }
  return {
    type: 'ProgressSteps',
    task: 'pre-stage',
    description: PHASE_DESCRIPTION[tx.phase] ?? `Pre-stage ${tx.phase}`,
    id,
    stepsCached: 0,
    steps,
    stepsTotal: Math.max(tx.hooks.length, steps),
    subtasks,
  };
}

/** Turns the follow events of one transaction into ProgressSteps events on a stream. */
export class BootcProgress {
  private last = '';

  constructor(private readonly stream: ProgressStream) {}

  private emit(tx: TransactionProperties, final: boolean): void {
    const ev = stepsEvent(tx);
    const key = JSON.stringify(ev);
    if (key === this.last && !final) return;
    this.last = key;
    if (final) this.stream.required(ev);
    else this.stream.lossy(ev);
  }

  event(ev: FollowEvent): void {
    if (ev.type === 'state') this.emit(ev.transaction, false);
    else if (ev.type === 'finished') this.emit(ev.transaction, true);
  }
}

/** A line writer to a file descriptor that goes quiet after the first error (bootc does the same). */
export function fdLineWriter(fd: number, onError: (e: Error) => void): (line: string) => void {
  let broken = false;
  return (line) => {
    if (broken) return;
    try {
      const buf = Buffer.from(`${line}\n`);
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off);
    } catch (e) {
      broken = true;
      onError(e as Error);
    }
  };
}
