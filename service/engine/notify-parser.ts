/**
 * Incremental parser for the sd_notify-style lines a step writes to fd 3
 * (BOOTC_PRESTAGE_NOTIFY_FD):
 *
 *   PROGRESS=<0..100>          integer percent; any other value is ignored
 *   STATUS=<text>              free text (UTF-8); empty clears the status
 *   EXTEND_TIMEOUT_USEC=<n>    systemd semantics: the deadline becomes at
 *                              least now + n microseconds
 *
 * Anything else (unknown keys, malformed values, lines longer than
 * MAX_NOTIFY_LINE_BYTES) is ignored and reported through `onIgnored`. Empty
 * lines are ignored silently. End of stream terminates an unfinished line.
 *
 * A hook may write a million PROGRESS lines as fast as it can, so the parser
 * works on the bytes of each chunk in place: it allocates nothing per line
 * (only the last STATUS of a chunk is decoded), and it returns one update per
 * chunk carrying the last PROGRESS, the last STATUS and the largest extension
 * seen in it. Memory is bounded by the line limit. The line a flood is made
 * of, `PROGRESS=<n>`, is recognised and parsed in a single pass over its
 * bytes (a third of the cost of finding its '\n' with indexOf first); any
 * line that is not exactly that takes the general path, so the results do
 * not depend on which path saw a line.
 */
import { utf8Boundary } from './line-splitter.js';

/** Lines longer than this (not counting '\n') are ignored. */
export const MAX_NOTIFY_LINE_BYTES = 4096;
/** An ignored line is reported by at most this many leading bytes. */
const REPORT_BYTES = 256;

/** What one chunk changed; null fields were not present in it. */
export interface NotifyUpdate {
  /** The last valid PROGRESS value of the chunk. */
  progress: number | null;
  /** The last STATUS text of the chunk. */
  status: string | null;
  /** The largest valid EXTEND_TIMEOUT_USEC of the chunk, in microseconds. */
  extendTimeoutUsec: number | null;
}

export interface NotifyParserOptions {
  /** Called for each ignored line (its first 256 bytes, decoded) with the reason. */
  onIgnored?: (line: string, reason: string) => void;
  /** Default MAX_NOTIFY_LINE_BYTES; for tests. */
  maxLineBytes?: number;
}

const PROGRESS = Buffer.from('PROGRESS=');
const PROGRESS_LEN = PROGRESS.length;
/** Bytes after the 'P' of the shortest PROGRESS line, "PROGRESS=0\n". */
const PROGRESS_LINE_MIN = PROGRESS_LEN + 1;
const STATUS = Buffer.from('STATUS=');
const EXTEND = Buffer.from('EXTEND_TIMEOUT_USEC=');
const NL = 10;
const EQ = 61;

function hasPrefix(buf: Buffer, s: number, e: number, prefix: Buffer): boolean {
  const n = prefix.length;
  if (e - s < n) return false;
  for (let i = 0; i < n; i++) if (buf[s + i] !== prefix[i]) return false;
  return true;
}

