/**
 * Command lines as hook files write them: systemd-style word splitting (no
 * shell), `${VAR}` expansion at run time, and the exact inverse for writing
 * definitions back to a file.
 *
 * Splitting rules (systemd's extract_first_word with UNQUOTE|CUNESCAPE):
 * - Words are separated by runs of space, tab, CR or LF.
 * - `"..."` and `'...'` group; both kinds behave the same (as in systemd,
 *   backslash escapes are processed inside either). A quote may open in the
 *   middle of a word and the word continues after it closes, so `a"b c"d`
 *   is the single word `ab cd`; `""` alone is an empty word. systemd
 *   documents quotes only at word start but its parser accepts both; so do we.
 * - Backslash escapes, inside or outside quotes: `\\ \" \' \  \s` (space),
 *   `\a \b \f \n \r \t \v`, `\xNN` and `\NNN` (octal) bytes (consecutive
 *   byte escapes must form valid UTF-8), `\uXXXX`, `\UXXXXXXXX`. Any other
 *   escape, NUL, an unbalanced quote or a trailing backslash is an error.
 * - No shell semantics: `|`, `;`, `*`, `~`, `$` and friends are ordinary
 *   characters. `$` is only meaningful to expandVariables, which runs later.
 */

/** A syntax error in a command line; callers add the file and line. */
export class CommandLineSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandLineSyntaxError';
  }
}

const WHITESPACE = new Set([' ', '\t', '\n', '\r']);

const SIMPLE_ESCAPES: Readonly<Record<string, string>> = {
  '\\': '\\', '"': '"', "'": "'", ' ': ' ', s: ' ',
  a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v',
};

const HEX_RE = /^[0-9A-Fa-f]+$/;
const utf8Fatal = new TextDecoder('utf-8', { fatal: true });

/**
 * Split a command line into words (see the module comment for the rules).
 * Throws CommandLineSyntaxError with a message naming the problem and the
 * column (1-based, in UTF-16 units) where it is.
 */
export function splitCommandLine(s: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  let quote: '"' | "'" | null = null;
  let quoteStart = 0;
  // \xNN and \NNN escapes are bytes: they are collected and decoded as UTF-8
  // together, so `\xc3\xa9` is `é`.
  let bytes: number[] = [];
  let bytesAt = 0;

  const flushBytes = () => {
    if (bytes.length === 0) return;
    let text: string;
    try {
      text = utf8Fatal.decode(Uint8Array.from(bytes));
    } catch {
      throw new CommandLineSyntaxError(
        `byte escapes at column ${bytesAt + 1} do not form valid UTF-8`);
    }
    word = (word ?? '') + text;
    bytes = [];
  };
  const append = (text: string) => {
    flushBytes();
    word = (word ?? '') + text;
  };
  const pushByte = (b: number, at: number) => {
    if (b === 0) throw new CommandLineSyntaxError(`NUL escape at column ${at + 1} is not allowed`);
    if (bytes.length === 0) bytesAt = at;
    bytes.push(b);
    word ??= '';
  };

  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\0') throw new CommandLineSyntaxError(`NUL character at column ${i + 1}`);
    if (c === '\\') {
      i = parseEscape(s, i, append, pushByte);
      continue;
    }
    if (quote !== null) {
      if (c === quote) quote = null;
      else append(c);
      continue;
    }
    if (WHITESPACE.has(c)) {
      if (word !== null) {
        flushBytes();
        words.push(word);
        word = null;
      }
    } else if (c === '"' || c === "'") {
      quote = c;
      quoteStart = i;
      flushBytes();
      word ??= '';
    } else {
      append(c);
    }
  }
  if (quote !== null) {
    const kind = quote === '"' ? 'double' : 'single';
    throw new CommandLineSyntaxError(
      `unbalanced ${kind} quote: the quote opened at column ${quoteStart + 1} is never closed`);
  }
  if (word !== null) {
    flushBytes();
    words.push(word);
  }
  return words;
}

