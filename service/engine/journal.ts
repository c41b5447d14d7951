/**
 * The write-ahead journal: one append-only file per transaction,
 * `<state>/journal/<id>.jnl`, one JSON record per line.
 *
 * Invariants the engine relies on:
 * - A `step` record is durable (written, then fdatasync'ed by whoever
 *   starts the step, right before its exec: step-spec.ts beforeExec) before
 *   the step's process is spawned, so after any crash we know every step
 *   that may have started. `done` and `pid` records are written (page
 *   cache) but synced only with the next durable record: losing them in a
 *   power cut only makes recovery re-run an abort or commit, which steps
 *   must tolerate anyway.
 * - A file is created with O_EXCL, synced, and its directory synced before it
 *   is used, so a transaction never exists in memory without a journal.
 * - Only the last line may be torn (a crash mid-write): it is ignored when
 *   read and cut off before new records are appended. Any other unreadable
 *   line marks the journal corrupt; recovery then assumes the worst.
 */
import { promises as fsp, constants as fsc, writeSync } from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../model/errors.js';
import { fsyncDir } from './fs-atomic.js';
import type { HookDefinition, HookOrigin, Phase, StepResult, TransactionState } from '../model/types.js';

export const JOURNAL_VERSION = 1;
const SUFFIX = '.jnl';

export interface JournalHook {
  name: string;
  definition: HookDefinition;
  source: string;
  digest: string;
  refused: string | null;
  /**
   * Where the file was found: it decides the default root of the prepare
   * step (new-root.ts stepRoot). Absent in journals written before roots
   * existed; those steps run on the host root, as they did then.
   */
  origin?: HookOrigin;
}

export type JournalRecord =
  | {
    t: 'begin'; v: number; id: string; deployment: string; deploymentKey: string;
    createdUsec: number; fingerprint: string; dryRun: boolean; hooks: JournalHook[];
  }
  | { t: 'phase'; phase: Phase; usec: number; timeoutSec: number }
  | { t: 'state'; state: TransactionState; error: ErrorCode | ''; message: string; usec: number }
  | { t: 'step'; phase: Phase; hook: string; rollback: boolean; usec: number }
  | { t: 'pid'; phase: Phase; hook: string; pid: number; start: string | null }
  | { t: 'done'; phase: Phase; hook: string; rollback: boolean; result: StepResult; message: string; usec: number }
  /**
   * The step exited 75 and waits for attempt `attempt` at `dueUsec`
   * (retry.ts); durable before the wait, so a restart resumes the wait,
   * not the work. It ends the attempt as a `done` record would.
   */
  | {
    t: 'retry'; phase: Phase; hook: string; rollback: boolean; attempt: number;
    firstUsec: number; dueUsec: number; windowEndUsec: number; message: string; usec: number;
  };

export type BeginRecord = Extract<JournalRecord, { t: 'begin' }>;

export interface ReadJournal {
  id: string;
  records: JournalRecord[];
  /** The last line was incomplete and was ignored. */
  torn: boolean;
  /** 1-based line number of the first unreadable line before the last, if any. */
  corruptLine: number | null;
}

export const nowUsec = (): number => Date.now() * 1000;

/** Parse a journal's bytes. Pure: exported for tests. */
export function parseJournal(id: string, text: string): ReadJournal {
  const records: JournalRecord[] = [];
  let torn = false;
  let corruptLine: number | null = null;
  const lines = text.split('\n');
  // A file that ends with '\n' splits into [..., '']: the last element is
  // the (empty) remainder; anything else there is a torn write.
  const last = lines.pop() ?? '';
  if (last.length > 0) torn = true;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.length === 0) continue;
    try {
      const rec = JSON.parse(line) as JournalRecord;
      if (typeof rec !== 'object' || rec === null || typeof (rec as { t?: unknown }).t !== 'string') {
        throw new Error('not a record');
      }
      records.push(rec);
    } catch {
      corruptLine ??= i + 1;
    }
  }
  return { id, records, torn, corruptLine };
}

/** An open journal of one transaction. Appends are applied in call order. */
export class TransactionJournal {
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(readonly file: string, private readonly fh: fsp.FileHandle) {}

  /** Create a new journal whose first record is `begin`; durable on return. */
  static async create(dir: string, begin: BeginRecord): Promise<TransactionJournal> {
    const file = path.join(dir, begin.id + SUFFIX);
    const fh = await fsp.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_APPEND, 0o600);
    try {
      await fh.write(JSON.stringify(begin) + '\n');
      await fh.datasync();
      await fsyncDir(dir);
    } catch (e) {
      await fh.close().catch(() => {});
      await fsp.unlink(file).catch(() => {});
      throw e;
    }
    return new TransactionJournal(file, fh);
  }

  /** Reopen an existing journal for appending, cutting off a torn last record. */
  static async reopen(dir: string, id: string): Promise<TransactionJournal> {
    const file = path.join(dir, id + SUFFIX);
    const fh = await fsp.open(file, fsc.O_RDWR);
    try {
      const buf = await fh.readFile();
      const end = buf.lastIndexOf(0x0a) + 1;
      if (end !== buf.length) {
        await fh.truncate(end);
        await fh.datasync();
      }
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
    await fh.close();
    const wfh = await fsp.open(file, fsc.O_WRONLY | fsc.O_APPEND);
    return new TransactionJournal(file, wfh);
  }

  /**
   * Append a record. With `durable`, the returned promise settles only once
   * this record and every one before it are on stable storage.
   *
   * The record is written (to the page cache) before append returns, with
   * a synchronous write(2) of one short line: records reach the file in
   * call order without a queue, and a step costs the event loop no round
   * trip through the thread pool except its one fdatasync (each round trip
   * waits for a time slice on a busy machine).
   */
  append(rec: JournalRecord, durable: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`journal ${this.file} is closed`));
    const line = JSON.stringify(rec) + '\n';
    try {
      writeSync(this.fh.fd, line);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!durable) return Promise.resolve();
    const p = this.chain.then(() => this.fh.datasync());
    // Keep the chain alive after a failure so later syncs still run; the
    // caller of the failed append sees the error.
    this.chain = p.catch(() => {});
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.chain;
    await this.fh.close().catch(() => {});
  }
}

/** The journal directory: listing, reading and pruning transactions. */
export class JournalStore {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Transaction ids with a journal, in creation order (ids sort by time). */
  async list(): Promise<string[]> {
    const names = await fsp.readdir(this.dir);
    return names.filter((n) => n.endsWith(SUFFIX)).map((n) => n.slice(0, -SUFFIX.length)).sort();
  }

  async read(id: string): Promise<ReadJournal> {
    const text = await fsp.readFile(path.join(this.dir, id + SUFFIX), 'utf8');
    return parseJournal(id, text);
  }

  create(begin: BeginRecord): Promise<TransactionJournal> {
    return TransactionJournal.create(this.dir, begin);
  }

  reopen(id: string): Promise<TransactionJournal> {
    return TransactionJournal.reopen(this.dir, id);
  }

  /** Remove a finished transaction's journal (pruning); durable. */
  async remove(id: string): Promise<void> {
    await fsp.rm(path.join(this.dir, id + SUFFIX), { force: true });
  }

  async sync(): Promise<void> {
    await fsyncDir(this.dir);
  }
}
