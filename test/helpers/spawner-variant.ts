/**
 * Builds the spawn helper with -DUSE_VFORK=0 (fork() and a close-on-exec
 * pipe instead of vfork()) into a temporary directory and points
 * $BOOTC_PRESTAGE_SPAWNER at it, for the *-fork-variant test files: the
 * variant a packager may choose is kept working. Call it before the code
 * under test starts a helper; the setting stays in the test file's process.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function useForkVariantOfSpawner(): string {
  const source = resolve(dirname(fileURLToPath(import.meta.url)), '../../service/spawner/spawner.c');
  const out = join(mkdtempSync(join(tmpdir(), 'spawner-fork-')), 'bootc-prestage-spawner-fork');
  const cc = spawnSync(process.env.CC || 'cc', ['-O2', '-std=c11', '-Wall', '-Wextra', '-Werror', '-DUSE_VFORK=0', '-o', out, source], { stdio: 'inherit' });
  if (cc.status !== 0) throw new Error(`could not build the fork variant of the spawn helper (${cc.error?.message ?? `status ${cc.status}`})`);
  process.env.BOOTC_PRESTAGE_SPAWNER = out;
  return out;
}
