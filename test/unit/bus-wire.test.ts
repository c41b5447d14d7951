import test, { type ExecutionContext } from 'ava';
import { createRequire } from 'node:module';
import { Message, MessageType, Variant } from 'dbus-next';
import { MAX_ARRAY_BYTES, MarshalError, isValidObjectPath, marshalMessage } from '../../service/bus/wire/message.js';

// dbus-next's own marshaller and unmarshaller, the references.
const require = createRequire(import.meta.url);
const { marshallMessage, messageToJsFmt } = require('dbus-next/lib/marshall-compat.js') as {
  marshallMessage(msg: Message): [Buffer, number[]];
  messageToJsFmt(msg: Record<string, unknown>): { body: unknown[]; signature: string };
};
const DBusBuffer = require('dbus-next/lib/dbus-buffer.js') as new (
  buf: Buffer, start: number, endian: number, fds: number[] | null) => {
  read(sig: string): unknown[];
  align(power: number): void;
};
const headerTypeName = (require('dbus-next/lib/constants.js') as { headerTypeName: string[] }).headerTypeName;

const PATH = '/org/containers/bootc/PreStage/Transaction/1';
const IFACE = 'org.containers.bootc.PreStage.Transaction';
const v = (sig: string, value: unknown) => new Variant(sig, value);

function signal(signature: string, body: unknown[], serial = 7): Message {
  const m = Message.newSignal(PATH, IFACE, 'Changed', signature, body);
  m.serial = serial;
  return m;
}

/** dbus-next's bytes and fds (it rewrites the message it marshals: give it its own). */
function reference(make: () => Message): [Buffer, number[]] {
  return marshallMessage(make());
}

/** Our bytes equal dbus-next's for the message `make` builds, fds included. */
function sameBytes(t: ExecutionContext, make: () => Message): Buffer {
  const [theirs, theirFds] = reference(make);
  const fds: number[] = [];
  const ours = marshalMessage(make(), fds);
  if (!ours.equals(theirs)) {
    t.fail(`bytes differ:\n ours   ${ours.toString('hex')}\n theirs ${theirs.toString('hex')}`);
  } else {
    t.pass();
  }
  t.deepEqual(fds, theirFds);
  return ours;
}

/** Decode with dbus-next's unmarshaller (and its JS conversion), fds supplied. */
function decode(buf: Buffer, fds: number[] | null = null): Record<string, unknown> & { body: unknown[] } {
  const r = new DBusBuffer(buf, 0, buf[0]!, fds);
  const h = r.read('yyyyuua(yv)') as [number, number, number, number, number, number, [number, [unknown, unknown[]]][]];
  const msg: Record<string, unknown> = { type: h[1], flags: h[2], serial: h[5] };
  for (const [code, [, [value]]] of h[6]) msg[headerTypeName[code]!] = value;
  r.align(3);
  msg.body = typeof msg.signature === 'string' && msg.signature ? r.read(msg.signature) : [];
  return messageToJsFmt(msg) as Record<string, unknown> & { body: unknown[] };
}

// --- byte-for-byte against dbus-next: a table ---------------------------------

const sameAsDbusNext = test.macro({
  exec(t, make: () => Message) {
    sameBytes(t, make);
  },
  title: (title = '') => `same bytes as dbus-next - ${title}`,
});

const basic: [string, string, unknown[]][] = [
  ['byte bounds', 'yyy', [0, 127, 255]],
  ['booleans, also given as 0/1', 'bbbb', [true, false, 1, 0]],
  ['int16 bounds', 'nnn', [-32768, 0, 32767]],
  ['uint16 bounds', 'qq', [0, 65535]],
  ['int32 bounds', 'iii', [-2147483648, -1, 2147483647]],
  ['uint32 bounds', 'uuu', [0, 1, 4294967295]],
  ['int64 as BigInt', 'xxxx', [-(2n ** 63n) + 1n, -1n, 0n, 2n ** 63n - 1n]],
  ['int64 as numbers, safe and past 2^53', 'xxxx', [-1, Number.MIN_SAFE_INTEGER, 2 ** 60, -(2 ** 62)]],
  ['uint64 as BigInt', 'ttt', [0n, 2n ** 32n, 2n ** 64n - 1n]],
  ['uint64 as numbers', 'ttt', [0, Number.MAX_SAFE_INTEGER, 2 ** 63]],
  ['doubles', 'dddddd', [0, 1.5, -2.25e300, Number.MIN_VALUE, Number.MAX_VALUE, Math.PI]],
  ['strings', 'sss', ['', 'hello', 'a'.repeat(200)]],
  ['object paths', 'oo', ['/', PATH]],
  ['signatures', 'ggg', ['', 'a{sv}', '(yv)a(ssus)aay']],
  ['a string given as a Buffer', 's', [Buffer.from('from a buffer')]],
  ['every basic type after a byte', 'ybynyqyiyuyxytydysyoygyv',
    [1, true, 2, -3, 4, 5, 6, -7, 8, 9, 10, -11n, 12, 13n, 14, 1.5, 15, 'x', 16, '/a', 17, 'as', 18, v('y', 1)]],
];
for (const [title, sig, body] of basic) test(title, sameAsDbusNext, () => signal(sig, body));

