#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
/**
 * The build steps that follow `tsc -p tsconfig.json` in `npm run build`.
 *
 *   node packaging/build.mjs            every step, in order
 *   node packaging/build.mjs STEP...    only the named steps
 *
 * Steps (STEPS below; add one as a function and a row there):
 *   bundles   dist/bootc-prestaged.mjs, dist/bootc-prestage.mjs and
 *             dist/bootc-prestage-gate.mjs: the daemon, the client and the
 *             boot gate, each one ESM file with everything it
 *             imports (dbus-next, rxjs, winston, ...), plus a source map
 *             each and dist/bundled-licenses.txt.
 *   spawner   dist/libexec/bootc-prestage-spawner, compiled from
 *             service/spawner/spawner.c (service/spawner/build.mjs).
 *   page      dist/cockpit/bootc-prestage/, the Cockpit page as the
 *             package installs it (packaging/cockpit/build-page.mjs), and
 *             dist/cockpit/bundled-licenses.txt.
 *
 * Why bundles: the daemon is started by D-Bus activation, so its start-up
 * is on the path of the first call. Loaded from dist/service and
 * node_modules it resolves, reads and compiles several hundred files (rxjs's
 * CommonJS index alone pulls in every operator); one file, with rxjs taken
 * from its ES module build so that only the operators we use are in it,
 * owns its name in a little over half the time (401 -> 231 ms, a bare
 * dbus-next name owner taking 220 ms) and idles at 51 MB instead of 70 MB:
 * `npm run bench -- --only startup`.
 *
 * What must stay true of a bundle:
 * - It is built from tsc's output (dist/service/bin/*.js), the code that
 *   the type checker passed and the unit tests import; esbuild only links it.
 *   tsc's source maps are read, so the bundle's map points at service/*.ts.
 * - It is not minified: a stack trace in a bug report names real functions
 *   at lines a reader can open (each module starts at a `// dist/service/...`
 *   or `// node_modules/...` comment); minifying measured no faster start.
 *   Source maps are not enabled at run time (`--enable-source-maps` parses
 *   the map at start-up: +20 to +60 ms, up to a quarter of the daemon's
 *   start-up); a developer who wants positions in the .ts sources runs
 *   `NODE_OPTIONS=--enable-source-maps` next to the .map files.
 * - It is pure ASCII: V8 keeps a source with one non-ASCII character as two
 *   bytes per character, which doubles the memory the source takes and
 *   slows decoding and parsing. esbuild escapes non-ASCII characters in code
 *   (charset 'ascii') but copies comments verbatim, so the characters left
 *   (comments of dependencies) are replaced by '?', one per UTF-16 unit so
 *   that the source map's columns stay right.
 * - The same inputs give the same bytes (no dates, sorted lists): a trace
 *   from an installed package can be mapped with a rebuild of its version.
 * - `require` of Node.js built-ins from bundled CommonJS code goes through a
 *   `createRequire` made in the banner. The optional dependencies of
 *   dbus-next that the lock does not install (usocket, x11) stay external:
 *   dbus-next requires them inside try/catch and falls back, as unbundled.
 */
import { build } from 'esbuild';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundledPackages, licencesText, writeAtomically } from './build-lib.mjs';

/** The repository root (this file is packaging/build.mjs). */
const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const DIST = path.join(ROOT, 'dist');
const NODE_MODULES = path.join(ROOT, 'node_modules');

/** Entry points: the bundle's name in dist/ and tsc's output it is built from. */
const BUNDLES = [
  { out: 'bootc-prestaged.mjs', entry: 'dist/service/bin/bootc-prestaged.js' },
  { out: 'bootc-prestage.mjs', entry: 'dist/service/bin/bootc-prestage.js' },
  // The boot gate (service/gate/): run at shutdown before ostree finalizes,
  // so it is its own small file that loads no bus library.
  { out: 'bootc-prestage-gate.mjs', entry: 'dist/service/gate/entry.js' },
];

/** Required by dbus-next inside try/catch, not installed by the lock: resolved at run time if present. */
const EXTERNAL = ['usocket', 'x11'];

/**
 * Modules resolved to another file of the same package than Node.js would
 * pick, each for a reason that holds for a bundled system service.
 */
const REDIRECTS = [
  {
    // rxjs's "exports" give Node.js the CommonJS build, whose index
    // evaluates every operator; its ES2015 module build is the same code,
    // and with "sideEffects": false esbuild keeps only what we import.
    specifier: 'rxjs',
    file: 'rxjs/dist/esm/index.js',
  },
  {
    // winston's internal debug channel: the development build evaluates a
    // colour-conversion table at start-up (@so-ric/colorspace) to print
    // winston's own diagnostics when DEBUG=winston:* is set; the production
    // build, which `NODE_ENV=production` selects, is silent and small.
    specifier: '@dabh/diagnostics',
    file: '@dabh/diagnostics/node/production.js',
  },
];

const packageJson = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

/** Resolve the REDIRECTS. */
const redirectPlugin = {
  name: 'redirect',
  setup(b) {
    for (const r of REDIRECTS) {
      const filter = new RegExp(`^${r.specifier.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`);
      b.onResolve({ filter }, () => {
        const file = path.join(NODE_MODULES, r.file);
        if (!existsSync(file)) throw new Error(`${r.file} is gone: check REDIRECTS in packaging/build.mjs against the installed ${r.specifier}`);
        return { path: file };
      });
    }
  },
};

