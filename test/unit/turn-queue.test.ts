/** The end-of-turn queue (service/model/turn-queue.ts) the daemon's signals and log lines share. */
import test from 'ava';
import { TurnQueue } from '../../service/model/turn-queue.js';

const turnEnd = () => new Promise((r) => setImmediate(r));

test('what is pushed in one turn runs once, in order, at the end of the turn', async (t) => {
  const runs: number[][] = [];
  const q = new TurnQueue<number>((items) => runs.push(items));
  q.push(1);
  q.push(2);
  await Promise.resolve();
  t.deepEqual(runs, [], 'not within the turn, microtasks included');
  await turnEnd();
  t.deepEqual(runs, [[1, 2]]);
  await turnEnd();
  t.deepEqual(runs, [[1, 2]], 'nothing left, nothing run');
});

test('flush runs what is queued at once, and the end of the turn then has nothing to run', async (t) => {
  const runs: string[][] = [];
  const q = new TurnQueue<string>((items) => runs.push(items));
  q.flush();
  t.deepEqual(runs, [], 'an empty queue runs nothing');
  q.push('a');
  q.flush();
  t.deepEqual(runs, [['a']]);
  await turnEnd();
  t.deepEqual(runs, [['a']]);
});

test('what the run pushes waits for the next flush or turn, after what was queued before it', async (t) => {
  const runs: number[][] = [];
  const q = new TurnQueue<number>((items) => {
    runs.push(items);
    if (items[0] === 1) q.push(3);
  });
  q.push(1);
  q.push(2);
  q.flush();
  t.deepEqual(runs, [[1, 2]]);
  await turnEnd();
  t.deepEqual(runs, [[1, 2], [3]]);
});
