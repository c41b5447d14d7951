import test from 'ava';
import { decideRetry, retryStatus } from '../../service/engine/retry.js';

const S = 1e6;

test('decideRetry - retries after the interval while the window is open', (t) => {
  const d = decideRetry({ intervalSec: 10, windowSec: 60 }, 1, 0, 5 * S, null);
  t.deepEqual(d, { retry: true, attempt: 2, dueUsec: 15 * S, windowEndUsec: 60 * S, status: 'retrying in 10 s (attempt 2)' });
});

test('decideRetry - no window means no retry; a window that closes before the next attempt ends it; so does the phase deadline', (t) => {
  const off = decideRetry({ intervalSec: 30, windowSec: 0 }, 1, 0, 0, null);
  t.like(off, { retry: false, reason: 'disabled' });
  t.regex((off as { message: string }).message, /RetryMaxSec= is 0/);
  const closed = decideRetry({ intervalSec: 10, windowSec: 60 }, 5, 0, 55 * S, null);
  t.like(closed, { retry: false, reason: 'window' });
  t.regex((closed as { message: string }).message, /exited with status 75 \(try again later\) at attempt 5; its retry window of 60s/);
  t.like(decideRetry({ intervalSec: 10, windowSec: 60 }, 5, 0, 50 * S, null), { retry: true, dueUsec: 60 * S }, 'due exactly at the window end');
  t.like(decideRetry({ intervalSec: 10, windowSec: 600 }, 1, 0, 0, 5 * S), { retry: false, reason: 'deadline' });
});

test('retryStatus - whole seconds left, never negative', (t) => {
  t.is(retryStatus(1.2 * S, 3), 'retrying in 2 s (attempt 3)');
  t.is(retryStatus(-5, 2), 'retrying in 0 s (attempt 2)');
});
