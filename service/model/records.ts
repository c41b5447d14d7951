/**
 * The gate's records of discarded upgrades: JSON lines in
 * `/var/lib/bootc-prestage-gate/discarded.jsonl` (world-readable, unlike
 * the daemon's state directory: a record names a deployment, a transaction
 * and why, nothing a hook wrote). `bootc-prestage status` shows the latest;
 * `bootc-prestage reconcile` at the next boot shows those of the previous
 * boot. `BOOTC_PRESTAGE_GATE_RECORDS` names another file (tests).
 *
 * A record is appended with one write(2) of one line and fsync'ed: at
 * shutdown the disk may go away right after the gate.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import * as path from 'node:path';

export const RECORDS_FILE = '/var/lib/bootc-prestage-gate/discarded.jsonl';
/** The file is cut to its last KEEP records when it grows past twice that. */
const KEEP = 100;

export interface DiscardRecord {
  usec: number;
  /** The boot that was shutting down (/proc/sys/kernel/random/boot_id). */
  bootId: string;
  deployment: string;
  image: string | null;
  transaction: string;
  cause: 'failed' | 'never-ran' | 'did-not-finish' | 'hooks-changed' | 'error';
  /** "upgrade to X discarded at shutdown: pre-stage failed" */
  summary: string;
  reason: string;
}

export function recordsFile(env: NodeJS.ProcessEnv = process.env): string {
  return env.BOOTC_PRESTAGE_GATE_RECORDS || RECORDS_FILE;
}

export async function appendRecord(file: string, rec: DiscardRecord): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
  const fh = await fsp.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND, 0o644);
  try {
    await fh.write(`${JSON.stringify(rec)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  const all = await readRecords(file);
  if (all.length > 2 * KEEP) {
    const tmp = `${file}.tmp-${process.pid}`;
    await fsp.writeFile(tmp, all.slice(-KEEP).map((r) => `${JSON.stringify(r)}\n`).join(''), { mode: 0o644 });
    await fsp.rename(tmp, file);
  }
}

/** Every readable record, oldest first; a missing file is none, bad lines are skipped. */
export async function readRecords(file: string): Promise<DiscardRecord[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const out: DiscardRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      const r = JSON.parse(line) as DiscardRecord;
      if (r && typeof r.summary === 'string' && typeof r.usec === 'number') out.push(r);
    } catch {
      // a torn last line
    }
  }
  return out;
}
