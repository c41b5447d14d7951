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
import type { Readable } from 'node:stream';
import { ClientError } from '../client/errors.js';
import type { Command } from './args.js';
import type { ProgressStream } from './bootc-progress.js';
import { describeExit, prepareStaged, runBootc } from './bootc.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { jsonLine } from './json-line.js';
import { checkProgressFd, failureText, isPrepared, progressStreamFor, runStart } from './phase-commands.js';

type UpgradeCommand = Extract<Command, { name: 'upgrade' }>;

/**
 * stdio for bootc: its stdout must not mix into our JSON lines. Its progress
 * goes to a pipe on its fd 3, which we relay into our own stream: the
 * reader of --progress-fd sees one stream with one Start event
 * (bootc-progress.ts), not two protocol streams glued together.
 */
function bootcStdio(ctx: CliContext, progress: boolean): StdioOptions {
  const stdio: StdioOptions = ['inherit', ctx.mode === 'json' ? 2 : 'inherit', 'inherit'];
  if (progress) stdio.push('pipe');
  return stdio;
}

function relayLines(from: Readable, stream: ProgressStream): Promise<void> {
  return new Promise((resolve) => {
    let buf = '';
    from.setEncoding('utf8');
    from.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        stream.relay(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      if (buf.length > 1024 * 1024) buf = ''; // not a JSON-lines stream
    });
    from.once('close', () => { if (buf) stream.relay(buf); resolve(); });
    from.once('error', () => resolve());
  });
}

async function bootc(ctx: CliContext, args: string[], stream: ProgressStream | null): Promise<boolean> {
  const full = stream === null ? args : [...args, '--progress-fd', '3'];
  if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'bootc', args: full }));
  else ctx.out(`Running: bootc ${full.join(' ')}\n`);
  // bootc is in our process group: Ctrl-C reaches it, and it decides. We
  // only wait for it to exit and report.
  const ignore = ctx.io.onInterrupt(() => {});
  let relaying: Promise<void> = Promise.resolve();
  try {
    const r = await runBootc(full, {
      env: ctx.io.env, stdio: bootcStdio(ctx, stream !== null),
      ...(stream ? { onSpawn: (pipes: (Readable | null)[]) => { if (pipes[3]) relaying = relayLines(pipes[3], stream); } } : {}),
    });
    await relaying;
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
  const stream = progressStreamFor(ctx, cmd.progressFd);

  if (!await bootc(ctx, ['upgrade', '--download-only'], stream)) return EXIT.FAILED;

  let deployment: string;
  try {
    // Verified, not assumed: bootc must report the stage locked, or we lock
    // it (bootc#2425: --download-only of an image already staged leaves it
    // unlocked); a composefs stage is refused by name.
    deployment = (await prepareStaged(cmd.sysroot, ctx.io.env, { lock: true, warn: (m) => ctx.warn(m) })).deployment;
  } catch (e) {
    if (e instanceof ClientError && e.kind === 'not-found' && /no staged deployment/.test(e.message)) {
      if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'finished', state: 'no-update' }));
      else ctx.out('bootc staged nothing (no update available); nothing to do.\n');
      return EXIT.OK;
    }
    throw e;
  }
  if (ctx.mode !== 'json') ctx.out(`Staged deployment: ${deployment}\n`);

  const outcome = await runStart(ctx, deployment, { force: cmd.force, timeoutSec: cmd.timeoutSec }, stream);
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
  if (!await bootc(ctx, finalize, stream)) {
    ctx.error("the deployment is prepared but still locked; run 'bootc upgrade --from-downloaded' again");
    return EXIT.FAILED;
  }
  if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'finished', state: 'staged', deployment, apply: cmd.apply }));
  else if (!cmd.apply) ctx.out(`Upgrade staged and prepared: ${deployment} boots next.\n`);
  return EXIT.OK;
}
