/**
 * The live display on a terminal:
 *
 *     Preparing /sysroot/ostree/deploy/os/deploy/3c6d...4f.0 (transaction 7)
 *       ✔ compat-check       success
 *       ✘ bound-images       failed: exited with status 1
 *     [████████░░░░░░░░░░░░]  42%  [2/3] bound-images: pulling quay.io/x
 *
 * Finished hooks, hook output and notes are printed once, above; only the
 * last line (overall percent, current hook, its status text) is redrawn in
 * place, with a carriage return and "erase line", so the display works in
 * any terminal, scrolls naturally, and leaves a clean transcript: when the
 * phase ends the live line is replaced by the result.
 */
import type { FollowEvent, HookRow, TransactionProperties } from '../client/types.js';
import { isResting } from '../client/follow.js';
import type { FollowDisplay, FollowHeader } from './follow-display.js';
import { resultText } from './follow-display.js';
import { sanitize, truncate, txIdOf } from './format.js';
import type { OutputStream } from './io.js';

const ERASE_LINE = '\r\x1b[2K';

interface Glyphs {
  full: string;
  empty: string;
  ok: string;
  skip: string;
  bad: string;
  ellipsis: string;
}

const UTF8: Glyphs = { full: '█', empty: '░', ok: '✔', skip: '○', bad: '✘', ellipsis: '…' };
const ASCII: Glyphs = { full: '#', empty: '-', ok: '+', skip: 'o', bad: 'x', ellipsis: '...' };

const HEADING: Record<FollowHeader['action'], string> = {
  prepare: 'Preparing', commit: 'Committing', abort: 'Aborting', reconcile: 'Reconciling',
  cancel: 'Cancelling', 'dry-run': 'Dry run of',
};

export interface TtyDisplayOptions {
  utf8: boolean;
  color: boolean;
  /** Width when the terminal does not say (no window size set): $COLUMNS or 80. */
  fallbackColumns: number;
}

export class TtyDisplay implements FollowDisplay {
  private readonly g: Glyphs;
  private header: FollowHeader | null = null;
  private tx: TransactionProperties | null = null;
  /** The phase is running (or ran) in this follow: hook rows describe it. */
  private phaseActive = false;
  private readonly printed = new Set<string>();
  private readonly position = new Map<string, { i: number; n: number }>();
  private readonly progressStatus = new Map<string, string>();
  private liveShown = false;
  private closed = false;

  constructor(private readonly out: OutputStream, private readonly opts: TtyDisplayOptions) {
    this.g = opts.utf8 ? UTF8 : ASCII;
  }

  private get width(): number {
    // Read each time: the terminal may be resized while we draw.
    const cols = this.out.columns && this.out.columns > 0 ? this.out.columns : this.opts.fallbackColumns;
    return Math.max(40, cols - 1);
  }

  private paint(code: string, s: string): string {
    return this.opts.color ? `\x1b[${code}m${s}\x1b[0m` : s;
  }

  /** Print a finished line above the live one. */
  private permanent(s: string): void {
    this.out.write(`${this.liveShown ? ERASE_LINE : ''}${s}\n`);
    this.liveShown = false;
    this.redraw();
  }

  private redraw(): void {
    if (this.closed || !this.header) return;
    const line = this.liveLine();
    this.out.write(`${ERASE_LINE}${line}`);
    this.liveShown = true;
  }

  private liveLine(): string {
    const tx = this.tx;
    const pct = tx ? Math.max(0, Math.min(100, tx.progress)) : 0;
    const barWidth = this.width >= 60 ? 20 : 10;
    const filled = Math.round((pct / 100) * barWidth);
    const bar = `[${this.g.full.repeat(filled)}${this.g.empty.repeat(barWidth - filled)}] ${String(pct).padStart(3)}%`;
    let what: string;
    if (!tx) {
      what = 'waiting for the daemon';
    } else if (tx.state === 'queued' || (!this.phaseActive && isResting(tx.state))) {
      what = 'queued behind another transaction';
    } else if (tx.currentHook) {
      const p = this.position.get(tx.currentHook);
      const row = tx.hooks.find((h) => h.name === tx.currentHook);
      const status = this.progressStatus.get(tx.currentHook) ?? row?.status ?? '';
      const label = tx.state === 'rolling-back' ? 'rolling back ' : tx.state === 'cancelling' ? 'cancelling ' : '';
      what = `${label}${p ? `[${p.i + 1}/${p.n}] ` : ''}${tx.currentHook}${status ? `: ${sanitize(status)}` : ''}`;
    } else {
      what = tx.state;
    }
    const plainBar = bar.length;
    return `${this.paint('1', bar)}  ${truncate(what, this.width - plainBar - 2, this.g.ellipsis)}`;
  }