const unicode: [string, string][] = [
  ['two-byte UTF-8', 'héllo wörld'],
  ['three-byte UTF-8', '日本語のテキスト'],
  ['astral (surrogate pairs)', '🚀 launch 👩‍👩‍👧'],
  ['a lone surrogate (becomes U+FFFD)', 'bad \ud800 here \udfff'],
  ['48 ASCII chars (the short-string path)', 'x'.repeat(48)],
  ['49 ASCII chars', 'y'.repeat(49)],
  ['non-ASCII at the end of a short string', 'abcdefé'],
  ['long mixed', `${'ab€'.repeat(100)}😀`],
  ['over 1024 units with lone surrogates (sized exactly)', `${'é\ud800x🚀'.repeat(400)}\udc00`],
  ['over 1024 ASCII chars', 'z'.repeat(5000)],
];
for (const [title, s] of unicode) {
  test(`unicode: ${title}`, sameAsDbusNext, () => signal('sas', [s, [s, '', s]]));
}

const containers: [string, string, unknown[]][] = [
  ['struct after a byte', 'y(t)', [1, [2n]]],
  ['struct of byte then uint64', '(yt)', [[1, 2n]]],
  ['nested structs', '(y(y(yd)))', [[1, [2, [3, 4.5]]]]],
  ['empty array of structs after a byte (padding still applies)', 'ya(ss)', [1, []]],
  ['empty array of dicts after a byte', 'ya{sv}', [1, {}]],
  ['empty array of uint64 after a byte', 'yat', [1, []]],
  ['empty array of doubles after a uint32', 'uad', [1, []]],
  ['empty array of int64 at an 8-aligned offset', 'uuax', [1, 2, []]],
  ['empty array of bytes', 'ayy', [[], 7]],
  ['arrays of every basic type', 'ayabanaqaiauaxatadasaoagav', [
    [1, 2], [true, false], [-1, 1], [1, 2], [-5, 5], [5, 6], [-1n, 1n], [1n, 2n], [1.5, -1.5],
    ['a', 'bc'], ['/', '/x'], ['s', 'a{sv}'], [v('s', 'x'), v('u', 1)]]],
  ['ay as a Buffer', 'ay', [Buffer.from([0, 1, 2, 255])]],
  ['ay as a Uint8Array', 'ay', [new Uint8Array([9, 8, 7])]],
  ['array of arrays', 'aay', [[Buffer.from('ab'), Buffer.alloc(0), [1, 2, 3]]]],
  ['array of arrays of uint64 after bytes', 'yaat', [1, [[1n], [], [2n, 3n]]]],
  ['a(ssus), the Hooks property', 'a(ssus)', [[['a', 'success', 100, 'done'], ['b', 'pending', 0, '']]]],
  ['dict of variants of arrays', 'a{sv}', [{
    Hooks: v('a(ssus)', [['h', 'running', 50, 'half']]),
    Empty: v('a(tt)', []),
    Bytes: v('ay', Buffer.from('xyz')),
    Nested: v('v', v('v', v('as', ['deep']))),
    Dict: v('a{sa{sv}}', { k: { inner: v('t', 5n) }, e: {} }),
  }]],
  ['dict with object path and signature keys', 'a{ou}a{gs}', [{ '/a': 1, '/b/c': 2 }, { 'a{sv}': 'x', '': 'empty' }]],
  ['dict whose integer-like keys are reordered by Object.keys', 'a{ss}', [{ b: '1', 2: 'two', a: '3', 1: 'one' }]],
  ['variant of a struct after a byte', 'yv', [1, v('(yt)', [2, 3n])]],
  ['variant holding a variant', 'v', [v('v', v('d', 2.5))]],
  ['PropertiesChanged', 'sa{sv}as', [IFACE, { State: v('s', 'running'), Progress: v('u', 42) }, ['Hooks']]],
  ['deeply nested containers', 'a(a{sa(yv)}at)', [[[{ k: [[1, v('ay', [1])]] }, [1n]], [{}, []]]]],
];
for (const [title, sig, body] of containers) test(title, sameAsDbusNext, () => signal(sig, body));

test('unix fds: indices into the fd list, and a UNIX_FDS header', sameAsDbusNext,
  () => signal('hsah', [7, 'x', [3, 7, 9]]));
test('unix fds inside a variant', sameAsDbusNext, () => signal('v', [v('(yh)', [1, 42])]));

