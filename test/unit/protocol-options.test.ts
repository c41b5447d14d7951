import test from 'ava';
import { Variant } from 'dbus-next';
import { PreStageError } from '../../service/model/errors.js';
import { DEFAULT_TIMEOUT_SEC } from '../../service/model/hook-file.js';
import type { ResolvedHook } from '../../service/model/types.js';
import {
  MAX_ARRAY_ENTRIES, MAX_LOG_LINES, MAX_STRING_BYTES,
  checkDeploymentArg, decodeHookDefinition, decodeLogOptions, decodeOptions, decodePhaseOptions,
  decodeReconcileOptions, decodeRegisterOptions, decodeStartOptions, encodeHookDefinition, encodeHookEntry,
} from '../../service/protocol/options.js';
import { toBusString, toPercent, toUint32, toUint64 } from '../../service/protocol/values.js';

const v = (sig: string, value: unknown) => new Variant(sig, value);

function invalidArgs(t: import('ava').ExecutionContext, fn: () => unknown, ...needles: string[]) {
  const e = t.throws(fn, { instanceOf: PreStageError });
  t.is(e?.code, 'InvalidArgs');
  for (const n of needles) t.true(e!.message.includes(n), `'${e!.message}' should mention '${n}'`);
}

test('start options - decodes every key with its type', (t) => {
  t.deepEqual(decodeStartOptions({
    force: v('b', true), wait: v('b', true), 'dry-run': v('b', true), 'timeout-sec': v('u', 90),
  }), { force: true, wait: true, dryRun: true, timeoutSec: 90 });
});

test('start options - absent keys take their defaults', (t) => {
  t.deepEqual(decodeStartOptions({}), { force: false, wait: false, dryRun: false, timeoutSec: 0 });
});

test('start options - an unknown key is InvalidArgs naming it and the accepted keys', (t) => {
  invalidArgs(t, () => decodeStartOptions({ forc: v('b', true) }), "'forc'", "'force' (b)", "'timeout-sec' (u)");
});

test('start options - a wrong variant type is InvalidArgs naming key and expected type', (t) => {
  invalidArgs(t, () => decodeStartOptions({ force: v('s', 'yes') }), "'force'", "type 'b'", "not 's'");
  invalidArgs(t, () => decodeStartOptions({ 'timeout-sec': v('i', 5) }), "'timeout-sec'", "type 'u'");
  invalidArgs(t, () => decodeStartOptions({ 'timeout-sec': v('t', 5n) }), "type 'u'");
});

test('options - a key named __proto__ is refused, not silently dropped', (t) => {
  // What dbus-next builds for a dictionary holding the key "__proto__".
  const dict: Record<string, unknown> = {};
  dict['__proto__'] = v('b', true);
  invalidArgs(t, () => decodeStartOptions(dict), '__proto__');
});

test('options - a value that is not a variant, or a non-dictionary, is InvalidArgs', (t) => {
  invalidArgs(t, () => decodeStartOptions({ force: true }), "'force'");
  invalidArgs(t, () => decodeStartOptions([]), 'a{sv}');
  invalidArgs(t, () => decodeStartOptions(null), 'a{sv}');
});

test('options - string and array bounds', (t) => {
  const spec = { s: 's', as: 'as' } as const;
  t.notThrows(() => decodeOptions({ s: v('s', 'x'.repeat(MAX_STRING_BYTES)) }, spec, 'T'));
  invalidArgs(t, () => decodeOptions({ s: v('s', 'x'.repeat(MAX_STRING_BYTES + 1)) }, spec, 'T'), "'s'", `${MAX_STRING_BYTES} bytes`);
  // Bytes, not characters: 2049 two-byte characters are 4098 bytes.
  invalidArgs(t, () => decodeOptions({ s: v('s', 'é'.repeat(2049)) }, spec, 'T'), 'bytes');
  t.notThrows(() => decodeOptions({ as: v('as', Array(MAX_ARRAY_ENTRIES).fill('a')) }, spec, 'T'));
  invalidArgs(t, () => decodeOptions({ as: v('as', Array(MAX_ARRAY_ENTRIES + 1).fill('a')) }, spec, 'T'), `${MAX_ARRAY_ENTRIES + 1} entries`);
  invalidArgs(t, () => decodeOptions({ as: v('as', ['ok', 'x'.repeat(MAX_STRING_BYTES + 1)]) }, spec, 'T'), '[1]');
});

test('phase, reconcile and register options', (t) => {
  t.deepEqual(decodePhaseOptions({ wait: v('b', true) }, 'CommitPreStage'), { wait: true, timeoutSec: 0 });
  invalidArgs(t, () => decodePhaseOptions({ force: v('b', true) }, 'AbortPreStage'), 'AbortPreStage', "'force'");
  t.notThrows(() => decodeReconcileOptions({}));
  invalidArgs(t, () => decodeReconcileOptions({ force: v('b', true) }), 'none are accepted');
  t.deepEqual(decodeRegisterOptions({ runtime: v('b', true) }), { runtime: true });
  t.deepEqual(decodeRegisterOptions({}), { runtime: false });
});