  private hookLine(name: string, result: string, message: string): string {
    const ok = result === 'success';
    const skipped = result === 'skipped';
    const mark = ok ? this.paint('32', this.g.ok) : skipped ? this.paint('33', this.g.skip) : this.paint('31', this.g.bad);
    const longest = Math.max(name.length, ...(this.tx?.hooks ?? []).map((h) => h.name.length));
    const nameCol = name.padEnd(Math.min(24, longest));
    const text = `${result}${message && !ok ? `: ${sanitize(message)}` : ''}`;
    return `  ${mark} ${nameCol} ${truncate(text, this.width - nameCol.length - 5, this.g.ellipsis)}`;
  }

  /** Print finished hooks the signals did not announce (late join, coalesced changes). */
  private catchUp(rows: HookRow[]): void {
    if (!this.phaseActive) return;
    for (const r of rows) {
      if (this.printed.has(r.name)) continue;
      if (r.result === 'pending' || r.result === 'running') continue;
      this.printed.add(r.name);
      this.permanent(this.hookLine(r.name, r.result, r.status));
    }
  }

  begin(h: FollowHeader): void {
    this.header = h;
    const dep = h.deployment ? `${h.deployment} ` : '';
    this.out.write(`${this.paint('1', HEADING[h.action])} ${dep}(transaction ${txIdOf(h.path)})\n`);
    this.redraw();
  }

  event(ev: FollowEvent): void {
    if (this.closed) return;
    switch (ev.type) {
      case 'state': {
        const prev = this.tx;
        this.tx = ev.transaction;
        if (!isResting(ev.transaction.state)) this.phaseActive = true;
        if (prev && prev.phase !== ev.transaction.phase) {
          // A new phase of the same transaction (commit after prepare): its rows start over.
          this.printed.clear();
          this.progressStatus.clear();
        }
        this.catchUp(ev.transaction.hooks);
        this.redraw();
        break;
      }
      case 'phase-started':
        this.phaseActive = true;
        this.printed.clear();
        this.progressStatus.clear();
        break;
      case 'hook-started':
        this.phaseActive = true;
        this.position.set(ev.hook, { i: ev.index, n: ev.count });
        this.progressStatus.delete(ev.hook);
        this.redraw();
        break;
      case 'hook-progress':
        this.progressStatus.set(ev.hook, ev.status);
        this.redraw();
        break;
      case 'hook-finished':
        if (!this.printed.has(ev.hook)) {
          this.printed.add(ev.hook);
          this.permanent(this.hookLine(ev.hook, ev.result, ev.message));
        }
        break;
      case 'message':
        this.permanent(this.paint('2', `      ${ev.hook ? `${ev.hook}: ` : ''}${truncate(sanitize(ev.line), this.width - 8 - ev.hook.length, this.g.ellipsis)}`));
        break;
      case 'finished': {
        this.tx = ev.transaction;
        // The final rows are the final phase's, even when it had ended
        // before we looked (already prepared, already committed).
        this.phaseActive = true;
        this.catchUp(ev.transaction.hooks);
        const good = ev.error === '' && ev.state !== 'failed' && ev.state !== 'cancelled';
        const mark = good ? this.paint('32', this.g.ok) : this.paint('31', this.g.bad);
        const summary = resultText(ev);
        const word = ev.state.charAt(0).toUpperCase() + ev.state.slice(1);
        const line = `${mark} ${this.paint('1', word)}${summary.slice(ev.state.length)}`;
        this.out.write(`${this.liveShown ? ERASE_LINE : ''}${line}\n`);
        this.liveShown = false;
        this.closed = true;
        break;
      }
    }
  }

  note(text: string): void {
    if (this.closed) {
      this.out.write(`${text}\n`);
      return;
    }
    this.permanent(this.paint('33', text));
  }

  close(): void {
    if (this.liveShown) this.out.write(`${ERASE_LINE}`);
    this.liveShown = false;
    this.closed = true;
  }
}
