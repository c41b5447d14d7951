/**
 * The layers of service/ (docs/architecture.md), enforced: every import and
 * export-from of every .ts file under service/ is read, and an import
 * against the documented direction fails the test, naming the file, the
 * import and the rule it breaks.
 */
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SERVICE = join(ROOT, 'service');

/**
 * Which layers each layer may import (besides itself). Bottom to top:
 * model; protocol; the connection core; the engine; the bus adapter, the
 * client and the boot gate; the daemon and the CLI; the program entries.
 */
const MAY_IMPORT: Readonly<Record<string, readonly string[]>> = {
  model: [],
  protocol: ['model'],
  connection: ['protocol', 'model'],
  engine: ['model'],
  bus: ['engine', 'protocol', 'model', 'connection'],
  client: ['protocol', 'model', 'connection'],
  gate: ['engine', 'model', 'protocol'],
  daemon: ['bus', 'engine', 'protocol', 'model', 'connection'],
  cli: ['client', 'protocol', 'model'],
  bin: ['cli', 'daemon'],
};

/** Files of a layer another layer may import: the engine shows the bus its api.ts only. */
const ONLY_VIA: Readonly<Record<string, Readonly<Record<string, readonly string[]>>>> = {
  bus: { engine: ['engine/api.ts'] },
};

/** Packages only some layers may import (the engine imports no D-Bus and no logger transport). */
const PACKAGE_LAYERS: Readonly<Record<string, readonly string[]>> = {
  'dbus-next': ['connection', 'bus'],
  winston: ['daemon'],
};

export interface ImportRef {
  /** The specifier as written. */
  spec: string;
  line: number;
}

/** Every import, export-from and dynamic import() of a TypeScript source, comments ignored. */
export function importsOf(source: string): ImportRef[] {
  // Blank out comments but keep line breaks, so line numbers stay right.
  const text = source
    .replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, ' '))
    .replace(/(^|[^:'"`])\/\/[^\n]*/g, (_m, p: string) => p);
  const refs: ImportRef[] = [];
  const lineAt = (i: number) => text.slice(0, i).split('\n').length;
  const patterns = [
    /(?:^|[\n;])\s*(?:import|export)\s[^;'"`]*?\sfrom\s*['"]([^'"]+)['"]/g,
    /(?:^|[\n;])\s*import\s*['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) {
    for (const m of text.matchAll(re)) refs.push({ spec: m[1]!, line: lineAt(m.index! + m[0].indexOf(m[1]!)) });
  }
  return refs.sort((a, b) => a.line - b.line);
}

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...tsFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out.sort();
}

/** The layer (top folder of service/) of a file, and its path inside service/. */
function placeOf(file: string): { layer: string; inService: string } {
  const inService = relative(SERVICE, file).split(sep).join('/');
  return { layer: inService.split('/')[0]!, inService };
}

/** What is wrong with one import of `file`, or null. */
export function violation(file: string, spec: string): string | null {
  const { layer } = placeOf(file);
  if (!spec.startsWith('.')) {
    const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
    const allowed = PACKAGE_LAYERS[pkg];
    if (allowed && !allowed.includes(layer)) return `${pkg} may be imported only by ${allowed.join(', ')}`;
    return null;
  }
  const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
  const rel = relative(SERVICE, target).split(sep).join('/');
  if (rel.startsWith('..')) return `${layer} imports from outside service/`;
  const to = rel.split('/')[0]!;
  if (to === layer) return null;
  const may = MAY_IMPORT[layer] ?? [];
  if (!may.includes(to)) return `${layer} may import only ${may.length ? may.join(', ') : 'nothing else of service/'}, not ${to}`;
  const via = ONLY_VIA[layer]?.[to];
  if (via && !via.includes(rel)) return `${layer} may import ${to} only through ${via.join(', ')}`;
  return null;
}

test('layers - every folder of service/ with TypeScript in it has a rule', (t) => {
  const layers = new Set(tsFiles(SERVICE).map((f) => placeOf(f).layer));
  const unknown = [...layers].filter((l) => !(l in MAY_IMPORT));
  t.deepEqual(unknown, [], `add a rule to MAY_IMPORT (and docs/architecture.md) for: ${unknown.join(', ')}`);
});

test('layers - no import in service/ goes against the documented direction', (t) => {
  const problems: string[] = [];
  let count = 0;
  for (const file of tsFiles(SERVICE)) {
    for (const ref of importsOf(readFileSync(file, 'utf8'))) {
      count++;
      const why = violation(file, ref.spec);
      if (why) problems.push(`${relative(ROOT, file)}:${ref.line} imports '${ref.spec}': ${why}`);
    }
  }
  t.true(count > 100, `only ${count} imports found: the import reader is broken`);
  t.deepEqual(problems, [], `imports against docs/architecture.md's layers:\n  ${problems.join('\n  ')}`);
});

test('layers - the import reader sees every form and ignores comments', (t) => {
  const src = [
    "import { a } from './a.js';",
    'import type {',
    '  B,',
    "} from '../model/b.js';",
    "export { c } from './c.js';",
    "export * from './d.js';",
    "import './e.js';",
    "const f = await import('./f.js');",
    "// import { g } from '../engine/g.js';",
    "/* import { h } from '../engine/h.js'; */",
    "const url = 'unix:path=/x'; // from '../engine/i.js'",
  ].join('\n');
  t.deepEqual(importsOf(src).map((r) => `${r.line} ${r.spec}`), [
    '1 ./a.js', '4 ../model/b.js', '5 ./c.js', '6 ./d.js', '7 ./e.js', '8 ./f.js',
  ]);
});

test('layers - the rules refuse what the architecture forbids', (t) => {
  const at = (p: string) => join(SERVICE, p);
  t.regex(violation(at('cli/x.ts'), '../engine/engine.js') ?? '', /cli may import only client, protocol, model, not engine/);
  t.regex(violation(at('client/x.ts'), '../bus/members.js') ?? '', /not bus/);
  t.regex(violation(at('engine/x.ts'), '../bus/service.js') ?? '', /engine may import only model, not bus/);
  t.regex(violation(at('model/x.ts'), '../protocol/members.js') ?? '', /nothing else of service/);
  t.regex(violation(at('protocol/x.ts'), 'dbus-next') ?? '', /dbus-next may be imported only by connection, bus/);
  t.regex(violation(at('engine/x.ts'), 'winston') ?? '', /winston may be imported only by daemon/);
  t.regex(violation(at('bus/x.ts'), '../engine/engine.js') ?? '', /only through engine\/api.ts/);
  t.is(violation(at('bus/x.ts'), '../engine/api.js'), null);
  t.is(violation(at('gate/x.ts'), '../engine/state-dir.js'), null);
  t.is(violation(at('daemon/x.ts'), '../engine/engine.js'), null);
  t.is(violation(at('cli/x.ts'), '../client/follow.js'), null);
});
