/**
 * The introspection XML files under interfaces/ are the documented contract;
 * members.ts is what the service dispatches. They must say the same thing,
 * exactly: names, argument names, types, directions, property types and
 * access, signal arguments, and the documented option keys.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DBUS_ERROR, ERROR_NAMES } from '../../service/protocol/errors.js';
import {
  INTROSPECT_DOCTYPE, describeInterface, introspectXml, parseIntrospectionXml,
} from '../../service/bus/introspection.js';
import {
  MANAGER, STANDARD_INTERFACES, TRANSACTION, type InterfaceSpec,
} from '../../service/protocol/members.js';
import {
  HOOK_DEFINITION, HOOK_ENTRY_EXTRA, LOG_OPTIONS, PHASE_OPTIONS, RECONCILE_OPTIONS, REGISTER_OPTIONS,
  START_OPTIONS,
} from '../../service/protocol/options.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const xmlFile = (spec: InterfaceSpec) => path.join(ROOT, 'interfaces', `${spec.name}.xml`);
const read = (spec: InterfaceSpec) => readFileSync(xmlFile(spec), 'utf8');

for (const spec of [MANAGER, TRANSACTION] as InterfaceSpec[]) {
  test(`${spec.name}.xml - declares exactly the member table`, (t) => {
    const parsed = parseIntrospectionXml(read(spec));
    t.deepEqual(parsed.interfaces, [describeInterface(spec)]);
    t.deepEqual(parsed.children, []);
  });

  test(`${spec.name}.xml - starts with the introspection DOCTYPE`, (t) => {
    t.true(read(spec).startsWith(INTROSPECT_DOCTYPE));
  });

  test(`${spec.name}.xml - every member has a comment naming it and each argument`, (t) => {
    const docs = memberDocs(read(spec));
    const members = [...spec.methods, ...spec.signals, ...spec.properties];
    t.deepEqual([...docs.keys()].sort(), members.map((m) => m.name).sort());
    for (const m of spec.methods) {
      const doc = docs.get(m.name)!;
      t.regex(doc, new RegExp(`^\\s*${m.name}:`), `${m.name}: comment starts with its name`);
      t.deepEqual(docArgs(doc), [...m.in, ...m.out].map((a) => a.name), `${m.name}: one @line per argument, in order`);
      t.true(doc.includes('Possible errors:'), `${m.name}: lists possible errors`);
      t.regex(doc, /Security: /, `${m.name}: says who may call it`);
      t.is(/Security: root only/.test(doc), m.privileged, `${m.name}: Security matches the privileged flag`);
    }
    for (const s of spec.signals) {
      const doc = docs.get(s.name)!;
      t.regex(doc, new RegExp(`^\\s*${s.name}:`));
      t.deepEqual(docArgs(doc), s.args.map((a) => a.name), `${s.name}: one @line per argument`);
    }
    for (const p of spec.properties) t.regex(docs.get(p.name)!, new RegExp(`^\\s*${p.name}:`));
  });

  test(`${spec.name}.xml - every error name it mentions exists`, (t) => {
    const known = new Set<string>([...Object.values(ERROR_NAMES), ...Object.values(DBUS_ERROR)]);
    const mentioned = read(spec).match(/org\.(?:containers\.bootc\.PreStage|freedesktop\.DBus)\.Error\.[A-Za-z]+/g) ?? [];
    t.true(mentioned.length > 0);
    for (const name of mentioned) t.true(known.has(name), `${name} is not an error this service sends`);
  });
}

test('option keys documented in the XML are exactly those the decoders accept', (t) => {
  const manager = memberDocs(read(MANAGER));
  const transaction = memberDocs(read(TRANSACTION));
  const keys = (o: Record<string, string>) => Object.entries(o).map(([k, ty]) => `${k}:${ty}`).sort();
  t.deepEqual(docKeys(manager.get('StartPreStage')!), keys(START_OPTIONS));
  t.deepEqual(docKeys(manager.get('CommitPreStage')!), keys(PHASE_OPTIONS));
  t.deepEqual(docKeys(manager.get('AbortPreStage')!), keys(PHASE_OPTIONS));
  t.deepEqual(docKeys(manager.get('Reconcile')!), keys(RECONCILE_OPTIONS));
  t.deepEqual(docKeys(manager.get('RegisterHook')!), keys({ ...HOOK_DEFINITION, ...REGISTER_OPTIONS }));
  t.deepEqual(docKeys(manager.get('ListHooks')!), keys(HOOK_ENTRY_EXTRA));
  t.deepEqual(docKeys(transaction.get('GetLog')!), keys(LOG_OPTIONS));
});

test('generated introspection parses back to the member tables, with child nodes', (t) => {
  const xml = introspectXml([...STANDARD_INTERFACES, MANAGER], ['Transaction']);
  t.true(xml.startsWith(INTROSPECT_DOCTYPE));
  const parsed = parseIntrospectionXml(xml);
  t.deepEqual(parsed.interfaces, [...STANDARD_INTERFACES, MANAGER].map(describeInterface));
  t.deepEqual(parsed.children, ['Transaction']);
});

test('the parser refuses malformed introspection', (t) => {
  t.throws(() => parseIntrospectionXml('<node><interface name="a"></node>'));
  t.throws(() => parseIntrospectionXml('<node><method name="x"/></node>'));
  t.throws(() => parseIntrospectionXml('<node>text</node>'));
  t.throws(() => parseIntrospectionXml('<node/><node/>'));
  t.throws(() => parseIntrospectionXml('<node><interface name="a"><property name="p" type="s"/></interface></node>'));
});

/** Member name -> the text of the comment directly above its element. */
function memberDocs(xml: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of xml.matchAll(/<!--((?:(?!-->)[\s\S])*)-->\s*<(method|signal|property) name="([^"]+)"/g)) {
    out.set(m[3]!, m[1]!);
  }
  return out;
}

/** The @argument names of a member comment, in order. */
function docArgs(doc: string): string[] {
  return [...doc.matchAll(/^\s*@([A-Za-z_]+):/gm)].map((m) => m[1]!);
}

/** `'key' (type 'T')` entries of a comment, as key:T, sorted. */
function docKeys(doc: string): string[] {
  return [...doc.matchAll(/'([A-Za-z-]+)' \(type '([^']+)'\)/g)].map((m) => `${m[1]}:${m[2]}`).sort();
}
