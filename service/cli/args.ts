/**
 * The command line of bootc-prestage as typed data. Global options may come
 * before or after the command (`bootc-prestage --json status` and
 * `bootc-prestage status --json` mean the same); everything is checked
 * here, so a command runs only with arguments it can use.
 */
import * as path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { COMMANDS } from './usage.js';

export class UsageError extends Error {
  /** The command whose usage to point at, or null for the overview. */
  readonly command: string | null;
  constructor(message: string, command: string | null = null) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

export interface GlobalOptions {
  address: string | null;
  json: boolean;
  /** Let polkit ask for a password when stdin is a terminal (--no-ask-password: never). */
  askPassword: boolean;
}

export interface FollowFlags {
  noFollow: boolean;
}

export type Command =
  | { name: 'help'; topic: string | null }
  | { name: 'version' }
  | ({ name: 'start'; deployment: string | null; staged: boolean; sysroot: string; force: boolean; wait: boolean;
      dryRun: boolean; timeoutSec: number; progressFd: number | null } & FollowFlags)
  | ({ name: 'commit' | 'abort'; deployment: string; wait: boolean; timeoutSec: number; progressFd: number | null } & FollowFlags)
  | ({ name: 'reconcile'; progressFd: number | null } & FollowFlags)
  | { name: 'upgrade'; apply: boolean; sysroot: string; force: boolean; timeoutSec: number; progressFd: number | null }
  | { name: 'status' }
  | { name: 'hooks'; deployment: string }
  | { name: 'register'; hook: string; runtime: boolean; file: string | null; prepare: string | null;
      commit: string | null; abort: string | null; after: string[]; before: string[]; environment: string[];
      optional: boolean; timeout: string | null; description: string | null }
  | { name: 'unregister'; hook: string }
  | { name: 'cancel'; transaction: string; noWait: boolean }
  | { name: 'log'; transaction: string; lines: number | null; hook: string | null }
  | { name: 'monitor' };

export interface Invocation {
  global: GlobalOptions;
  command: Command;
}

type Options = NonNullable<ParseArgsConfig['options']>;

const GLOBAL: Options = {
  address: { type: 'string' },
  json: { type: 'boolean' },
  'no-ask-password': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
};

const FOLLOW: Options = { 'no-follow': { type: 'boolean' } };

const COMMAND_OPTIONS: Readonly<Record<string, Options>> = {
  start: {
    staged: { type: 'boolean' }, sysroot: { type: 'string' }, force: { type: 'boolean' }, wait: { type: 'boolean' },
    'dry-run': { type: 'boolean' }, timeout: { type: 'string' }, 'progress-fd': { type: 'string' }, ...FOLLOW,
  },
  commit: { wait: { type: 'boolean' }, timeout: { type: 'string' }, 'progress-fd': { type: 'string' }, ...FOLLOW },
  abort: { wait: { type: 'boolean' }, timeout: { type: 'string' }, 'progress-fd': { type: 'string' }, ...FOLLOW },
  reconcile: { 'progress-fd': { type: 'string' }, ...FOLLOW },
  upgrade: {
    apply: { type: 'boolean' }, sysroot: { type: 'string' }, force: { type: 'boolean' }, timeout: { type: 'string' },
    'progress-fd': { type: 'string' },
  },
  status: {},
  hooks: {},
  register: {
    runtime: { type: 'boolean' }, file: { type: 'string' }, prepare: { type: 'string' }, commit: { type: 'string' },
    abort: { type: 'string' }, after: { type: 'string', multiple: true }, before: { type: 'string', multiple: true },
    env: { type: 'string', multiple: true }, optional: { type: 'boolean' }, timeout: { type: 'string' },
    description: { type: 'string' },
  },
  unregister: {},
  cancel: { 'no-wait': { type: 'boolean' } },
  log: { lines: { type: 'string' }, hook: { type: 'string' } },
  monitor: {},
  help: {},
};

/** Positional arguments: [required names..., optional names...]. */
const POSITIONALS: Readonly<Record<string, { required: string[]; optional: string[] }>> = {
  start: { required: [], optional: ['DEPLOYMENT'] },
  commit: { required: ['DEPLOYMENT'], optional: [] },
  abort: { required: ['DEPLOYMENT'], optional: [] },
  reconcile: { required: [], optional: [] },
  upgrade: { required: [], optional: [] },
  status: { required: [], optional: [] },
  hooks: { required: [], optional: ['DEPLOYMENT'] },
  register: { required: ['NAME'], optional: [] },
  unregister: { required: ['NAME'], optional: [] },
  cancel: { required: ['TRANSACTION'], optional: [] },
  log: { required: ['TRANSACTION'], optional: [] },
  monitor: { required: [], optional: [] },
  help: { required: [], optional: ['COMMAND'] },
};

/** Seconds as the D-Bus 'u' the daemon takes (0: no deadline). */
export function parseSeconds(s: string, option: string, command: string): number {
  if (!/^\d{1,10}$/.test(s) || Number(s) > 0xffffffff) {
    throw new UsageError(`${option} takes a whole number of seconds, not '${s}'`, command);
  }
  return Number(s);
}

function parseFd(s: string, command: string): number {
  if (!/^\d{1,6}$/.test(s)) throw new UsageError(`--progress-fd takes a file descriptor number, not '${s}'`, command);
  const fd = Number(s);
  // bootc refuses 0-2 too: progress must not mix with the command's own output.
  if (fd <= 2) throw new UsageError(`--progress-fd cannot be ${fd}: use a descriptor of 3 or more`, command);
  return fd;
}

/** An absolute path for a deployment given on the command line (the daemon does not share our cwd). */
function deploymentArg(s: string): string {
  return path.resolve(s);
}

/** Find the command word: the first argument that is neither an option nor an option's value. */
function splitCommand(argv: string[]): { command: string | null; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return { command: argv[i + 1] ?? null, rest: [...argv.slice(0, i), ...argv.slice(i + 2)] };
    if (a === '--address') { i++; continue; }
    if (a.startsWith('-')) continue;
    return { command: a, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] };
  }
  return { command: null, rest: argv };
}

