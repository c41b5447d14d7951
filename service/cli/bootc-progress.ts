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
 * ends (the latest of each kind — a transaction's steps, a hook's bytes —
 * one per interval, the kind waiting longest first, so one kind never
 * displaces another), and the final state of each phase is always written
 * at once (bootc's `send`).
 *
 * A hook whose `STATUS=` text is in the bytes form (docs/hooks.md, "Bytes
 * progress"; service/model/status-bytes.ts) also gets `ProgressBytes`
 * events, as bootc writes them for its own image pulls:
 *
 *     {"type":"ProgressBytes","task":"pulling","description":"Pre-stage hook bound-images",
 *      "id":"bound-images","bytesCached":0,"bytes":125000000,"bytesTotal":320000000,
 *      "stepsCached":0,"steps":2,"stepsTotal":4,
 *      "subtasks":[{"subtask":"image","description":"app:2.0","id":"app:2.0",
 *                   "bytesCached":0,"bytes":120000000,"bytesTotal":300000000}, ...]}
 *
 * one subtask per image the hook has reported (an image no longer listed
 * has finished: bytes = bytesTotal, bootc's "complete"), bytes and
 * bytesTotal their sums (bytesTotal 0, "unspecified", when an image's total
 * is unknown), steps the images ready and stepsTotal the images in all.
 * They share the stream's 5 a second with the ProgressSteps events; when
 * the hook finishes, its final ProgressBytes is written at once (a hook that
 * succeeded: every image complete, steps = stepsTotal).
 *
 * Like bootc, a write error stops the stream and nothing else.
 */
import { writeSync, fstatSync } from 'node:fs';
import type { FollowEvent, TransactionProperties } from '../client/types.js';
import { parseBytesStatus, type BytesStatus } from '../model/status-bytes.js';

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

/** bootc's SubTaskBytes. */
export interface SubTaskBytes {
  subtask: string;
  description: string;
  id: string;
  bytesCached: number;
  bytes: number;
  bytesTotal: number;
}

/** bootc's Event::ProgressBytes. */
export interface ProgressBytesEvent {
  type: 'ProgressBytes';
  task: string;
  description: string;
  id: string;
  bytesCached: number;
  bytes: number;
  bytesTotal: number;
  stepsCached: number;
  steps: number;
  stepsTotal: number;
  subtasks: SubTaskBytes[];
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
  /**
   * The latest unwritten lossy event of each kind (key), oldest kind
   * first: each is a full snapshot of its kind, so a later one replaces an
   * earlier one, and one kind's events never displace another's.
   */
  private readonly pending = new Map<string, object>();
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

  private cancelTimer(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  /** One pending event (the kind waiting longest) when the interval since the last write ends. */
  private schedule(): void {
    if (this.timer !== null || this.pending.size === 0) return;
    const since = this.lastWrite === null ? this.intervalMs : this.clock.now() - this.lastWrite;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      const first = this.pending.entries().next();
      if (first.done) return;
      const [key, ev] = first.value;
      this.pending.delete(key);
      this.lastWrite = this.clock.now();
      this.out(ev);
      this.schedule();
    }, Math.max(0, this.intervalMs - since));
  }

  /**
   * An event that may be delayed (and replaced by a later one of the same
   * `key`) to keep to REFRESH_HZ: at most one lossy event is written per
   * interval, whatever its kind.
   */
  lossy(ev: object, key = ''): void {
    const now = this.clock.now();
    if (this.pending.size === 0 && (this.lastWrite === null || now - this.lastWrite >= this.intervalMs)) {
      this.lastWrite = now;
      this.out(ev);
      return;
    }
    // A Map keeps the key's first place: a kind already waiting keeps its turn.
    this.pending.set(key, ev);
    this.schedule();
  }

  /**
   * An event written at once (a final state): it replaces the pending event
   * of its `key`; it starts a new interval for the others.
   */
  required(ev: object, key = ''): void {
    this.pending.delete(key);
    this.cancelTimer();
    this.lastWrite = this.clock.now();
    this.out(ev);
    this.schedule();
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
    this.cancelTimer();
    for (const [key, ev] of [...this.pending]) {
      this.pending.delete(key);
      this.lastWrite = this.clock.now();
      this.out(ev);
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

/**
 * What one hook has said about its bytes (its bytes-form STATUS texts), as
 * bootc's ProgressBytes: one subtask per image, in the order first reported.
 */
export class HookBytes {
  private readonly images = new Map<string, { bytes: number; bytesTotal: number }>();
  private ready: number | null = null;
  private count: number | null = null;

  constructor(readonly hook: string) {}

  /** A new status: the images listed are running, those no longer listed have finished. */
  update(status: BytesStatus): void {
    const listed = new Set(status.images.map((i) => i.name));
    for (const [name, img] of this.images) {
      if (!listed.has(name) && img.bytesTotal > 0) img.bytes = img.bytesTotal;
    }
    for (const i of status.images) this.images.set(i.name, { bytes: i.bytes, bytesTotal: i.bytesTotal });
    this.ready = status.ready;
    this.count = status.count;
  }

  /** The hook succeeded: every image is complete. */
  complete(): void {
    for (const img of this.images.values()) if (img.bytesTotal > 0) img.bytes = img.bytesTotal;
    this.count ??= this.images.size;
    this.ready = this.count;
  }

  event(): ProgressBytesEvent {
    const subtasks: SubTaskBytes[] = [];
    let bytes = 0;
    let bytesTotal = 0;
    let totalKnown = true;
    let finished = 0;
    for (const [name, img] of this.images) {
      subtasks.push({ subtask: 'image', description: name, id: name, bytesCached: 0, bytes: img.bytes, bytesTotal: img.bytesTotal });
      bytes += img.bytes;
      bytesTotal += img.bytesTotal;
      if (img.bytesTotal === 0) totalKnown = false;
      else if (img.bytes === img.bytesTotal) finished++;
    }
    return {
      type: 'ProgressBytes',
      task: 'pulling',
      description: `Pre-stage hook ${this.hook}`,
      id: this.hook,
      bytesCached: 0,
      bytes,
      bytesTotal: totalKnown ? bytesTotal : 0,
      stepsCached: 0,
      steps: this.ready ?? finished,
      stepsTotal: this.count ?? this.images.size,
      subtasks,
    };
  }
}

/**
 * Turns the follow events of one transaction into ProgressSteps events on
 * a stream, and the bytes-form STATUS texts of its hooks into ProgressBytes
 * events.
 */
export class BootcProgress {
  private last = '';
  private readonly bytes = new Map<string, { tracker: HookBytes; last: string; final: boolean }>();

  constructor(private readonly stream: ProgressStream) {}

  private emit(tx: TransactionProperties, final: boolean): void {
    const ev = stepsEvent(tx);
    const key = JSON.stringify(ev);
    if (key === this.last && !final) return;
    this.last = key;
    if (final) this.stream.required(ev, `steps:${tx.id}`);
    else this.stream.lossy(ev, `steps:${tx.id}`);
  }

  /** A status text of a running hook: a ProgressBytes event when it is in the bytes form. */
  private status(hook: string, text: string): void {
    const parsed = parseBytesStatus(text);
    if (parsed === null) return;
    let b = this.bytes.get(hook);
    if (b === undefined) {
      b = { tracker: new HookBytes(hook), last: '', final: false };
      this.bytes.set(hook, b);
    }
    if (b.final) return;
    b.tracker.update(parsed);
    const ev = b.tracker.event();
    const key = JSON.stringify(ev);
    if (key === b.last) return;
    b.last = key;
    this.stream.lossy(ev, `bytes:${hook}`);
  }

  /** The hook has finished (`result`): its final ProgressBytes, once, if it reported bytes. */
  private finish(hook: string, result: string): void {
    const b = this.bytes.get(hook);
    if (b === undefined || b.final) return;
    b.final = true;
    if (result === 'success') b.tracker.complete();
    this.stream.required(b.tracker.event(), `bytes:${hook}`);
  }

  private hooks(tx: TransactionProperties): void {
    for (const h of tx.hooks) {
      if (h.result === 'running') this.status(h.name, h.status);
      else if (h.result !== 'pending') this.finish(h.name, h.result);
    }
  }

  event(ev: FollowEvent): void {
    switch (ev.type) {
      case 'state':
        this.hooks(ev.transaction);
        this.emit(ev.transaction, false);
        break;
      case 'hook-progress':
        this.status(ev.hook, ev.status);
        break;
      case 'hook-finished':
        this.finish(ev.hook, ev.result);
        break;
      case 'finished':
        this.hooks(ev.transaction);
        // A hook still listed as running when the phase ended did not finish.
        for (const hook of this.bytes.keys()) this.finish(hook, 'unfinished');
        this.emit(ev.transaction, true);
        break;
      default:
        break;
    }
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
