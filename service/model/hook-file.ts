/**
 * The hook file format (`NAME.hook`, docs/design.md "Hooks"): parse, validate,
 * serialize. Pure: no I/O.
 *
 *     [Hook]
 *     Description=Pull logically bound images
 *     Prepare=${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/bound-images prepare
 *     After=compat-check
 *     Environment=STORE=/var/lib/bootc-prestage/images
 *
 * Syntax follows systemd unit files: `[Section]` headers, `Key=Value` with
 * surrounding whitespace trimmed, `#` and `;` comment lines, blank lines, and
 * a line ending in an odd number of backslashes continues on the next line
 * (the backslash becomes a space; comment lines inside a continuation are
 * skipped). Keys are case-sensitive. A UTF-8 byte order mark is ignored.
 *
 * What must stay true: every definition that validateDefinition accepts
 * serializes to a file that parseHookFile reads back to a deep-equal
 * definition, and within the size limits (the hook store relies on it).
 *
 * Over 500 lines on purpose: the parser, the validator and the writer share
 * the key table and the limits, and must stay each other's inverse; one
 * file keeps them in view together.
 */
import { CommandLineSyntaxError, quoteWord, splitCommandLine } from './command-line.js';
import { PreStageError } from './errors.js';
import { isValidHookName } from './hook-name.js';
import type { HookDefinition } from './types.js';

/** TimeoutSec= when the file does not say. */
export const DEFAULT_TIMEOUT_SEC = 300;
/** The largest finite TimeoutSec= (7 days); beyond that, write `infinity`. */
export const MAX_TIMEOUT_SEC = 7 * 24 * 3600;

/** Size limits, in bytes of UTF-8 unless noted. */
export const LIMITS = Object.freeze({
  /** A whole hook file. */
  fileBytes: 64 * 1024,
  /** One physical line (continuations make longer logical lines). */
  lineBytes: 4096,
  /** Words in one Prepare=/Commit=/Abort= command line. */
  argvEntries: 256,
  /** Environment= entries, accumulated over all lines. */
  envEntries: 256,
  /** One argv word or one Environment= KEY=VALUE entry. */
  stringBytes: 4096,
  /** After= names, and separately Before= names, accumulated. */
  orderNames: 256,
  /** Description=. */
  descriptionBytes: 1024,
});

/**
 * The longest a string may be once quoted for a file: it must fit on one
 * physical line after `Environment=` (the longest key) and before ` \`.
 * In practice this only bites strings full of escapes near stringBytes.
 */
export const MAX_QUOTED_BYTES = LIMITS.lineBytes - 16;

/** Environment names hooks may set; `BOOTC_PRESTAGE_*` is reserved. */
export const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const RESERVED_ENV_PREFIX = 'BOOTC_PRESTAGE_';

const STEP_KEYS = ['Prepare', 'Commit', 'Abort'] as const;
type StepKey = typeof STEP_KEYS[number];
const STEP_FIELD: Record<StepKey, 'prepare' | 'commit' | 'abort'> = {
  Prepare: 'prepare', Commit: 'commit', Abort: 'abort',
};
const SECTION = 'Hook';

const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
// eslint-disable-next-line no-control-regex
const DESCRIPTION_BAD_CHAR_RE = /[\x00-\x08\x0a-\x1f\x7f]/;

const byteLength = (s: string) => Buffer.byteLength(s, 'utf8');

/** A check failed; the caller prefixes where (file:line, or the definition's key). */
class CheckError extends Error {}

// ---------------------------------------------------------------------------
// Value checks shared by the parser and validateDefinition.

function checkString(s: string, what: string): void {
  if (s.includes('\0')) throw new CheckError(`${what} contains a NUL character`);
  if (LONE_SURROGATE_RE.test(s)) throw new CheckError(`${what} is not valid Unicode (lone surrogate)`);
  const n = byteLength(s);
  if (n > LIMITS.stringBytes) {
    throw new CheckError(`${what} is ${n} bytes long; the limit is ${LIMITS.stringBytes}`);
  }
}

function checkArgv(argv: readonly string[], key: StepKey): void {
  if (argv.length === 0) {
    throw new CheckError(`${key} needs at least a program; leave it out (or empty in a file) for no ${key} step`);
  }
  if (argv.length > LIMITS.argvEntries) {
    throw new CheckError(`${key} has ${argv.length} words; the limit is ${LIMITS.argvEntries}`);
  }
  argv.forEach((a, i) => checkString(a, `${key} word ${i + 1}`));
  const prog = argv[0]!;
  if (prog.startsWith('/') || prog.startsWith('${')) return;
  if (/^[-@:+!|]/.test(prog)) {
    throw new CheckError(
      `${key} program '${prog}' starts with '${prog[0]}': systemd's command prefixes are not supported ` +
      `(for '-', use Required=no); write an absolute path`);
  }
  throw new CheckError(
    `${key} program '${prog}' must be an absolute path (or start with \${VAR}, e.g. \${BOOTC_PRESTAGE_DEPLOYMENT}/usr/...)`);
}

