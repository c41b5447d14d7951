import test from 'ava';
import { PreStageError } from '../../service/model/errors.js';
import {
  DEFAULT_TIMEOUT_SEC, LIMITS, MAX_TIMEOUT_SEC, environmentRecord, parseHookFile, serializeHookFile,
  validateDefinition,
} from '../../service/model/hook-file.js';
import type { HookDefinition } from '../../service/model/types.js';

const P = '/etc/bootc/pre-stage.d/x.hook';

function parse(text: string | Uint8Array) {
  return parseHookFile(text, P);
}

function def(over: Partial<HookDefinition> = {}): HookDefinition {
  return {
    description: '', prepare: ['/bin/true'], commit: null, abort: null,
    after: [], before: [], environment: [], required: true, timeoutSec: DEFAULT_TIMEOUT_SEC,
    ...over,
  };
}

test('parse - the docs/design.md example', (t) => {
  const { definition, warnings } = parse(`[Hook]
Description=Pull logically bound images
Prepare=\${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/bound-images prepare
Commit=/usr/libexec/bootc-prestage/bound-images commit
Abort=/usr/libexec/bootc-prestage/bound-images abort
After=compat-check
Required=yes
TimeoutSec=600
Environment=STORE=/var/lib/bootc-prestage/images
`);
  t.deepEqual(warnings, []);
  t.deepEqual(definition, {
    description: 'Pull logically bound images',
    prepare: ['${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/bound-images', 'prepare'],
    commit: ['/usr/libexec/bootc-prestage/bound-images', 'commit'],
    abort: ['/usr/libexec/bootc-prestage/bound-images', 'abort'],
    after: ['compat-check'], before: [],
    environment: ['STORE=/var/lib/bootc-prestage/images'],
    required: true, timeoutSec: 600,
  });
});

test('parse - defaults: required, 300 s, no description, no order, no environment', (t) => {
  t.deepEqual(parse('[Hook]\nCommit=/bin/c\n').definition, def({ prepare: null, commit: ['/bin/c'] }));
});

const parsesTo = test.macro({
  exec(t, body: string, expected: Partial<HookDefinition>) {
    const { definition } = parse(`[Hook]\nPrepare=/bin/true\n${body}`);
    for (const [k, v] of Object.entries(expected)) t.deepEqual(definition[k as keyof HookDefinition], v, k);
  },
  title: (provided) => `parse - ${provided}`,
});

test('comments, blank lines and whitespace around keys and values are ignored', parsesTo,
  '# c\n; c\n\n   Description =  hi there  \n  # indented comment\n', { description: 'hi there' });
test('a trailing backslash continues the line, becoming a space', parsesTo,
  'Abort=/bin/a \\\n  x \\\n  y\n', { abort: ['/bin/a', 'x', 'y'] });
test('comment lines inside a continuation are skipped', parsesTo,
  'Abort=/bin/a \\\n# note\n; note\n  b\n', { abort: ['/bin/a', 'b'] });
test('a double backslash at the end does not continue', parsesTo,
  'Abort=/bin/a b\\\\\nDescription=d\n', { abort: ['/bin/a', 'b\\'], description: 'd' });
test('a continuation at the end of the file ends the line', parsesTo,
  'Abort=/bin/a \\', { abort: ['/bin/a'] });
test('CRLF line endings are accepted', parsesTo, 'Description=d\r\nTimeoutSec=5\r\n', { description: 'd', timeoutSec: 5 });
test('command lines are split systemd-style', parsesTo,
  `Commit=/bin/sh -c "echo 'a  b'" $x \${X}\n`, { commit: ['/bin/sh', '-c', "echo 'a  b'", '$x', '${X}'] });
test('an empty step key means no such step, and a later line replaces an earlier one', parsesTo,
  'Prepare=\nCommit=/bin/a\nCommit=/bin/b 1\n', { prepare: null, commit: ['/bin/b', '1'] });