/** Parse the command line. Throws UsageError with a one-line reason. */
export function parseCommandLine(argv: string[]): Invocation {
  const { command, rest } = splitCommand(argv);
  if (command !== null && !COMMANDS.includes(command)) {
    throw new UsageError(`unknown command '${command}' (see 'bootc-prestage --help')`);
  }
  const name = command ?? 'help';
  const parsed = parseOptions(name, command, rest);
  const v = parsed.values as Values;
  const global: GlobalOptions = {
    address: (v['address'] as string | undefined) ?? null,
    json: v['json'] === true,
    askPassword: v['no-ask-password'] !== true,
  };
  if (v['version'] === true) return { global, command: { name: 'version' } };
  if (v['help'] === true || command === null) {
    return { global, command: { name: 'help', topic: command === 'help' ? null : command } };
  }
  const pos = parsed.positionals;
  checkPositionals(name, pos);
  const build = Object.hasOwn(BUILDERS, name) ? BUILDERS[name] : undefined;
  if (build === undefined) throw new UsageError(`unknown command '${name}'`);
  return { global, command: build(new OptionReader(name, v), pos) };
}

type Values = Record<string, string | boolean | string[] | undefined>;

/** node's parseArgs with the global and the command's options; its errors as UsageError. */
function parseOptions(name: string, command: string | null, rest: string[]): { values: unknown; positionals: string[] } {
  try {
    return parseArgs({
      args: rest, strict: true, allowPositionals: true,
      options: { ...GLOBAL, ...COMMAND_OPTIONS[name] },
    });
  } catch (e) {
    // node's messages are long and mention parseArgs internals; keep the first sentence.
    const msg = (e as Error).message.split('. ')[0]!.replace(/^Unknown option '(.*)'$/, "unknown option '$1'");
    throw new UsageError(msg, command);
  }
}

function checkPositionals(name: string, pos: string[]): void {
  const spec = POSITIONALS[name]!;
  if (pos.length < spec.required.length) {
    throw new UsageError(`${name}: missing ${spec.required.slice(pos.length).join(' ')}`, name);
  }
  if (pos.length > spec.required.length + spec.optional.length) {
    throw new UsageError(`${name}: unexpected argument '${pos[spec.required.length + spec.optional.length]}'`, name);
  }
}

/** Typed reads of one command's parsed options; errors name the command. */
class OptionReader {
  constructor(readonly name: string, readonly values: Values) {}
  str(k: string): string | undefined { return this.values[k] as string | undefined; }
  bool(k: string): boolean { return this.values[k] === true; }
  list(k: string): string[] { return (this.values[k] as string[] | undefined) ?? []; }
  seconds(k: string): number { return this.str(k) === undefined ? 0 : parseSeconds(this.str(k)!, `--${k}`, this.name); }
  fd(k: string): number | null { return this.str(k) === undefined ? null : parseFd(this.str(k)!, this.name); }
  get noFollow(): boolean { return this.bool('no-follow'); }
  nonEmpty(s: string, what: string): string {
    if (s === '') throw new UsageError(`${this.name}: ${what} cannot be empty`, this.name);
    return s;
  }
}

type Builder = (r: OptionReader, pos: string[]) => Command;