test('GetLog options - defaults, bounds and hook filter', (t) => {
  t.deepEqual(decodeLogOptions({}), { maxLines: 1000, hook: '' });
  t.deepEqual(decodeLogOptions({ 'max-lines': v('u', 5), hook: v('s', 'alpha') }), { maxLines: 5, hook: 'alpha' });
  t.deepEqual(decodeLogOptions({ 'max-lines': v('u', MAX_LOG_LINES) }).maxLines, MAX_LOG_LINES);
  invalidArgs(t, () => decodeLogOptions({ 'max-lines': v('u', MAX_LOG_LINES + 1) }), 'max-lines');
  invalidArgs(t, () => decodeLogOptions({ 'max-lines': v('u', 0) }), 'max-lines');
});

test('deployment argument - bounded at 4096 bytes', (t) => {
  t.is(checkDeploymentArg('/sysroot/x'), '/sysroot/x');
  invalidArgs(t, () => checkDeploymentArg(`/${'d'.repeat(4096)}`), 'deployment', '4096');
});

test('hook definition - full dictionary decodes to a HookDefinition', (t) => {
  t.deepEqual(decodeHookDefinition({
    Description: v('s', 'Pull images'),
    Prepare: v('as', ['/usr/bin/pull', 'prepare']),
    Commit: v('as', ['/usr/bin/pull', 'commit']),
    Abort: v('as', ['/usr/bin/pull', 'abort']),
    After: v('as', ['compat']),
    Before: v('as', ['final']),
    Environment: v('as', ['A=1']),
    Required: v('b', false),
    TimeoutSec: v('u', 60),
  }), {
    description: 'Pull images',
    prepare: ['/usr/bin/pull', 'prepare'],
    commit: ['/usr/bin/pull', 'commit'],
    abort: ['/usr/bin/pull', 'abort'],
    after: ['compat'], before: ['final'], environment: ['A=1'],
    required: false, timeoutSec: 60,
  });
});

test('hook definition - defaults as for hook files; empty step is no step; TimeoutSec 0 is infinity', (t) => {
  t.deepEqual(decodeHookDefinition({ Prepare: v('as', ['/bin/true']), Commit: v('as', []) }), {
    description: '', prepare: ['/bin/true'], commit: null, abort: null,
    after: [], before: [], environment: [], required: true, timeoutSec: DEFAULT_TIMEOUT_SEC,
  });
  t.is(decodeHookDefinition({ TimeoutSec: v('u', 0) }).timeoutSec, null);
});

test('hook definition - unknown keys and wrong types are InvalidArgs', (t) => {
  invalidArgs(t, () => decodeHookDefinition({ ExecStart: v('as', []) }), "'ExecStart'", 'RegisterHook definition');
  invalidArgs(t, () => decodeHookDefinition({ Prepare: v('s', '/bin/true') }), "'Prepare'", "type 'as'");
  invalidArgs(t, () => decodeHookDefinition({ Required: v('s', 'yes') }), "'Required'", "type 'b'");
});

test('hook definition - encode then decode is the identity', (t) => {
  const def = {
    description: 'd', prepare: ['/a', 'x y'], commit: null, abort: ['/c'],
    after: ['b'], before: [], environment: ['K=V'], required: false, timeoutSec: null,
  };
  t.deepEqual(decodeHookDefinition(encodeHookDefinition(def)), def);
  t.deepEqual(decodeHookDefinition(encodeHookDefinition({ ...def, timeoutSec: 42 })).timeoutSec, 42);
});

test('ListHooks entry - every key with its type, plus Source, Origin, Refused, Digest', (t) => {
  const hook: ResolvedHook = {
    name: 'bound-images',
    definition: {
      description: 'Pull', prepare: ['/p'], commit: null, abort: null, after: [], before: [],
      environment: [], required: true, timeoutSec: 300,
    },
    source: '/etc/bootc/pre-stage.d/bound-images.hook', origin: 'etc', digest: 'ab'.repeat(32),
    refused: null, warnings: [],
  };
  const [name, dict] = encodeHookEntry(hook);
  t.is(name, 'bound-images');
  const types = Object.fromEntries(Object.entries(dict).map(([k, x]) => [k, x.signature]));
  t.deepEqual(types, {
    Description: 's', Prepare: 'as', Commit: 'as', Abort: 'as', After: 'as', Before: 'as',
    Environment: 'as', Required: 'b', TimeoutSec: 'u', Source: 's', Origin: 's', Refused: 's', Digest: 's',
  });
  t.is(dict.Refused!.value, '');
  t.deepEqual(dict.Commit!.value, []);
  t.is(dict.Origin!.value, 'etc');
  t.is(encodeHookEntry({ ...hook, refused: 'owned by uid 1000' })[1].Refused!.value, 'owned by uid 1000');
});

test('marshal helpers - values are always valid for their D-Bus type', (t) => {
  t.is(toUint32(-1), 0);
  t.is(toUint32(Number.NaN), 0);
  t.is(toUint32(2 ** 40), 0xffffffff);
  t.is(toUint32(3.7), 3);
  t.is(toPercent(150), 100);
  t.is(toPercent(49.6), 50);
  t.is(toPercent(-3), 0);
  t.is(toUint64(1.5e15), 1_500_000_000_000_000n);
  t.is(toUint64(2 ** 60), BigInt(Number.MAX_SAFE_INTEGER));
  t.is(toUint64(-5), 0n);
  t.is(toBusString('a\0b'), 'a\uFFFDb');
  const cut = toBusString('é'.repeat(100), 11);
  t.true(Buffer.byteLength(cut, 'utf8') <= 11);
  t.true(cut.endsWith('\u2026'));
  t.false(cut.includes('\uFFFD'));
});
