/**
 * status, hooks and log: commands that read and print. None needs root
 * except log (GetLog returns hook output, which may hold secrets).
 */
import { discardedLine, discardedRecords } from './discarded.js';
import { shortErrorName } from '../client/errors.js';
import { transactionPathOf } from '../client/pre-stage-client.js';
import type { HookEntry, TransactionProperties } from '../client/types.js';
import { quoteCommandLine } from '../model/command-line.js';
import type { Command } from './args.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { formatUsec, sanitize, table } from './format.js';
import { jsonLine } from './json-line.js';

export async function statusCommand(ctx: CliContext): Promise<ExitCode> {
  const client = await ctx.connect();
  const manager = await client.managerProperties();
  const paths = await client.listTransactions();
  const txs: TransactionProperties[] = [];
  for (const p of paths) {
    // A transaction pruned between the list and the read is simply gone.
    try {
      txs.push(await client.transactionProperties(p));
    } catch {
      /* pruned */
    }
  }
  const discarded = await discardedRecords(ctx.io.env, 'latest');
  if (ctx.mode === 'json') {
    ctx.out(jsonLine({ ...manager, transactions: txs, discarded }));
    return EXIT.OK;
  }
  const active = manager.activeTransaction === '/' ? 'none' : manager.activeTransaction;
  ctx.out(`State: ${manager.state}\nVersion: ${manager.version}\nActive transaction: ${active}\n`);
  if (discarded.length > 0) {
    ctx.out(`\nDiscarded at shutdown by the boot gate:\n${discarded.map((r) => `  ${sanitize(discardedLine(r))}\n`).join('')}`);
  }
  if (txs.length === 0) {
    ctx.out('\nNo transactions.\n');
    return EXIT.OK;
  }
  const rows = txs.map((t) => [
    t.id, t.phase, t.state, `${t.progress}%`, formatUsec(t.startedUsec), formatUsec(t.finishedUsec),
    t.error ? shortErrorName(t.error) : '', t.deployment,
  ]);
  ctx.out(`\n${table(['ID', 'PHASE', 'STATE', 'PROGRESS', 'STARTED', 'FINISHED', 'ERROR', 'DEPLOYMENT'], rows)}`);
  const failed = txs.filter((t) => t.error && t.errorMessage);
  for (const t of failed.slice(-5)) ctx.out(`\nTransaction ${t.id}: ${sanitize(t.errorMessage)}`);
  if (failed.length > 0) ctx.out('\n');
  return EXIT.OK;
}

function timeoutText(sec: number): string {
  return sec === 0 ? 'infinity' : `${sec}s`;
}

/**
 * Where a prepare step runs, for the hooks table: `host` for `/`, `new root`
 * for the deployment's tree (the default of an image hook), else the
 * directory; `-` without a prepare step. `--json` has the full path.
 */
function rootText(root: unknown, hasPrepare: boolean): string {
  if (!hasPrepare || typeof root !== 'string' || root === '') return '-';
  if (root === '/') return 'host';
  if (root === '${BOOTC_PRESTAGE_DEPLOYMENT}' || /\/ostree\/deploy\/[^/]+\/deploy\/[^/]+$/.test(root)) return 'new root';
  return sanitize(root);
}

export async function hooksCommand(ctx: CliContext, cmd: Extract<Command, { name: 'hooks' }>): Promise<ExitCode> {
  const client = await ctx.connect();
  const hooks = await client.listHooks(cmd.deployment);
  if (ctx.mode === 'json') {
    for (const h of hooks) ctx.out(jsonLine(h));
    return EXIT.OK;
  }
  if (hooks.length === 0) {
    ctx.out(`No hooks${cmd.deployment ? ` for ${cmd.deployment}` : ' on the host'}.\n`);
    return EXIT.OK;
  }
  const rows = hooks.map((h: HookEntry) => [
    h.name, h.required ? 'yes' : 'no', timeoutText(h.timeoutSec),
    h.prepare.length ? sanitize(quoteCommandLine(h.prepare)) : '-', rootText(h.extra['PrepareRoot'], h.prepare.length > 0),
    h.source,
  ]);
  ctx.out(table(['NAME', 'REQUIRED', 'TIMEOUT', 'PREPARE', 'RUNS IN', 'SOURCE'], rows));
  for (const h of hooks) {
    const refused = h.extra['Refused'];
    if (typeof refused === 'string' && refused !== '') ctx.warn(`hook ${h.name} is refused and will not run: ${refused}`);
  }
  return EXIT.OK;
}

export async function logCommand(ctx: CliContext, cmd: Extract<Command, { name: 'log' }>): Promise<ExitCode> {
  const path = transactionPathOf(cmd.transaction);
  const client = await ctx.connect();
  const lines = await client.getLog(path, {
    ...(cmd.lines !== null ? { maxLines: cmd.lines } : {}),
    ...(cmd.hook !== null ? { hook: cmd.hook } : {}),
  });
  if (ctx.mode === 'json') {
    for (const line of lines) ctx.out(jsonLine({ transaction: path, line }));
  } else {
    ctx.out(lines.map((l) => `${ctx.mode === 'tty' ? sanitize(l) : l}\n`).join(''));
  }
  return EXIT.OK;
}