test('a method call with destination, interface and flags', sameAsDbusNext, () => {
  const m = new Message({
    destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus',
    member: 'AddMatch', signature: 's', body: ["type='signal'"], flags: 1 | 2,
  });
  m.serial = 1;
  return m;
});
test('a method call without interface or body', sameAsDbusNext, () => {
  const m = new Message({ path: '/', member: 'Ping', destination: ':1.42' });
  m.serial = 4294967295;
  return m;
});
test('a method return with a body', sameAsDbusNext, () => {
  const m = Message.newMethodReturn({ serial: 77, sender: ':1.9' } as Message, 'ao', [['/a', '/b']]);
  m.serial = 3;
  return m;
});
test('a method return without a body', sameAsDbusNext, () => {
  const m = Message.newMethodReturn({ serial: 77, sender: ':1.9' } as Message);
  m.serial = 3;
  return m;
});
test('an error reply', sameAsDbusNext, () => {
  const newError = Message.newError as unknown as (m: unknown, n: string, t: string) => Message;
  const m = newError({ serial: 12, sender: ':1.1000' }, 'org.containers.bootc.PreStage.Error.Busy', 'busy ✋');
  m.serial = 13;
  return m;
});
test('a signal with a sender and a destination', sameAsDbusNext, () => {
  const m = new Message({
    type: MessageType.SIGNAL, path: PATH, interface: IFACE, member: 'HookStarted', sender: ':1.5',
    destination: 'org.example.Peer', signature: 'suu', body: ['hook', 1, 200],
  });
  m.serial = 99;
  return m;
});
test('header fields whose lengths put the body at every 8-byte phase', (t) => {
  for (let n = 1; n <= 16; n++) {
    sameBytes(t, () => {
      const m = Message.newSignal(`/${'p'.repeat(n)}`, IFACE, 'M'.repeat(n), 'yt', [1, 2n]);
      m.serial = n;
      return m;
    });
  }
});

test('arrays of frozen flat structs (Hooks) reuse the last such array\'s bytes: every change gives dbus-next\'s bytes', (t) => {
  const row = (i: number, result = 'pending', status = '') => Object.freeze([`hook-${i}`, result, i % 101, status + 'x'.repeat(i % 5)]);
  let rows = Array.from({ length: 12 }, (_, i) => row(i));
  const check = (what: string, lead = '') => {
    const snapshot = rows.slice();
    sameBytes(t, () => signal('sa(ssus)', [lead, snapshot]));
    // In a variant in a dict, as PropertiesChanged carries it, after header fields of another length.
    sameBytes(t, () => signal('sa{sv}as', [IFACE + lead, { State: v('s', what), Hooks: v('a(ssus)', snapshot) }, []]));
  };
  check('first');
  check('same again, after a lead of another length', 'abc');
  rows[0] = row(0, 'running');
  check('first entry changed');
  rows[5] = row(5, 'success', 'done, with a longer status');
  check('a middle entry changed, longer');
  rows[11] = row(11, 'failed');
  check('last entry changed');
  rows = [...rows, row(12), row(13)];
  check('grown');
  rows = rows.slice(0, 9);
  check('shrunk');
  rows = [row(100), ...rows];
  check('shifted by one (nothing at its index matches)');
  // A row that is not frozen is never taken from the memo, whatever it holds now.
  const open: [string, string, number, string] = ['open', 'running', 5, 'a'];
  rows[3] = open as unknown as typeof rows[number];
  check('an unfrozen entry');
  open[3] = 'changed in place';
  check('the unfrozen entry changed in place');
});

test('a frozen struct with a bad member is refused every time, and the next message is right', (t) => {
  const good = Array.from({ length: 10 }, (_, i) => Object.freeze([`h${i}`, 'x', i, 'y']));
  sameBytes(t, () => signal('a(ssus)', [good]));
  const bad = Object.freeze(['a\0b', 'x', 1, 'y']);
  const withBad = [...good.slice(0, 4), bad, ...good.slice(5)];
  for (let i = 0; i < 2; i++) {
    t.throws(() => marshalMessage(signal('a(ssus)', [withBad])), { instanceOf: MarshalError, message: /NUL.*\[4\]/ });
  }
  sameBytes(t, () => signal('a(ssus)', [good]));
  const negative = [...good.slice(0, 9), Object.freeze(['a', 'x', -1, 'y'])];
  t.throws(() => marshalMessage(signal('a(ssus)', [negative])), { instanceOf: MarshalError, message: /'u'.*\[9\]/ });
  // The same frozen entries under another element signature are encoded for that one.
  const pairs = Array.from({ length: 9 }, (_, i) => Object.freeze([i + 250, `n${i}`]));
  sameBytes(t, () => signal('a(us)', [pairs]));
  sameBytes(t, () => signal('a(ts)', [pairs]));
  sameBytes(t, () => signal('a(us)', [pairs]));
});

// --- seeded fuzz against dbus-next -----------------------------------------------

/** mulberry32: a small seeded PRNG, so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

type TNode = { code: string; elem?: TNode; fields?: TNode[] };

function sigOf(n: TNode): string {
  if (n.code === 'a') return `a${sigOf(n.elem!)}`;
  if (n.code === '(') return `(${n.fields!.map(sigOf).join('')})`;
  if (n.code === '{') return `{${n.fields!.map(sigOf).join('')}}`;
  return n.code;
}

interface FuzzOptions {
  /** Dict key types to use; dbus-next can marshal only string-like keys. */
  keyTypes: string;
  fds: boolean;
}

class Gen {
  constructor(readonly r: () => number, readonly opts: FuzzOptions) {}
  int(lo: number, hi: number): number { return lo + Math.floor(this.r() * (hi - lo + 1)); }
  pick<T>(xs: readonly T[]): T { return xs[this.int(0, xs.length - 1)]!; }
  chance(p: number): boolean { return this.r() < p; }

