/**
 * MessageLimiter: the first lines of each window are admitted, every other
 * line is counted once and reported at the window's end or by flush().
 * Real timers, short windows.
 */
import test from 'ava';
import { MESSAGE_LINES_PER_WINDOW, MESSAGE_WINDOW_MS, MessageLimiter } from '../../service/engine/message-limiter.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('MessageLimiter - admits the first lines of a window, counts the rest, reports them when it ends', async (t) => {
  const reports: number[] = [];
  const lim = new MessageLimiter((n) => reports.push(n), 5, 100);
  t.is(lim.admit(3), 3);
  t.is(lim.admit(), 1);
  t.is(lim.admit(4), 1, 'only the first of these fits');
  t.is(lim.admit(10), 0);
  t.is(lim.admit(), 0);
  t.deepEqual(reports, [], 'nothing is reported before the window ends');
  await sleep(150);
  t.deepEqual(reports, [3 + 10 + 1]);
  // The next line opens a new window.
  t.is(lim.admit(7), 5);
  lim.flush();
  t.deepEqual(reports, [14, 2]);
});

test('MessageLimiter - flush reports at once and ends the window', async (t) => {
  const reports: number[] = [];
  const lim = new MessageLimiter((n) => reports.push(n), 2, 60);
  t.is(lim.admit(5), 2);
  lim.flush();
  t.deepEqual(reports, [3]);
  lim.flush();
  t.deepEqual(reports, [3], 'nothing counted, nothing reported');
  await sleep(100);
  t.deepEqual(reports, [3], 'the ended window reports nothing more');
  t.is(lim.admit(3), 2, 'a new window after the flush');
  lim.flush();
  t.deepEqual(reports, [3, 1]);
});

test('MessageLimiter - a window with nothing over the cap reports nothing', async (t) => {
  const reports: number[] = [];
  const lim = new MessageLimiter((n) => reports.push(n), 5, 50);
  t.is(lim.admit(5), 5);
  t.is(lim.admit(0), 0);
  await sleep(80);
  t.deepEqual(reports, []);
});

test('MessageLimiter - every line is admitted or counted exactly once', (t) => {
  const reports: number[] = [];
  const lim = new MessageLimiter((n) => reports.push(n));
  let admitted = 0;
  let total = 0;
  for (let i = 1; i <= 500; i++) {
    admitted += lim.admit(i % 37);
    total += i % 37;
  }
  lim.flush();
  t.is(admitted, MESSAGE_LINES_PER_WINDOW);
  t.is(admitted + reports.reduce((a, b) => a + b, 0), total);
});

test('MessageLimiter - defaults are the bus cap: 50 lines per second', (t) => {
  t.is(MESSAGE_LINES_PER_WINDOW, 50);
  t.is(MESSAGE_WINDOW_MS, 1000);
  t.throws(() => new MessageLimiter(() => {}, -1), { instanceOf: RangeError });
  t.throws(() => new MessageLimiter(() => {}, 5, 0), { instanceOf: RangeError });
});