test('After= and Before= are space separated and accumulate', parsesTo,
  'After=a b\nAfter=c\tb\nBefore=x@1.y\n', { after: ['a', 'b', 'c', 'b'], before: ['x@1.y'] });
test('an empty After= resets the list', parsesTo, 'After=a\nAfter=\nAfter=b\n', { after: ['b'] });
test('Environment= takes quoted KEY=VALUE words and accumulates', parsesTo,
  'Environment=A=1 "B=two words"\nEnvironment=C= A=3\n', { environment: ['A=1', 'B=two words', 'C=', 'A=3'] });
test('an empty Environment= resets the list', parsesTo,
  'Environment=A=1\nEnvironment=\nEnvironment=B=2\n', { environment: ['B=2'] });
test('several [Hook] sections merge', parsesTo, '[Hook]\nDescription=d\n', { description: 'd' });
test('unicode descriptions are kept', parsesTo, 'Description=Prüfung ✓\n', { description: 'Prüfung ✓' });
test('a tab inside the description is kept', parsesTo, 'Description=a\tb\n', { description: 'a\tb' });

const requiredIs = test.macro({
  exec(t, value: string, expected: boolean) {
    t.is(parse(`[Hook]\nPrepare=/bin/true\nRequired=${value}\n`).definition.required, expected);
  },
  title: (_p, value: string, expected: boolean) => `parse - Required=${value} is ${expected}`,
});
for (const v of ['yes', 'true', '1', 'on', 'YES', 'True', '']) test(requiredIs, v, true);
for (const v of ['no', 'false', '0', 'off', 'No', 'OFF']) test(requiredIs, v, false);

const timeoutIs = test.macro({
  exec(t, value: string, expected: number | null) {
    t.is(parse(`[Hook]\nPrepare=/bin/true\nTimeoutSec=${value}\n`).definition.timeoutSec, expected);
  },
  title: (_p, value: string, expected: number | null) => `parse - TimeoutSec=${value} is ${expected}`,
});
test(timeoutIs, '600', 600);
test(timeoutIs, '30s', 30);
test(timeoutIs, '30 sec', 30);
test(timeoutIs, '10min', 600);
test(timeoutIs, '2h', 7200);
test(timeoutIs, '0', null);
test(timeoutIs, 'infinity', null);
test(timeoutIs, '', DEFAULT_TIMEOUT_SEC);
test(timeoutIs, '168h', MAX_TIMEOUT_SEC);

test('parse - a UTF-8 byte order mark is ignored', (t) => {
  t.is(parse('\ufeff[Hook]\nPrepare=/bin/true\n').definition.prepare?.[0], '/bin/true');
  t.is(parse(Buffer.from('\ufeff[Hook]\nPrepare=/bin/true\n')).definition.prepare?.[0], '/bin/true');
});

test('parse - unknown keys and sections are warnings naming file and line', (t) => {
  const { definition, warnings } = parse('[Hook]\nPrepare=/bin/true\nFrobnicate=1\n[Unit]\nPrepare=/bin/false\n[X-Vendor]\nA=b\n[Hook]\nX-Note=ok\n');
  t.deepEqual(definition.prepare, ['/bin/true'], 'keys of other sections are ignored');
  t.deepEqual(warnings, [
    `${P}:3: unknown key 'Frobnicate' in [Hook], ignored`,
    `${P}:4: unknown section [Unit], ignored`,
  ]);
});

const invalid = test.macro({
  exec(t, text: string | Uint8Array, message: RegExp) {
    const e = t.throws(() => parse(text), { instanceOf: PreStageError });
    t.is(e!.code, 'InvalidHook');
    t.regex(e!.message, message);
  },
  title: (provided) => `parse - rejects ${provided}`,
});