  type(depth: number): TNode {
    const basics = `ybnqiuxtdsogv${this.opts.fds ? 'h' : ''}`;
    const roll = this.r();
    if (depth >= 4 || roll < 0.55) return { code: this.pick([...basics]) };
    if (roll < 0.7) return { code: 'a', elem: this.type(depth + 1) };
    if (roll < 0.85) {
      const n = this.int(1, 4);
      return { code: '(', fields: Array.from({ length: n }, () => this.type(depth + 1)) };
    }
    return {
      code: 'a',
      elem: { code: '{', fields: [{ code: this.pick([...this.opts.keyTypes]) }, this.type(depth + 1)] },
    };
  }

  string(): string {
    const len = this.chance(0.1) ? this.int(40, 130) : this.int(0, 8);
    let s = '';
    for (let i = 0; i < len; i++) {
      const k = this.r();
      if (k < 0.6) s += String.fromCharCode(this.int(1, 0x7f));
      else if (k < 0.75) s += String.fromCharCode(this.int(0x80, 0x7ff));
      else if (k < 0.88) s += String.fromCharCode(this.pick([this.int(0x800, 0xd7ff), this.int(0xe000, 0xffff)]));
      else if (k < 0.97) s += String.fromCodePoint(this.int(0x10000, 0x10ffff));
      else s += String.fromCharCode(this.int(0xd800, 0xdfff));
    }
    return s;
  }

  path(): string {
    if (this.chance(0.2)) return '/';
    const n = this.int(1, 4);
    const chars = 'abcXYZ019_';
    return Array.from({ length: n }, () => `/${Array.from({ length: this.int(1, 6) }, () => this.pick([...chars])).join('')}`)
      .join('');
  }

  signature(): string {
    return Array.from({ length: this.int(0, 3) }, () => sigOf(this.type(2))).join('');
  }

  double(): number {
    const k = this.r();
    let d: number;
    if (k < 0.2) d = this.int(-1000, 1000);
    else if (k < 0.3) d = this.pick([Number.MIN_VALUE, Number.MAX_VALUE, -Number.MAX_VALUE, 2 ** -1074, 1e-310]);
    else d = (this.r() - 0.5) * 10 ** this.int(-300, 300);
    return Object.is(d, -0) ? 0 : d; // dbus-next writes -0 as +0 (see wire/message.ts)
  }

  int64(signed: boolean): bigint | number {
    const k = this.r();
    if (k < 0.3) return signed ? this.int(-1e6, 1e6) : this.int(0, 1e6);
    if (k < 0.4) return signed ? this.pick([2 ** 60, -(2 ** 60), -(2 ** 63) + 2 ** 11]) : this.pick([2 ** 60, 2 ** 63]);
    const hi = BigInt(this.int(0, 0xffffffff));
    const lo = BigInt(this.int(0, 0xffffffff));
    const u = (hi << 32n) | lo;
    if (!signed) return u;
    const s = BigInt.asIntN(64, u);
    return s === -(2n ** 63n) ? s + 1n : s; // dbus-next refuses -2^63 (see wire/message.ts)
  }

  value(t: TNode, depth: number): unknown {
    switch (t.code) {
      case 'y': return this.int(0, 255);
      case 'b': return this.chance(0.1) ? this.int(0, 1) : this.chance(0.5);
      case 'n': return this.int(-32768, 32767);
      case 'q': return this.int(0, 65535);
      case 'i': return this.chance(0.1) ? this.pick([-2147483648, 2147483647]) : this.int(-2147483648, 2147483647);
      case 'u': return this.chance(0.1) ? this.pick([0, 4294967295]) : this.int(0, 4294967295);
      case 'h': return this.int(0, 1000);
      case 'x': return this.int64(true);
      case 't': return this.int64(false);
      case 'd': return this.double();
      case 's': return this.string();
      case 'o': return this.path();
      case 'g': return this.signature();
      case 'v': {
        const inner = this.type(depth + 1);
        return new Variant(sigOf(inner), this.value(inner, depth + 1));
      }
      case '(': return t.fields!.map((f) => this.value(f, depth + 1));
      case 'a': {
        const e = t.elem!;
        const n = this.chance(0.2) ? 0 : this.int(1, depth > 2 ? 2 : 5);
        if (e.code === '{') {
          const obj: Record<string, unknown> = {};
          for (let i = 0; i < n; i++) {
            const kt = e.fields![0]!;
            const key = String(kt.code === 'b' ? this.chance(0.5) : this.value(kt, depth + 1));
            if (key === '__proto__') continue;
            obj[key] = this.value(e.fields![1]!, depth + 1);
          }
          return obj;
        }
        const arr = Array.from({ length: n }, () => this.value(e, depth + 1));
        return e.code === 'y' && this.chance(0.5) ? Buffer.from(arr as number[]) : arr;
      }
      default: throw new Error(`no generator for ${t.code}`);
    }
  }

  member(): string {
    return `${this.pick([...'abcXYZ_'])}${Array.from({ length: this.int(0, 12) }, () => this.pick([...'abXY09_'])).join('')}`;
  }

