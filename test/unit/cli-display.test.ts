/**
 * The three displays of a followed transaction, fed a recorded event
 * sequence: plain lines, JSON lines (BigInt-safe), and the terminal display
 * (written to a fake stream and replayed through a tiny terminal model, so
 * the assertions are about the final screen, as a person sees it).
 */
import test from 'ava';
import { JsonDisplay, LineDisplay } from '../../service/cli/follow-display.js';
import { jsonLine } from '../../service/cli/json-line.js';
import { TtyDisplay } from '../../service/cli/tty-display.js';
import type { FollowEvent, HookRow, TransactionProperties } from '../../service/client/types.js';

const PATH = '/org/containers/bootc/PreStage/Transaction/7';

function tx(over: Partial<TransactionProperties> = {}): TransactionProperties {
  return {
    path: PATH, id: '7', deployment: '/sysroot/ostree/deploy/os/deploy/abc.0', phase: 'prepare', state: 'preparing',
    progress: 0, currentHook: '', hooks: [], error: '', errorMessage: '', startedUsec: 1_000_000, finishedUsec: 0, ...over,
  };
}

const rows = (...r: [string, HookRow['result'], number, string][]): HookRow[] =>
  r.map(([name, result, percent, status]) => ({ name, result, percent, status }));

/** A successful two-hook prepare, as follow.ts yields it. */
const RUN: FollowEvent[] = [
  { type: 'state', transaction: tx({ state: 'queued', hooks: rows(['a', 'pending', 0, ''], ['b', 'pending', 0, '']) }) },
  { type: 'phase-started', phase: 'prepare' },
  { type: 'state', transaction: tx({ hooks: rows(['a', 'running', 0, ''], ['b', 'pending', 0, '']), currentHook: 'a' }) },
  { type: 'hook-started', hook: 'a', index: 0, count: 2 },
  { type: 'message', hook: 'a', line: 'hello\x1b[31m' },
  { type: 'hook-progress', hook: 'a', percent: 50, status: 'half' },
  { type: 'hook-progress', hook: 'a', percent: 50, status: 'half' },
  { type: 'hook-finished', hook: 'a', result: 'success', message: 'exited with status 0' },
  { type: 'hook-started', hook: 'b', index: 1, count: 2 },
  { type: 'hook-finished', hook: 'b', result: 'skipped', message: 'nothing to do' },
  {
    type: 'finished', state: 'prepared', error: '', message: '2 hook(s) prepared',
    transaction: tx({ state: 'prepared', progress: 100, finishedUsec: 3_500_000, errorMessage: '2 hook(s) prepared',
      hooks: rows(['a', 'success', 100, 'half'], ['b', 'skipped', 100, 'nothing to do']) }),
  },
];

function sink(columns?: number) {
  const chunks: string[] = [];
  return { out: { write: (s: string) => { chunks.push(s); return true; }, isTTY: true, columns }, text: () => chunks.join('') };
}

/** Replay text with \r, \n and "erase line" into screen lines. */
function screen(text: string): string[] {
  const lines: string[] = [''];
  let col = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\x1b') {
      const m = /^\x1b\[([0-9;]*)([A-Za-z])/.exec(text.slice(i));
      if (!m) throw new Error(`unknown escape at ${i}`);
      if (m[2] === 'K' && m[1] === '2') lines[lines.length - 1] = '';
      else if (m[2] !== 'm') throw new Error(`unexpected escape ${JSON.stringify(m[0])}`);
      i += m[0].length - 1;
    } else if (c === '\r') {
      col = 0;
    } else if (c === '\n') {
      lines.push('');
      col = 0;
    } else {
      const l = lines[lines.length - 1]!;
      lines[lines.length - 1] = l.slice(0, col) + c + l.slice(col + 1);
      col++;
    }
  }
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

test('LineDisplay - one line per event, progress deduplicated, control characters escaped', (t) => {
  const s = sink();
  const d = new LineDisplay(s.out);
  d.begin({ action: 'prepare', path: PATH, deployment: '/dep' });
  RUN.forEach((e) => d.event(e));
  d.close();
  t.deepEqual(s.text().split('\n'), [
    `Transaction 7 (${PATH}): prepare of /dep`,
    'State: queued (prepare phase, 0%)',
    'Phase started: prepare',
    'State: preparing (prepare phase, 0%)',
    '[1/2] a: started',
    '[a] hello\\x1b[31m',
    '[1/2] a: 50% half',
    '[1/2] a: success: exited with status 0',
    '[2/2] b: started',
    '[2/2] b: skipped: nothing to do',
    'Result: prepared in 2.5s: 2 hook(s) prepared',
    '',
  ]);
});

test('JsonDisplay - one object per event, each naming the transaction', (t) => {
  const s = sink();
  const d = new JsonDisplay(s.out);
  d.begin({ action: 'prepare', path: PATH, deployment: '/dep' });
  RUN.forEach((e) => d.event(e));
  d.note('a remark');
  const objs = s.text().trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
  t.is(objs.length, RUN.length + 2);
  t.deepEqual(objs[0], { event: 'begin', action: 'prepare', transaction: PATH, deployment: '/dep' });
  t.deepEqual(objs[4], { event: 'hook-started', transaction: PATH, hook: 'a', index: 0, count: 2 });
  t.is(objs[5]!['line'], 'hello\x1b[31m', 'JSON keeps the raw line; JSON escapes it');
  t.is(objs[RUN.length]!['event'], 'finished');
  t.is(objs[RUN.length]!['transaction']['state'], 'prepared');
  t.deepEqual(objs[RUN.length + 1], { event: 'note', transaction: PATH, text: 'a remark' });
});