function checkEnvEntry(e: string): void {
  checkString(e, `Environment entry '${truncate(e)}'`);
  const eq = e.indexOf('=');
  if (eq < 0) throw new CheckError(`Environment entry '${truncate(e)}' is not of the form KEY=VALUE`);
  const key = e.slice(0, eq);
  if (!ENV_NAME_RE.test(key)) {
    throw new CheckError(
      `Environment name '${truncate(key)}' is invalid: use letters, digits and '_', not starting with a digit`);
  }
  if (key.startsWith(RESERVED_ENV_PREFIX)) {
    throw new CheckError(`Environment name '${key}' is reserved: ${RESERVED_ENV_PREFIX}* variables are set by bootc-prestaged`);
  }
}

function checkOrderName(n: string, key: 'After' | 'Before'): void {
  if (!isValidHookName(n)) {
    throw new CheckError(
      `${key} name '${truncate(n)}' is not a valid hook name ` +
      `(1-64 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit)`);
  }
}

function checkDescription(d: string): void {
  const n = byteLength(d);
  if (n > LIMITS.descriptionBytes) {
    throw new CheckError(`Description is ${n} bytes long; the limit is ${LIMITS.descriptionBytes}`);
  }
  if (d.includes('\0')) throw new CheckError('Description contains a NUL character');
  if (LONE_SURROGATE_RE.test(d)) throw new CheckError('Description is not valid Unicode (lone surrogate)');
  if (DESCRIPTION_BAD_CHAR_RE.test(d)) throw new CheckError('Description must be one line without control characters');
  if (d !== d.trim()) throw new CheckError('Description must not start or end with whitespace');
  if (/(^|[^\\])(\\\\)*\\$/.test(d)) {
    throw new CheckError('Description must not end with a backslash (it would continue the line in a hook file)');
  }
}

function checkTimeout(t: number | null): void {
  if (t === null) return;
  if (!Number.isInteger(t) || t < 1 || t > MAX_TIMEOUT_SEC) {
    throw new CheckError(
      `TimeoutSec must be a whole number of seconds from 1 to ${MAX_TIMEOUT_SEC} (7 days), or null for no timeout; got ${t}`);
  }
}

function truncate(s: string, n = 64): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

// ---------------------------------------------------------------------------
// Value parsers for file syntax.

const BOOLEANS: Readonly<Record<string, boolean>> = {
  yes: true, true: true, on: true, 1: true,
  no: false, false: false, off: false, 0: false,
};

function parseBoolean(v: string, key: string): boolean {
  const b = BOOLEANS[v.toLowerCase()];
  if (b === undefined) throw new CheckError(`${key}=${truncate(v)} is not a boolean: use yes or no`);
  return b;
}

const TIMEOUT_UNITS: Readonly<Record<string, number>> = { '': 1, s: 1, sec: 1, min: 60, h: 3600 };

/** `N`, `N s|sec|min|h` or `infinity`; 0 and infinity mean no timeout (null). */
function parseTimeout(v: string): number | null {
  if (v === 'infinity') return null;
  const m = /^(\d+)\s*(s|sec|min|h)?$/.exec(v);
  if (!m) {
    throw new CheckError(
      `TimeoutSec=${truncate(v)} is not a duration: write whole seconds (600), a number with s, min or h (10min), or infinity`);
  }
  const secs = Number(m[1]) * TIMEOUT_UNITS[m[2] ?? '']!;
  if (secs === 0) return null;
  if (secs > MAX_TIMEOUT_SEC) {
    throw new CheckError(`TimeoutSec=${v} is more than 7 days (${MAX_TIMEOUT_SEC} s); write infinity for no timeout`);
  }
  return secs;
}

function splitWords(v: string): string[] {
  try {
    return splitCommandLine(v);
  } catch (e) {
    if (e instanceof CommandLineSyntaxError) throw new CheckError(e.message);
    throw e;
  }
}

// ---------------------------------------------------------------------------
// Parser.

export interface ParsedHookFile {
  definition: HookDefinition;
  /** Non-fatal remarks (unknown keys and sections), each starting `path:line: `. */
  warnings: string[];
}