  iface(): string {
    return Array.from({ length: this.int(2, 4) }, () => this.member()).join('.');
  }

  message(): Message {
    const type = this.pick([MessageType.METHOD_CALL, MessageType.METHOD_RETURN, MessageType.ERROR, MessageType.SIGNAL]);
    const types = Array.from({ length: this.int(0, 4) }, () => this.type(0));
    const opts: Record<string, unknown> = {
      type, flags: this.int(0, 3), signature: types.map(sigOf).join(''),
      body: types.map((t) => this.value(t, 0)),
    };
    if (type === MessageType.METHOD_CALL || type === MessageType.SIGNAL) {
      opts.path = this.path();
      opts.member = this.member();
      if (type === MessageType.SIGNAL || this.chance(0.7)) opts.interface = this.iface();
    } else {
      opts.replySerial = this.int(1, 4294967295);
      if (type === MessageType.ERROR) opts.errorName = this.iface();
    }
    if (this.chance(0.7)) opts.destination = this.chance(0.5) ? `:1.${this.int(0, 9999)}` : this.iface();
    if (this.chance(0.2)) opts.sender = `:1.${this.int(0, 9999)}`;
    const m = new Message(opts as ConstructorParameters<typeof Message>[0]);
    m.serial = this.int(1, 4294967295);
    return m;
  }
}

const FUZZ_CASES = 3000;

test(`fuzz - ${FUZZ_CASES} seeded random messages marshal to dbus-next's bytes`, (t) => {
  let failures = 0;
  for (let seed = 1; seed <= FUZZ_CASES; seed++) {
    const make = () => new Gen(prng(seed), { keyTypes: 'sog', fds: true }).message();
    const [theirs, theirFds] = reference(make);
    const fds: number[] = [];
    const ours = marshalMessage(make(), fds);
    if (!ours.equals(theirs) || fds.join() !== theirFds.join()) {
      failures++;
      if (failures <= 3) {
        const m = make();
        t.log(`seed ${seed}: signature '${m.signature}'\n ours   ${ours.toString('hex')}\n theirs ${theirs.toString('hex')}`);
      }
    }
  }
  t.is(failures, 0);
});

/** The value dbus-next's unmarshaller gives back for what was sent. */
function expected(t: TNode, val: unknown, fds: number[]): unknown {
  switch (t.code) {
    // A number past 2^53 goes as its decimal text, as dbus-next sends it.
    case 'x': case 't': return typeof val === 'number' ? BigInt(String(val)) : val;
    case 'b': return Boolean(val);
    case 's': return Buffer.from(String(val)).toString(); // lone surrogates become U+FFFD
    case 'h': return val; // dbus-next reads the fd back from the fd list
    case 'v': {
      const vr = val as Variant;
      const inner = parseType(vr.signature);
      return new Variant(vr.signature, expected(inner, vr.value, fds));
    }
    case '(': return (val as unknown[]).map((x, i) => expected(t.fields![i]!, x, fds));
    case 'a': {
      const e = t.elem!;
      if (e.code === 'y') return Buffer.from(val as number[]);
      if (e.code === '{') {
        const out: Record<string, unknown> = {};
        for (const [k, x] of Object.entries(val as object)) {
          // dbus-next turns a received key back into a property name.
          out[String(expected(e.fields![0]!, dictKeyValue(e.fields![0]!.code, k), fds))] = expected(e.fields![1]!, x, fds);
        }
        return out;
      }
      return (val as unknown[]).map((x) => expected(e, x, fds));
    }
    default: return val;
  }
}

function dictKeyValue(code: string, k: string): unknown {
  if ('xt'.includes(code)) return BigInt(k);
  if (code === 'b') return k === 'true';
  if ('ynqiudh'.includes(code)) return Number(k);
  return k;
}

function parseType(sig: string): TNode {
  let i = 0;
  const one = (): TNode => {
    const c = sig[i++]!;
    if (c === 'a') return { code: 'a', elem: one() };
    if (c === '(' || c === '{') {
      const fields: TNode[] = [];
      while (sig[i] !== ')' && sig[i] !== '}') fields.push(one());
      i++;
      return { code: c, fields };
    }
    return { code: c };
  };
  return one();
}

test('round trip - dbus-next\'s unmarshaller reads back every fuzzed message, numeric dict keys included', (t) => {
  for (let seed = 1; seed <= 1500; seed++) {
    const m = new Gen(prng(seed * 7919), { keyTypes: 'sogybnqiuxtd', fds: true }).message();
    const fds: number[] = [];
    const buf = marshalMessage(m, fds);
    const got = decode(buf, fds);
    const body = parseBody(m.signature).map((tn, i) => expected(tn, m.body[i], fds));
    t.deepEqual(got.body, body, `seed ${seed * 7919}: '${m.signature}'`);
    for (const f of ['type', 'flags', 'serial', 'path', 'interface', 'member', 'errorName', 'replySerial',
      'destination', 'sender'] as const) {
      t.is(got[f], (m as unknown as Record<string, unknown>)[f], `${f} of seed ${seed * 7919}`);
    }
    t.is(got.unixFd, fds.length || undefined);
  }
});

