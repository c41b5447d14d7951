/**
 * The per-transaction log, `<state>/logs/<id>.log`: every line a hook wrote
 * and every event, never rate limited (GetLog reads it). Lines are
 * `<ISO time> <hook or -> <text>`; newlines inside text are escaped so one
 * record is always one line.
 *
 * Writes are batched in memory and flushed synchronously past a size bound
 * or on a short timer: a chatty hook costs a few large write(2)s, memory
 * stays bounded, and the file is at most 100 ms behind.
 *
 * The batch is encoded into one buffer as records arrive (joining an array
 * of a million small strings cost more than the hook that wrote them). The
 * buffer exists only while records are pending at a high rate: a flush by
 * the timer releases it, so thousands of idle transactions in history hold
 * none.
 *
 * A hook's output lines come as bytes, a read chunk's worth at a time
 * (writeLines): clean lines (valid UTF-8, no '\r') are never decoded. Their
 * bytes are copied once into a staging area behind the batch, then each is
 * moved into place behind a `<time> <hook> ` prefix cached per millisecond
 * (copyWithin: no allocation and no call into C++ per line, which is what
 * makes 100 MB of output cheap). Any other line takes the text path, so the
 * file is byte for byte what write() of the decoded line gives (U+FFFD for
 * invalid sequences, '\r' escaped).
 */
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { LineBatch } from './line-splitter.js';

const FLUSH_BYTES = 256 * 1024;
const FLUSH_MS = 100;
/** After the records in the batch buffer: the staging area of writeLines. */
const STAGE_BYTES = 64 * 1024;
const NL = 0x0a;

export class TransactionLog {
  private fd: number | null = null;
  /** Encoded records not yet written; null when there are none and none came recently. */
  private buf: Buffer | null = null;
  private bufBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private lastMs = 0;
  private lastIso = '';
  /** `<time> <hook> ` as bytes for writeLines, for prefixMs and prefixHook. */
  private prefix: Buffer | null = null;
  private prefixMs = 0;
  private prefixHook = '';
  private failed = false;

  constructor(readonly file: string, private readonly onError: (e: Error) => void = () => {}) {}

  private ensureOpen(): number | null {
    if (this.fd === null && !this.failed) {
      try {
        fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
        this.fd = fs.openSync(this.file, 'a', 0o600);
      } catch (e) {
        this.failed = true;
        this.onError(e as Error);
      }
    }
    return this.fd;
  }

  private stamp(now = Date.now()): string {
    if (now !== this.lastMs) {
      this.lastMs = now;
      this.lastIso = new Date(now).toISOString();
    }
    return this.lastIso;
  }

  /** Append one record. `hook` is '' for transaction-level events. */
  write(hook: string, text: string): void {
    const clean = text.includes('\n') || text.includes('\r')
      ? text.replace(/\r/g, '\\r').replace(/\n/g, '\\n') : text;
    const line = `${this.stamp()} ${hook || '-'} ${clean}\n`;
    // A UTF-16 code unit is at most 3 bytes of UTF-8.
    if (this.bufBytes + line.length * 3 > FLUSH_BYTES) {
      this.flush(true);
      if (line.length * 3 > FLUSH_BYTES) {
        this.writeOut(line);
        return;
      }
    }
    this.bufBytes += this.batch().write(line, this.bufBytes, 'utf8');
    this.armFlush();
  }

  /** The batch buffer: FLUSH_BYTES of records, then STAGE_BYTES of staging. */
  private batch(): Buffer {
    return this.buf ??= Buffer.allocUnsafe(FLUSH_BYTES + STAGE_BYTES);
  }

