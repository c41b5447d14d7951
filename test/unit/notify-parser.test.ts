/**
 * NotifyParser: the same final state and the same ignored lines whatever the
 * chunking; the last value per chunk; bounded lines.
 */
import test from 'ava';
import { MAX_NOTIFY_LINE_BYTES, NotifyParser, type NotifyUpdate } from '../../service/engine/notify-parser.js';

interface Final {
  progress: number | null;
  status: string | null;
  extend: number | null;
  updates: number;
  ignored: [string, string][];
}

function parse(chunks: Uint8Array[], maxLineBytes?: number): Final {
  const ignored: [string, string][] = [];
  const p = new NotifyParser({ onIgnored: (l, r) => ignored.push([l, r]), maxLineBytes });
  const f: Final = { progress: null, status: null, extend: null, updates: 0, ignored };
  const apply = (u: NotifyUpdate | null) => {
    if (u === null) return;
    f.updates++;
    if (u.progress !== null) f.progress = u.progress;
    if (u.status !== null) f.status = u.status;
    if (u.extendTimeoutUsec !== null) f.extend = Math.max(f.extend ?? 0, u.extendTimeoutUsec);
  };
  for (const c of chunks) apply(p.push(c));
  apply(p.end());
  return f;
}

const INPUT = Buffer.from([
  'PROGRESS=5',
  'STATUS=Pulling quay.io/x — 50 €',
  'PROGRESS=101',
  'EXTEND_TIMEOUT_USEC=30000000',
  'PROGRESS=7x',
  'WATCHDOG=1',
  '',
  'no equals sign',
  'EXTEND_TIMEOUT_USEC=5000000',
  'EXTEND_TIMEOUT_USEC=-3',
  'PROGRESS=100',
  'STATUS=',
  'PROGRESS=66',
  'STATUS=done ✓',
].join('\n'));

const EXPECTED_IGNORED: [string, string][] = [
  ['PROGRESS=101', 'PROGRESS is not an integer from 0 to 100'],
  ['PROGRESS=7x', 'PROGRESS is not an integer from 0 to 100'],
  ['WATCHDOG=1', 'unknown key'],
  ['no equals sign', 'not a KEY=VALUE line'],
  ['EXTEND_TIMEOUT_USEC=-3', 'EXTEND_TIMEOUT_USEC is not a number of microseconds'],
];

test('NotifyParser - one chunk: the last PROGRESS and STATUS, the largest extension', (t) => {
  const p = new NotifyParser();
  const u = p.push(INPUT);
  // 'STATUS=done ✓' has no '\n' yet: it waits for more input or the end.
  t.deepEqual(u, { progress: 66, status: '', extendTimeoutUsec: 30_000_000 });
  t.deepEqual(p.end(), { progress: null, status: 'done ✓', extendTimeoutUsec: null });
  t.is(p.end(), null);
});

test('NotifyParser - same result and same ignored lines for a cut at every byte position', (t) => {
  const want = parse([INPUT]);
  t.deepEqual(want.ignored, EXPECTED_IGNORED);
  t.is(want.progress, 66);
  t.is(want.status, 'done ✓');
  t.is(want.extend, 30_000_000);
  for (let i = 0; i <= INPUT.length; i++) {
    const got = parse([INPUT.subarray(0, i), INPUT.subarray(i)]);
    t.deepEqual({ ...got, updates: 0 }, { ...want, updates: 0 }, `cut at ${i}`);
  }
});

test('NotifyParser - one byte at a time', (t) => {
  const got = parse([...INPUT].map((b) => Uint8Array.of(b)));
  t.is(got.progress, 66);
  t.is(got.status, 'done ✓');
  t.deepEqual(got.ignored, EXPECTED_IGNORED);
});