/** Parse the escape at s[i] (a backslash); return the index of its last character. */
function parseEscape(
  s: string, i: number,
  append: (text: string) => void,
  pushByte: (b: number, at: number) => void,
): number {
  if (i + 1 >= s.length) {
    throw new CommandLineSyntaxError(
      'trailing backslash: a backslash must be followed by the character it escapes');
  }
  const e = s[i + 1]!;
  const simple = SIMPLE_ESCAPES[e];
  if (simple !== undefined) {
    append(simple);
    return i + 1;
  }
  if (e === 'x') {
    const hex = s.slice(i + 2, i + 4);
    if (hex.length !== 2 || !HEX_RE.test(hex)) {
      throw new CommandLineSyntaxError(`\\x at column ${i + 1} must be followed by two hex digits`);
    }
    pushByte(parseInt(hex, 16), i);
    return i + 3;
  }
  if (e >= '0' && e <= '3') {
    const oct = s.slice(i + 1, i + 4);
    if (!/^[0-3][0-7][0-7]$/.test(oct)) {
      throw new CommandLineSyntaxError(`octal escape at column ${i + 1} must be three digits \\000-\\377`);
    }
    pushByte(parseInt(oct, 8), i);
    return i + 3;
  }
  if (e === 'u' || e === 'U') {
    const n = e === 'u' ? 4 : 8;
    const hex = s.slice(i + 2, i + 2 + n);
    if (hex.length !== n || !HEX_RE.test(hex)) {
      throw new CommandLineSyntaxError(`\\${e} at column ${i + 1} must be followed by ${n} hex digits`);
    }
    const cp = parseInt(hex, 16);
    if (cp === 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      throw new CommandLineSyntaxError(`\\${e}${hex} at column ${i + 1} is not a valid character`);
    }
    append(String.fromCodePoint(cp));
    return i + 1 + n;
  }
  throw new CommandLineSyntaxError(
    `unknown escape '\\${e}' at column ${i + 1} (write '\\\\' for a literal backslash)`);
}

const VAR_RE = /\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\})/g;

/**
 * Expand `${VAR}` from `env` (unset expands to the empty string, as systemd
 * does) and `$$` to `$`. Everything else, including `$VAR` without braces
 * and `${` without a valid name and closing brace, stays literal. The result
 * is never re-scanned, so a value containing `${X}` is not expanded again.
 */
export function expandVariables(arg: string, env: Readonly<Record<string, string | undefined>>): string {
  return arg.replace(VAR_RE, (_m, name: string | undefined) => {
    if (name === undefined) return '$';
    return Object.prototype.hasOwnProperty.call(env, name) ? (env[name] ?? '') : '';
  });
}

/** expandVariables over every word; one argv word stays one word. */
export function expandArgv(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): string[] {
  return argv.map((a) => expandVariables(a, env));
}

/**
 * Characters that force a word into quotes: separators (and, to be safe for
 * readers, any Unicode space), quotes, backslash, control characters.
 */
// eslint-disable-next-line no-control-regex
const NEEDS_QUOTING_RE = /[\s"'\\\x00-\x1f\x7f]|^[#;]/;
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Quote one word so splitCommandLine reads it back unchanged. Words that
 * start with `#` or `;` are quoted too, so a word at the start of a
 * continuation line in a hook file is never taken for a comment.
 * Throws for NUL and lone surrogates, which no command line can carry.
 */
export function quoteWord(w: string): string {
  if (w.includes('\0')) throw new CommandLineSyntaxError('a NUL character cannot be part of a command line');
  if (LONE_SURROGATE_RE.test(w)) {
    throw new CommandLineSyntaxError('a lone UTF-16 surrogate cannot be part of a command line');
  }
  if (w !== '' && !NEEDS_QUOTING_RE.test(w)) return w;
  let out = '"';
  for (const ch of w) {
    switch (ch) {
      case '\\': out += '\\\\'; break;
      case '"': out += '\\"'; break;
      case '\n': out += '\\n'; break;
      case '\t': out += '\\t'; break;
      case '\r': out += '\\r'; break;
      default: {
        const cp = ch.codePointAt(0)!;
        out += cp < 0x20 || cp === 0x7f ? `\\x${cp.toString(16).padStart(2, '0')}` : ch;
      }
    }
  }
  return out + '"';
}

/**
 * The exact inverse of splitCommandLine:
 * `splitCommandLine(quoteCommandLine(argv))` deep-equals `argv` for every
 * argv of strings without NUL or lone surrogates. Plain words stay bare,
 * others are double-quoted with the minimum of escapes.
 */
export function quoteCommandLine(argv: readonly string[]): string {
  return argv.map(quoteWord).join(' ');
}