  /**
   * Append one record per line of `lines` (lines of `buf`, a hook's output;
   * see LineBatch), all with the same time. The bytes are copied before
   * returning. A clean line is copied as it is; any other is decoded and
   * written as write() writes text. Either way each record is what
   * write(hook, buf.toString('utf8', start, end)) would append.
   */
  writeLines(hook: string, buf: Buffer, lines: LineBatch): void {
    const { count, starts, ends, clean } = lines;
    if (count === 0) return;
    const now = Date.now();
    let prefix = this.prefix;
    if (prefix === null || now !== this.prefixMs || hook !== this.prefixHook) {
      prefix = this.prefix = Buffer.from(`${this.stamp(now)} ${hook || '-'} `, 'utf8');
      this.prefixMs = now;
      this.prefixHook = hook;
    }
    const plen = prefix.length;
    let i = 0;
    while (i < count) {
      if (clean[i] === 0) {
        this.write(hook, buf.toString('utf8', starts[i], ends[i]));
        i += 1;
        continue;
      }
      // A run of clean lines whose bytes fit the staging area: one copy in.
      const base = starts[i]!;
      let j = i;
      while (j < count && clean[j] === 1 && ends[j]! - base <= STAGE_BYTES) j++;
      if (j === i) {
        // One line longer than the staging area (not from LineSplitter, whose lines are at most 64 KiB).
        this.flush(true);
        this.writeOut(Buffer.concat([prefix, buf.subarray(starts[i], ends[i]), Buffer.of(NL)]));
        i += 1;
        continue;
      }
      let out = this.batch();
      buf.copy(out, FLUSH_BYTES, base, ends[j - 1]);
      for (let k = i; k < j; k++) {
        const s = FLUSH_BYTES + starts[k]! - base;
        const e = FLUSH_BYTES + ends[k]! - base;
        if (this.bufBytes + plen + (e - s) + 1 > FLUSH_BYTES) {
          // Writes the records only; the staging area is kept with the buffer.
          this.flush(true);
          out = this.batch();
        }
        let o = this.bufBytes;
        out.set(prefix, o);
        o += plen;
        out.copyWithin(o, s, e);
        o += e - s;
        out[o++] = NL;
        this.bufBytes = o;
      }
      i = j;
    }
    this.armFlush();
  }

  private armFlush(): void {
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Write what is pending. `keep`: more is coming at once; keep the buffer. */
  flush(keep = false): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const buf = this.buf;
    const n = this.bufBytes;
    this.bufBytes = 0;
    if (!keep) this.buf = null;
    if (buf === null || n === 0) return;
    this.writeOut(buf.subarray(0, n));
  }

  private writeOut(data: string | Buffer): void {
    const fd = this.ensureOpen();
    if (fd === null) return;
    try {
      if (typeof data === 'string') fs.writeSync(fd, data);
      else fs.writeSync(fd, data);
    } catch (e) {
      this.onError(e as Error);
    }
  }

  close(): void {
    this.flush();
    if (this.fd !== null) {
      try { fs.closeSync(this.fd); } catch { /* already closed */ }
      this.fd = null;
    }
  }

  /**
   * The last `maxLines` lines (optionally only those of `hook`), oldest
   * first. Reads backwards in blocks so a 100 MB log costs what it returns.
   */
  async tail(maxLines: number, hook = ''): Promise<string[]> {
    this.flush();
    return readLogTail(this.file, maxLines, hook);
  }
}

export async function readLogTail(file: string, maxLines: number, hook = ''): Promise<string[]> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  try {
    const size = (await fh.stat()).size;
    const out: string[] = [];
    const BLOCK = 256 * 1024;
    let pos = size;
    let rest = Buffer.alloc(0);
    const marker = hook ? ` ${hook} ` : '';
    const take = (line: string): boolean => {
      if (line.length === 0) return false;
      if (marker) {
        // "<iso> <hook> <text>": the hook field starts after the first space.
        const sp = line.indexOf(' ');
        if (line.slice(sp, sp + marker.length) !== marker) return false;
      }
      out.push(line);
      return out.length >= maxLines;
    };
    while (pos > 0 && out.length < maxLines) {
      const len = Math.min(BLOCK, pos);
      pos -= len;
      const chunk = Buffer.alloc(len);
      await fh.read(chunk, 0, len, pos);
      let data = Buffer.concat([chunk, rest]);
      let end = data.length;
      for (let i = data.length - 1; i >= 0; i--) {
        if (data[i] === 0x0a) {
          if (take(data.subarray(i + 1, end).toString('utf8'))) return out.reverse();
          end = i;
        }
      }
      rest = data.subarray(0, end);
      data = Buffer.alloc(0);
    }
    if (pos === 0 && rest.length > 0 && out.length < maxLines) take(rest.toString('utf8'));
    return out.reverse();
  } finally {
    await fh.close();
  }
}
