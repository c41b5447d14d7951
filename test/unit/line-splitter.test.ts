/**
 * LineSplitter: the same lines whatever the chunking, characters never
 * broken, overlong lines in bounded pieces; the byte interface gives the
 * same lines undecoded, each with the right clean flag.
 */
import test from 'ava';
import { isUtf8 } from 'node:buffer';
import { LineSplitter, MAX_LINE_BYTES, utf8Boundary } from '../../service/engine/line-splitter.js';

function splitChunks(chunks: Uint8Array[], max?: number): string[] {
  const lines: string[] = [];
  const s = new LineSplitter((l) => lines.push(l), max);
  for (const c of chunks) s.push(c);
  s.end();
  return lines;
}

interface ByteLine { bytes: Buffer; clean: boolean }

/** The batch interface, flattened: each line copied during the call (buffer and batch are only lent). */
function splitBytes(chunks: Uint8Array[], max?: number, batches?: number[]): ByteLine[] {
  const lines: ByteLine[] = [];
  const s = LineSplitter.batches((buf, b) => {
    batches?.push(b.count);
    for (let i = 0; i < b.count; i++) {
      lines.push({ bytes: Buffer.from(buf.subarray(b.starts[i], b.ends[i])), clean: b.clean[i] === 1 });
    }
  }, max);
  for (const c of chunks) s.push(c);
  s.end();
  return lines;
}

/** What `clean` must say: valid UTF-8 and no '\r'. */
const isClean = (b: Buffer) => isUtf8(b) && !b.includes(0x0d);

/** Reference: split the bytes on '\n', decode each line whole; a final '' (after a last '\n') is not a line. */
function reference(bytes: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (;;) {
    const nl = bytes.indexOf(10, start);
    if (nl === -1) break;
    out.push(bytes.toString('utf8', start, nl));
    start = nl + 1;
  }
  if (start < bytes.length) out.push(bytes.toString('utf8', start));
  return out;
}

/** Deterministic pseudo-random bytes (xorshift), biased towards '\n' and UTF-8 lead bytes. */
function randomBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  const pick = [0x0a, 0x41, 0x62, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0x0d, 0xff, 0x00, 0x20];
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = pick[x % pick.length]!;
  }
  return b;
}

const SAMPLE = Buffer.from('héllo wörld\n\n€ and 😀 emoji\r\nlast line, no newline — ünïcödé');
const SAMPLE_LINES = ['héllo wörld', '', '€ and 😀 emoji\r', 'last line, no newline — ünïcödé'];

test('LineSplitter - whole input in one chunk', (t) => {
  t.deepEqual(splitChunks([SAMPLE]), SAMPLE_LINES);
});

test('LineSplitter - same lines for a cut at every byte position', (t) => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    t.deepEqual(splitChunks([SAMPLE.subarray(0, i), SAMPLE.subarray(i)]), SAMPLE_LINES, `cut at ${i}`);
  }
});

test('LineSplitter - same lines for every pair of cut positions', (t) => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    for (let j = i; j <= SAMPLE.length; j++) {
      const got = splitChunks([SAMPLE.subarray(0, i), SAMPLE.subarray(i, j), SAMPLE.subarray(j)]);
      if (JSON.stringify(got) !== JSON.stringify(SAMPLE_LINES)) {
        t.fail(`cuts at ${i}, ${j}: ${JSON.stringify(got)}`);
        return;
      }
    }
  }
  t.pass();
});

test('LineSplitter - one byte at a time', (t) => {
  const chunks = [...SAMPLE].map((b) => Uint8Array.of(b));
  t.deepEqual(splitChunks(chunks), SAMPLE_LINES);
});

test('LineSplitter - random bytes (invalid UTF-8, NUL, CR) match whole-line decoding at every cut', (t) => {
  for (let seed = 1; seed <= 20; seed++) {
    const bytes = randomBytes(200, seed);
    const want = reference(bytes);
    for (let i = 0; i <= bytes.length; i++) {
      const got = splitChunks([bytes.subarray(0, i), bytes.subarray(i)]);
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        t.fail(`seed ${seed}, cut at ${i}`);
        return;
      }
    }
  }
  t.pass();
});

test('LineSplitter - empty input gives no line; a lone newline gives one empty line', (t) => {
  t.deepEqual(splitChunks([]), []);
  t.deepEqual(splitChunks([Buffer.alloc(0)]), []);
  t.deepEqual(splitChunks([Buffer.from('\n')]), ['']);
  t.deepEqual(splitChunks([Buffer.from('\n\n')]), ['', '']);
  t.deepEqual(splitChunks([Buffer.from('a\n')]), ['a']);
});

