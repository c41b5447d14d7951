/**
 * `bootc-prestage upgrade`: today's bootc upgrade flow with the pre-stage
 * phase in the middle (docs/design.md, "Real-world flow with today's bootc"):
 *
 *     bootc upgrade --download-only            stage, finalization locked
 *     (prepare phase of the staged deployment, followed)
 *     bootc upgrade --from-downloaded [--apply]  unlock (and reboot)
 *
 * The one safety property: the last step runs only after a successful
 * prepare phase. A failed or cancelled one leaves the stage locked, and
 * ostree discards a locked staged deployment at the next reboot, so the
 * new image can never boot without its hooks having run.
 */
import type { StdioOptions } from 'node:child_process';
import { ClientError } from '../client/errors.js';
import type { Command } from './args.js';
import { describeExit, runBootc, stagedDeployment } from './bootc.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { jsonLine } from './json-line.js';
import { checkProgressFd, failureText, isPrepared, runStart } from './phase-commands.js';

type UpgradeCommand = Extract<Command, { name: 'upgrade' }>;

/** stdio for bootc: its stdout must not mix into our JSON lines; the progress fd passes through. */
function bootcStdio(ctx: CliContext, progressFd: number | null): StdioOptions {
  const stdio: StdioOptions = ['inherit', ctx.mode === 'json' ? 2 : 'inherit', 'inherit'];
  if (progressFd !== null) {
    for (let fd = 3; fd < progressFd; fd++) stdio.push('ignore');
    stdio.push(progressFd);
  }
  return stdio;
}

async function bootc(ctx: CliContext, args: string[], progressFd: number | null): Promise<boolean> {
  const full = progressFd === null ? args : [...args, '--progress-fd', String(progressFd)];
  if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'bootc', args: full }));
  else ctx.out(`Running: bootc ${full.join(' ')}\n`);
  // bootc is in our process group: Ctrl-C reaches it, and it decides. We
  // only wait for it to exit and report.
  const ignore = ctx.io.onInterrupt(() => {});
  try {
    const r = await runBootc(full, { env: ctx.io.env, stdio: bootcStdio(ctx, progressFd) });
    if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'bootc-exit', args: full, code: r.code, signal: r.signal }));
    if (r.code === 0) return true;
    ctx.error(`bootc ${full.join(' ')} failed (${describeExit(r)})`);
    return false;
  } finally {
    ignore();
  }
}

export async function upgradeCommand(ctx: CliContext, cmd: UpgradeCommand): Promise<ExitCode> {
  checkProgressFd(cmd.progressFd, 'upgrade');
  // Reach the daemon first (this activates it): failing only after bootc
  // has downloaded and staged would waste the download (harmless: the
  // stage stays locked and is discarded at reboot).
  await (await ctx.connect()).managerProperties();

  if (!await bootc(ctx, ['upgrade', '--download-only'], cmd.progressFd)) return EXIT.FAILED;

  let deployment: string;
  try {
    deployment = await stagedDeployment(cmd.sysroot, ctx.io.env);
  } catch (e) {
    if (e instanceof ClientError && e.kind === 'not-found' && /no staged deployment/.test(e.message)) {
      if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'finished', state: 'no-update' }));
      else ctx.out('bootc staged nothing (no update available); nothing to do.\n');
      return EXIT.OK;
    }
    throw e;
  }
  if (ctx.mode !== 'json') ctx.out(`Staged deployment: ${deployment}\n`);

  const outcome = await runStart(ctx, deployment, { force: cmd.force, timeoutSec: cmd.timeoutSec }, cmd.progressFd);
  if (outcome.kind === 'interrupted') {
    ctx.error('interrupted; not finalizing the upgrade: the staged deployment stays locked '
      + "(see 'bootc-prestage status')");
    return EXIT.INTERRUPTED;
  }
  if (!isPrepared(outcome.tx)) {
    ctx.error(`${failureText('the prepare phase', outcome.tx)}; not finalizing the upgrade: the staged deployment `
      + "stays locked and is discarded at the next reboot; fix the problem and run 'bootc-prestage upgrade' again");
    return EXIT.FAILED;
  }

  const finalize = ['upgrade', '--from-downloaded', ...(cmd.apply ? ['--apply'] : [])];
  if (!await bootc(ctx, finalize, cmd.progressFd)) {
    ctx.error("the deployment is prepared but still locked; run 'bootc upgrade --from-downloaded' again");
    return EXIT.FAILED;
  }
  if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'finished', state: 'staged', deployment, apply: cmd.apply }));
  else if (!cmd.apply) ctx.out(`Upgrade staged and prepared: ${deployment} boots next.\n`);
  return EXIT.OK;
}
