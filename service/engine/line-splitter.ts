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
 * Memory is bounded by maxLineBytes per splitter whatever the step writes.
 */

/** Lines longer than this many bytes are delivered in pieces of at most this size. */
export const MAX_LINE_BYTES = 64 * 1024;

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

/**
 * Splits a byte stream on '\n' and calls `onLine` with each line, without its
 * '\n' (a '\r' before it is kept: the bytes are passed on faithfully).
 * Empty lines are delivered as ''. A line longer than `maxLineBytes` is
 * delivered as several calls of at most `maxLineBytes` bytes each, cut at
 * character boundaries. `end()` delivers a final line that had no '\n'.
 */
export class LineSplitter {
  private readonly onLine: (line: string) => void;
  private readonly max: number;
  /** Bytes of the current, unfinished line (allocated on first need). */
  private pending: Buffer | null = null;
  private pendingLen = 0;
  private ended = false;

  constructor(onLine: (line: string) => void, maxLineBytes: number = MAX_LINE_BYTES) {
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < 4) {
      // A piece must hold any one character (4 bytes) or cutting could stall.
      throw new RangeError(`maxLineBytes must be an integer >= 4, not ${maxLineBytes}`);
    }
    this.onLine = onLine;
    this.max = maxLineBytes;
  }

  /** Feed the next chunk of the stream. */
  push(chunk: Uint8Array): void {
    if (this.ended) throw new Error('LineSplitter.push after end');
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const n = buf.length;
    let pos = 0;
    while (pos < n) {
      const nl = buf.indexOf(10, pos);
      if (nl !== -1 && this.pendingLen === 0 && nl - pos <= this.max) {
        // The common case: a whole line inside this chunk, decoded in place.
        this.onLine(buf.toString('utf8', pos, nl));
        pos = nl + 1;
        continue;
      }
      const end = nl === -1 ? n : nl;
      this.append(buf, pos, end);
      if (nl === -1) return;
      this.flushPending();
      pos = nl + 1;
    }
  }

  /** The stream ended: deliver the unfinished last line, if any. Idempotent. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.pendingLen > 0) this.flushPending();
    this.pending = null;
  }

  /** Append buf[s, e) (all of one line) to the pending line, emitting full pieces. */
  private append(buf: Buffer, s: number, e: number): void {
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
    this.onLine(p.toString('utf8', 0, cut));
    p.copyWithin(0, cut, this.max);
    this.pendingLen = this.max - cut;
  }

  private flushPending(): void {
    const line = this.pending === null ? '' : this.pending.toString('utf8', 0, this.pendingLen);
    this.pendingLen = 0;
    this.onLine(line);
  }
}