/** A default definition: what a `[Hook]` section with no keys means. */
function emptyDefinition(): HookDefinition {
  return {
    description: '', prepare: null, commit: null, abort: null,
    after: [], before: [], environment: [], required: true, timeoutSec: DEFAULT_TIMEOUT_SEC,
  };
}

/**
 * Parse a hook file. `input` is the file's bytes (checked to be UTF-8) or its
 * text; `path` is only used in messages. Throws PreStageError('InvalidHook')
 * with a message starting `path:line: ` (or `path: ` for file-wide problems)
 * for anything malformed; unknown keys and sections become warnings.
 * The empty file is not a hook (it masks one); it is reported as having no
 * [Hook] section, so callers must recognise masks before parsing.
 */
export function parseHookFile(input: string | Uint8Array, path: string): ParsedHookFile {
  const fail = (line: number | null, msg: string): never => {
    throw new PreStageError('InvalidHook', line === null ? `${path}: ${msg}` : `${path}:${line}: ${msg}`);
  };
  const text = decodeInput(input, fail);

  const physical = text.split('\n');
  if (physical.length > 0 && physical[physical.length - 1] === '') physical.pop();

  const def = emptyDefinition();
  const warnings: string[] = [];
  let section: 'none' | 'hook' | 'other' = 'none';
  let sawHook = false;

  const handle = (lineNo: number, logical: string) => {
    const l = logical.trim();
    if (l === '') return;
    if (l.startsWith('[')) {
      if (!l.endsWith(']') || l.length < 3) fail(lineNo, `malformed section header '${truncate(l)}': expected [${SECTION}]`);
      const name = l.slice(1, -1);
      if (name === SECTION) {
        section = 'hook';
        sawHook = true;
      } else {
        section = 'other';
        // X- sections are extensions for other tools, as in systemd units.
        if (!name.startsWith('X-')) warnings.push(`${path}:${lineNo}: unknown section [${truncate(name)}], ignored`);
      }
      return;
    }
    const eq = l.indexOf('=');
    if (section === 'none') {
      fail(lineNo, eq > 0
        ? `'${truncate(l.slice(0, eq).trim())}=' appears before any section; put it under a [${SECTION}] line`
        : `expected a [${SECTION}] section header, got '${truncate(l)}'`);
    }
    if (eq <= 0) fail(lineNo, `expected Key=Value, got '${truncate(l)}'`);
    if (section === 'other') return;
    const key = l.slice(0, eq).trim();
    const value = l.slice(eq + 1).trim();
    try {
      assign(def, key, value, (w) => warnings.push(`${path}:${lineNo}: ${w}`));
    } catch (e) {
      if (e instanceof CheckError) fail(lineNo, e.message);
      throw e;
    }
  };

  // Join continuation lines; a logical line is reported at its first line.
  let pending: string | null = null;
  let pendingLine = 0;
  for (let i = 0; i < physical.length; i++) {
    const lineNo = i + 1;
    const raw = physical[i]!;
    const n = byteLength(raw);
    if (n > LIMITS.lineBytes) {
      fail(lineNo, `line is ${n} bytes long; the limit is ${LIMITS.lineBytes} (continue long lines with a trailing backslash)`);
    }
    const lead = raw.trimStart();
    if (lead.startsWith('#') || lead.startsWith(';')) continue;
    const line = raw.trimEnd();
    const trailing = /\\*$/.exec(line)![0].length;
    const continues = trailing % 2 === 1;
    const content = continues ? `${line.slice(0, -1)} ` : line;
    if (pending === null) {
      pending = content;
      pendingLine = lineNo;
    } else {
      pending += content;
    }
    if (!continues) {
      handle(pendingLine, pending);
      pending = null;
    }
  }
  if (pending !== null) handle(pendingLine, pending);

  if (!sawHook) fail(null, `no [${SECTION}] section: a hook file starts with a [${SECTION}] line`);
  if (def.prepare === null && def.commit === null && def.abort === null) {
    fail(null, 'the hook has no step: set at least one of Prepare=, Commit= or Abort=');
  }
  return { definition: def, warnings };
}

const utf8Fatal = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeInput(input: string | Uint8Array, fail: (line: number | null, msg: string) => never): string {
  let text: string;
  if (typeof input === 'string') {
    const n = byteLength(input);
    if (n > LIMITS.fileBytes) fail(null, `file is ${n} bytes; the limit is ${LIMITS.fileBytes}`);
    text = input;
    const bad = LONE_SURROGATE_RE.exec(text);
    if (bad) fail(lineAt(text, bad.index), 'text is not valid UTF-8');
  } else {
    if (input.length > LIMITS.fileBytes) fail(null, `file is ${input.length} bytes; the limit is ${LIMITS.fileBytes}`);
    const nul = input.indexOf(0);
    if (nul >= 0) fail(countNewlines(input, nul) + 1, 'file contains a NUL byte; hook files are text');
    try {
      text = utf8Fatal.decode(input);
    } catch {
      fail(firstInvalidUtf8Line(input), 'file is not valid UTF-8');
    }
  }
  const nul = text!.indexOf('\0');
  if (nul >= 0) fail(lineAt(text!, nul), 'file contains a NUL character; hook files are text');
  return text!.startsWith('\ufeff') ? text!.slice(1) : text!;
}