/** Decimal digits in buf[s, e) as a number, or -1 when empty or not all digits. */
function parseDigits(buf: Buffer, s: number, e: number, maxDigits: number): number {
  if (s >= e || e - s > maxDigits) return -1;
  let v = 0;
  for (let i = s; i < e; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** See the module comment. One parser per step; not reusable after end(). */
export class NotifyParser {
  private readonly onIgnored: ((line: string, reason: string) => void) | undefined;
  private readonly max: number;
  /** The unfinished last line of the previous chunk (made when first needed: most steps never write fd 3). */
  private carry: Buffer | null = null;
  private carryLen = 0;
  /** The current line is over the limit: drop bytes until its '\n'. */
  private discarding = false;
  /** First bytes of the overlong line, for the report. */
  private discardHead: string = '';

  // Per-chunk results; reset by push(). STATUS found in the chunk itself is
  // kept as a byte range and decoded once, at the end of the chunk.
  private progress = -1;
  private extend = -1;
  private statusText: string | null = null;
  private statusBuf: Buffer | null = null;
  private statusStart = 0;
  private statusEnd = 0;

  constructor(opts: NotifyParserOptions = {}) {
    this.onIgnored = opts.onIgnored;
    this.max = opts.maxLineBytes ?? MAX_NOTIFY_LINE_BYTES;
    if (!Number.isInteger(this.max) || this.max < 1) {
      throw new RangeError(`maxLineBytes must be a positive integer, not ${this.max}`);
    }
  }

  private carryBuf(): Buffer {
    return this.carry ??= Buffer.allocUnsafe(this.max);
  }

  /**
   * Parse the next chunk; returns what it changed, or null if nothing.
   * Nothing of the chunk is kept past the call (an unfinished line is
   * copied), so a reader may reuse its buffer for the next read.
   */
  push(chunk: Uint8Array): NotifyUpdate | null {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.reset();
    const n = buf.length;
    let pos = 0;
    if (this.discarding || this.carryLen > 0) {
      // Finish the line the previous chunk left open.
      const nl = buf.indexOf(NL);
      const end = nl === -1 ? n : nl;
      if (this.discarding) {
        // still dropping
      } else if (this.carryLen + end > this.max) {
        // Fill the carry first, so the report shows the line's head.
        buf.copy(this.carryBuf(), this.carryLen, 0, this.max - this.carryLen);
        this.startDiscarding(this.carryBuf(), 0, this.max);
        this.carryLen = 0;
      } else {
        buf.copy(this.carryBuf(), this.carryLen, 0, end);
        this.carryLen += end;
      }
      if (nl === -1) return this.result();
      if (this.discarding) {
        this.endDiscarding();
      } else {
        this.line(this.carryBuf(), 0, this.carryLen, true);
        this.carryLen = 0;
      }
      pos = nl + 1;
    }
    while (pos < n) {
      if (buf[pos] === 0x50 && n - pos > PROGRESS_LINE_MIN) {
        // The line a progress flood is made of, PROGRESS=<1-3 digits>\n,
        // parsed in one pass over its bytes: no memchr call per line.
        const v = this.progressLine(buf, pos, n);
        if (v >= 0) {
          pos = v;
          continue;
        }
      }
      const nl = buf.indexOf(NL, pos);
      if (nl === -1) {
        if (n - pos > this.max) {
          this.startDiscarding(buf, pos, n);
        } else {
          buf.copy(this.carryBuf(), 0, pos, n);
          this.carryLen = n - pos;
        }
        break;
      }
      if (nl - pos > this.max) {
        this.startDiscarding(buf, pos, nl);
        this.endDiscarding();
      } else {
        this.line(buf, pos, nl, false);
      }
      pos = nl + 1;
    }
    return this.result();
  }

  /**
   * If buf[pos, ...) holds a whole valid `PROGRESS=<0..100>` line within the
   * limit, take its value and return the position after its '\n';
   * otherwise -1, and the general path parses the line (same result).
   */
  private progressLine(buf: Buffer, pos: number, n: number): number {
    for (let k = 1; k < PROGRESS_LEN; k++) if (buf[pos + k] !== PROGRESS[k]) return -1;
    let i = pos + PROGRESS_LEN;
    let v = 0;
    const last = Math.min(n, i + 3);
    for (; i < last; i++) {
      const d = buf[i]! - 48;
      if (d < 0 || d > 9) break;
      v = v * 10 + d;
    }
    if (i === pos + PROGRESS_LEN || i >= n || buf[i] !== NL || v > 100 || i - pos > this.max) return -1;
    this.progress = v;
    return i + 1;
  }

  /** The stream ended: an unfinished last line counts as complete. */
  end(): NotifyUpdate | null {
    this.reset();
    if (this.discarding) {
      this.endDiscarding();
    } else if (this.carryLen > 0) {
      this.line(this.carryBuf(), 0, this.carryLen, true);
      this.carryLen = 0;
    }
    return this.result();
  }

  private reset(): void {
    this.progress = -1;
    this.extend = -1;
    this.statusText = null;
    this.statusBuf = null;
  }

  private result(): NotifyUpdate | null {
    let status = this.statusText;
    if (this.statusBuf !== null) {
      status = this.statusBuf.toString('utf8', this.statusStart, this.statusEnd);
      this.statusBuf = null;
    }
    if (this.progress < 0 && this.extend < 0 && status === null) return null;
    return {
      progress: this.progress < 0 ? null : this.progress,
      status,
      extendTimeoutUsec: this.extend < 0 ? null : this.extend,
    };
  }

  /** One complete line buf[s, e), without its '\n'. `copied`: buf is the carry buffer. */
  private line(buf: Buffer, s: number, e: number, copied: boolean): void {
    if (s === e) return;
    switch (buf[s]) {
      case 0x50: // 'P'
        if (hasPrefix(buf, s, e, PROGRESS)) {
          const v = parseDigits(buf, s + PROGRESS.length, e, 3);
          if (v >= 0 && v <= 100) this.progress = v;
          else this.ignore(buf, s, e, 'PROGRESS is not an integer from 0 to 100');
          return;
        }
        break;
      case 0x53: // 'S'
        if (hasPrefix(buf, s, e, STATUS)) {
          if (copied) {
            // The carry buffer is reused: decode now (once per chunk at most).
            this.statusText = buf.toString('utf8', s + STATUS.length, e);
            this.statusBuf = null;
          } else {
            this.statusBuf = buf;
            this.statusStart = s + STATUS.length;
            this.statusEnd = e;
          }
          return;
        }
        break;
      case 0x45: // 'E'
        if (hasPrefix(buf, s, e, EXTEND)) {
          // u64 in systemd; 20 digits. Precision beyond 2^53 µs (285 years) is moot.
          const v = parseDigits(buf, s + EXTEND.length, e, 20);
          if (v >= 0) this.extend = Math.max(this.extend, v);
          else this.ignore(buf, s, e, 'EXTEND_TIMEOUT_USEC is not a number of microseconds');
          return;
        }
        break;
      default:
        break;
    }
    if (this.onIgnored === undefined) return;
    let eq = s;
    while (eq < e && buf[eq] !== EQ) eq++;
    this.ignore(buf, s, e, eq > s && eq < e ? 'unknown key' : 'not a KEY=VALUE line');
  }

  private ignore(buf: Buffer, s: number, e: number, reason: string): void {
    if (this.onIgnored === undefined) return;
    const cut = Math.min(e, s + REPORT_BYTES);
    this.onIgnored(buf.toString('utf8', s, cut < e ? utf8Boundary(buf, s, cut) : e), reason);
  }

  private startDiscarding(buf: Buffer, s: number, e: number): void {
    this.discarding = true;
    if (this.onIgnored !== undefined) {
      // Never more than the carry can hold, so the report does not depend on chunking.
      const cut = Math.min(e, s + REPORT_BYTES, s + this.max);
      this.discardHead = buf.toString('utf8', s, utf8Boundary(buf, s, cut));
    }
  }

  private endDiscarding(): void {
    this.discarding = false;
    const head = this.discardHead;
    this.discardHead = '';
    this.onIgnored?.(head, `line longer than ${this.max} bytes`);
  }
}
