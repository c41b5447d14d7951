/**
 * The spec's `Provides: bundled(npm(NAME)) = VERSION` lines name exactly the
 * packages the build bundled (dist/bundled-licenses.txt, written by
 * packaging/build.mjs from esbuild's metafile), so an npm update cannot make
 * the RPM's metadata lie; and its License names every bundled licence.
 */
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const listFile = resolve(root, 'dist/bundled-licenses.txt');
/** The Cockpit page's list (packaging/cockpit/build-page.mjs), mirrored by the cockpit subpackage. */
const pageListFile = resolve(root, 'dist/cockpit/bundled-licenses.txt');
const fullSpec = readFileSync(resolve(root, 'packaging/bootc-prestage.spec'), 'utf8');
/** The main package's preamble and sections, then the cockpit subpackage's. */
const cockpitAt = fullSpec.indexOf('\n%package cockpit\n');
const spec = cockpitAt < 0 ? fullSpec : fullSpec.slice(0, cockpitAt);
const cockpitSpec = cockpitAt < 0 ? '' : fullSpec.slice(cockpitAt, fullSpec.indexOf('\n%description cockpit', cockpitAt));

/** "  name@version (licence)" lines of the list's head. */
function bundled(file = listFile): { id: string; licence: string }[] {
  const out: { id: string; licence: string }[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
    const m = /^ {2}(\S+)@(\S+) \((.*)\)$/.exec(line);
    if (!m) {
      if (out.length > 0) break; // the list is over; licence texts follow
      continue;
    }
    out.push({ id: `${m[1]} = ${m[2]}`, licence: m[3]! });
  }
  return out;
}

test('spec - Provides: bundled(npm(...)) lists exactly the bundled packages and versions', (t) => {
  if (!existsSync(listFile)) {
    t.fail('dist/bundled-licenses.txt is missing: run `npm run build`');
    return;
  }
  const provided = [...spec.matchAll(/^Provides:\s+bundled\(npm\((\S+)\)\) = (\S+)$/gm)].map((m) => `${m[1]} = ${m[2]}`);
  const list = bundled().map((b) => b.id);
  t.true(list.length > 10, `only ${list.length} packages read from ${listFile}`);
  t.deepEqual([...provided].sort(), [...list].sort());
});

test('spec - the main package\'s License names every licence the bundled packages declare', (t) => {
  const license = /^License:\s+(.*)$/m.exec(spec)![1]!;
  // Declared names as SPDX; undeclared ones were read from their texts (see the spec's comment).
  const spdx: Record<string, string> = { 'MIT/X11': 'MIT', 'MIT OR Apache2': '(MIT OR Apache-2.0)' };
  const all = bundled();
  t.true(all.length > 10, `only ${all.length} packages read from ${listFile}`);
  for (const { id, licence } of all) {
    if (licence.startsWith('not declared')) continue;
    const name = spdx[licence] ?? licence;
    t.true(license.includes(name), `${id}: ${licence} is not in License: ${license}`);
  }
  t.true(license.startsWith('Apache-2.0'), 'our own code is Apache-2.0');
});

test('spec - the cockpit subpackage\'s Provides: bundled(npm(...)) list exactly what the page bundles, its License their licences', (t) => {
  if (!existsSync(pageListFile)) {
    t.fail('dist/cockpit/bundled-licenses.txt is missing: run `npm run build`');
    return;
  }
  t.not(cockpitSpec, '', 'the spec has %package cockpit');
  const provided = [...cockpitSpec.matchAll(/^Provides:\s+bundled\(npm\((\S+)\)\) = (\S+)$/gm)].map((m) => `${m[1]} = ${m[2]}`);
  const all = bundled(pageListFile);
  t.true(all.some((b) => b.id.startsWith('react = ')) && all.some((b) => b.id.startsWith('@patternfly/react-core = ')),
    `React and PatternFly are in ${pageListFile}`);
  t.deepEqual([...provided].sort(), all.map((b) => b.id).sort());
  const license = /^License:\s+(.*)$/m.exec(cockpitSpec)![1]!;
  for (const { id, licence } of all) t.true(license.includes(licence), `${id}: ${licence} is not in License: ${license}`);
  t.true(license.includes('OFL-1.1'), 'the bundled Red Hat fonts');
});
