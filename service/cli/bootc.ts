/**
 * Talking to bootc: find the staged deployment from `bootc status
 * --format=json`, and run the upgrade commands. bootc is run from PATH
 * (tests put a stand-in first on PATH: test/fixtures/bootc/bootc).
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { ClientError } from '../client/errors.js';

/** `status.staged.ostree` (or booted, rollback) of bootc's BootcHost document. */
export interface BootEntryOstree {
  /** Absent in bootc before it added the field; then found on disk. */
  stateroot?: string;
  checksum: string;
  deploySerial: number;
}

export interface BootcRunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
}

/**
 * Run `bootc ARGS`. `stdio` says where its output goes (the live display
 * wants the terminal; --json output wants bootc's stdout on our stderr);
 * with `capture`, stdout is collected instead. Rejects only when bootc
 * cannot be started at all.
 */
export function runBootc(
  args: string[], opts: { env: NodeJS.ProcessEnv; capture?: boolean; stdio?: StdioOptions },
): Promise<BootcRunResult> {
  return new Promise((resolve, reject) => {
    const stdio: StdioOptions = opts.capture ? ['ignore', 'pipe', 'inherit'] : (opts.stdio ?? 'inherit');
    let child;
    try {
      child = spawn('bootc', args, { env: opts.env, stdio });
    } catch (e) {
      reject(new ClientError('failed', `cannot run bootc: ${(e as Error).message}`));
      return;
    }
    let out = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => { if (out.length < 64 * 1024 * 1024) out += d; });
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(new ClientError('failed', e.code === 'ENOENT'
        ? 'cannot run bootc: not found in PATH (bootc-prestage upgrade and start --staged need bootc)'
        : `cannot run bootc: ${e.message}`));
    });
    child.once('close', (code, signal) => resolve({ code, signal, stdout: out }));
  });
}

/** "exit status 3" / "killed by SIGTERM". */
export function describeExit(r: { code: number | null; signal: NodeJS.Signals | null }): string {
  return r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
}

/**
 * The `status.staged.ostree` entry of a `bootc status --format=json`
 * document, or null when nothing is staged. Throws ClientError('failed')
 * for a document that is not what bootc writes.
 */
export function stagedEntry(json: string): BootEntryOstree | null {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new ClientError('failed', `bootc status --format=json printed something that is not JSON: ${(e as Error).message}`);
  }
  const status = (doc as { status?: unknown } | null)?.status;
  if (status === null || typeof status !== 'object') {
    throw new ClientError('failed', 'bootc status --format=json has no "status" object');
  }
  const staged = (status as { staged?: unknown }).staged;
  if (staged === null || staged === undefined) return null;
  const o = (staged as { ostree?: unknown }).ostree;
  if (o === null || typeof o !== 'object') {
    throw new ClientError('failed', 'the staged deployment in bootc status has no "ostree" entry (not an ostree deployment?)');
  }
  const { stateroot, checksum, deploySerial } = o as Record<string, unknown>;
  if (typeof checksum !== 'string' || !/^[0-9a-f]{64}$/.test(checksum)) {
    throw new ClientError('failed', 'status.staged.ostree.checksum in bootc status is not a SHA-256 checksum');
  }
  if (typeof deploySerial !== 'number' || !Number.isInteger(deploySerial) || deploySerial < 0) {
    throw new ClientError('failed', 'status.staged.ostree.deploySerial in bootc status is not a serial number');
  }
  if (stateroot !== undefined && (typeof stateroot !== 'string' || !/^[^/\0]+$/.test(stateroot) || stateroot === '..' || stateroot === '.')) {
    throw new ClientError('failed', 'status.staged.ostree.stateroot in bootc status is not a stateroot name');
  }
  return { ...(stateroot !== undefined ? { stateroot: stateroot as string } : {}), checksum, deploySerial };
}

/**
 * The deployment directory of an entry:
 * `<sysroot>/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>`. Without
 * a stateroot (older bootc), the one stateroot that has that deployment.
 */
export async function deploymentDir(sysroot: string, e: BootEntryOstree): Promise<string> {
  const leaf = `${e.checksum}.${e.deploySerial}`;
  const base = path.join(sysroot, 'ostree', 'deploy');
  if (e.stateroot !== undefined) return path.join(base, e.stateroot, 'deploy', leaf);
  const roots = await fsp.readdir(base).catch(() => [] as string[]);
  const hits: string[] = [];
  for (const r of roots) {
    const dir = path.join(base, r, 'deploy', leaf);
    if (await fsp.stat(dir).then((s) => s.isDirectory(), () => false)) hits.push(dir);
  }
  if (hits.length === 1) return hits[0]!;
  throw new ClientError('not-found', hits.length === 0
    ? `bootc's staged deployment ${leaf} is not under ${base}/*/deploy (wrong --sysroot?)`
    : `bootc's staged deployment ${leaf} is in several stateroots: ${hits.join(', ')}`);
}

/** Ask bootc for its staged deployment; a ClientError('not-found') when nothing is staged. */
export async function stagedDeployment(sysroot: string, env: NodeJS.ProcessEnv): Promise<string> {
  const r = await runBootc(['status', '--format=json'], { env, capture: true });
  if (r.code !== 0) throw new ClientError('failed', `bootc status --format=json failed (${describeExit(r)})`);
  const entry = stagedEntry(r.stdout);
  if (!entry) {
    throw new ClientError('not-found',
      "bootc has no staged deployment: run 'bootc upgrade --download-only' first (or use 'bootc-prestage upgrade')");
  }
  return deploymentDir(sysroot, entry);
}