test('NotifyParser - a chunk with nothing valid returns null', (t) => {
  const p = new NotifyParser();
  t.is(p.push(Buffer.from('FOO=1\n\nbar\nPROGRESS=x\n')), null);
  t.is(p.push(Buffer.from('PROGRE')), null);
  t.deepEqual(p.push(Buffer.from('SS=3\n')), { progress: 3, status: null, extendTimeoutUsec: null });
});

test('NotifyParser - PROGRESS accepts integers 0..100 only', (t) => {
  const ok: [string, number][] = [['0', 0], ['9', 9], ['100', 100], ['007', 7], ['42', 42]];
  for (const [v, n] of ok) t.is(new NotifyParser().push(Buffer.from(`PROGRESS=${v}\n`))?.progress, n, v);
  for (const v of ['', '101', '-1', '+5', '5.0', ' 5', '5 ', '5\r', '0100', '1e2', 'abc']) {
    t.is(new NotifyParser().push(Buffer.from(`PROGRESS=${v}\n`)), null, JSON.stringify(v));
  }
});

test('NotifyParser - EXTEND_TIMEOUT_USEC accepts up to 20 decimal digits', (t) => {
  t.is(new NotifyParser().push(Buffer.from('EXTEND_TIMEOUT_USEC=0\n'))?.extendTimeoutUsec, 0);
  t.is(new NotifyParser().push(Buffer.from('EXTEND_TIMEOUT_USEC=18446744073709551615\n'))?.extendTimeoutUsec,
    18446744073709551615);
  for (const v of ['', 'x', '1.5', '-1', '1'.repeat(21)]) {
    t.is(new NotifyParser().push(Buffer.from(`EXTEND_TIMEOUT_USEC=${v}\n`)), null, v);
  }
});

test('NotifyParser - keys are case-sensitive and must start the line', (t) => {
  const ignored: string[] = [];
  const p = new NotifyParser({ onIgnored: (_l, r) => ignored.push(r) });
  t.is(p.push(Buffer.from('progress=5\n PROGRESS=5\nXPROGRESS=5\n')), null);
  t.deepEqual(ignored, ['unknown key', 'unknown key', 'unknown key']);
});

test('NotifyParser - a line of exactly 4096 bytes counts; 4097 is ignored and reported by its head', (t) => {
  t.is(MAX_NOTIFY_LINE_BYTES, 4096);
  const fits = `STATUS=${'a'.repeat(4096 - 7)}`;
  const over = `STATUS=${'b'.repeat(4097 - 7)}`;
  const input = Buffer.from(`${fits}\n${over}\nPROGRESS=9\n${over}`);
  for (let i = 0; i <= input.length; i += 97) {
    const got = parse([input.subarray(0, i), input.subarray(i)]);
    t.is(got.status, 'a'.repeat(4096 - 7), `cut ${i}`);
    t.is(got.progress, 9, `cut ${i}`);
    t.deepEqual(got.ignored, [
      [over.slice(0, 256), 'line longer than 4096 bytes'],
      [over.slice(0, 256), 'line longer than 4096 bytes'],
    ], `cut ${i}`);
  }
});

test('NotifyParser - overlong lines at every cut, with a small limit', (t) => {
  const input = Buffer.from('STATUS=ok\nSTATUS=way too long!!\nPROGRESS=1\nSTATUS=€€€€\nSTATUS=€€€€€\n');
  const want = parse([input], 19);
  t.deepEqual(want.ignored.map(([, r]) => r), ['line longer than 19 bytes', 'line longer than 19 bytes']);
  t.is(want.status, '€€€€');
  for (let i = 0; i <= input.length; i++) {
    for (let j = i; j <= input.length; j++) {
      const got = parse([input.subarray(0, i), input.subarray(i, j), input.subarray(j)], 19);
      if (JSON.stringify({ ...got, updates: 0 }) !== JSON.stringify({ ...want, updates: 0 })) {
        t.fail(`cuts at ${i}, ${j}: ${JSON.stringify(got)}`);
        return;
      }
    }
  }
  t.pass();
});