const H = '[Hook]\nPrepare=/bin/true\n';
test('keys before any section', invalid, 'Prepare=/bin/true\n[Hook]\n', /x\.hook:1: 'Prepare=' appears before any section/);
test('a file without a [Hook] section', invalid, '# nothing\n', /x\.hook: no \[Hook\] section/);
test('the empty file (masks are not hooks)', invalid, '', /no \[Hook\] section/);
test('a hook without any step', invalid, '[Hook]\nDescription=d\n', /no step/);
test('a hook whose only step was reset', invalid, '[Hook]\nPrepare=/bin/x\nPrepare=\n', /no step/);
test('a line that is not Key=Value', invalid, `${H}garbage\n`, /x\.hook:3: expected Key=Value/);
test('a malformed section header', invalid, `${H}[Hook\n`, /x\.hook:3: malformed section header/);
test('an unbalanced quote, naming the line', invalid, `${H}Commit=/bin/x "a\n`, /x\.hook:3: unbalanced double quote/);
test('a relative program', invalid, '[Hook]\nPrepare=bin/true\n', /x\.hook:2: Prepare program 'bin\/true' must be an absolute path/);
test('a systemd command prefix', invalid, '[Hook]\nPrepare=-/bin/true\n', /prefixes are not supported/);
test('an invalid After= name', invalid, `${H}After=good ../bad\n`, /x\.hook:3: After name '\.\.\/bad' is not a valid hook name/);
test('an Environment= word without =', invalid, `${H}Environment=FOO\n`, /KEY=VALUE/);
test('an invalid Environment= name', invalid, `${H}Environment=1A=b\n`, /Environment name '1A' is invalid/);
test('a reserved Environment= name', invalid, `${H}Environment=BOOTC_PRESTAGE_HOOK=x\n`, /x\.hook:3: .*reserved/);
test('a non-boolean Required=', invalid, `${H}Required=maybe\n`, /x\.hook:3: Required=maybe is not a boolean/);
test('a negative TimeoutSec=', invalid, `${H}TimeoutSec=-1\n`, /not a duration/);
test('a fractional TimeoutSec=', invalid, `${H}TimeoutSec=1.5\n`, /not a duration/);
test('a TimeoutSec= unit we do not know', invalid, `${H}TimeoutSec=5d\n`, /not a duration/);
test('a TimeoutSec= over 7 days', invalid, `${H}TimeoutSec=169h\n`, /more than 7 days/);
test('a description over the limit', invalid, `${H}Description=${'d'.repeat(LIMITS.descriptionBytes + 1)}\n`, /Description is 1025 bytes/);
test('a line over the limit', invalid, `${H}Description=${'d'.repeat(LIMITS.lineBytes)}\n`, /x\.hook:3: line is 4108 bytes/);
test('a file over the limit', invalid, `${H}${'#'.repeat(100)}\n`.repeat(700), /file is \d+ bytes; the limit is 65536/);
test('an argv over the limit', invalid, `[Hook]\nPrepare=/bin/x \\\n${'a \\\n'.repeat(LIMITS.argvEntries)}\n`, /257 words; the limit is 256/);
test('too many Environment= entries', invalid, `${H}${'Environment=A=1 B=2\n'.repeat(129)}`, /258 entries in total; the limit is 256/);
test('too many After= names', invalid, `${H}${'After=a b c d\n'.repeat(65)}`, /260 names in total/);
test('a NUL byte, naming its line', invalid, Buffer.from(`${H}Description=a\0b\n`), /x\.hook:3: .*NUL/);
test('a NUL character in text', invalid, `${H}Description=a\0b\n`, /x\.hook:3: .*NUL/);
test('invalid UTF-8, naming its line', invalid, Buffer.concat([Buffer.from(`${H}Description=`), Buffer.from([0xc3, 0x28]), Buffer.from('\n')]), /x\.hook:3: file is not valid UTF-8/);
test('a lone surrogate in text', invalid, `${H}Description=\ud800\n`, /x\.hook:3: .*not valid UTF-8/);

// ---------------------------------------------------------------------------

const valid = test.macro({
  exec(t, d: HookDefinition) {
    t.notThrows(() => validateDefinition(d, 'hook x'));
    const text = serializeHookFile(d);
    t.deepEqual(parseHookFile(text, P).definition, d);
    t.deepEqual(parseHookFile(text, P).warnings, []);
  },
  title: (provided) => `validate + round-trip - ${provided}`,
});

