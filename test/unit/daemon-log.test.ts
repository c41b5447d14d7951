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
