import test from 'ava';
import {
  CommandLineSyntaxError, expandArgv, expandVariables, quoteCommandLine, quoteWord, splitCommandLine,
} from '../../service/model/command-line.js';

const splits = test.macro({
  exec(t, input: string, expected: string[]) {
    t.deepEqual(splitCommandLine(input), expected);
  },
  title: (provided, input: string) => `split - ${provided ?? ''} ${JSON.stringify(input)}`.trim(),
});

test('whitespace separates words', splits, '/bin/echo  a\tb\n c\r', ['/bin/echo', 'a', 'b', 'c']);
test('empty line has no words', splits, '', []);
test('blank line has no words', splits, ' \t ', []);
test('double quotes group', splits, '/bin/echo "a b"  c', ['/bin/echo', 'a b', 'c']);
test('single quotes group', splits, "/bin/echo 'a b' c", ['/bin/echo', 'a b', 'c']);
test('empty quotes are an empty word', splits, '/bin/x "" \'\'', ['/bin/x', '', '']);
test('quotes may open mid-word and the word continues', splits, 'a"b c"d e', ['ab cd', 'e']);
test('adjacent quoted parts join', splits, `"a"'b'"c"`, ['abc']);
test('single quote inside double quotes is literal', splits, `"it's"`, ["it's"]);
test('double quote inside single quotes is literal', splits, `'say "hi"'`, ['say "hi"']);
test('escapes work outside quotes', splits, 'a\\ b c\\"d', ['a b', 'c"d']);
test('escapes work inside double quotes', splits, '"a\\"b\\\\c"', ['a"b\\c']);
test('escapes work inside single quotes (as systemd)', splits, "'a\\'b\\nc'", ["a'b\nc"]);
test('control escapes', splits, '"\\n\\t\\r\\a\\b\\f\\v"', ['\n\t\r\x07\b\f\v']);
test('\\s is a space', splits, 'a\\sb', ['a b']);
test('\\x escape', splits, '\\x41\\x7e', ['A~']);
test('\\x byte escapes form UTF-8', splits, '"caf\\xc3\\xa9"', ['café']);
test('octal escape', splits, '\\101\\303\\251', ['Aé']);
test('\\u and \\U escapes', splits, '\\u00e9\\U0001F600', ['é😀']);
test('dollar, semicolons, pipes and globs are plain characters', splits,
  '/bin/sh -c $x;y|z *.c ~ ${A}', ['/bin/sh', '-c', '$x;y|z', '*.c', '~', '${A}']);
test('unicode passes through', splits, 'héllo wörld 日本', ['héllo', 'wörld', '日本']);
test('non-breaking space is not a separator', splits, 'a\u00a0b', ['a\u00a0b']);
test('escaped backslash before a quote ends the word normally', splits, '"a\\\\" b', ['a\\', 'b']);

const rejects = test.macro({
  exec(t, input: string, message: RegExp) {
    const e = t.throws(() => splitCommandLine(input), { instanceOf: CommandLineSyntaxError });
    t.regex(e!.message, message);
  },
  title: (provided, input: string) => `split - rejects ${provided ?? ''} ${JSON.stringify(input)}`,
});

test('an unbalanced double quote', rejects, '/bin/echo "abc', /unbalanced double quote.*column 11/);
test('an unbalanced single quote', rejects, "/bin/echo 'abc", /unbalanced single quote/);
test('a quote closed by the other kind', rejects, `"abc'`, /unbalanced double quote/);
test('a trailing backslash', rejects, '/bin/echo abc\\', /trailing backslash/);
test('a trailing backslash inside quotes', rejects, '"abc\\', /trailing backslash/);
test('an unknown escape', rejects, 'a\\qb', /unknown escape '\\q'/);
test('a short \\x escape', rejects, '\\x4', /two hex digits/);
test('a non-hex \\x escape', rejects, '\\xzz', /two hex digits/);
test('a NUL escape', rejects, '\\x00', /NUL/);
test('a raw NUL', rejects, 'a\0b', /NUL/);
test('byte escapes that are not UTF-8', rejects, '\\xc3', /UTF-8/);
test('an invalid \\u code point', rejects, '\\ud800', /not a valid character/);
test('a short octal escape', rejects, '\\12', /octal/);

