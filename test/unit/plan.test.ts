import test from 'ava';
import { PreStageError } from '../../service/model/errors.js';
import { compareNames, orderHooks } from '../../service/engine/plan.js';

interface H { name: string; after: string[]; before: string[]; source?: string }

/** `a>b,c <d` means hook a with After=b c and Before=d. */
function hooks(spec: string): H[] {
  return spec.split(/\s*;\s*/).filter(Boolean).map((s) => {
    const [name, ...rest] = s.trim().split(/\s+/);
    const h: H = { name: name!, after: [], before: [], source: `/etc/bootc/pre-stage.d/${name}.hook` };
    for (const r of rest) {
      if (r.startsWith('>')) h.after.push(...r.slice(1).split(','));
      else if (r.startsWith('<')) h.before.push(...r.slice(1).split(','));
    }
    return h;
  });
}

const orders = test.macro({
  exec(t, spec: string, expected: string) {
    t.is(orderHooks(hooks(spec)).map((h) => h.name).join(' '), expected);
    // The order depends only on the set, never on input order.
    t.is(orderHooks(hooks(spec).reverse()).map((h) => h.name).join(' '), expected);
  },
  title: (provided, spec: string, expected: string) => `order - ${provided}: ${spec} => ${expected}`,
});

test('no hooks', orders, '', '');
test('no constraints run in name order', orders, 'c; a; b', 'a b c');
test('After= runs the other hook first', orders, 'a >b; b', 'b a');
test('Before= runs this hook first', orders, 'a; b <a', 'b a');
test('After= and Before= saying the same thing', orders, 'a >b; b <a', 'b a');
test('unknown names are ignored', orders, 'a >nope <ghost; b', 'a b');
test('ties go to the smallest name among those ready', orders, 'd; c >a; b; a', 'a b c d');
test('a chain against name order', orders, 'a >b; b >c; c >d; d', 'd c b a');
test('a diamond', orders, 'top; left >top; right >top; bottom >left,right', 'top left right bottom');
test('a ready small name jumps ahead of a waiting chain', orders, 'z; y >z; a >y; m', 'm z y a');
test('duplicate entries count once', orders, 'a >b,b,b; b <a,a', 'b a');
test('byte order, not locale order', orders, 'b; B; a; A; 0; _x', '0 A B _x a b');

test('compareNames - code point order matches UTF-8 byte order', (t) => {
  const names = ['\u{10000}', '\uffff', 'a', 'B', 'é'];
  const sorted = [...names].sort(compareNames);
  const bytes = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
  t.deepEqual(sorted, bytes);
  t.deepEqual(sorted, ['B', 'a', 'é', '\uffff', '\u{10000}']);
});

test('order - returns the same objects, not copies', (t) => {
  const hs = hooks('b; a >b');
  const out = orderHooks(hs);
  t.is(out[0], hs[0]);
  t.is(out[1], hs[1]);
});

const cycle = test.macro({
  exec(t, spec: string, names: string, decls: RegExp) {
    const e = t.throws(() => orderHooks(hooks(spec)), { instanceOf: PreStageError });
    t.is(e!.code, 'InvalidHook');
    t.true(e!.message.includes(`ordering cycle between hooks: ${names} (`), e!.message);
    t.regex(e!.message, decls);
    for (const n of new Set(names.split(' -> '))) t.true(e!.message.includes(`${n}: /etc/bootc/pre-stage.d/${n}.hook`), n);
  },
  title: (provided, spec: string) => `cycle - ${provided}: ${spec}`,
});

test('two hooks after each other', cycle, 'a >b; b >a', 'a -> b -> a', /'b' has After=a, 'a' has After=b/);
test('a hook after itself', cycle, 'a >a; b', 'a -> a', /'a' has After=a/);
test('a three-hook cycle mixing After and Before', cycle, 'a <b; b <c; c <a; d', 'a -> b -> c -> a',
  /'a' has Before=b, 'b' has Before=c, 'c' has Before=a/);
