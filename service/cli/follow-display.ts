/**
 * How a followed transaction is shown: the interface every display
 * implements, and the two simple ones (plain lines for pipes and logs,
 * JSON lines for machines). The live terminal display is tty-display.ts.
 */
import { shortErrorName } from '../client/errors.js';
import type { FollowEvent } from '../client/types.js';
import { formatDuration, sanitize, txIdOf } from './format.js';
import { jsonLine } from './json-line.js';
import type { OutputStream } from './io.js';

/** What is being followed, for the heading. */
export type FollowAction = 'prepare' | 'commit' | 'abort' | 'reconcile' | 'cancel' | 'dry-run';

export interface FollowHeader {
  action: FollowAction;
  path: string;
  /** '' when not known yet (the first state event has it). */
  deployment: string;
}

export interface FollowDisplay {
  begin(h: FollowHeader): void;
  event(ev: FollowEvent): void;
  /** A remark for the person at the keyboard ("cancelling..."). */
  note(text: string): void;
  /** Leave the output tidy (cursor shown, line ended). Called once, whatever happened. */
  close(): void;
}

const VERB: Record<FollowAction, string> = {
  prepare: 'prepare', commit: 'commit', abort: 'abort', reconcile: 'reconcile', cancel: 'cancel', 'dry-run': 'dry run',
};

/** "3 hook(s) prepared" / "failed [HookFailed]: required hook x failed" */
export function resultText(ev: { state: string; error: string; message: string; transaction?: { startedUsec: number; finishedUsec: number } }): string {
  const err = ev.error ? ` [${shortErrorName(ev.error)}]` : '';
  const took = ev.transaction && ev.transaction.finishedUsec > ev.transaction.startedUsec && ev.transaction.startedUsec > 0
    ? ` in ${formatDuration(ev.transaction.finishedUsec - ev.transaction.startedUsec)}` : '';
  return `${ev.state}${err}${took}${ev.message ? `: ${sanitize(ev.message)}` : ''}`;
}

/** One line per event, for pipes and logs. */
export class LineDisplay implements FollowDisplay {
  private lastState = '';
  private readonly index = new Map<string, { i: number; n: number }>();
  private readonly lastProgress = new Map<string, string>();

  constructor(private readonly out: OutputStream) {}

  private line(s: string): void {
    this.out.write(`${s}\n`);
  }

  private tag(hook: string): string {
    const p = this.index.get(hook);
    return p ? `[${p.i + 1}/${p.n}] ${hook}` : hook;
  }

  begin(h: FollowHeader): void {
    this.line(`Transaction ${txIdOf(h.path)} (${h.path}): ${VERB[h.action]}${h.deployment ? ` of ${h.deployment}` : ''}`);
  }

  event(ev: FollowEvent): void {
    switch (ev.type) {
      case 'state':
        if (ev.transaction.state !== this.lastState) {
          this.lastState = ev.transaction.state;
          this.line(`State: ${ev.transaction.state} (${ev.transaction.phase} phase, ${ev.transaction.progress}%)`);
        }
        break;
      case 'phase-started':
        this.line(`Phase started: ${ev.phase}`);
        break;
      case 'hook-started':
        this.index.set(ev.hook, { i: ev.index, n: ev.count });
        this.line(`${this.tag(ev.hook)}: started`);
        break;
      case 'hook-progress': {
        const text = `${ev.percent}%${ev.status ? ` ${sanitize(ev.status)}` : ''}`;
        if (this.lastProgress.get(ev.hook) === text) break;
        this.lastProgress.set(ev.hook, text);
        this.line(`${this.tag(ev.hook)}: ${text}`);
        break;
      }
      case 'hook-finished':
        this.line(`${this.tag(ev.hook)}: ${ev.result}${ev.message ? `: ${sanitize(ev.message)}` : ''}`);
        break;
      case 'message':
        this.line(`[${ev.hook || 'daemon'}] ${sanitize(ev.line)}`);
        break;
      case 'finished':
        this.line(`Result: ${resultText(ev)}`);
        break;
    }
  }

  note(text: string): void {
    this.line(text);
  }

  close(): void { /* nothing pending */ }
}

/** One JSON object per event. */
export class JsonDisplay implements FollowDisplay {
  private path = '';
  constructor(private readonly out: OutputStream) {}

  begin(h: FollowHeader): void {
    this.path = h.path;
    this.out.write(jsonLine({ event: 'begin', action: h.action, transaction: h.path, deployment: h.deployment }));
  }

  event(ev: FollowEvent): void {
    const { type, ...rest } = ev;
    if (type === 'state' || type === 'finished') {
      this.out.write(jsonLine({ event: type, ...rest, transaction: ev.transaction }));
    } else {
      this.out.write(jsonLine({ event: type, transaction: this.path, ...rest }));
    }
  }

  note(text: string): void {
    this.out.write(jsonLine({ event: 'note', transaction: this.path, text }));
  }

  close(): void { /* nothing pending */ }
}
