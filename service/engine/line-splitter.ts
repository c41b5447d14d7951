/**
 * Incremental splitting of a step's stdout or stderr into lines.
 *
 * Works on bytes, not on decoded text: '\n' (0x0A) never occurs inside a
 * UTF-8 multibyte sequence, so splitting the bytes and decoding each whole
 * line can never break a character, wherever the read chunks were cut. Only
 * the pieces of an overlong line are cut mid-line, and those cuts are moved
 * back to a character boundary. Invalid UTF-8 decodes to U+FFFD, as
 * StringDecoder would.
 *
 * Two ways to receive the lines:
 * - `new LineSplitter(onLine)`: each line decoded to a string.
 * - `LineSplitter.batches(onLines)`: the lines of each read chunk at once,
 *   as byte ranges of the chunk (a LineBatch), each with a flag saying
 *   whether it is clean text (valid UTF-8, no '\r'). A hook may write a
 *   million lines a second and most of them are only copied into the
 *   transaction log, so nothing per line is decoded, allocated or called:
 *   the consumer handles a chunk's lines in one call (one timestamp, one
 *   copy of the chunk) and decodes the few lines it shows. The clean flag
 *   costs two native scans per chunk (memchr for '\r', a UTF-8 validation
 *   of the chunk's whole lines), not a JavaScript loop over each line.
 *
 * Memory is bounded by maxLineBytes per splitter whatever the step writes.
 */
import { isUtf8 } from 'node:buffer';

/** Lines longer than this many bytes are delivered in pieces of at most this size. */
export const MAX_LINE_BYTES = 64 * 1024;

const NL = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

/**
 * Lines found in one buffer, in order: line i (i < count) is
 * `buf[starts[i], ends[i])`, without its '\n'; `clean[i]` is 1 when those
 * bytes are valid UTF-8 and hold no '\r', so they can be copied as text as
 * they are (decoding would give back the same bytes). The splitter reuses
 * the batch and the buffer may be its own: both are lent for the call only.
 */
export class LineBatch {
  count = 0;
  readonly starts: Int32Array;
  readonly ends: Int32Array;
  readonly clean: Uint8Array;

  constructor(capacity: number) {
    this.starts = new Int32Array(capacity);
    this.ends = new Int32Array(capacity);
    this.clean = new Uint8Array(capacity);
  }
}

/** Called with each batch: see LineBatch. */
export type LineBatchHandler = (buf: Buffer, lines: LineBatch) => void;

/** Lines per batch at most (a 64 KiB chunk of short lines comes in a few). */
const BATCH_LINES = 1024;

/**
 * Largest n <= end such that buf[start, n) does not end inside an incomplete
 * UTF-8 sequence. Returns `end` when the tail is complete or not UTF-8 at all
 * (garbage is cut anywhere; it decodes to U+FFFD either way).
 */
export function utf8Boundary(buf: Uint8Array, start: number, end: number): number {
  // Look back over at most 3 continuation bytes for the lead byte.
  for (let i = end - 1; i >= start && i >= end - 4; i--) {
    const b = buf[i]!;
    if (b < 0x80) return end; // ASCII: complete
    if (b >= 0xc0) {
      const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
      return i + need > end ? i : end;
    }
    // 0x80..0xbf: continuation byte, keep looking for its lead
  }
  return end;
}

/** buf[start, end) is valid UTF-8 without '\r' (checked natively; for lines not covered by a chunk check). */
function isCleanText(buf: Buffer, start: number, end: number): boolean {
  if (start === end) return true;
  const part = buf.subarray(start, end);
  return part.indexOf(CR) === -1 && isUtf8(part);
}

function checkMax(maxLineBytes: number): void {
  if (!Number.isInteger(maxLineBytes) || maxLineBytes < 4) {
    // A piece must hold any one character (4 bytes) or cutting could stall.
    throw new RangeError(`maxLineBytes must be an integer >= 4, not ${maxLineBytes}`);
  }
}

/**
 * Splits a byte stream on '\n' and hands on each line without its '\n' (a
 * '\r' before it is kept: the bytes are passed on faithfully). Empty lines
 * are delivered as ''. A line longer than `maxLineBytes` is delivered as
 * several calls of at most `maxLineBytes` bytes each, cut at character
 * boundaries. `end()` delivers a final line that had no '\n'.
 */
export class LineSplitter {
  /** String mode: the line callback; null in batch mode. */
  private onLine: ((line: string) => void) | null;
  /** Batch mode (set by batches()): the batch callback, the batch and the buffer its lines are in. */
  private onBatch: LineBatchHandler | null = null;
  private batch: LineBatch | null = null;
  private batchBuf: Buffer | null = null;
  private readonly max: number;
  /** Bytes of the current, unfinished line (allocated on first need). */
  private pending: Buffer | null = null;
  private pendingLen = 0;
  private ended = false;

