/**
 * What packaging/build.mjs (the daemon's and client's bundles) and
 * packaging/cockpit/build-page.mjs (the Cockpit page) both need: atomic
 * writes of build output, and the licence of each bundled npm package.
 */
import { chmodSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root. */
export const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

/**
 * Write `file` through a temporary file and a rename, with exactly `mode`
 * (whatever the umask), so that a daemon or test started while `npm run
 * build` runs reads the old file or the new one, never half of one.
 */
export function writeAtomically(file, data, mode = 0o644) {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, file);
}

/** The package directory (under node_modules) of a bundled input path, or null for our own code. */
export function packageDirOf(input) {
  const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
  return m ? path.join(ROOT, m[1]) : null;
}

/** A package.json's licence: an SPDX string, an old-style { type } or licenses array, or what its licence file says. */
export function licenceName(pkg) {
  const one = (l) => (typeof l === 'string' ? l : l && typeof l.type === 'string' ? l.type : null);
  const any = (l) => (Array.isArray(l) ? l.map(one).filter(Boolean).join(' OR ') || null : one(l));
  return any(pkg.license) ?? any(pkg.licenses) ?? 'not declared in package.json: see its licence text';
}
