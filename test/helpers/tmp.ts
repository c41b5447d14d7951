/**
 * Temporary directories for tests, removed in teardown, and fixtures copied
 * into them before use (as ava's own `with-temporary-fixture` does), so no
 * test writes into the source tree and no test sees another's leftovers.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';

/** The repository root (test/helpers/../..). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** test/fixtures in the repository. */
export const FIXTURES_DIR = path.join(REPO_ROOT, 'test', 'fixtures');

/**
 * Where temporary directories go: $BOOTC_PRESTAGE_TEST_TMPDIR, else the
 * system temporary directory. Canonical (links resolved), because the
 * daemon compares canonical deployment paths.
 */
export async function tmpRoot(): Promise<string> {
  const base = process.env['BOOTC_PRESTAGE_TEST_TMPDIR'] ?? os.tmpdir();
  await fsp.mkdir(base, { recursive: true });
  return fsp.realpath(base);
}

export interface MakeTmpDirOptions {
  /** Name prefix, for people reading `ls /tmp`. */
  prefix?: string;
  /**
   * Mode of the directory itself (mkdtemp makes 0700). 0o755 lets another
   * uid (65534 in policy tests) reach sockets and files inside.
   */
  mode?: number;
}

/**
 * Make a temporary directory that is not removed automatically. Prefer
 * `tmpDir(t)`; this is for helpers that own the directory's lifetime.
 */
export async function makeTmpDir(opts: MakeTmpDirOptions = {}): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(await tmpRoot(), opts.prefix ?? 'bootc-prestage-test-'));
  if (opts.mode !== undefined) await fsp.chmod(dir, opts.mode);
  return dir;
}

/** Remove a directory tree; absent is fine. */
export async function removeDir(dir: string): Promise<void> {
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * A temporary directory for this test, removed in its teardown (also when
 * the test fails). Set BOOTC_PRESTAGE_TEST_KEEP=1 to keep it for debugging;
 * its path is then logged.
 */
export async function tmpDir(t: ExecutionContext, opts: MakeTmpDirOptions = {}): Promise<string> {
  const dir = await makeTmpDir(opts);
  t.teardown(async () => {
    if (process.env['BOOTC_PRESTAGE_TEST_KEEP'] === '1') {
      t.log(`kept ${dir}`);
      return;
    }
    await removeDir(dir);
  });
  return dir;
}

/**
 * Copy a fixture directory (a name under test/fixtures, or an absolute
 * path) into a fresh temporary directory for this test, preserving modes,
 * and return the copy's path. The copy is removed in teardown.
 */
export async function copyFixture(
  t: ExecutionContext, fixture: string, opts: MakeTmpDirOptions = {},
): Promise<string> {
  const src = path.isAbsolute(fixture) ? fixture : path.join(FIXTURES_DIR, fixture);
  const st = await fsp.stat(src).catch(() => null);
  if (!st?.isDirectory()) throw new Error(`fixture ${src} is not a directory`);
  const dir = await tmpDir(t, { prefix: `fixture-${path.basename(src)}-`, ...opts });
  await fsp.cp(src, dir, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
  return dir;
}

/** A file to write: its content, and optionally a mode (default 0o644). */
export type FileSpec = string | { content: string | Buffer; mode?: number };

/**
 * Write files below `root` (keys are relative paths; parent directories are
 * made 0755). Each file is written to a temporary name and renamed into
 * place, so a file that is a hard link (ostree deployments share inodes
 * with the repository) is replaced, never modified through the link.
 */
export async function writeFiles(root: string, files: Record<string, FileSpec>): Promise<void> {
  for (const [rel, spec] of Object.entries(files)) {
    if (path.isAbsolute(rel) || rel.split('/').includes('..')) {
      throw new Error(`writeFiles: '${rel}' must be a relative path inside ${root}`);
    }
    const dest = path.join(root, rel);
    const { content, mode } = typeof spec === 'string' ? { content: spec, mode: 0o644 } : spec;
    await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o755 });
    const tmp = `${dest}.tmp-${process.pid}-${Math.random().toString(16).slice(2)}`;
    await fsp.writeFile(tmp, content, { mode: mode ?? 0o644 });
    // writeFile's mode is filtered by the umask; set it exactly.
    await fsp.chmod(tmp, mode ?? 0o644);
    await fsp.rename(tmp, dest);
  }
}
