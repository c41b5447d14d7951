/**
 * The bytes form of a hook's STATUS text (service/model/status-bytes.ts,
 * docs/hooks.md "Bytes progress"): what the bound-images hook writes, and
 * everything else returning null without throwing.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { parseBytesStatus, type BytesStatus } from '../../service/model/status-bytes.js';
import { REPO_ROOT } from '../helpers/tmp.js';

test('parseBytesStatus - one pull with the images-ready tail, MB in 10^6 bytes', (t) => {
  t.deepEqual(parseBytesStatus('pulling app:2.0 120/300 MB (2/4 images ready)'), {
    images: [{ name: 'app:2.0', bytes: 120_000_000, bytesTotal: 300_000_000 }], ready: 2, count: 4,
  });
});

test('parseBytesStatus - several pulls, kB in 10^3 bytes, full registry names and digests', (t) => {
  const digest = `sha256:${'a'.repeat(64)}`;
  t.deepEqual(parseBytesStatus(
    `pulling registry.example.com:5000/team/app:2.0 120/300 MB, pulling db@${digest} 512/2048 kB, pulling cache 7 kB (0/5 images ready)`), {
    images: [
      { name: 'registry.example.com:5000/team/app:2.0', bytes: 120_000_000, bytesTotal: 300_000_000 },
      { name: `db@${digest}`, bytes: 512_000, bytesTotal: 2_048_000 },
      // No total: unknown (0, bootc's "unspecified").
      { name: 'cache', bytes: 7_000, bytesTotal: 0 },
    ],
    ready: 0, count: 5,
  });
});

test('parseBytesStatus - the tail is optional; "1/1 image ready"; B, GB and decimals; done above total counts as total', (t) => {
  t.deepEqual(parseBytesStatus('pulling a 5/9 B'), { images: [{ name: 'a', bytes: 5, bytesTotal: 9 }], ready: null, count: null });
  t.deepEqual(parseBytesStatus('pulling a 1.5/2.25 GB (0/1 image ready)'),
    { images: [{ name: 'a', bytes: 1_500_000_000, bytesTotal: 2_250_000_000 }], ready: 0, count: 1 });
  t.deepEqual(parseBytesStatus('pulling a 301/300 MB')!.images[0], { name: 'a', bytes: 300_000_000, bytesTotal: 300_000_000 });
  t.deepEqual(parseBytesStatus('pulling a 0/0 kB')!.images[0], { name: 'a', bytes: 0, bytesTotal: 0 });
});

const notBytes: [string, string][] = [
  ['empty', ''],
  ['other status text', 'Pulling bound image 3/4: app:2.0'],
  ['the hook\'s summary line', '4 bound images ready (3 pulled, 1 reused)'],
  ['no unit', 'pulling app 120/300'],
  ['an unknown unit', 'pulling app 120/300 MiB'],
  ['a binary unit in the wrong case', 'pulling app 120/300 mb'],
  ['no name', 'pulling  120/300 MB'],
  ['no amount', 'pulling app MB'],
  ['a negative amount', 'pulling app -1/300 MB'],
  ['hex digits', 'pulling app 0x10/300 MB'],
  ['an exponent', 'pulling app 1e3/300 MB'],
  ['a trailing comma', 'pulling app 1/3 MB,'],
  ['a separator without its space', 'pulling a 1/3 MB,pulling b 1/3 MB'],
  ['a second entry that is not a pull', 'pulling a 1/3 MB, checking b'],
  ['the same image twice', 'pulling a 1/3 MB, pulling a 2/3 MB'],
  ['text after the tail', 'pulling a 1/3 MB (0/2 images ready) now'],
  ['a tail with more ready than images', 'pulling a 1/3 MB (5/4 images ready)'],
  ['more pulls than images not ready', 'pulling a 1/3 MB, pulling b 1/3 MB (3/4 images ready)'],
  ['only the tail', 'pulling (1/2 images ready)'],
  ['leading space', ' pulling a 1/3 MB'],
  ['a control character in the name', 'pulling a\u0001b 1/3 MB'],
  ['a value past 2^53 bytes', 'pulling a 999999999999999/999999999999999 GB'],
  ['a cut-off line', 'pulling a 120/300 MB, pulling b 3/'],
];
for (const [what, text] of notBytes) {
  test(`parseBytesStatus - ${what}: not a bytes status (null)`, (t) => {
    t.is(parseBytesStatus(text), null);
  });
}

test('parseBytesStatus - never throws: 2000 random mutations of valid lines', (t) => {
  const base = 'pulling registry.example.com/app:2.0 120/300 MB, pulling db:16 512/2048 kB (2/4 images ready)';
  const alphabet = 'pulling /.,:()0123456789 kBMG\u0000\u00e9\ud800';
  let seed = 12345;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
  let parsed = 0;
  for (let i = 0; i < 2000; i++) {
    const chars = [...base];
    for (let k = 0; k <= rnd(4); k++) {
      const at = rnd(chars.length + 1);
      const op = rnd(3);
      if (op === 0) chars.splice(at, 1);
      else if (op === 1) chars.splice(at, 0, alphabet[rnd(alphabet.length)]!);
      else chars[at] = alphabet[rnd(alphabet.length)]!;
    }
    let got: BytesStatus | null;
    try {
      got = parseBytesStatus(chars.join(''));
    } catch (e) {
      t.fail(`threw on ${JSON.stringify(chars.join(''))}: ${String(e)}`);
      continue;
    }
    if (got !== null) {
      parsed++;
      for (const img of got.images) t.true(Number.isSafeInteger(img.bytes) && Number.isSafeInteger(img.bytesTotal) && img.bytes >= 0);
    }
  }
  t.true(parsed > 0, 'some mutations (a changed digit) stay valid');
  t.true(parsed < 2000);
  t.is(parseBytesStatus(undefined as unknown as string), null);
});

test('parseBytesStatus - reads exactly what the bound-images hook writes (its fmt_bytes, run in sh)', (t) => {
  // The hook's own formatter, sourced from packaging/hooks/bound-images-store.sh.
  const lib = path.join(REPO_ROOT, 'packaging/hooks/bound-images-store.sh');
  const fmt = (done: number, total: number) => execFileSync('/bin/sh', ['-c',
    `eval "$(sed -n '/^fmt_bytes() {/,/^}/p' "$1")"; fmt_bytes "$2" "$3"`, 'sh', lib, String(done), String(total)], { encoding: 'utf8' });
  const cases: [number, number, number, number][] = [
    // done, total -> bytes, bytesTotal as parsed (the hook truncates to its unit).
    [120_400_000, 300_000_000, 120_000_000, 300_000_000],
    [512_345, 2_048_000, 512_000, 2_048_000],
    [45_000_000, 0, 45_000_000, 0],
    [7_500, 0, 7_000, 0],
  ];
  for (const [done, total, bytes, bytesTotal] of cases) {
    const text = `pulling app:2.0 ${fmt(done, total)} (1/3 images ready)`;
    t.deepEqual(parseBytesStatus(text), { images: [{ name: 'app:2.0', bytes, bytesTotal }], ready: 1, count: 3 }, text);
  }
});
