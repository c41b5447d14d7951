/**
 * A real (tiny) ostree sysroot for trying the daemon out with `npm start`,
 * made with the `ostree` tool exactly as a bootc system's is laid out. It
 * ships one example hook inside the deployment, as an image would.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const OS = 'demo';

async function deploymentsOf(sysroot: string): Promise<string[]> {
  const dir = path.join(sysroot, 'ostree', 'deploy', OS, 'deploy');
  try {
    return (await fsp.readdir(dir)).filter((n) => /^[0-9a-f]{64}\.\d+$/.test(n)).map((n) => path.join(dir, n));
  } catch {
    return [];
  }
}

const EXAMPLE_HOOK = `[Hook]
Description=Example hook shipped by the demo image
Prepare=\${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/demo-hook prepare
Commit=\${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/demo-hook commit
Abort=\${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/demo-hook abort
TimeoutSec=60
`;

const EXAMPLE_PROGRAM = `#!/bin/sh
# Counts to 100 on the notify fd so a client shows a moving progress bar.
echo "demo hook: $1 of $BOOTC_PRESTAGE_DEPLOYMENT"
for i in 10 20 30 40 50 60 70 80 90 100; do
  echo "PROGRESS=$i" >&3
  echo "STATUS=step $i of 100" >&3
  sleep 0.2
done
echo "demo hook: $1 done"
`;

/** Create `sysroot` with one deployment if it has none; returns the deployments. */
export async function ensureDemoSysroot(sysroot: string): Promise<string[]> {
  const existing = await deploymentsOf(sysroot);
  if (existing.length > 0) return existing;
  await run('ostree', ['--version']).catch((e: NodeJS.ErrnoException) => {
    throw new Error(e.code === 'ENOENT' ? 'ostree is not installed (scripts/setup demo installs it)' : e.message);
  });
  await fsp.mkdir(sysroot, { recursive: true });
  const tree = path.join(sysroot, '..', 'demo-tree');
  await fsp.rm(tree, { recursive: true, force: true });
  const files: Record<string, string> = {
    'usr/lib/os-release': 'ID=demo\nNAME="Demo OS"\nVERSION_ID=1\nPRETTY_NAME="Demo OS 1"\n',
    'usr/etc/os-release': 'ID=demo\nNAME="Demo OS"\nVERSION_ID=1\nPRETTY_NAME="Demo OS 1"\n',
    'usr/lib/modules/6.1.0-demo/vmlinuz': 'not a kernel\n',
    'usr/lib/bootc/pre-stage.d/demo.hook': EXAMPLE_HOOK,
    'usr/libexec/demo-hook': EXAMPLE_PROGRAM,
  };
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(tree, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    await fsp.writeFile(p, content, { mode: rel.includes('libexec') ? 0o755 : 0o644 });
  }
  await run('ostree', ['admin', 'init-fs', sysroot]);
  await run('ostree', ['admin', 'os-init', `--sysroot=${sysroot}`, OS]);
  await run('ostree', [`--repo=${path.join(sysroot, 'ostree', 'repo')}`, 'commit', '-b', `${OS}/stable`, `--tree=dir=${tree}`]);
  await run('ostree', ['admin', 'deploy', `--sysroot=${sysroot}`, `--os=${OS}`, `${OS}/stable`]);
  await fsp.rm(tree, { recursive: true, force: true });
  const deployments = await deploymentsOf(sysroot);
  // ostree marks a deployment's root immutable (chattr +i), which protects a
  // real system but leaves a checkout that `rm -rf` cannot remove. This demo
  // lives under the checkout: lift it (where the filesystem has the flag).
  for (const d of deployments) await run('chattr', ['-i', d]).catch(() => {});
  if (deployments.length === 0) throw new Error(`ostree admin deploy made no deployment in ${sysroot}`);
  return deployments;
}