test('jsonLine - BigInt becomes a number when exact and a string when not', (t) => {
  t.is(jsonLine({ a: 1795630239281000n, b: 2n ** 64n }), '{"a":1795630239281000,"b":"18446744073709551616"}\n');
});

test('TtyDisplay - the final screen: heading, hook lines, output, result; no progress line left', (t) => {
  const s = sink(60);
  const d = new TtyDisplay(s.out, { utf8: true, color: false, fallbackColumns: 80 });
  d.begin({ action: 'prepare', path: PATH, deployment: '/dep' });
  RUN.forEach((e) => d.event(e));
  d.close();
  t.deepEqual(screen(s.text()), [
    'Preparing /dep (transaction 7)',
    '      a: hello\\x1b[31m',
    '  ✔ a success',
    '  ○ b skipped: nothing to do',
    '✔ Prepared in 2.5s: 2 hook(s) prepared',
  ]);
});

test('TtyDisplay - while running, the one live line shows the bar, the current hook and its status', (t) => {
  const s = sink(80);
  const d = new TtyDisplay(s.out, { utf8: false, color: false, fallbackColumns: 80 });
  d.begin({ action: 'prepare', path: PATH, deployment: '/dep' });
  RUN.slice(0, 6).forEach((e) => d.event(e));
  d.event({ type: 'state', transaction: tx({ progress: 25, currentHook: 'a', hooks: rows(['a', 'running', 50, 'half'], ['b', 'pending', 0, '']) }) });
  const lines = screen(s.text());
  t.is(lines[lines.length - 1], '[#####---------------]  25%  [1/2] a: half');
  t.is(lines.filter((l) => l.includes('%')).length, 1);
  d.close();
  t.notRegex(screen(s.text()).join('\n'), /%/, 'close() erases the live line');
});

test('TtyDisplay - a long status is cut to the terminal width', (t) => {
  const s = sink(50);
  const d = new TtyDisplay(s.out, { utf8: false, color: false, fallbackColumns: 80 });
  d.begin({ action: 'prepare', path: PATH, deployment: '/d' });
  d.event({ type: 'hook-started', hook: 'a', index: 0, count: 1 });
  d.event({ type: 'state', transaction: tx({ currentHook: 'a', hooks: rows(['a', 'running', 0, 'x'.repeat(200)]) }) });
  const last = screen(s.text()).pop()!;
  t.is(last.length, 49);
  t.true(last.endsWith('...'));
});

test('TtyDisplay - a late join prints the hooks that finished before it, once', (t) => {
  const s = sink(80);
  const d = new TtyDisplay(s.out, { utf8: false, color: false, fallbackColumns: 80 });
  d.begin({ action: 'prepare', path: PATH, deployment: '/d' });
  const mid = tx({ currentHook: 'b', progress: 50, hooks: rows(['a', 'failed', 100, 'exit 3'], ['b', 'running', 0, '']) });
  d.event({ type: 'state', transaction: mid });
  d.event({ type: 'hook-finished', hook: 'a', result: 'failed', message: 'exit 3' });
  d.event({ type: 'state', transaction: mid });
  const lines = screen(s.text());
  t.deepEqual(lines.slice(0, 2), ['Preparing /d (transaction 7)', '  x a failed: exit 3']);
  t.is(lines.filter((l) => l.includes(' a ')).length, 1);
});

test('TtyDisplay - a queued commit does not show the prepare phase\'s rows as its own', (t) => {
  const s = sink(80);
  const d = new TtyDisplay(s.out, { utf8: false, color: false, fallbackColumns: 80 });
  d.begin({ action: 'commit', path: PATH, deployment: '/d' });
  // Resting in `prepared` while the commit waits in the queue.
  d.event({ type: 'state', transaction: tx({ state: 'prepared', progress: 100, hooks: rows(['a', 'success', 100, '']) }) });
  t.is(screen(s.text()).pop(), '[####################] 100%  queued behind another transaction');
  d.event({ type: 'phase-started', phase: 'commit' });
  d.event({ type: 'state', transaction: tx({ phase: 'commit', state: 'committing', hooks: rows(['a', 'pending', 0, '']) }) });
  d.event({ type: 'hook-finished', hook: 'a', result: 'success', message: '' });
  d.event({ type: 'finished', state: 'committed', error: '', message: '', transaction: tx({ phase: 'commit', state: 'committed', hooks: rows(['a', 'success', 100, '']) }) });
  t.deepEqual(screen(s.text()), ['Committing /d (transaction 7)', '  + a success', '+ Committed']);
});

test('TtyDisplay - a failure ends with the error name and message', (t) => {
  const s = sink(80);
  const d = new TtyDisplay(s.out, { utf8: true, color: true, fallbackColumns: 80 });
  d.begin({ action: 'prepare', path: PATH, deployment: '/d' });
  d.event({
    type: 'finished', state: 'failed', error: 'org.containers.bootc.PreStage.Error.HookFailed', message: 'required hook a failed',
    transaction: tx({ state: 'failed', hooks: rows(['a', 'failed', 100, 'exit 1']) }),
  });
  const plain = screen(s.text());
  t.deepEqual(plain, ['Preparing /d (transaction 7)', '  ✘ a failed: exit 1', '✘ Failed [HookFailed]: required hook a failed']);
  t.regex(s.text(), /\x1b\[31m✘\x1b\[0m \x1b\[1mFailed\x1b\[0m/, 'colours on a colour terminal');
});
