#!/usr/bin/env node
/**
 * Compiles the spawn helper (spawner.c) to dist/libexec/bootc-prestage-spawner.
 * `npm run build` runs it as the `spawner` step of packaging/build.mjs;
 * `node service/spawner/build.mjs` runs it alone. The daemon works without
 * the helper (Node's spawn then forks the whole daemon for each step:
 * correct, slower), so a machine without a C compiler gets a warning, not a
 * failed build. $CC and $CFLAGS are honoured, as packagers expect.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Build the helper; returns false (after a warning) when it could not be. */
export function buildSpawner(root = join(here, '..', '..')) {
  const out = join(root, 'dist', 'libexec', 'bootc-prestage-spawner');
  const cc = process.env.CC || 'cc';
  const cflags = (process.env.CFLAGS || '-O2 -g').split(/\s+/).filter(Boolean);
  const args = [...cflags, '-std=c11', '-Wall', '-Wextra', '-o', `${out}.tmp`, join(here, 'spawner.c')];
  mkdirSync(dirname(out), { recursive: true });
  const r = spawnSync(cc, args, { stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    rmSync(`${out}.tmp`, { force: true });
    rmSync(out, { force: true }); // never leave a stale helper behind
    const why = r.error ? `${cc}: ${r.error.code ?? r.error.message}` : `${cc} exited with status ${r.status}`;
    process.stderr.write(`warning: the spawn helper was not built (${why}); bootc-prestaged will spawn steps `
      + 'with Node.js instead, which is slower. Install a C compiler (gcc) to build it.\n');
    return false;
  }
  renameSync(`${out}.tmp`, out);
  return true;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) buildSpawner();