function parseBody(sig: string): TNode[] {
  const out: TNode[] = [];
  let rest = sig;
  while (rest) {
    const t = parseType(rest);
    out.push(t);
    rest = rest.slice(sigOf(t).length);
  }
  return out;
}

// --- behaviour beyond the bytes -----------------------------------------------------

test('the message is not modified (dbus-next rewrites body and signature)', (t) => {
  const body = [{ Hooks: v('a(ssus)', [['a', 'b', 1, 'c']]) }, 5n];
  const m = signal('a{sv}t', body);
  marshalMessage(m);
  t.is(m.body, body);
  t.deepEqual(m.body, [{ Hooks: v('a(ssus)', [['a', 'b', 1, 'c']]) }, 5n]);
  t.is(m.signature, 'a{sv}t');
  t.is((m as unknown as { unixFd?: number }).unixFd, undefined);
});

test('every call returns its own buffer (the scratch space is not shared out)', (t) => {
  const a = marshalMessage(signal('s', ['first']));
  const b = marshalMessage(signal('s', ['second, longer']));
  t.true(decode(a).body[0] === 'first');
  t.true(decode(b).body[0] === 'second, longer');
});

test('a getter in the body that sends another message gets correct bytes, and so does the outer one', (t) => {
  let inner: Buffer | undefined;
  const tricky = {};
  Object.defineProperty(tricky, 'k', {
    enumerable: true,
    get() {
      inner = marshalMessage(signal('as', [['inner', 'message']], 9));
      return 'value';
    },
  });
  const outer = marshalMessage(signal('sa{ss}', ['outer', tricky]));
  t.deepEqual(decode(outer).body, ['outer', { k: 'value' }]);
  t.deepEqual(decode(inner!).body, [['inner', 'message']]);
});

test('a failed message leaves nothing behind: the next one is whole, and fds are rolled back', (t) => {
  const fds = [100];
  t.throws(() => marshalMessage(signal('hu', [5, -1]), fds), { instanceOf: MarshalError });
  t.deepEqual(fds, [100]);
  const m = () => signal('hs', [5, 'after']);
  const [theirs] = reference(m);
  const ours = marshalMessage(m(), fds);
  t.deepEqual(fds, [100, 5]);
  // Indices count from the fds this message added, as a fresh list would.
  t.true(ours.equals(theirs));
});

test('an \'h\' without an fd list is refused: the connection cannot pass fds', (t) => {
  const e = t.throws(() => marshalMessage(signal('h', [3])), { instanceOf: MarshalError });
  t.regex(e!.message, /does not pass file descriptors/);
});

test('messages handed out stay intact while later ones are written, across slabs and a big message', (t) => {
  const hooks = Array.from({ length: 5000 }, (_, i) => [`hook-${i}-${'é'.repeat(i % 7)}`, 'success', i % 101, 'x'.repeat(i % 60)]);
  const makers: (() => Message)[] = [];
  for (let i = 0; i < 3000; i++) {
    // Mostly small, a few that do not fit what is left of a slab, and one
    // far bigger than a slab in the middle of a run.
    if (i === 1500) makers.push(() => signal('ua(ssus)', [i, hooks], i + 1));
    else if (i % 500 === 7) makers.push(() => signal('uay', [i, Buffer.alloc(100_000, i & 0xff)], i + 1));
    else makers.push(() => signal('us', [i, 'x'.repeat(i % 300)], i + 1));
  }
  const ours = makers.map((make) => marshalMessage(make()));
  let differ = 0;
  for (let i = 0; i < makers.length; i++) if (!ours[i]!.equals(reference(makers[i]!)[0])) differ++;
  t.is(differ, 0);
  t.true(ours[1500]!.length > 300_000);
});

// --- refusals ------------------------------------------------------------------------

/**
 * A body that does not fit its signature throws a MarshalError naming the
 * problem and where it is; dbus-next refuses it too unless `laxDbusNext`
 * (where dbus-next would send something the spec or dbus-daemon rejects).
 */
const refuses = test.macro({
  exec(t, sig: string, body: unknown[], needle: RegExp, laxDbusNext = false) {
    const e = t.throws(() => marshalMessage(signal(sig, body)), { instanceOf: MarshalError });
    t.is(e?.name, 'MarshalError');
    t.regex(e!.message, needle);
    if (laxDbusNext) t.notThrows(() => reference(() => signal(sig, body)));
    else t.throws(() => reference(() => signal(sig, body)));
  },
  title: (title = '') => `refuses ${title}`,
});

