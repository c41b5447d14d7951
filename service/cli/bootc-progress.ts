/**
 * Progress for tools that read bootc's own progress stream
 * (`bootc upgrade --progress-fd N`): JSON lines, one `ProgressSteps` event
 * per change, with bootc's field names exactly (bootc's
 * lib/src/progress_jsonl.rs: serde `tag = "type"`, fields in camelCase):
 *
 *     {"type":"ProgressSteps","apiVersion":"org.containers.bootc.progress/v1",
 *      "task":"pre-stage","description":"Running pre-stage hooks","id":"7",
 *      "stepsCached":0,"steps":1,"stepsTotal":3,
 *      "subtasks":[{"subtask":"hook","description":"compat-check","id":"compat-check","completed":true}]}
 *
 * A step is a hook; `subtasks` holds the hook currently running (completed
 * false) or just finished (completed true), as bootc reports its own steps.
 * Like bootc, a write error stops the stream and nothing else.
 */
import { writeSync, fstatSync } from 'node:fs';
import type { FollowEvent } from '../client/types.js';

/** The `apiVersion` bootc writes in every progress event. */
export const BOOTC_PROGRESS_API_VERSION = 'org.containers.bootc.progress/v1';

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
  apiVersion: string;
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

/** Turns follow events into ProgressSteps events. Pure: `write` does the I/O. */
export class BootcProgress {
  private total = 0;
  private done = new Set<string>();
  private last = '';

  constructor(
    private readonly id: string,
    private readonly write: (ev: ProgressStepsEvent) => void,
    private readonly description = 'Running pre-stage hooks',
  ) {}

  private emit(subtasks: SubTaskStep[]): void {
    const ev: ProgressStepsEvent = {
      type: 'ProgressSteps',
      apiVersion: BOOTC_PROGRESS_API_VERSION,
      task: 'pre-stage',
      description: this.description,
      id: this.id,
      stepsCached: 0,
      steps: this.done.size,
      stepsTotal: Math.max(this.total, this.done.size),
      subtasks,
    };
    const key = JSON.stringify(ev);
    if (key === this.last) return;
    this.last = key;
    this.write(ev);
  }

  private step(hook: string, completed: boolean): SubTaskStep {
    return { subtask: 'hook', description: hook, id: hook, completed };
  }

  event(ev: FollowEvent): void {
    switch (ev.type) {
      case 'state':
        this.total = ev.transaction.hooks.length;
        break;
      case 'hook-started':
        this.total = Math.max(this.total, ev.count);
        this.emit([this.step(ev.hook, false)]);
        break;
      case 'hook-finished':
        this.done.add(ev.hook);
        this.emit([this.step(ev.hook, true)]);
        break;
      case 'finished':
        this.total = ev.transaction.hooks.length;
        // Hooks a late join never saw finish still count as steps done.
        for (const h of ev.transaction.hooks) {
          if (h.result !== 'pending' && h.result !== 'running') this.done.add(h.name);
        }
        this.emit([]);
        break;
      default:
        break;
    }
  }
}

/** A writer to a file descriptor that goes quiet after the first error (bootc does the same). */
export function fdWriter(fd: number, onError: (e: Error) => void): (ev: ProgressStepsEvent) => void {
  let broken = false;
  return (ev) => {
    if (broken) return;
    try {
      const buf = Buffer.from(`${JSON.stringify(ev)}\n`);
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off);
    } catch (e) {
      broken = true;
      onError(e as Error);
    }
  };
}