test('a minimal definition', valid, def());
test('a full definition', valid, def({
  description: 'Pull logically bound images', prepare: ['${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/x', 'prepare'],
  commit: ['/bin/c', 'a b', '', "it's", 'say "hi"', 'back\\slash', '$$', '#hash', ';semi', 'new\nline', 'é😀'],
  abort: ['/bin/a'], after: ['a', 'b.c', 'd@e'], before: ['z'],
  environment: ['A=1', 'B=two words', 'C=', 'D="q"', 'E=\\', 'A=again'], required: false, timeoutSec: null,
}));
test('a description with inner backslashes and an even trailing run', valid, def({ description: 'C:\\dir\\\\' }));
test('the largest timeout', valid, def({ timeoutSec: MAX_TIMEOUT_SEC }));
test('a command line with the most words, wrapped over lines', valid,
  def({ prepare: ['/bin/x', ...Array.from({ length: LIMITS.argvEntries - 1 }, (_, i) => `arg-${i}-${'y'.repeat(200)}`)].slice(0, 256) }));
test('long words that need continuation lines', valid,
  def({ prepare: ['/bin/x', 'a'.repeat(3000), 'b'.repeat(3000), 'c'.repeat(3000)] }));
test('the most After= names', valid, def({ after: Array.from({ length: LIMITS.orderNames }, (_, i) => `hook-${i}-${'n'.repeat(50)}`) }));
test('the most Environment= entries', valid, def({ environment: Array.from({ length: LIMITS.envEntries }, (_, i) => `V${i}=${i}`) }));

test('serialize - wrapped output keeps every line within the limit', (t) => {
  const text = serializeHookFile(def({
    prepare: ['/bin/x', ...Array.from({ length: 40 }, () => 'w'.repeat(400))],
    after: Array.from({ length: 256 }, (_, i) => `h${i}-${'n'.repeat(55)}`),
  }));
  for (const line of text.split('\n')) t.true(Buffer.byteLength(line) <= LIMITS.lineBytes);
  t.true(text.split('\n').filter((l) => l.startsWith('After=')).length > 1, 'After= split over several lines');
});

test('serialize - writes the canonical form people read', (t) => {
  t.is(serializeHookFile(def({ description: 'd', after: ['a', 'b'], environment: ['A=b c'], timeoutSec: null })),
    '[Hook]\nDescription=d\nPrepare=/bin/true\nAfter=a b\nEnvironment="A=b c"\nRequired=yes\nTimeoutSec=infinity\n');
});

const rejected = test.macro({
  exec(t, d: unknown, message: RegExp) {
    const e = t.throws(() => validateDefinition(d as HookDefinition, 'hook x'), { instanceOf: PreStageError });
    t.is(e!.code, 'InvalidHook');
    t.regex(e!.message, /^hook x: /);
    t.regex(e!.message, message);
    t.throws(() => serializeHookFile(d as HookDefinition), { instanceOf: PreStageError }, 'serialize validates too');
  },
  title: (provided) => `validate - rejects ${provided}`,
});