test('a cycle downstream of good hooks, with hangers-on', cycle, 'a; b >a; c >b,e; d >c; e >d; f >e',
  'c -> d -> e -> c', /'d' has After=c, 'e' has After=d, 'c' has After=e/);

test('cycle - the message names only hooks on the cycle', (t) => {
  const e = t.throws(() => orderHooks(hooks('a >b; b >a; z >a')), { instanceOf: PreStageError });
  t.false(e!.message.includes('z.hook'));
});

test('order - duplicate names are refused, naming both files', (t) => {
  const e = t.throws(() => orderHooks([
    { name: 'a', after: [], before: [], source: '/x/a.hook' },
    { name: 'a', after: [], before: [], source: '/y/a.hook' },
  ]), { instanceOf: PreStageError });
  t.regex(e!.message, /two hooks are named 'a'.*\/x\/a\.hook.*\/y\/a\.hook/);
});

/** Check every constraint holds in `out`. */
function satisfies(t: { true(v: boolean, m?: string): void }, out: H[]): void {
  const pos = new Map(out.map((h, i) => [h.name, i]));
  for (const h of out) {
    for (const a of h.after) if (pos.has(a)) t.true(pos.get(a)! < pos.get(h.name)!, `${a} before ${h.name}`);
    for (const b of h.before) if (pos.has(b)) t.true(pos.get(h.name)! < pos.get(b)!, `${h.name} before ${b}`);
  }
}

test('order - 1000 hooks with random edges honour every constraint, deterministically', (t) => {
  let seed = 42;
  const rand = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  // Edges only from a lower to a higher index of a hidden permutation: acyclic by construction.
  const n = 1000;
  const perm = Array.from({ length: n }, (_, i) => i).sort(() => rand() - 0.5);
  const hs: H[] = perm.map((p) => ({ name: `hook-${String(p).padStart(4, '0')}`, after: [], before: [] }));
  for (let e = 0; e < 5000; e++) {
    const i = Math.floor(rand() * n);
    const j = Math.floor(rand() * n);
    if (i === j) continue;
    const [lo, hi] = i < j ? [i, j] : [j, i];
    if (rand() < 0.5) hs[hi]!.after.push(hs[lo]!.name);
    else hs[lo]!.before.push(hs[hi]!.name);
  }
  hs.push({ name: 'extra', after: ['missing-1'], before: ['missing-2'] });
  const out = orderHooks(hs);
  t.is(out.length, n + 1);
  t.is(new Set(out).size, n + 1);
  satisfies(t, out);
  const shuffled = [...hs].sort(() => rand() - 0.5);
  t.deepEqual(orderHooks(shuffled).map((h) => h.name), out.map((h) => h.name));
});

test('order - 1000 hooks in one long chain (worst case depth)', (t) => {
  const n = 1000;
  const hs: H[] = Array.from({ length: n }, (_, i) => ({
    name: `h${String(n - i).padStart(4, '0')}`, after: i > 0 ? [`h${String(n - i + 1).padStart(4, '0')}`] : [], before: [],
  }));
  const out = orderHooks(hs);
  t.is(out[0]!.name, 'h1000');
  t.is(out[n - 1]!.name, 'h0001');
  satisfies(t, out);
});

test('cycle - a 1000-hook ring is reported whole', (t) => {
  const n = 1000;
  const name = (i: number) => `r${String(i % n).padStart(4, '0')}`;
  const hs: H[] = Array.from({ length: n }, (_, i) => ({ name: name(i), after: [name(i + 1)], before: [] }));
  const e = t.throws(() => orderHooks(hs), { instanceOf: PreStageError });
  t.true(e!.message.startsWith('ordering cycle between hooks: r0000 -> r0999 -> r0998'), e!.message.slice(0, 100));
  t.true(e!.message.includes('r0001 -> r0000 ('));
});
