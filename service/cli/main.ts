/**
 * bootc-prestage: the client command. Parses the command line, runs one
 * command, and turns every failure into a documented exit status with a
 * one-line reason on stderr (exit-codes.ts).
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClientError, toClientError } from '../client/errors.js';
import { ProtocolError } from '../client/decode.js';
import { parseCommandLine, UsageError, type Invocation } from './args.js';
import { CliContext } from './context.js';
import { EXIT, exitCodeFor, type ExitCode } from './exit-codes.js';
import { hooksCommand, logCommand, statusCommand } from './query-commands.js';
import { registerCommand, unregisterCommand } from './hook-commands.js';
import { monitorCommand } from './monitor-command.js';
import { cancelCommand, phaseCommand, reconcileCommand, startCommand } from './phase-commands.js';
import { upgradeCommand } from './upgrade-command.js';
import { processIo, type CliIo } from './io.js';
import { COMMAND_HELP, OVERVIEW } from './usage.js';

function version(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'bootc-prestage' && pkg.version) return pkg.version;
    } catch { /* not here */ }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

async function run(ctx: CliContext, inv: Invocation): Promise<ExitCode> {
  const cmd = inv.command;
  switch (cmd.name) {
    case 'help':
      ctx.out(cmd.topic ? COMMAND_HELP[cmd.topic]! : OVERVIEW);
      return EXIT.OK;
    case 'version':
      ctx.out(`bootc-prestage ${version()}\n`);
      return EXIT.OK;
    case 'start': return startCommand(ctx, cmd);
    case 'commit':
    case 'abort': return phaseCommand(ctx, cmd);
    case 'cancel': return cancelCommand(ctx, cmd);
    case 'reconcile': return reconcileCommand(ctx, cmd);
    case 'upgrade': return upgradeCommand(ctx, cmd);
    case 'status': return statusCommand(ctx);
    case 'hooks': return hooksCommand(ctx, cmd);
    case 'log': return logCommand(ctx, cmd);
    case 'register': return registerCommand(ctx, cmd);
    case 'unregister': return unregisterCommand(ctx, cmd);
    case 'monitor': return monitorCommand(ctx);
  }
}

/** Run the command line `argv` (without node and the script); resolves with the exit status. */
export async function main(argv: string[], io: CliIo = processIo()): Promise<number> {
  let inv: Invocation;
  try {
    inv = parseCommandLine(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr.write(`bootc-prestage: ${e.message}\n`);
      io.stderr.write(`Try 'bootc-prestage ${e.command ? `${e.command} ` : ''}--help'.\n`);
      return EXIT.USAGE;
    }
    throw e;
  }
  const ctx = new CliContext(io, inv.global);
  try {
    return await run(ctx, inv);
  } catch (e) {
    if (e instanceof UsageError) {
      ctx.error(e.message);
      return EXIT.USAGE;
    }
    if (e instanceof ProtocolError) {
      ctx.error(`unexpected reply from bootc-prestaged (a different version?): ${e.message}`);
      return EXIT.FAILED;
    }
    const err = e instanceof ClientError ? e : toClientError(e, inv.command.name);
    ctx.error(err.message);
    return exitCodeFor(err.kind);
  } finally {
    ctx.close();
  }
}
