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