test('LineSplitter - a plain Uint8Array chunk is accepted', (t) => {
  t.deepEqual(splitChunks([new Uint8Array(Buffer.from('x\ny'))]), ['x', 'y']);
});

test('LineSplitter - end() flushes once; push after end throws', (t) => {
  const lines: string[] = [];
  const s = new LineSplitter((l) => lines.push(l));
  s.push(Buffer.from('abc'));
  t.deepEqual(lines, []);
  s.end();
  s.end();
  t.deepEqual(lines, ['abc']);
  t.throws(() => s.push(Buffer.from('x')));
});

test('LineSplitter - a line of exactly the limit is one line; one byte more is two pieces', (t) => {
  const max = 16;
  t.deepEqual(splitChunks([Buffer.from(`${'a'.repeat(max)}\n`)], max), ['a'.repeat(max)]);
  t.deepEqual(splitChunks([Buffer.from(`${'a'.repeat(max + 1)}\nb\n`)], max), ['a'.repeat(max), 'a', 'b']);
  t.deepEqual(splitChunks([Buffer.from('a'.repeat(2 * max))], max), ['a'.repeat(max), 'a'.repeat(max)]);
});

test('LineSplitter - overlong lines: pieces within the limit, characters whole, at every cut', (t) => {
  const max = 8;
  // 3- and 4-byte characters do not fit evenly in 8-byte pieces.
  const line = '€😀a€€😀bc€😀😀€d';
  const input = Buffer.from(`${line}\nshort\n${line}`);
  for (let i = 0; i <= input.length; i++) {
    const got = splitChunks([input.subarray(0, i), input.subarray(i)], max);
    const first: string[] = [];
    let k = 0;
    let acc = '';
    while (acc !== line) { acc += got[k]!; first.push(got[k]!); k++; if (k > got.length) break; }
    t.is(acc, line, `cut ${i}`);
    t.is(got[k], 'short', `cut ${i}`);
    t.is(got.slice(k + 1).join(''), line, `cut ${i}`);
    for (const piece of got) {
      t.true(Buffer.byteLength(piece) <= max, `cut ${i}: ${piece}`);
      t.false(piece.includes('\uFFFD'), `cut ${i}: ${piece}`);
    }
  }
});

test('LineSplitter - default limit is 64 KiB: a 200 KB line arrives in pieces that join to it', (t) => {
  t.is(MAX_LINE_BYTES, 65536);
  const line = 'ab€'.repeat(40_000); // 200,000 bytes
  const input = Buffer.from(`${line}\nnext\n`);
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i += 65536) chunks.push(input.subarray(i, i + 65536));
  const got = splitChunks(chunks);
  t.is(got.at(-1), 'next');
  t.is(got.slice(0, -1).join(''), line);
  t.true(got.length - 1 >= 4);
  for (const piece of got) t.true(Buffer.byteLength(piece) <= MAX_LINE_BYTES);
});

test('LineSplitter - rejects a limit that cannot hold a character', (t) => {
  t.throws(() => new LineSplitter(() => {}, 3), { instanceOf: RangeError });
  t.throws(() => new LineSplitter(() => {}, 1.5), { instanceOf: RangeError });
});

test('utf8Boundary - moves a cut back to the start of an incomplete character only', (t) => {
  const euro = Buffer.from('a€'); // 61 e2 82 ac
  t.is(utf8Boundary(euro, 0, 4), 4);
  t.is(utf8Boundary(euro, 0, 3), 1);
  t.is(utf8Boundary(euro, 0, 2), 1);
  t.is(utf8Boundary(euro, 0, 1), 1);
  const emoji = Buffer.from('😀'); // f0 9f 98 80
  for (let i = 1; i < 4; i++) t.is(utf8Boundary(emoji, 0, i), 0);
  t.is(utf8Boundary(emoji, 0, 4), 4);
  // Stray continuation bytes are not a character to protect.
  t.is(utf8Boundary(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80]), 0, 5), 5);
});

// -- the batch interface ---------------------------------------------------------

/** Byte lines agree with the string interface, and `clean` is exactly right. */
function checkBytes(t: import('ava').ExecutionContext, chunks: Uint8Array[], max: number | undefined, what: string): boolean {
  const strings = splitChunks(chunks, max);
  const bytes = splitBytes(chunks, max);
  const decoded = bytes.map((l) => l.bytes.toString('utf8'));
  if (JSON.stringify(decoded) !== JSON.stringify(strings)) {
    t.fail(`${what}: ${JSON.stringify(decoded)} != ${JSON.stringify(strings)}`);
    return false;
  }
  for (const l of bytes) {
    if (l.clean !== isClean(l.bytes)) {
      t.fail(`${what}: clean is ${l.clean} for ${l.bytes.toString('hex')}`);
      return false;
    }
  }
  return true;
}