function lineAt(text: string, index: number): number {
  let n = 1;
  for (let i = text.indexOf('\n'); i >= 0 && i < index; i = text.indexOf('\n', i + 1)) n++;
  return n;
}

function countNewlines(bytes: Uint8Array, end: number): number {
  let n = 0;
  for (let i = 0; i < end; i++) if (bytes[i] === 0x0a) n++;
  return n;
}

function firstInvalidUtf8Line(bytes: Uint8Array): number {
  let start = 0;
  let line = 1;
  for (;;) {
    const nl = bytes.indexOf(0x0a, start);
    const end = nl < 0 ? bytes.length : nl;
    try {
      utf8Fatal.decode(bytes.subarray(start, end));
    } catch {
      return line;
    }
    if (nl < 0) return line;
    start = nl + 1;
    line++;
  }
}

/** Apply one `key=value` of the [Hook] section to `def`. */
function assign(def: HookDefinition, key: string, value: string, warn: (w: string) => void): void {
  switch (key) {
    case 'Description':
      checkDescription(value);
      def.description = value;
      return;
    case 'Prepare':
    case 'Commit':
    case 'Abort': {
      // Unlike systemd's ExecStart=, a step is one command: a later line replaces it.
      if (value === '') {
        def[STEP_FIELD[key]] = null;
        return;
      }
      const argv = splitWords(value);
      checkArgv(argv, key);
      def[STEP_FIELD[key]] = argv;
      return;
    }
    case 'After':
    case 'Before': {
      const field = key === 'After' ? 'after' : 'before';
      if (value === '') {
        def[field] = [];
        return;
      }
      const names = value.split(/\s+/);
      names.forEach((n) => checkOrderName(n, key));
      const all = [...def[field], ...names];
      if (all.length > LIMITS.orderNames) {
        throw new CheckError(`${key} lists ${all.length} names in total; the limit is ${LIMITS.orderNames}`);
      }
      def[field] = all;
      return;
    }
    case 'Environment': {
      if (value === '') {
        def.environment = [];
        return;
      }
      const entries = splitWords(value);
      entries.forEach(checkEnvEntry);
      const all = [...def.environment, ...entries];
      if (all.length > LIMITS.envEntries) {
        throw new CheckError(`Environment has ${all.length} entries in total; the limit is ${LIMITS.envEntries}`);
      }
      def.environment = all;
      return;
    }
    case 'Required':
      def.required = value === '' ? true : parseBoolean(value, key);
      return;
    case 'TimeoutSec':
      def.timeoutSec = value === '' ? DEFAULT_TIMEOUT_SEC : parseTimeout(value);
      return;
    default:
      // X- keys are extensions for other tools, as in systemd units.
      if (!key.startsWith('X-')) warn(`unknown key '${truncate(key)}' in [${SECTION}], ignored`);
  }
}

// ---------------------------------------------------------------------------
// Validation of definitions that do not come from a file (RegisterHook).

/**
 * Check a definition as parseHookFile checks a file, plus the types (it may
 * come from D-Bus) and that it can be written as a hook file within the
 * limits. `where` starts the message (e.g. `hook 'foo'`); the message then
 * names the key. Throws PreStageError('InvalidHook').
 *
 * Canonical forms are required so a stored definition reads back equal:
 * no step is `null` (not `[]`), no timeout is `null` (not 0).
 */
