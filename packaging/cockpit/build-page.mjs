// SPDX-License-Identifier: Apache-2.0
/**
 * The Cockpit page's build (the `page` step of packaging/build.mjs): the
 * sources in packaging/cockpit/bootc-prestage/ become the folder the
 * package installs as /usr/share/cockpit/bootc-prestage/:
 *
 *   dist/cockpit/bootc-prestage/
 *     manifest.json, index.html   copied
 *     bootc-prestage.js           src/index.jsx with React and PatternFly, one file
 *     bootc-prestage.css          PatternFly's base and component styles, then ours
 *     *.woff2                     the fonts PatternFly's CSS names (Red Hat Text,
 *                                 Display, Mono; pficon), next to the CSS
 *   dist/cockpit/bundled-licenses.txt
 *                               each bundled npm package with its licence text
 *
 * What must stay true:
 * - The folder works as it is, served by any cockpit-ws: every file the
 *   page loads is in it, except ../base1/cockpit.js, which Cockpit serves
 *   (`cockpit` is the global it defines, never bundled). The fonts are ours
 *   too, because Cockpit releases differ in which fonts /cockpit/static has
 *   (Debian 12's 287 has no variable fonts).
 * - Nothing the page runs needs a Content-Security-Policy exception:
 *   Cockpit serves pages with `default-src 'self'`, so no inline script or
 *   style element (React sets styles through the CSSOM, which is allowed).
 * - It is minified React in production mode: the page is downloaded by
 *   the browser, and React's development build is several times slower.
 *   The same inputs give the same bytes.
 * - A build of the page that fails leaves no half-written file (built in
 *   memory, then each file renamed into place). Without the page's npm
 *   dependencies it is skipped with a warning, so that a node_modules older
 *   than the lock still builds the daemon and the client.
 */
import { build } from 'esbuild';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundledPackages, licencesText, writeAtomically } from '../build-lib.mjs';

const ROOT = path.dirname(path.dirname(path.dirname(fileURLToPath(import.meta.url))));
const SRC = path.join(ROOT, 'packaging', 'cockpit', 'bootc-prestage');
/** The page folder as installed. */
export const PAGE_OUT = path.join(ROOT, 'dist', 'cockpit', 'bootc-prestage');
const LICENCES_OUT = path.join(ROOT, 'dist', 'cockpit', 'bundled-licenses.txt');
/** Copied verbatim. */
const STATIC_FILES = ['manifest.json', 'index.html'];

/** The list the spec's cockpit subpackage mirrors in its Provides: bundled(npm(...)) lines. */
function licences(metafile, version) {
  return licencesText(bundledPackages(metafile), [
    `Third-party code bundled into the Cockpit page bootc-prestage (bootc-prestage ${version}).`,
  ], [
    'The fonts (*.woff2) are those of @patternfly/react-core: Red Hat Text, Display and Mono',
    '(SIL Open Font License 1.1) and pficon (MIT), under the package\'s licence below.',
    '',
  ]);
}

/** `import cockpit from 'cockpit'`: the global that ../base1/cockpit.js defines (as Cockpit's own pages do). */
const cockpitGlobal = {
  name: 'cockpit-global',
  setup(b) {
    b.onResolve({ filter: /^cockpit$/ }, (args) => ({ path: args.path, namespace: 'cockpit-global' }));
    b.onLoad({ filter: /.*/, namespace: 'cockpit-global' }, () => ({ contents: 'module.exports = window.cockpit;', loader: 'js' }));
  },
};

export async function buildPage() {
  const version = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
  // A node_modules older than the lock (a checkout that has not run
  // `npm ci` since the page's dependencies came in) builds everything else;
  // the page's tests and the spec's %check then fail on the missing folder.
  const missing = ['react', 'react-dom', '@patternfly/react-core', '@patternfly/react-table']
    .filter((dep) => !existsSync(path.join(ROOT, 'node_modules', dep, 'package.json')));
  if (missing.length > 0) {
    process.stderr.write(`packaging/build.mjs: page: not built, node_modules lacks ${missing.join(', ')}: run \`npm ci\`\n`);
    return;
  }
  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: { 'bootc-prestage': path.join(SRC, 'src', 'index.jsx') },
    outdir: PAGE_OUT,
    bundle: true,
    platform: 'browser',
    format: 'iife',
    // What Cockpit's own pages target.
    target: ['es2021'],
    jsx: 'automatic',
    loader: { '.js': 'jsx', '.woff2': 'file', '.woff': 'file', '.svg': 'dataurl' },
    assetNames: '[name]',
    define: { 'process.env.NODE_ENV': '"production"' },
    minify: true,
    legalComments: 'none',
    charset: 'utf8',
    plugins: [cockpitGlobal],
    metafile: true,
    write: false,
    logLevel: 'warning',
  });
  mkdirSync(PAGE_OUT, { recursive: true });
  const wanted = new Set([...STATIC_FILES]);
  for (const f of result.outputFiles) {
    wanted.add(path.basename(f.path));
    writeAtomically(f.path, f.contents);
  }
  for (const f of STATIC_FILES) {
    const tmp = path.join(PAGE_OUT, `${f}.tmp-${process.pid}`);
    copyFileSync(path.join(SRC, f), tmp);
    chmodSync(tmp, 0o644);
    renameSync(tmp, path.join(PAGE_OUT, f));
  }
  // A file of an earlier build that this one no longer makes would be installed too.
  for (const f of readdirSync(PAGE_OUT)) if (!wanted.has(f)) rmSync(path.join(PAGE_OUT, f), { recursive: true, force: true });
  writeAtomically(LICENCES_OUT, licences(result.metafile, version));
}