test('NotifyParser - the report of an ignored line is cut at a character boundary', (t) => {
  const ignored: string[] = [];
  const p = new NotifyParser({ onIgnored: (l) => ignored.push(l) });
  p.push(Buffer.from(`X=${'€'.repeat(200)}\n`));
  t.is(ignored.length, 1);
  t.false(ignored[0]!.includes('\uFFFD'));
  t.true(Buffer.byteLength(ignored[0]!) <= 256);
  t.true(ignored[0]!.startsWith('X=€€'));
});

test('NotifyParser - invalid UTF-8 in STATUS becomes U+FFFD', (t) => {
  const u = new NotifyParser().push(Buffer.from([...Buffer.from('STATUS=a'), 0xff, 0x62, 0x0a]));
  t.is(u?.status, 'a\uFFFDb');
});

test('NotifyParser - a million PROGRESS lines in 64 KiB chunks: the last value, few updates', (t) => {
  const lines = 1_000_000;
  const text = Buffer.from(`${'PROGRESS=42\n'.repeat(lines - 1)}PROGRESS=43\n`);
  const p = new NotifyParser();
  let last: number | null = null;
  let updates = 0;
  for (let i = 0; i < text.length; i += 65536) {
    const u = p.push(text.subarray(i, i + 65536));
    if (u !== null) { updates++; last = u.progress ?? last; }
  }
  t.is(p.end(), null);
  t.is(last, 43);
  t.is(updates, Math.ceil(text.length / 65536));
});

test('NotifyParser - PROGRESS lines obey the line limit and keep their order with other lines, at every cut', (t) => {
  // Limit 11: "PROGRESS=50" fits, "PROGRESS=100" (12 bytes) is an overlong line.
  const input = Buffer.from('PROGRESS=5\nPROGRESS=100\nPROGRESS=1000\nPROGRESS=50\nPROGRESS=\nPROGRESS=7\n');
  const want = parse([input], 11);
  t.is(want.progress, 7);
  t.deepEqual(want.ignored, [
    ['PROGRESS=10', 'line longer than 11 bytes'],
    ['PROGRESS=10', 'line longer than 11 bytes'],
    ['PROGRESS=', 'PROGRESS is not an integer from 0 to 100'],
  ]);
  const updates: (number | null)[] = [];
  const p = new NotifyParser({ maxLineBytes: 11 });
  for (const line of ['PROGRESS=5\nPROGRESS=100\n', 'PROGRESS=50\nPROGRESS=1000\n']) updates.push(p.push(Buffer.from(line))?.progress ?? null);
  t.deepEqual(updates, [5, 50], 'an overlong PROGRESS line after a valid one does not count');
  for (let i = 0; i <= input.length; i++) {
    const got = parse([input.subarray(0, i), input.subarray(i)], 11);
    t.deepEqual({ ...got, updates: 0 }, { ...want, updates: 0 }, `cut at ${i}`);
  }
});

test('NotifyParser - keeps nothing of a chunk: a reader may reuse its buffer for the next read', (t) => {
  const want = parse([INPUT]);
  for (let i = 0; i <= INPUT.length; i++) {
    const buf = Buffer.alloc(INPUT.length);
    const ignored: [string, string][] = [];
    const p = new NotifyParser({ onIgnored: (l, r) => ignored.push([l, r]) });
    let progress: number | null = null;
    let status: string | null = null;
    const apply = (u: NotifyUpdate | null) => {
      if (u?.progress != null) progress = u.progress;
      if (u?.status != null) status = u.status;
    };
    for (const [from, to] of [[0, i], [i, INPUT.length]] as const) {
      INPUT.copy(buf, 0, from, to);
      apply(p.push(buf.subarray(0, to - from)));
      buf.fill(0x78);
    }
    apply(p.end());
    t.deepEqual([progress, status, ignored], [want.progress, want.status, want.ignored], `cut ${i}`);
  }
});