export function validateDefinition(def: HookDefinition, where: string): void {
  const fail = (key: string, msg: string): never => {
    throw new PreStageError('InvalidHook', `${where}: ${key}: ${msg}`);
  };
  const run = (key: string, f: () => void) => {
    try {
      f();
    } catch (e) {
      if (e instanceof CheckError) fail(key, e.message);
      throw e;
    }
  };
  if (typeof def !== 'object' || def === null) {
    throw new PreStageError('InvalidHook', `${where}: the definition is not an object`);
  }
  const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

  if (typeof def.description !== 'string') fail('Description', 'must be a string');
  run('Description', () => checkDescription(def.description));

  for (const key of STEP_KEYS) {
    const argv: unknown = def[STEP_FIELD[key]];
    if (argv === null) continue;
    if (!isStrings(argv)) fail(key, 'must be a list of strings or null');
    run(key, () => checkArgv(argv as string[], key));
    run(key, () => (argv as string[]).forEach((a, i) => checkQuotable(a, `${key} word ${i + 1}`)));
  }
  if (def.prepare === null && def.commit === null && def.abort === null) {
    throw new PreStageError('InvalidHook', `${where}: the hook has no step: set at least one of Prepare, Commit or Abort`);
  }

  for (const [key, field] of [['After', 'after'], ['Before', 'before']] as const) {
    const names: unknown = def[field];
    if (!isStrings(names)) fail(key, 'must be a list of strings');
    const list = names as string[];
    if (list.length > LIMITS.orderNames) fail(key, `lists ${list.length} names; the limit is ${LIMITS.orderNames}`);
    run(key, () => list.forEach((n) => checkOrderName(n, key)));
  }

  if (!isStrings(def.environment)) fail('Environment', 'must be a list of KEY=VALUE strings');
  if (def.environment.length > LIMITS.envEntries) {
    fail('Environment', `has ${def.environment.length} entries; the limit is ${LIMITS.envEntries}`);
  }
  run('Environment', () => def.environment.forEach((e) => {
    checkEnvEntry(e);
    checkQuotable(e, `entry '${truncate(e)}'`);
  }));

  if (typeof def.required !== 'boolean') fail('Required', 'must be a boolean');
  if (def.timeoutSec !== null && typeof def.timeoutSec !== 'number') fail('TimeoutSec', 'must be a number or null');
  run('TimeoutSec', () => checkTimeout(def.timeoutSec));

  const n = byteLength(render(def));
  if (n > LIMITS.fileBytes) {
    throw new PreStageError('InvalidHook',
      `${where}: the definition takes ${n} bytes as a hook file; the limit is ${LIMITS.fileBytes}`);
  }
}

function checkQuotable(s: string, what: string): void {
  const n = byteLength(quoteWord(s));
  if (n > MAX_QUOTED_BYTES) {
    throw new CheckError(`${what} takes ${n} bytes once quoted; the limit is ${MAX_QUOTED_BYTES}`);
  }
}

// ---------------------------------------------------------------------------
// Serializer.

/**
 * Write a definition as a hook file (validated first: throws InvalidHook
 * like validateDefinition). parseHookFile reads the result back to a
 * deep-equal definition. Long command lines are wrapped with trailing
 * backslashes so no line exceeds LIMITS.lineBytes.
 */
export function serializeHookFile(def: HookDefinition): string {
  validateDefinition(def, 'hook definition');
  return render(def);
}

function render(def: HookDefinition): string {
  const out: string[] = [`[${SECTION}]`];
  if (def.description !== '') out.push(`Description=${def.description}`);
  for (const key of STEP_KEYS) {
    const argv = def[STEP_FIELD[key]];
    if (argv !== null) out.push(...wrap(`${key}=`, argv.map(quoteWord), true));
  }
  if (def.after.length > 0) out.push(...wrap('After=', def.after, false));
  if (def.before.length > 0) out.push(...wrap('Before=', def.before, false));
  for (const e of def.environment) out.push(`Environment=${quoteWord(e)}`);
  out.push(`Required=${def.required ? 'yes' : 'no'}`);
  out.push(`TimeoutSec=${def.timeoutSec === null ? 'infinity' : def.timeoutSec}`);
  return `${out.join('\n')}\n`;
}

/**
 * Lay out words after `prefix` within the line limit: either continuation
 * lines (one logical line, for command lines) or repeated `prefix` lines
 * (for keys that accumulate).
 */
function wrap(prefix: string, words: readonly string[], continuation: boolean): string[] {
  const lines: string[] = [];
  const indent = continuation ? '  ' : prefix;
  let cur = prefix;
  let curHasWord = false;
  for (const w of words) {
    const candidate = curHasWord ? `${cur} ${w}` : `${cur}${w}`;
    // Room for the ' \' a continued line ends with.
    if (!curHasWord || byteLength(candidate) + 2 <= LIMITS.lineBytes) {
      cur = candidate;
      curHasWord = true;
      continue;
    }
    lines.push(continuation ? `${cur} \\` : cur);
    cur = `${indent}${w}`;
  }
  lines.push(cur);
  return lines;
}

/** The hook's Environment= as a record, later entries winning. */
export function environmentRecord(entries: readonly string[]): Record<string, string> {
  const env: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const e of entries) {
    const eq = e.indexOf('=');
    if (eq > 0) env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  return env;
}
