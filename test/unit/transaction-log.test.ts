import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
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

test('transaction log - writeLine writes exactly what write() of the decoded line writes', async (t) => {
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
  ];
  const bytes = await tmpLog(t);
  const text = await tmpLog(t);
  for (let round = 0; round < 40; round++) {
    for (const [line, clean] of lines) {
      // In the middle of a larger buffer, as a read chunk lends it.
      const chunk = Buffer.concat([Buffer.from('<<'), line, Buffer.from('>>')]);
      bytes.writeLine(round % 2 ? 'hook-a' : '', chunk, 2, 2 + line.length, clean);
      text.write(round % 2 ? 'hook-a' : '', line.toString('utf8'));
    }
    bytes.write('hook-a', `event ${round}\nwith a newline`);
    text.write('hook-a', `event ${round}\nwith a newline`);
  }
  const got = await withoutTimes(bytes);
  t.is(got, await withoutTimes(text));
  // 40 rounds of 10 records: more than one 256 KiB batch, so flushes happened in between.
  t.is(got.split('\n').length - 1, 400);
  t.true(got.includes('T hook-a b\uFFFDa\uFFFD\n'.replace(/\uFFFD/g, '\xef\xbf\xbd')));
  t.true(got.includes('T - with a CR\\r\n'));
});

test('transaction log - writeLine keeps records in order with write() and tail() reads them', async (t) => {
  const log = await tmpLog(t);
  const chunk = Buffer.from('one\ntwo\nthree\n');
  log.writeLine('h', chunk, 0, 3, true);
  log.write('', 'an event');
  log.writeLine('h', chunk, 4, 7, true);
  log.writeLine('h', chunk, 8, 13, true);
  const lines = await log.tail(10);
  t.deepEqual(lines.map((l) => l.slice(l.indexOf(' ') + 1)), ['h one', '- an event', 'h two', 'h three']);
  t.true(lines.every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /.test(l)));
});
