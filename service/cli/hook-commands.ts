/**
 * register and unregister. A definition given as options is built here
 * with the engine's own command-line splitter, and one given as a file is
 * read with the engine's own hook-file parser, so `register --file` accepts
 * exactly what the daemon would accept from that file in /etc.
 */
import { promises as fsp } from 'node:fs';
import { ClientError } from '../client/errors.js';
import { CommandLineSyntaxError, splitCommandLine } from '../model/command-line.js';
import { isPreStageError } from '../model/errors.js';
import { DEFAULT_TIMEOUT_SEC, parseHookFile } from '../model/hook-file.js';
import { isValidHookName } from '../model/hook-name.js';
import type { HookDefinition } from '../model/types.js';
import type { Command } from './args.js';
import { UsageError } from './args.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { jsonLine } from './json-line.js';

type RegisterCommand = Extract<Command, { name: 'register' }>;

/** Largest hook file `register --file` reads (the daemon bounds definitions too). */
const MAX_HOOK_FILE_BYTES = 64 * 1024;

function argv(option: string, s: string | null): string[] | null {
  if (s === null) return null;
  try {
    const words = splitCommandLine(s);
    if (words.length === 0) throw new UsageError(`register: --${option} is empty`, 'register');
    return words;
  } catch (e) {
    if (e instanceof CommandLineSyntaxError) throw new UsageError(`register: --${option}: ${e.message}`, 'register');
    throw e;
  }
}

/** The HookDefinition a `register` command line describes. */
export async function definitionOf(cmd: RegisterCommand, warn: (w: string) => void): Promise<HookDefinition> {
  if (cmd.file !== null) {
    let bytes: Buffer;
    try {
      const st = await fsp.stat(cmd.file);
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.size > MAX_HOOK_FILE_BYTES) throw new Error(`larger than ${MAX_HOOK_FILE_BYTES} bytes`);
      bytes = await fsp.readFile(cmd.file);
    } catch (e) {
      throw new ClientError('not-found', `cannot read ${cmd.file}: ${(e as Error).message}`);
    }
    if (bytes.length === 0) {
      throw new ClientError('not-found', `${cmd.file} is empty: an empty hook file masks a hook, it does not define one`);
    }
    try {
      const parsed = parseHookFile(bytes, cmd.file);
      parsed.warnings.forEach(warn);
      return parsed.definition;
    } catch (e) {
      if (isPreStageError(e)) throw new ClientError('not-found', e.message, 'org.containers.bootc.PreStage.Error.InvalidHook');
      throw e;
    }
  }
  return {
    description: cmd.description ?? '',
    prepare: argv('prepare', cmd.prepare),
    commit: argv('commit', cmd.commit),
    abort: argv('abort', cmd.abort),
    after: cmd.after,
    before: cmd.before,
    environment: cmd.environment,
    required: !cmd.optional,
    timeoutSec: cmd.timeout === null ? DEFAULT_TIMEOUT_SEC : cmd.timeout === 'infinity' ? null : Number(cmd.timeout),
  };
}

function checkName(name: string, command: string): void {
  if (!isValidHookName(name)) {
    throw new UsageError(`${command}: '${name}' is not a hook name: use 1-64 of A-Z a-z 0-9 _ . @ -, `
      + 'starting with a letter or digit', command);
  }
}

export async function registerCommand(ctx: CliContext, cmd: RegisterCommand): Promise<ExitCode> {
  checkName(cmd.hook, 'register');
  const def = await definitionOf(cmd, (w) => ctx.warn(w));
  const client = await ctx.connect();
  await client.registerHook(cmd.hook, def, { runtime: cmd.runtime });
  const where = `${cmd.runtime ? '/run' : '/etc'}/bootc/pre-stage.d/${cmd.hook}.hook`;
  if (ctx.mode === 'json') ctx.out(jsonLine({ registered: cmd.hook, runtime: cmd.runtime }));
  else ctx.out(`Registered hook ${cmd.hook} (${where}).\n`);
  return EXIT.OK;
}

export async function unregisterCommand(ctx: CliContext, cmd: Extract<Command, { name: 'unregister' }>): Promise<ExitCode> {
  checkName(cmd.hook, 'unregister');
  const client = await ctx.connect();
  await client.unregisterHook(cmd.hook);
  if (ctx.mode === 'json') ctx.out(jsonLine({ unregistered: cmd.hook }));
  else ctx.out(`Unregistered hook ${cmd.hook}.\n`);
  return EXIT.OK;
}
