import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LineBatch } from '../../service/engine/line-splitter.js';
import { TransactionLog } from '../../service/engine/transaction-log.js';

async function tmpLog(t: import('ava').ExecutionContext): Promise<TransactionLog> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'txlog-'));
  const log = new TransactionLog(path.join(dir, 'logs', 'T.log'));
  t.teardown(async () => { log.close(); await fsp.rm(dir, { recursive: true, force: true }); });
  return log;
}

test('transaction log - tail returns the last lines, oldest first', async (t) => {
  const log = await tmpLog(t);
  for (let i = 0; i < 5000; i++) log.write('hook-a', `line ${i}`);
  const lines = await log.tail(3);
  t.is(lines.length, 3);
  t.true(lines[0]!.endsWith(' hook-a line 4997'));
  t.true(lines[2]!.endsWith(' hook-a line 4999'));
});

test('transaction log - tail filters by hook across block boundaries', async (t) => {
  const log = await tmpLog(t);
  const long = 'x'.repeat(1000);
  for (let i = 0; i < 2000; i++) log.write(i % 2 ? 'b' : 'a', `${i} ${long}`);
  const lines = await log.tail(10, 'a');
  t.is(lines.length, 10);
  t.true(lines.every((l) => l.split(' ')[1] === 'a'));
  t.true(lines[9]!.includes(' a 1998 '));
});

test('transaction log - a newline inside a record stays one line', async (t) => {
  const log = await tmpLog(t);
  log.write('', 'two\nlines');
  const lines = await log.tail(10);
  t.is(lines.length, 1);
  t.true(lines[0]!.endsWith(' - two\\nlines'));
});

test('transaction log - a missing log reads as empty', async (t) => {
  const log = await tmpLog(t);
  t.deepEqual(await log.tail(10), []);
});

/** The file without the time field of each record (two logs written at different times compare equal). */
async function withoutTimes(log: TransactionLog): Promise<string> {
  log.flush();
  const text = await fsp.readFile(log.file, 'latin1');
  return text.replace(/^\S+ /gm, 'T ');
}

/** A batch of the given [start, end, clean] lines. */
function batchOf(lines: [number, number, boolean][]): LineBatch {
  const b = new LineBatch(Math.max(1, lines.length));
  for (const [s, e, clean] of lines) {
    b.starts[b.count] = s;
    b.ends[b.count] = e;
    b.clean[b.count] = clean ? 1 : 0;
    b.count++;
  }
  return b;
}

test('transaction log - writeLines writes exactly what write() of each decoded line writes', async (t) => {
  const lines: [Buffer, boolean][] = [
    [Buffer.from('plain ascii'), true],
    [Buffer.from(''), true],
    [Buffer.from('héllo wörld — € 😀'), true],
    [Buffer.from('with a CR\r'), false],
    [Buffer.from('\rleading CR'), false],
    [Buffer.from([0x62, 0xff, 0x61, 0xc3]), false], // invalid bytes, a truncated character
    [Buffer.from([0xed, 0xa0, 0x80]), false], // an encoded surrogate
    [Buffer.from('NUL\0inside'), true],
    [Buffer.from('x'.repeat(65536)), true],
    [Buffer.from('after the long one'), true],
  ];
  // All lines in one buffer between other bytes, as a read chunk holds them.
  const parts: Buffer[] = [Buffer.from('<<')];
  const bounds: [number, number, boolean][] = [];
  let at = 2;
  for (const [line, clean] of lines) {
    bounds.push([at, at + line.length, clean]);
    parts.push(line, Buffer.from('\n'));
    at += line.length + 1;
  }
  const chunk = Buffer.concat(parts);
  const bytes = await tmpLog(t);
  const text = await tmpLog(t);
  for (let round = 0; round < 40; round++) {
    const hook = round % 2 ? 'hook-a' : '';
    // Whole and in two batches, so runs start anywhere.
    const cut = round % bounds.length;
    if (round % 3 === 0) bytes.writeLines(hook, chunk, batchOf(bounds));
    else {
      bytes.writeLines(hook, chunk, batchOf(bounds.slice(0, cut)));
      bytes.writeLines(hook, chunk, batchOf(bounds.slice(cut)));
    }
    for (const [line] of lines) text.write(hook, line.toString('utf8'));
    bytes.write('hook-a', `event ${round}\nwith a newline`);
    text.write('hook-a', `event ${round}\nwith a newline`);
  }
  const got = await withoutTimes(bytes);
  t.is(got, await withoutTimes(text));
  // 40 rounds of 11 records: several 256 KiB batches, so flushes happened inside runs.
  t.is(got.split('\n').length - 1, 440);
  t.true(got.includes('T hook-a b\xef\xbf\xbda\xef\xbf\xbd\n'));
  t.true(got.includes('T - with a CR\\r\n'));
});

test('transaction log - writeLines keeps records in order with write() and tail() reads them', async (t) => {
  const log = await tmpLog(t);
  const chunk = Buffer.from('one\ntwo\nthree\n');
  log.writeLines('h', chunk, batchOf([[0, 3, true]]));
  log.write('', 'an event');
  log.writeLines('h', chunk, batchOf([[4, 7, true], [8, 13, true]]));
  const lines = await log.tail(10);
  t.deepEqual(lines.map((l) => l.slice(l.indexOf(' ') + 1)), ['h one', '- an event', 'h two', 'h three']);
  t.true(lines.every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /.test(l)));
});

test('transaction log - writeLines copes with a line longer than its staging area', async (t) => {
  const log = await tmpLog(t);
  const big = Buffer.from(`a\n${'y'.repeat(100_000)}\nb\n`);
  log.writeLines('h', big, batchOf([[0, 1, true], [2, 100_002, true], [100_003, 100_004, true]]));
  const lines = await log.tail(10);
  t.deepEqual(lines.map((l) => l.slice(l.indexOf(' ') + 1)), ['h a', `h ${'y'.repeat(100_000)}`, 'h b']);
});