test('a negative u', refuses, 'u', [-1], /integer in 0\.\.4294967295 for 'u', got -1 \(at body\[0\]\)/);
test('a u past 2^32-1', refuses, 'u', [2 ** 32], /'u'/);
test('a fractional u', refuses, 'u', [1.5], /'u', got 1\.5/);
test('a u given as a string', refuses, 'u', ['1'], /'u', got '1'/);
test('an i past 2^31-1', refuses, 'i', [2 ** 31], /'i'/);
test('a y of 256', refuses, 'y', [256], /'y'/);
test('an n of 32768', refuses, 'n', [32768], /'n'/);
test('a q of -1', refuses, 'q', [-1], /'q'/);
test('a b of 2', refuses, 'b', [2], /boolean for 'b', got 2/);
test('a b given as a string', refuses, 'b', ['true'], /boolean/);
test('a NaN d', refuses, 'd', [NaN], /finite number for 'd', got NaN/);
test('an infinite d', refuses, 'd', [Infinity], /finite number/);
test('a d given as a BigInt', refuses, 'd', [1n], /finite number/);
test('a t below 0', refuses, 't', [-1n], /out of range for 't'/);
test('a t past 2^64-1', refuses, 't', [2n ** 64n], /out of range for 't'/);
test('an x past 2^63-1', refuses, 'x', [2n ** 63n], /out of range for 'x'/);
test('a fractional x', refuses, 'x', [1.5], /integer for 'x'/);
test('an x given as an object', refuses, 'x', [{}], /BigInt or integer for 'x', got a Object/);
test('a null string', refuses, 's', [null], /string for 's', got null/);
test('a number for a string', refuses, 's', [1], /string for 's', got 1/);
test('a string holding NUL', refuses, 's', ['a\0b'], /NUL/);
test('a long string holding NUL', refuses, 's', [`${'x'.repeat(100)}\0`], /NUL/);
test('an undefined body value', refuses, 'su', ['a', undefined], /got undefined \(at body\[1\]\)/);
test('a relative object path', refuses, 'o', ['foo'], /invalid object path 'foo'/, true);
test('an object path with an empty element', refuses, 'o', ['/a//b'], /invalid object path/, true);
test('an object path with a trailing slash', refuses, 'o', ['/a/'], /invalid object path/, true);
test('an object path with a dash', refuses, 'o', ['/a-b'], /invalid object path/, true);
test('an unterminated signature value', refuses, 'g', ['a'], /invalid signature 'a'/);
test('a signature value with an unknown type code', refuses, 'g', ['z'], /unknown type code 'z'/);
test('a signature value with an empty struct', refuses, 'g', ['()'], /empty struct/, true);
test('a signature value with a dict entry outside an array', refuses, 'g', ['{sv}'], /outside an array/, true);
test('a signature value with a container as dict key', refuses, 'g', ['a{vs}'], /basic type/, true);
test('a signature value of three types in a dict entry', refuses, 'g', ['a{sss}'], /more than two/, true);
test('a signature value over 255 bytes', refuses, 'g', ['y'.repeat(256)], /longer than 255/);
test('a signature value nesting 33 arrays', refuses, 'g', [`${'a'.repeat(33)}y`], /33|more than 32 nested arrays/, true);
test('a signature value nesting 33 structs', refuses, 'g', [`${'('.repeat(33)}y${')'.repeat(33)}`], /more than 32 nested structs/);
test('a plain object for a variant', refuses, 'v', [{ signature: 's', value: 'x' }], /Variant for 'v', got a Object/);
// dbus-next silently sends the first type.
test('a variant of two types', refuses, 'v', [v('ss', 'x')], /one complete type, got 'ss'/, true);
test('a variant with an empty signature', refuses, 'v', [v('', 'x')], /one complete type/);
test('a variant whose value does not fit', refuses, 'v', [v('u', 'x')], /'u', got 'x' \(at body\[0\]<u>\)/);
test('a struct with too few members', refuses, '(ss)', [['a']], /array of 2 members for '\(ss\)', got an array of 1/);
test('a struct that is not an array', refuses, '(ss)', ['ab'], /array of 2 members/);
test('an array that is not an array', refuses, 'as', ['abc'], /array for 'as', got 'abc'/);
test('an array with a hole', refuses, 'as', [['a', , 'c']], /got undefined \(at body\[0\]\[1\]\)/);
test('a dict given as an array', refuses, 'a{ss}', [[['k', 'v']]], /plain object for 'a\{ss\}'/);
test('a dict given as a Map', refuses, 'a{ss}', [new Map([['k', 'v']])], /plain object for 'a\{ss\}', got a Map/);
test('a dict value that does not fit', refuses, 'a{su}', [{ ok: 1, bad: 'x' }], /'u', got 'x' \(at body\[0\]\["bad"\]\)/);
test('a dict key that is not its numeric type', refuses, 'a{us}', [{ abc: 'x' }], /dict key "abc" is not a 'u'/);
test('a non-canonical numeric dict key', refuses, 'a{us}', [{ '01': 'x' }], /dict key "01"/);
test('a body with a value too few', refuses, 'ss', ['a'], /body has 1 values for signature 'ss' \(2 values\)/);
test('a body with a value too many', refuses, 's', ['a', 'b'], /body has 2 values/);
test('an ay given as a string', refuses, 'ay', ['ab'], /array for 'ay'/);

test('refuses a bad value deep inside, naming where it is', (t) => {
  const hooks = [['a', 'success', 100, 'ok'], ['b', 'running', -5, '']];
  const e = t.throws(() => marshalMessage(signal('sa{sv}as', [IFACE, { Hooks: v('a(ssus)', hooks) }, []])),
    { instanceOf: MarshalError });
  t.is(e!.location, 'body[1]["Hooks"]<a(ssus)>[1][2]');
  t.regex(e!.message, /'u', got -5 \(at body\[1\]\["Hooks"\]<a\(ssus\)>\[1\]\[2\]\)$/);
});

