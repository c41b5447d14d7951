/**
 * Durable file updates: after any of these returns, the change survives a
 * crash or power loss; if it throws, the old state is intact (a reader sees
 * the whole old file or the whole new one, never a part).
 */
import { randomBytes } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';
import * as nodePath from 'node:path';

/**
 * Replace `path` with `data` atomically: write a temporary file in the same
 * directory (so rename stays within one filesystem), fsync it, rename it
 * over `path`, fsync the directory. The file gets exactly `mode` (umask does
 * not apply). On error the temporary file is removed and `path` is untouched.
 * A symlink at `path` is replaced, not followed.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const dir = nodePath.dirname(path);
  // Hidden, so directory scanners (hook discovery) skip it while it exists.
  const tmp = nodePath.join(dir, `.${nodePath.basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: fsp.FileHandle | null = null;
  try {
    handle = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, mode);
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = null;
    await fsp.rename(tmp, path);
  } catch (e) {
    if (handle) await handle.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dir);
}

/** fsync a directory, making renames, creations and unlinks in it durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Remove `path` and fsync its directory. Returns false when there was
 * nothing to remove (ENOENT); other errors are thrown.
 */
export async function unlinkDurable(path: string): Promise<boolean> {
  try {
    await fsp.unlink(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  await fsyncDir(nodePath.dirname(path));
  return true;
}

/**
 * `mkdir -p`, one component at a time. Node's `recursive: true` loops
 * forever where mkdir(2) says ENOENT under a parent that exists (procfs,
 * sysfs: `--state-dir /proc/x/state` hung the daemon at start); here that
 * is an error naming the directory. Returns the first directory created,
 * or undefined when all existed, like `fsp.mkdir(dir, { recursive: true })`.
 */
export async function mkdirp(dir: string, mode: number): Promise<string | undefined> {
  const full = nodePath.resolve(dir);
  const parts = full.split('/').filter((p) => p !== '');
  let first: string | undefined;
  let cur = '';
  for (const part of parts) {
    cur += `/${part}`;
    try {
      await fsp.mkdir(cur, { mode });
      first ??= cur;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw e;
      // EEXIST for a file too: only a directory (or a link to one) will do.
      const st = await fsp.stat(cur);
      if (!st.isDirectory()) {
        const err = new Error(`ENOTDIR: not a directory, mkdir '${cur}'`) as NodeJS.ErrnoException;
        err.code = 'ENOTDIR';
        err.path = cur;
        throw err;
      }
    }
  }
  return first;
}

/**
 * `mkdir -p` with `mode` applied exactly to every directory it creates
 * (umask does not apply); existing directories are left alone. The new
 * directories are made durable.
 */
export async function mkdirDurable(dir: string, mode: number): Promise<void> {
  const first = await mkdirp(dir, mode);
  if (first === undefined) return;
  const created: string[] = [];
  for (let d = nodePath.resolve(dir); ; d = nodePath.dirname(d)) {
    created.push(d);
    if (d === nodePath.resolve(first) || d === nodePath.dirname(d)) break;
  }
  for (const d of created.reverse()) {
    await fsp.chmod(d, mode);
    await fsyncDir(nodePath.dirname(d));
  }
}