/** One builder per command: the checks beyond option types, then the typed command. */
const BUILDERS: Readonly<Record<string, Builder>> = {
  help: (_r, pos) => {
    if (pos[0] !== undefined && !COMMANDS.includes(pos[0])) {
      throw new UsageError(`unknown command '${pos[0]}' (see 'bootc-prestage --help')`);
    }
    return { name: 'help', topic: pos[0] ?? null };
  },
  start: startCommand,
  commit: (r, pos) => phaseCommand('commit', r, pos),
  abort: (r, pos) => phaseCommand('abort', r, pos),
  reconcile: (r) => {
    if (r.noFollow && r.str('progress-fd') !== undefined) {
      throw new UsageError('reconcile: --progress-fd needs the transactions followed; drop --no-follow', 'reconcile');
    }
    return { name: 'reconcile', progressFd: r.fd('progress-fd'), noFollow: r.noFollow };
  },
  upgrade: (r) => ({
    name: 'upgrade', apply: r.bool('apply'), sysroot: path.resolve(r.str('sysroot') ?? '/sysroot'), force: r.bool('force'),
    timeoutSec: r.seconds('timeout'), progressFd: r.fd('progress-fd'),
  }),
  status: () => ({ name: 'status' }),
  monitor: () => ({ name: 'monitor' }),
  hooks: (r, pos) => ({ name: 'hooks', deployment: pos[0] === undefined ? '' : deploymentArg(r.nonEmpty(pos[0], 'DEPLOYMENT')) }),
  register: registerCommand,
  unregister: (r, pos) => ({ name: 'unregister', hook: r.nonEmpty(pos[0]!, 'NAME') }),
  cancel: (r, pos) => ({ name: 'cancel', transaction: r.nonEmpty(pos[0]!, 'TRANSACTION'), noWait: r.bool('no-wait') }),
  log: logCommand,
};

function startCommand(r: OptionReader, pos: string[]): Command {
  const name = 'start';
  const staged = r.bool('staged');
  if (staged && pos[0] !== undefined) throw new UsageError('start: give a DEPLOYMENT or --staged, not both', name);
  if (!staged && pos[0] === undefined) throw new UsageError('start: missing DEPLOYMENT (or --staged)', name);
  if (!staged && r.str('sysroot') !== undefined) throw new UsageError('start: --sysroot goes with --staged', name);
  const noFollow = r.noFollow;
  if (noFollow && r.str('progress-fd') !== undefined) {
    throw new UsageError('start: --progress-fd needs the transaction followed; drop --no-follow', name);
  }
  return {
    name, staged, deployment: pos[0] === undefined ? null : deploymentArg(r.nonEmpty(pos[0], 'DEPLOYMENT')),
    sysroot: path.resolve(r.str('sysroot') ?? '/sysroot'), force: r.bool('force'), wait: r.bool('wait'),
    dryRun: r.bool('dry-run'), timeoutSec: r.seconds('timeout'), progressFd: r.fd('progress-fd'), noFollow,
  };
}

function phaseCommand(name: 'commit' | 'abort', r: OptionReader, pos: string[]): Command {
  if (r.noFollow && r.str('progress-fd') !== undefined) {
    throw new UsageError(`${name}: --progress-fd needs the transaction followed; drop --no-follow`, name);
  }
  return {
    name, deployment: deploymentArg(r.nonEmpty(pos[0]!, 'DEPLOYMENT')), wait: r.bool('wait'),
    timeoutSec: r.seconds('timeout'), progressFd: r.fd('progress-fd'), noFollow: r.noFollow,
  };
}

function registerCommand(r: OptionReader, pos: string[]): Command {
  const name = 'register';
  const file = r.str('file') ?? null;
  const stepOpts = ['prepare', 'commit', 'abort', 'after', 'before', 'env', 'optional', 'timeout', 'description']
    .filter((k) => r.values[k] !== undefined);
  if (file !== null && stepOpts.length > 0) {
    throw new UsageError(`register: --file takes the whole definition; drop --${stepOpts.join(', --')}`, name);
  }
  if (file === null && r.str('prepare') === undefined && r.str('commit') === undefined && r.str('abort') === undefined) {
    throw new UsageError('register: give --prepare CMD (and/or --commit, --abort), or --file FILE.hook', name);
  }
  const timeout = r.str('timeout') ?? null;
  if (timeout !== null && timeout !== 'infinity') parseSeconds(timeout, '--timeout', name);
  for (const e of r.list('env')) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(e)) throw new UsageError(`register: --env takes KEY=VALUE, not '${e}'`, name);
  }
  return {
    name, hook: r.nonEmpty(pos[0]!, 'NAME'), runtime: r.bool('runtime'), file, prepare: r.str('prepare') ?? null,
    commit: r.str('commit') ?? null, abort: r.str('abort') ?? null, after: r.list('after'), before: r.list('before'),
    environment: r.list('env'), optional: r.bool('optional'), timeout, description: r.str('description') ?? null,
  };
}

function logCommand(r: OptionReader, pos: string[]): Command {
  const name = 'log';
  const lines = r.str('lines');
  let n: number | null = null;
  if (lines !== undefined) {
    if (!/^\d{1,6}$/.test(lines) || Number(lines) < 1) {
      throw new UsageError(`--lines takes a number of lines from 1 to 100000, not '${lines}'`, name);
    }
    n = Number(lines);
  }
  return { name, transaction: r.nonEmpty(pos[0]!, 'TRANSACTION'), lines: n, hook: r.str('hook') ?? null };
}