  /** Lines decoded to strings (invalid UTF-8 as U+FFFD). */
  constructor(onLine: (line: string) => void, maxLineBytes: number = MAX_LINE_BYTES) {
    checkMax(maxLineBytes);
    this.onLine = onLine;
    this.max = maxLineBytes;
  }

  /** Lines as byte ranges in batches, not decoded; see LineBatch. */
  static batches(onLines: LineBatchHandler, maxLineBytes: number = MAX_LINE_BYTES): LineSplitter {
    const s = new LineSplitter(() => {}, maxLineBytes);
    s.onLine = null;
    s.onBatch = onLines;
    s.batch = new LineBatch(BATCH_LINES);
    return s;
  }

  /**
   * Feed the next chunk of the stream. Nothing of it is kept past the call
   * (an unfinished line is copied), so a reader may reuse the chunk's buffer
   * for the next read (net.Socket's `onread` buffer).
   */
  push(chunk: Uint8Array): void {
    if (this.ended) throw new Error('LineSplitter.push after end');
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const n = buf.length;
    let pos = 0;
    if (this.pendingLen > 0) {
      // Finish the line an earlier chunk left open.
      const nl = buf.indexOf(NL);
      this.append(buf, 0, nl === -1 ? n : nl);
      if (nl === -1) return;
      this.flushPending();
      pos = nl + 1;
    }
    // Batch mode checks every whole line from here to the chunk's last '\n'
    // at once: a valid UTF-8 run cut at '\n' bytes gives valid UTF-8 lines.
    const batch = this.batch !== null;
    const last = batch ? buf.lastIndexOf(NL) : -1;
    const allValid = last > pos && isUtf8(buf.subarray(pos, last));
    let cr = -1; // the next '\r' at or after pos; n when there is none
    while (pos < n) {
      const nl = buf.indexOf(NL, pos);
      if (nl === -1) break;
      if (nl - pos > this.max) {
        // Overlong: pieces through the pending buffer, each checked itself.
        this.append(buf, pos, nl);
        this.flushPending();
      } else if (!batch) {
        this.onLine!(buf.toString('utf8', pos, nl));
      } else {
        let clean: boolean;
        if (allValid) {
          if (cr < pos) { cr = buf.indexOf(CR, pos); if (cr === -1) cr = n; }
          clean = cr >= nl;
        } else {
          clean = isCleanText(buf, pos, nl);
        }
        this.add(buf, pos, nl, clean);
      }
      pos = nl + 1;
    }
    this.deliver();
    if (pos < n) this.append(buf, pos, n);
  }

  /** The stream ended: deliver the unfinished last line, if any. Idempotent. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.pendingLen > 0) this.flushPending();
    this.pending = null;
  }

  /** Queue one line of `buf` in the batch; a batch holds lines of one buffer only. */
  private add(buf: Buffer, s: number, e: number, clean: boolean): void {
    const b = this.batch!;
    if (b.count > 0 && this.batchBuf !== buf) this.deliver();
    this.batchBuf = buf;
    b.starts[b.count] = s;
    b.ends[b.count] = e;
    b.clean[b.count] = clean ? 1 : 0;
    if (++b.count === b.starts.length) this.deliver();
  }

  private deliver(): void {
    const b = this.batch;
    if (b === null || b.count === 0) return;
    const buf = this.batchBuf!;
    this.batchBuf = null;
    try {
      this.onBatch!(buf, b);
    } finally {
      b.count = 0;
    }
  }

  /** One line or piece from the pending buffer, delivered at once (the buffer is reused next). */
  private emitPending(p: Buffer, len: number): void {
    if (this.batch === null) {
      this.onLine!(p.toString('utf8', 0, len));
      return;
    }
    this.add(p, 0, len, isCleanText(p, 0, len));
    this.deliver();
  }

  /** Append buf[s, e) (all of one line) to the pending line, emitting full pieces. */
  private append(buf: Buffer, s: number, e: number): void {
    // Lines of this chunk queued before an overlong one go first.
    this.deliver();
    while (s < e) {
      if (this.pendingLen === this.max) this.emitPiece();
      this.pending ??= Buffer.allocUnsafe(this.max);
      const take = Math.min(this.max - this.pendingLen, e - s);
      buf.copy(this.pending, this.pendingLen, s, s + take);
      this.pendingLen += take;
      s += take;
    }
  }

  /**
   * The pending line is full and more of it follows: deliver a piece cut at
   * a character boundary and keep the cut-off tail (at most 3 bytes).
   */
  private emitPiece(): void {
    const p = this.pending!;
    let cut = utf8Boundary(p, 0, this.max);
    if (cut === 0) cut = this.max; // cannot happen with max >= 4; never emit nothing
    this.emitPending(p, cut);
    p.copyWithin(0, cut, this.max);
    this.pendingLen = this.max - cut;
  }

  private flushPending(): void {
    const len = this.pendingLen;
    this.pendingLen = 0;
    this.emitPending(this.pending ?? EMPTY, len);
  }
}
