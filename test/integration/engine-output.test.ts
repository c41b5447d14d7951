/**
 * A hook's output through the engine (no D-Bus): every line in the
 * transaction log, in order and escaped (transaction-log.ts), while only the lines the
 * Message cap lets through become message events and the rest are counted
 * before the hook's hook-finished.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { TransactionEvent } from '../../service/model/types.js';
import { recordEvents, settled, withEngine, type EngineEnv } from '../helpers/engine-env.js';

const staged = (env: EngineEnv) => env.sysroot.deployments[0]!;

/** A hook whose prepare step is `script` (a /bin/sh script). */
async function scriptHook(env: EngineEnv, name: string, script: string): Promise<void> {
  const program = path.join(env.bin, `${name}.sh`);
  await fsp.writeFile(program, `#!/bin/sh\n${script}`, { mode: 0o755 });
  await fsp.writeFile(path.join(env.root, 'etc/bootc/pre-stage.d', `${name}.hook`),
    `[Hook]\nDescription=${name}\nPrepare=${program}\n`, { mode: 0o644 });
}

/** The hook's output records in the log, without time and hook fields. */
async function logged(env: EngineEnv, txId: string, hook: string): Promise<string[]> {
  const text = await fsp.readFile(path.join(env.stateDir, 'logs', `${txId}.log`), 'utf8');
  const marker = ` ${hook} `;
  return text.split('\n').filter((l) => l.slice(l.indexOf(' '), l.indexOf(' ') + marker.length) === marker)
    .map((l) => l.slice(l.indexOf(' ') + marker.length));
}

type Ev<T extends TransactionEvent['type']> = Extract<TransactionEvent, { type: T }>;

test('engine output - a flood: every line logged in order, 50 message events, the rest counted before hook-finished', async (t) => {
  const env = await withEngine(t);
  const n = 20_000;
  // Every 1000th line carries a CR and an invalid byte, which the log escapes and replaces.
  await scriptHook(env, 'flood', `exec awk -v n=${n} 'BEGIN { for (i = 1; i <= n; i++) `
    + `if (i % 1000 == 7) printf "bad %d\\r\\377\\n", i; else printf "line %d é\\n", i }'\n`);
  const tx = await env.engine.start(staged(env), {});
  const events = recordEvents(tx);
  const s = await settled(tx);
  t.is(s.state, 'prepared');

  const out = (await logged(env, tx.id, 'flood')).filter((l) => l.startsWith('line ') || l.startsWith('bad '));
  t.is(out.length, n);
  for (let i = 1; i <= n; i++) {
    const want = i % 1000 === 7 ? `bad ${i}\\r\uFFFD` : `line ${i} é`;
    if (out[i - 1] !== want) {
      t.fail(`log line ${i} is ${JSON.stringify(out[i - 1])}, not ${JSON.stringify(want)}`);
      return;
    }
  }

  const mine = events.filter((e) => 'hook' in e && e.hook === 'flood');
  const messages = mine.filter((e): e is Ev<'message'> => e.type === 'message');
  const counts = mine.filter((e): e is Ev<'messages-suppressed'> => e.type === 'messages-suppressed');
  const finished = mine.findIndex((e) => e.type === 'hook-finished');
  t.true(messages.length >= 50 && messages.length <= n);
  t.deepEqual(messages.slice(0, 50).map((m) => m.line), Array.from({ length: 50 }, (_, i) => (i + 1 === 7 ? 'bad 7\r\uFFFD' : `line ${i + 1} é`)),
    'the first lines of the first window, decoded');
  t.is(messages.length + counts.reduce((a, c) => a + c.count, 0), n, 'every line is a message or counted');
  t.true(counts.length >= 1);
  t.true(mine.indexOf(counts.at(-1)!) < finished, 'the last count comes before hook-finished');
  t.false(mine.slice(finished).some((e) => e.type === 'message' || e.type === 'messages-suppressed'));
});

test('engine output - a quiet hook: every line is a message, stdout and stderr, and a last line without newline', async (t) => {
  const env = await withEngine(t);
  await scriptHook(env, 'quiet', 'echo "one ✓"; echo two >&2; echo; printf "three\\r\\n"; printf "no newline"\n');
  const tx = await env.engine.start(staged(env), {});
  const events = recordEvents(tx);
  await settled(tx);
  const lines = events.filter((e): e is Ev<'message'> => e.type === 'message' && e.hook === 'quiet').map((e) => e.line);
  // stdout and stderr are separate pipes: only each one's order is fixed.
  t.deepEqual(lines.filter((l) => l !== 'two'), ['one ✓', '', 'three\r', 'no newline']);
  t.true(lines.includes('two'));
  t.false(events.some((e) => e.type === 'messages-suppressed'));
  const out = await logged(env, tx.id, 'quiet');
  for (const want of ['one ✓', 'two', '', 'three\\r', 'no newline']) t.true(out.includes(want), want);
});
