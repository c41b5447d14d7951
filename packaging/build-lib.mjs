/**
 * What packaging/build.mjs (the daemon's and client's bundles) and
 * packaging/cockpit/build-page.mjs (the Cockpit page) both need: atomic
 * writes of build output, and the bundled npm packages with their licences.
 */
import { chmodSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
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

/**
 * The npm packages an esbuild metafile's outputs bundle, each once (a
 * package reached through two paths is one package), sorted by id, with
 * its licence and licence text.
 */
export function bundledPackages(metafile) {
  const dirs = new Set();
  for (const out of Object.values(metafile.outputs)) {
    for (const input of Object.keys(out.inputs)) {
      const d = packageDirOf(input);
      if (d) dirs.add(d);
    }
  }
  return [...dirs].map((dir) => {
    const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    const licenceFile = readdirSync(dir).sort().find((f) => /^(licen[cs]e|copying)(\.|$)/i.test(f));
    const text = licenceFile ? readFileSync(path.join(dir, licenceFile), 'utf8').trim() : '(no licence file in the package)';
    return { id: `${pkg.name}@${pkg.version}`, license: licenceName(pkg), text };
  })
    .filter((e, i, all) => all.findIndex((o) => o.id === e.id) === i)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** A bundled-licenses.txt: `header` lines, the list, `notes` lines, then each package's licence text. */
export function licencesText(entries, header, notes = []) {
  const lines = [...header, '', ...entries.map((e) => `  ${e.id} (${e.license})`), '', ...notes];
  for (const e of entries) lines.push('='.repeat(78), `${e.id} (${e.license})`, '', e.text, '');
  return lines.join('\n');
}