test('no step at all', rejected, def({ prepare: null }), /no step/);
test('an empty argv (null means no step)', rejected, def({ prepare: [] }), /Prepare: Prepare needs at least a program/);
test('a relative program', rejected, def({ commit: ['true'] }), /Commit: .*absolute path/);
test('a non-string argv word', rejected, def({ abort: ['/bin/x', 3 as unknown as string] }), /Abort: must be a list of strings/);
test('a word with NUL', rejected, def({ prepare: ['/bin/x', 'a\0'] }), /Prepare: .*NUL/);
test('a word with a lone surrogate', rejected, def({ prepare: ['/bin/x', '\udc00'] }), /Prepare: .*surrogate/);
test('a word over the byte limit', rejected, def({ prepare: ['/bin/x', 'é'.repeat(2049)] }), /Prepare: .*4098 bytes/);
test('a word too long once quoted', rejected, def({ prepare: ['/bin/x', '"'.repeat(2100)] }), /once quoted/);
test('too many words', rejected, def({ prepare: Array(257).fill('/bin/x') }), /257 words/);
test('an invalid Before= name', rejected, def({ before: ['-x'] }), /Before: Before name '-x'/);
test('too many After= names', rejected, def({ after: Array(257).fill('a') }), /After: lists 257 names/);
test('a reserved environment name', rejected, def({ environment: ['BOOTC_PRESTAGE_PHASE=x'] }), /Environment: .*reserved/);
test('an environment entry without =', rejected, def({ environment: ['A'] }), /Environment: .*KEY=VALUE/);
test('too many environment entries', rejected, def({ environment: Array(257).fill('A=1') }), /257 entries/);
test('a multi-line description', rejected, def({ description: 'a\nb' }), /Description: .*one line/);
test('a description with surrounding spaces', rejected, def({ description: ' a' }), /Description: .*whitespace/);
test('a description ending in a backslash', rejected, def({ description: 'C:\\' }), /Description: .*backslash/);
test('a long description', rejected, def({ description: 'x'.repeat(1025) }), /Description: .*1025 bytes/);
test('a zero timeout (null means none)', rejected, def({ timeoutSec: 0 }), /TimeoutSec: .*from 1 to 604800/);
test('a timeout over 7 days', rejected, def({ timeoutSec: MAX_TIMEOUT_SEC + 1 }), /TimeoutSec/);
test('a fractional timeout', rejected, def({ timeoutSec: 1.5 }), /TimeoutSec/);
test('a non-boolean Required', rejected, def({ required: 'yes' as unknown as boolean }), /Required: must be a boolean/);
test('a definition too large for a hook file', rejected,
  def({ prepare: ['/bin/x', ...Array(255).fill('z'.repeat(300))] }), /takes \d+ bytes as a hook file; the limit is 65536/);

test('environmentRecord - later entries win and values keep their = signs', (t) => {
  t.deepEqual({ ...environmentRecord(['A=1', 'B=x=y', 'A=2']) }, { A: '2', B: 'x=y' });
});

test('round-trip - random definitions with awkward strings read back equal', (t) => {
  let seed = 0x1234567;
  const rand = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  const pick = <X>(xs: readonly X[]) => xs[Math.floor(rand() * xs.length)]!;
  const chars = ['a', ' ', '\t', '\n', '"', "'", '\\', '$', '${A}', '#', ';', '=', 'é', '😀', '\x01', '\u00a0', '%'];
  const word = () => Array.from({ length: Math.floor(rand() * 6) }, () => pick(chars)).join('');
  const argv = () => (rand() < 0.3 ? null : [pick(['/bin/x', '${D}/x', '/a b/c']), ...Array.from({ length: Math.floor(rand() * 5) }, word)]);
  for (let i = 0; i < 500; i++) {
    const d: HookDefinition = {
      description: pick(['', 'plain', 'with  inner  spaces', 'ünï ✓', 'a\\\\']),
      prepare: argv() ?? ['/bin/p'], commit: argv(), abort: argv(),
      after: Array.from({ length: Math.floor(rand() * 3) }, () => pick(['a', 'b.c', 'x@y', 'Z-9'])),
      before: Array.from({ length: Math.floor(rand() * 3) }, () => pick(['a', 'q_r'])),
      environment: Array.from({ length: Math.floor(rand() * 4) }, () => `${pick(['A', 'B_2', '_c'])}=${word()}`),
      required: rand() < 0.5, timeoutSec: pick([null, 1, 300, MAX_TIMEOUT_SEC]),
    };
    const back = parseHookFile(serializeHookFile(d), P).definition;
    if (JSON.stringify(back) !== JSON.stringify(d)) {
      t.fail(`iteration ${i}: ${JSON.stringify(d)} read back as ${JSON.stringify(back)}`);
      return;
    }
  }
  t.pass();
});
