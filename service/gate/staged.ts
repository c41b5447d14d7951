/**
 * Which deployment is staged, asked the way the system's own tools answer
 * it: `bootc status --format=json` (status.staged.ostree; the tests put the
 * bootc stand-in test/fixtures/bootc/bootc on PATH), or, where bootc is not
 * installed (rpm-ostree or plain ostree systems), the line of `ostree admin
 * status` marked "(staged)". Each is bounded in time: at shutdown nothing
 * may hang (a timeout is an error, and the gate then locks).
 */
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { deploymentKeyOf } from '../model/finalization-lock.js';

export interface Staged {
  deployment: string;
  key: string;
  /** The image bootc names, when it does. */
  image: string | null;
}

const TIMEOUT_MS = 30_000;

function run(cmd: string, args: string[]): Promise<{ ok: true; stdout: string } | { ok: false; missing: boolean; error: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve({ ok: true, stdout });
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      resolve({
        ok: false, missing: e.code === 'ENOENT',
        error: e.killed ? `${cmd} ${args.join(' ')} did not answer within ${TIMEOUT_MS / 1000} s`
          : `${cmd} ${args.join(' ')} failed: ${(stderr || e.message).trim()}`,
      });
    });
  });
}

const HEX64 = /^[0-9a-f]{64}$/;
const NAME = /^[A-Za-z0-9_.-]{1,255}$/;

/** Parse bootc's document; throws on anything unexpected (the caller locks). */
export function stagedFromBootc(json: string, sysroot: string): Staged | null {
  const doc = JSON.parse(json) as { status?: { staged?: unknown } };
  if (!doc || typeof doc.status !== 'object' || doc.status === null) throw new Error('bootc status has no "status" object');
  const staged = doc.status.staged as null | undefined | {
    ostree?: { stateroot?: unknown; checksum?: unknown; deploySerial?: unknown } | null;
    composefs?: unknown; image?: { image?: { image?: unknown } } | null;
  };
  if (staged === null || staged === undefined) return null;
  const o = staged.ostree;
  if (!o) {
    throw new Error(staged.composefs ? "the staged deployment is on bootc's composefs backend, which bootc-prestage does not support yet"
      : 'the staged deployment has no ostree entry');
  }
  const { stateroot, checksum, deploySerial } = o;
  if (typeof checksum !== 'string' || !HEX64.test(checksum)) throw new Error('status.staged.ostree.checksum is not a checksum');
  if (typeof deploySerial !== 'number' || !Number.isInteger(deploySerial) || deploySerial < 0) throw new Error('status.staged.ostree.deploySerial is not a serial');
  if (typeof stateroot !== 'string' || !NAME.test(stateroot) || stateroot === '.' || stateroot === '..') {
    throw new Error('status.staged.ostree.stateroot is missing or not a stateroot name');
  }
  const deployment = path.join(sysroot, 'ostree', 'deploy', stateroot, 'deploy', `${checksum}.${deploySerial}`);
  const image = staged.image?.image?.image;
  return { deployment, key: deploymentKeyOf(deployment), image: typeof image === 'string' ? image : null };
}

/** Parse `ostree admin status`: "  myos 0123…abcd.0 (staged)". */
export function stagedFromOstree(text: string, sysroot: string): Staged | null {
  for (const line of text.split('\n')) {
    const m = /^[* ]*(\S+) ([0-9a-f]{64})\.(\d+)(?: .*)?\(staged\)/.exec(line);
    if (m && NAME.test(m[1]!)) {
      const deployment = path.join(sysroot, 'ostree', 'deploy', m[1]!, 'deploy', `${m[2]}.${m[3]}`);
      return { deployment, key: deploymentKeyOf(deployment), image: null };
    }
  }
  return null;
}

export async function findStaged(sysroot: string): Promise<Staged | null> {
  const b = await run('bootc', ['status', '--format=json']);
  if (b.ok) return stagedFromBootc(b.stdout, sysroot);
  if (!b.missing) throw new Error(b.error);
  const o = await run('ostree', ['admin', 'status', `--sysroot=${sysroot}`]);
  if (o.ok) return stagedFromOstree(o.stdout, sysroot);
  throw new Error(o.missing ? 'neither bootc nor ostree is installed' : o.error);
}