test('refuses 65 nested variants (the spec allows 64 containers)', (t) => {
  let deep: unknown = 'x';
  let sig = 's';
  for (let i = 0; i < 65; i++) {
    deep = v(sig, deep);
    sig = 'v';
  }
  t.throws(() => marshalMessage(signal('v', [deep])), { instanceOf: MarshalError, message: /more than 64 nested containers/ });
  // 64 are fine.
  let ok: unknown = 'x';
  sig = 's';
  for (let i = 0; i < 64; i++) {
    ok = v(sig, ok);
    sig = 'v';
  }
  t.notThrows(() => marshalMessage(signal('v', [ok])));
});

test('refuses an array over 64 MiB and a message over 128 MiB', (t) => {
  const big = Buffer.alloc(MAX_ARRAY_BYTES + 1);
  t.throws(() => marshalMessage(signal('ay', [big])), { instanceOf: MarshalError, message: /longer than the D-Bus limit of 67108864/ });
  const half = big.subarray(0, MAX_ARRAY_BYTES);
  t.throws(() => marshalMessage(signal('ayay', [half, half])),
    { instanceOf: MarshalError, message: /longer than the D-Bus limit of 134217728/ });
  // A maximal array is fine.
  t.is(marshalMessage(signal('ay', [half])).length > MAX_ARRAY_BYTES, true);
});

/** A message dbus-next's constructor accepted, then changed: refused at send. */
const refusesHeader = test.macro({
  exec(t, change: (m: Record<string, unknown>) => void, needle: RegExp) {
    const m = Message.newSignal(PATH, IFACE, 'Changed', 's', ['x']);
    m.serial = 1;
    change(m as unknown as Record<string, unknown>);
    t.throws(() => marshalMessage(m), { instanceOf: MarshalError, message: needle });
  },
  title: (title = '') => `refuses a header with ${title}`,
});

test('no serial', refusesHeader, (m) => { m.serial = null; }, /no valid serial/);
test('a serial of 0', refusesHeader, (m) => { m.serial = 0; }, /no valid serial/);
test('a fractional serial', refusesHeader, (m) => { m.serial = 1.5; }, /no valid serial/);
test('an unknown message type', refusesHeader, (m) => { m.type = 9; }, /unknown message type 9/);
test('flags over a byte', refusesHeader, (m) => { m.flags = 256; }, /flags must be a byte/);
test('a signal without an interface', refusesHeader, (m) => { m.interface = undefined; }, /a signal needs a interface/);
test('a signal without a path', refusesHeader, (m) => { m.path = ''; }, /a signal needs a path/);
test('an invalid path', refusesHeader, (m) => { m.path = '/a/'; }, /invalid object path '\/a\/' \(at header path\)/);
test('the reserved local path', refusesHeader, (m) => { m.path = '/org/freedesktop/DBus/Local'; }, /reserved/);
test('the reserved local interface', refusesHeader, (m) => { m.interface = 'org.freedesktop.DBus.Local'; }, /reserved/);
test('an interface of one element', refusesHeader, (m) => { m.interface = 'nodots'; }, /invalid interface name/);
test('an interface element starting with a digit', refusesHeader, (m) => { m.interface = 'org.1x'; }, /invalid interface name/);
test('a member with a dot', refusesHeader, (m) => { m.member = 'a.b'; }, /invalid member name/);
test('a member over 255 bytes', refusesHeader, (m) => { m.member = 'm'.repeat(256); }, /invalid member name/);
test('a bad destination', refusesHeader, (m) => { m.destination = 'org..x'; }, /invalid bus name/);
test('a bad unique destination', refusesHeader, (m) => { m.destination = ':1'; }, /invalid bus name/);
test('a bad sender', refusesHeader, (m) => { m.sender = 'x'; }, /invalid bus name/);
test('an invalid body signature', refusesHeader, (m) => { m.signature = 'a'; }, /invalid signature 'a'/);
test('an error without a reply serial', refusesHeader, (m) => {
  m.type = MessageType.ERROR;
  m.errorName = 'org.x.Error';
}, /an? error needs a replySerial/);
test('an error without a name', refusesHeader, (m) => {
  m.type = MessageType.ERROR;
  m.replySerial = 3;
}, /needs a errorName/);
test('a method return with a bad reply serial', refusesHeader, (m) => {
  m.type = MessageType.METHOD_RETURN;
  m.replySerial = -3;
}, /invalid reply serial -3/);

test('object path validation follows the spec', (t) => {
  for (const p of ['/', '/a', '/a/b_c/D9']) t.true(isValidObjectPath(p), p);
  for (const p of ['', 'a', '//', '/a/', '/a//b', '/a.b', '/é']) t.false(isValidObjectPath(p), p);
});

test('unique and well-known bus names with dashes and digits are accepted', (t) => {
  for (const destination of [':1.42', ':abc.d-e', 'org.example-x.Name_2', 'a.b']) {
    const m = new Message({ path: '/', member: 'M', destination });
    m.serial = 1;
    t.notThrows(() => marshalMessage(m), destination);
  }
});
