/**
 * The daemon's logger (service/daemon/log.ts): levels, the journal's
 * priority prefixes, fields on the line, escaped newlines.
 */
import test from 'ava';
import { PassThrough } from 'node:stream';
import { createLogger, type LogLevel } from '../../service/daemon/log.js';

async function linesOf(level: LogLevel, journal: boolean, write: (l: ReturnType<typeof createLogger>) => void): Promise<string[]> {
  const stream = new PassThrough();
  let out = '';
  stream.on('data', (d: Buffer) => { out += d.toString(); });
  const log = createLogger({ format: 'text', level, journal, stream });
  write(log);
  await new Promise((r) => setImmediate(r));
  return out.split('\n').filter(Boolean);
}

test('a level below the configured one writes nothing; the others are written in order', async (t) => {
  const lines = await linesOf('info', true, (l) => {
    l.debug('not shown');
    l.info('shown', { transaction: 'T1', hook: 'h' });
    l.warn('careful');
    l.error('bad');
  });
  t.deepEqual(lines, ['<6>shown transaction=T1 hook=h', '<4>careful', '<3>bad']);
});

test('at debug every level is written; a newline in a message is escaped, a field with spaces quoted', async (t) => {
  const lines = await linesOf('debug', true, (l) => {
    l.debug('two\nlines', { message2: 'a b' });
  });
  t.deepEqual(lines, ['<7>two\\nlines message2="a b"']);
});

test('at error only errors are written', async (t) => {
  const lines = await linesOf('error', true, (l) => {
    l.debug('d'); l.info('i'); l.warn('w'); l.error('e');
  });
  t.deepEqual(lines, ['<3>e']);
});

test('lines below error are written at the end of the turn, in order; an error line takes them with it at once', async (t) => {
  const stream = new PassThrough();
  const chunks: string[] = [];
  stream.on('data', (d: Buffer) => { chunks.push(d.toString()); });
  const log = createLogger({ format: 'text', level: 'debug', journal: true, stream });
  log.info('first');
  log.debug('second');
  // winston's stream hands data on in a later microtask: wait for those, not for the turn's end.
  await Promise.resolve();
  await new Promise((r) => process.nextTick(r));
  t.deepEqual(chunks, [], 'nothing yet within the turn');
  log.warn('third');
  log.error('fourth');
  await new Promise((r) => process.nextTick(r));
  t.deepEqual(chunks.join('').split('\n').filter(Boolean), ['<6>first', '<7>second', '<4>third', '<3>fourth'],
    'the error wrote what was queued before it, in order');
  log.info('fifth');
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.is(chunks.join('').split('\n').filter(Boolean).at(-1), '<6>fifth');
});

test('a queued line carries the time it was logged, not the time it was written', async (t) => {
  const stream = new PassThrough();
  let out = '';
  stream.on('data', (d: Buffer) => { out += d.toString(); });
  const log = createLogger({ format: 'json', level: 'info', journal: false, stream });
  const before = Date.now();
  log.info('when', { hook: 'h' });
  const spin = Date.now() + 30;
  while (Date.now() < spin) { /* the turn goes on */ }
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  const entry = JSON.parse(out.trim()) as Record<string, unknown>;
  const at = Date.parse(String(entry.timestamp));
  t.true(at >= before && at < before + 25, `logged at ${entry.timestamp}, the turn ended 30 ms after ${new Date(before).toISOString()}`);
  t.is(entry.hook, 'h');
  t.false('_at' in entry);
});

test('what is queued when the process exits is written', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const mod = fileURLToPath(new URL('../../service/daemon/log.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import=tsx', '--input-type=module', '-e',
    `const { createLogger } = await import(${JSON.stringify(mod)});
     const log = createLogger({ format: 'text', level: 'info', journal: true });
     log.info('queued at exit'); process.exit(3);`], { encoding: 'utf8' });
  t.is(r.status, 3, r.stderr);
  t.is(r.stdout, '<6>queued at exit\n');
});

test('a line that cannot be written is reported on stderr; the lines around it are written', async (t) => {
  const stream = new PassThrough();
  let out = '';
  stream.on('data', (d: Buffer) => { out += d.toString(); });
  const log = createLogger({ format: 'text', level: 'info', journal: true, stream });
  const errors: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => { errors.push(String(chunk)); return true; }) as typeof process.stderr.write;
  try {
    log.info('before');
    // A field whose value cannot be turned into text when the line is formatted.
    log.info('broken', { hook: { toJSON() { throw new Error('no text for you'); } } } as unknown as { hook: string });
    log.info('after');
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  } finally {
    process.stderr.write = write;
  }
  t.deepEqual(out.split('\n').filter(Boolean), ['<6>before', '<6>after']);
  t.is(errors.length, 1);
  t.regex(errors[0]!, /a log line could not be written \(no text for you\): broken/);
});