test('LineSplitter.batches - the same lines as decoding, and the right clean flag, at every pair of cuts', (t) => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    for (let j = i; j <= SAMPLE.length; j++) {
      if (!checkBytes(t, [SAMPLE.subarray(0, i), SAMPLE.subarray(i, j), SAMPLE.subarray(j)], undefined, `cuts ${i}, ${j}`)) return;
    }
  }
  const lines = splitBytes([SAMPLE]);
  t.deepEqual(lines.map((l) => l.clean), [true, true, false, true], 'the line with \\r is not clean');
});

test('LineSplitter.batches - random bytes (invalid UTF-8, NUL, CR) at every cut, also with overlong lines', (t) => {
  for (let seed = 1; seed <= 20; seed++) {
    const bytes = randomBytes(200, seed);
    for (let i = 0; i <= bytes.length; i++) {
      if (!checkBytes(t, [bytes.subarray(0, i), bytes.subarray(i)], undefined, `seed ${seed}, cut ${i}`)) return;
      if (!checkBytes(t, [bytes.subarray(0, i), bytes.subarray(i)], 8, `seed ${seed}, cut ${i}, max 8`)) return;
    }
  }
  t.pass();
});

test('LineSplitter.batches - one bad line makes only itself unclean; a CR only its own line', (t) => {
  const input = Buffer.concat([
    Buffer.from('ok €\n'), Buffer.from([0x62, 0xff, 0x0a]), Buffer.from('fine\nx\r\n\ry\nlast ✓\n'),
  ]);
  const lines = splitBytes([input]);
  t.deepEqual(lines.map((l) => [l.bytes.toString('utf8'), l.clean]), [
    ['ok €', true], ['b\uFFFD', false], ['fine', true], ['x\r', false], ['\ry', false], ['last ✓', true],
  ]);
});

test('LineSplitter.batches - overlong valid lines come in clean pieces that join to the line', (t) => {
  const line = 'ab€'.repeat(40_000);
  const input = Buffer.from(`${line}\nnext\n`);
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i += 65536) chunks.push(input.subarray(i, i + 65536));
  const got = splitBytes(chunks);
  t.is(got.at(-1)!.bytes.toString(), 'next');
  t.is(Buffer.concat(got.slice(0, -1).map((l) => l.bytes)).toString(), line);
  t.true(got.every((l) => l.clean && l.bytes.length <= MAX_LINE_BYTES));
});

test('LineSplitter.batches - a chunk of many short lines comes in few batches, in order', (t) => {
  const input = Buffer.from(Array.from({ length: 5000 }, (_, i) => `l${i}\n`).join(''));
  const sizes: number[] = [];
  const got = splitBytes([input.subarray(0, 30_001), input.subarray(30_001)], undefined, sizes);
  t.deepEqual(got.map((l) => l.bytes.toString()), Array.from({ length: 5000 }, (_, i) => `l${i}`));
  t.true(sizes.length <= 8, `${sizes.length} batches: ${sizes.join(' ')}`);
  t.true(sizes.every((n) => n > 0 && n <= 1024));
});

test('LineSplitter.batches - the line a chunk finishes and an overlong line keep their place among batched lines', (t) => {
  const max = 8;
  const chunks = [Buffer.from('ab'), Buffer.from('c\nd\nlong-line-here\ne\nf')];
  const got = splitBytes(chunks, max).map((l) => l.bytes.toString());
  t.deepEqual(got, ['abc', 'd', 'long-lin', 'e-here', 'e', 'f']);
});

test('LineSplitter - keeps nothing of a chunk: a reader may reuse its buffer for the next read', (t) => {
  for (let i = 0; i <= SAMPLE.length; i++) {
    // One buffer, refilled for each read and scribbled over after each push.
    const buf = Buffer.alloc(SAMPLE.length);
    const strings: string[] = [];
    const bytes: string[] = [];
    const s = new LineSplitter((l) => strings.push(l), 8);
    const b = LineSplitter.batches((chunk, lines) => {
      for (let k = 0; k < lines.count; k++) bytes.push(chunk.toString('utf8', lines.starts[k], lines.ends[k]));
    }, 8);
    for (const [from, to] of [[0, i], [i, SAMPLE.length]] as const) {
      SAMPLE.copy(buf, 0, from, to);
      s.push(buf.subarray(0, to - from));
      b.push(buf.subarray(0, to - from));
      buf.fill(0x78);
    }
    s.end();
    b.end();
    const want = splitChunks([SAMPLE], 8);
    t.deepEqual(strings, want, `cut ${i}`);
    t.deepEqual(bytes, want, `cut ${i}`);
  }
});