/** Every installed copy of every package: "name@version" -> package directories, shortest path first. */
function installedCopies() {
  const copies = new Map();
  const visit = (dir) => {
    if (!existsSync(dir)) return;
    for (const name of readdirSync(dir).sort()) {
      if (name.startsWith('.')) continue;
      if (name.startsWith('@')) {
        for (const sub of readdirSync(path.join(dir, name)).sort()) addPackage(path.join(dir, name, sub));
      } else {
        addPackage(path.join(dir, name));
      }
    }
  };
  const addPackage = (pkgDir) => {
    const manifest = path.join(pkgDir, 'package.json');
    if (!existsSync(manifest)) return;
    const { name, version } = JSON.parse(readFileSync(manifest, 'utf8'));
    const key = `${name}@${version}`;
    copies.set(key, [...(copies.get(key) ?? []), pkgDir]);
    visit(path.join(pkgDir, 'node_modules'));
  };
  visit(NODE_MODULES);
  for (const dirs of copies.values()) dirs.sort((a, b) => a.length - b.length || (a < b ? -1 : 1));
  return copies;
}

/**
 * npm may install the same version of a package more than once, nested
 * under different dependents (winston and winston-transport each have
 * readable-stream 3.6.2). Identical code need not be bundled twice: every
 * import of such a package resolves into its first copy.
 */
function dedupePlugin() {
  const copies = installedCopies();
  const canonical = new Map(); // package directory -> first copy of the same name@version
  for (const dirs of copies.values()) for (const d of dirs.slice(1)) canonical.set(d, dirs[0]);
  return {
    name: 'dedupe',
    setup(b) {
      b.onResolve({ filter: /^[^./]/ }, async (args) => {
        if (args.pluginData?.dedupe) return undefined;
        const r = await b.resolve(args.path, {
          kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: { dedupe: true },
        });
        if (r.errors.length > 0 || r.external || !r.path.startsWith(NODE_MODULES)) return r.errors.length > 0 ? undefined : r;
        for (const [dir, first] of canonical) {
          if (r.path.startsWith(dir + path.sep)) return { ...r, path: first + r.path.slice(dir.length) };
        }
        return r;
      });
    },
  };
}

/** Replace what is left of non-ASCII (comments only) by '?' per UTF-16 unit; see the header. */
function asciiOnly(text) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[^\x00-\x7f]/g, '?');
}

/** dist/bundled-licenses.txt: each bundled package, its licence and licence text. */
function writeLicences(metafile) {
  const text = licencesText(bundledPackages(metafile), [
    `Third-party code bundled into dist/bootc-prestaged.mjs and dist/bootc-prestage.mjs (dist/bootc-prestage-gate.mjs has none) (${packageJson.name} ${packageJson.version}).`,
  ]);
  writeAtomically(path.join(DIST, 'bundled-licenses.txt'), text, 0o644);
}

/** Step: the bundles; see the header. */
async function bundles() {
  for (const b of BUNDLES) {
    if (!existsSync(path.join(ROOT, b.entry))) throw new Error(`${b.entry} does not exist: run tsc -p tsconfig.json first (npm run build does)`);
  }
  const plugins = [redirectPlugin, dedupePlugin()];
  const metafiles = [];
  for (const b of BUNDLES) {
    const outfile = path.join(DIST, b.out);
    const result = await build({
      absWorkingDir: ROOT,
      entryPoints: [b.entry],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: `node${packageJson.engines.node.replace(/^>=\s*/, '')}`,
      external: EXTERNAL,
      plugins,
      sourcemap: 'linked',
      // Stack traces need positions and file names only; the sources are in
      // the repository, and a smaller map is cheaper when it is enabled.
      sourcesContent: false,
      legalComments: 'eof',
      charset: 'ascii',
      banner: {
        js: [
          `// ${b.out.replace(/\.mjs$/, '')} ${packageJson.version}: ${b.entry} and what it imports, bundled by packaging/build.mjs.`,
          "import { createRequire as __bundleCreateRequire } from 'node:module';",
          'const require = __bundleCreateRequire(import.meta.url);',
        ].join('\n'),
      },
      metafile: true,
      write: false,
      logLevel: 'warning',
    });
    for (const f of result.outputFiles) {
      if (f.path === outfile) writeAtomically(f.path, asciiOnly(f.text), 0o755);
      else writeAtomically(f.path, f.text, 0o644);
    }
    metafiles.push(result.metafile);
  }
  writeLicences({ outputs: Object.assign({}, ...metafiles.map((m) => m.outputs)) });
}

/** Every step, in the order `npm run build` runs them. */
/**
 * dist/libexec/bootc-prestage-spawner, the small C helper that forks hook
 * steps (service/spawner/spawner.c). Without a C compiler: a warning, and
 * the daemon spawns steps itself, slower.
 */
async function spawner() {
  const { buildSpawner } = await import('../service/spawner/build.mjs');
  buildSpawner();
}

/** dist/cockpit/bootc-prestage/: the Cockpit page (packaging/cockpit/build-page.mjs). */
async function page() {
  const { buildPage } = await import('./cockpit/build-page.mjs');
  await buildPage();
}

const STEPS = [
  ['bundles', bundles],
  ['spawner', spawner],
  ['page', page],
];

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!STEPS.some(([n]) => n === name)) {
    process.stderr.write(`packaging/build.mjs: no step '${name}' (steps: ${STEPS.map(([n]) => n).join(', ')})\n`);
    process.exit(2);
  }
}
for (const [name, step] of STEPS) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  try {
    await step();
  } catch (e) {
    process.stderr.write(`packaging/build.mjs: ${name}: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
