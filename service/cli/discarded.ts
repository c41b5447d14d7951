/**
 * The boot gate's records of upgrades it discarded at shutdown
 * (service/model/records.ts): `status` shows the latest, `reconcile` (run at
 * every boot by bootc-prestage-reconcile.service) those of the boot before.
 * Read from the file directly: the daemon does not hold them.
 */
import { promises as fsp, readFileSync } from 'node:fs';
import { readRecords, recordsFile, type DiscardRecord } from '../model/records.js';
import type { CliContext } from './context.js';
import { formatUsec } from './format.js';
import { jsonLine } from './json-line.js';

function currentBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * The records to show: the last 5, or those written by earlier boots that
 * no reconcile has shown yet (`<records>.shown` holds the time of the last
 * one shown, so each is reported by the first reconcile after it).
 */
export async function discardedRecords(env: NodeJS.ProcessEnv, which: 'latest' | 'previous-boot'): Promise<DiscardRecord[]> {
  const file = recordsFile(env);
  const all = await readRecords(file);
  if (which === 'latest') return all.slice(-5);
  const shownFile = `${file}.shown`;
  const shown = Number(await fsp.readFile(shownFile, 'utf8').catch(() => '0')) || 0;
  const boot = currentBootId();
  const recs = all.filter((r) => r.usec > shown && r.bootId !== boot);
  if (recs.length > 0) {
    // Not root: nothing is marked, and the next root reconcile shows them.
    await fsp.writeFile(`${shownFile}.tmp`, `${recs[recs.length - 1]!.usec}\n`)
      .then(() => fsp.rename(`${shownFile}.tmp`, shownFile)).catch(() => {});
  }
  return recs;
}

export function discardedLine(r: DiscardRecord): string {
  const tx = r.transaction ? ` (transaction ${r.transaction})` : '';
  return `${r.summary}${tx} at ${formatUsec(r.usec)}: ${r.reason}`;
}

export async function showDiscarded(ctx: CliContext, which: 'latest' | 'previous-boot'): Promise<DiscardRecord[]> {
  const recs = await discardedRecords(ctx.io.env, which);
  for (const r of recs) {
    if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'discarded', ...r }));
    else if (which === 'previous-boot') ctx.out(`${discardedLine(r)}\n`);
  }
  return recs;
}