test('expand - ${VAR} expands from env', (t) => {
  t.is(expandVariables('${A}/bin/${B}', { A: '/x', B: 'y' }), '/x/bin/y');
});

test('expand - unset and undefined variables expand to empty', (t) => {
  t.is(expandVariables('[${NOPE}][${U}]', { U: undefined }), '[][]');
});

test('expand - $$ is a literal dollar and is not re-expanded', (t) => {
  t.is(expandVariables('$${A} $$', { A: 'x' }), '${A} $');
});

test('expand - other dollar forms are literal', (t) => {
  t.is(expandVariables('$A ${ ${1X} ${A-b} $ ${A', { A: 'x' }), '$A ${ ${1X} ${A-b} $ ${A');
});

test('expand - values are not expanded again', (t) => {
  t.is(expandVariables('${A}', { A: '${B}', B: 'no' }), '${B}');
});

test('expand - inherited object keys are not variables', (t) => {
  t.is(expandVariables('${toString}${constructor}', {}), '');
});

test('expandArgv - keeps one word per word, even when a value has spaces', (t) => {
  t.deepEqual(expandArgv(['${P}', 'a ${X} b'], { P: '/bin/x', X: '1 2' }), ['/bin/x', 'a 1 2 b']);
});

const quotes = test.macro({
  exec(t, argv: string[], expected: string) {
    t.is(quoteCommandLine(argv), expected);
    t.deepEqual(splitCommandLine(expected), argv);
  },
  title: (provided, argv: string[]) => `quote - ${provided ?? ''} ${JSON.stringify(argv)}`.trim(),
});

test('plain words stay bare', quotes, ['/usr/bin/x', '--flag=1', '${A}/b', 'é'], '/usr/bin/x --flag=1 ${A}/b é');
test('empty words are ""', quotes, ['/bin/x', ''], '/bin/x ""');
test('spaces are quoted', quotes, ['/bin/x', 'a b'], '/bin/x "a b"');
test('quotes and backslashes are escaped', quotes, ['a"b', "c'd", 'e\\f'], '"a\\"b" "c\'d" "e\\\\f"');
test('control characters are escaped', quotes, ['\n\t\r\x01\x7f'], '"\\n\\t\\r\\x01\\x7f"');
test('comment characters at word start are quoted', quotes, ['#x', ';y', 'a#b'], '"#x" ";y" a#b');
test('unicode spaces are quoted', quotes, ['a\u2028b'], '"a\u2028b"');
test('no words is an empty line', quotes, [], '');

test('quote - refuses NUL and lone surrogates', (t) => {
  t.throws(() => quoteWord('a\0b'), { instanceOf: CommandLineSyntaxError, message: /NUL/ });
  t.throws(() => quoteWord('a\ud800b'), { instanceOf: CommandLineSyntaxError, message: /surrogate/ });
});

/** mulberry32: a small seeded PRNG so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const AWKWARD = [
  'a', 'Z', '0', '/', '-', '=', ' ', '  ', '\t', '\n', '\r', '"', "'", '\\', '\\\\', '$', '${', '}', '$$',
  '${A}', '#', ';', 'é', '日', '😀', '\u00a0', '\u2028', '\x01', '\x1f', '\x7f', '\u0085', 'x', '\\x41', '%',
];

test('quote - split(quote(argv)) round-trips random awkward argv', (t) => {
  const rand = prng(0x5eed);
  for (let iter = 0; iter < 3000; iter++) {
    const argc = Math.floor(rand() * 6);
    const argv: string[] = [];
    for (let i = 0; i < argc; i++) {
      const len = Math.floor(rand() * 8);
      let w = '';
      for (let j = 0; j < len; j++) w += AWKWARD[Math.floor(rand() * AWKWARD.length)];
      argv.push(w);
    }
    const line = quoteCommandLine(argv);
    const back = splitCommandLine(line);
    if (JSON.stringify(back) !== JSON.stringify(argv)) {
      t.fail(`iteration ${iter}: ${JSON.stringify(argv)} -> ${JSON.stringify(line)} -> ${JSON.stringify(back)}`);
      return;
    }
  }
  t.pass();
});

test('quote - quote(split(line)) is a fixed point for canonical lines', (t) => {
  const line = '/bin/x "a b" "" "q\\"" é';
  t.is(quoteCommandLine(splitCommandLine(line)), line);
});
