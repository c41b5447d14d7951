/**
 * The D-Bus introspection format, both ways: generated from the member
 * tables (what Introspect answers) and parsed back into plain data (what the
 * tests compare the interfaces/*.xml files and the live service against, and
 * what a client may use to check a server). Only the subset of XML that
 * introspection uses is understood: elements, attributes, comments, the
 * DOCTYPE and an XML declaration.
 */
import type { InterfaceSpec } from '../protocol/members.js';

export const INTROSPECT_DOCTYPE =
  '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
  + ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">';

export interface IntrospectedArg {
  name: string;
  type: string;
  /** 'in' or 'out' for method arguments; '' for signal arguments. */
  direction: 'in' | 'out' | '';
}

export interface IntrospectedMember {
  name: string;
  args: IntrospectedArg[];
}

export interface IntrospectedProperty {
  name: string;
  type: string;
  access: string;
}

export interface IntrospectedInterface {
  name: string;
  methods: IntrospectedMember[];
  signals: IntrospectedMember[];
  properties: IntrospectedProperty[];
}

export interface IntrospectedNode {
  interfaces: IntrospectedInterface[];
  /** Names of the child nodes, in document order. */
  children: string[];
}

function escapeAttr(v: string): string {
  return v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** An interface table as introspection data (method args: in ones, then out ones). */
export function describeInterface(spec: InterfaceSpec): IntrospectedInterface {
  return {
    name: spec.name,
    methods: spec.methods.map((m) => ({
      name: m.name,
      args: [
        ...m.in.map((a) => ({ name: a.name, type: a.type, direction: 'in' as const })),
        ...m.out.map((a) => ({ name: a.name, type: a.type, direction: 'out' as const })),
      ],
    })),
    signals: spec.signals.map((s) => ({
      name: s.name,
      args: s.args.map((a) => ({ name: a.name, type: a.type, direction: '' as const })),
    })),
    properties: spec.properties.map((p) => ({ name: p.name, type: p.type, access: p.access })),
  };
}

/** The introspection XML of one object: its interfaces and child node names. */
export function introspectXml(interfaces: readonly InterfaceSpec[], children: readonly string[]): string {
  const out: string[] = [INTROSPECT_DOCTYPE, '<node>'];
  for (const spec of interfaces) {
    const d = describeInterface(spec);
    out.push(` <interface name="${escapeAttr(d.name)}">`);
    for (const m of d.methods) {
      if (m.args.length === 0) {
        out.push(`  <method name="${escapeAttr(m.name)}"/>`);
        continue;
      }
      out.push(`  <method name="${escapeAttr(m.name)}">`);
      for (const a of m.args) {
        out.push(`   <arg type="${escapeAttr(a.type)}" name="${escapeAttr(a.name)}" direction="${a.direction}"/>`);
      }
      out.push('  </method>');
    }
    for (const s of d.signals) {
      if (s.args.length === 0) {
        out.push(`  <signal name="${escapeAttr(s.name)}"/>`);
        continue;
      }
      out.push(`  <signal name="${escapeAttr(s.name)}">`);
      for (const a of s.args) out.push(`   <arg type="${escapeAttr(a.type)}" name="${escapeAttr(a.name)}"/>`);
      out.push('  </signal>');
    }
    for (const p of d.properties) {
      out.push(`  <property name="${escapeAttr(p.name)}" type="${escapeAttr(p.type)}" access="${escapeAttr(p.access)}"/>`);
    }
    out.push(' </interface>');
  }
  for (const c of children) out.push(` <node name="${escapeAttr(c)}"/>`);
  out.push('</node>', '');
  return out.join('\n');
}

interface Element {
  tag: string;
  attrs: Record<string, string>;
  children: Element[];
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decodeEntities(v: string): string {
  return v.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (all, ent: string) => {
    if (ent.startsWith('#x')) return String.fromCodePoint(parseInt(ent.slice(2), 16));
    if (ent.startsWith('#')) return String.fromCodePoint(parseInt(ent.slice(1), 10));
    const ch = ENTITIES[ent];
    if (ch === undefined) throw new Error(`unknown XML entity ${all}`);
    return ch;
  });
}

const TOKEN = /<!--[\s\S]*?-->|<!DOCTYPE[^>]*>|<\?[\s\S]*?\?>|<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[\w.:-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|([^<]+)|(<)/g;
const ATTR = /([\w.:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;

function parseElements(xml: string): Element {
  const root: Element = { tag: '#document', attrs: {}, children: [] };
  const stack: Element[] = [root];
  for (const m of xml.matchAll(TOKEN)) {
    const [, close, tag, attrText, selfClose, text, stray] = m;
    if (stray !== undefined) throw new Error(`malformed XML near offset ${m.index}`);
    if (text !== undefined) {
      if (text.trim() !== '') throw new Error(`unexpected text in introspection XML: '${text.trim().slice(0, 40)}'`);
      continue;
    }
    if (tag === undefined) continue; // comment, DOCTYPE, declaration
    const top = stack[stack.length - 1]!;
    if (close === '/') {
      if (top.tag !== tag) throw new Error(`</${tag}> closes <${top.tag}>`);
      stack.pop();
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of (attrText ?? '').matchAll(ATTR)) attrs[a[1]!] = decodeEntities(a[2] ?? a[3] ?? '');
    const el: Element = { tag, attrs, children: [] };
    top.children.push(el);
    if (selfClose !== '/') stack.push(el);
  }
  if (stack.length !== 1) throw new Error(`unclosed <${stack[stack.length - 1]!.tag}>`);
  return root;
}

function required(el: Element, attr: string): string {
  const v = el.attrs[attr];
  if (v === undefined) throw new Error(`<${el.tag}> without ${attr}=`);
  return v;
}

/** Parse introspection XML into plain data; throws on anything malformed. */
export function parseIntrospectionXml(xml: string): IntrospectedNode {
  const doc = parseElements(xml);
  const nodes = doc.children.filter((c) => c.tag === 'node');
  if (nodes.length !== 1 || doc.children.length !== 1) throw new Error('introspection XML must hold exactly one <node>');
  const node = nodes[0]!;
  const result: IntrospectedNode = { interfaces: [], children: [] };
  for (const child of node.children) {
    if (child.tag === 'node') {
      result.children.push(required(child, 'name'));
      continue;
    }
    if (child.tag !== 'interface') throw new Error(`unexpected <${child.tag}> in <node>`);
    const iface: IntrospectedInterface = { name: required(child, 'name'), methods: [], signals: [], properties: [] };
    for (const m of child.children) {
      if (m.tag === 'annotation' || m.tag === 'doc') continue;
      if (m.tag === 'property') {
        iface.properties.push({ name: required(m, 'name'), type: required(m, 'type'), access: required(m, 'access') });
        continue;
      }
      if (m.tag !== 'method' && m.tag !== 'signal') throw new Error(`unexpected <${m.tag}> in <interface>`);
      const member: IntrospectedMember = { name: required(m, 'name'), args: [] };
      for (const a of m.children) {
        if (a.tag === 'annotation' || a.tag === 'doc') continue;
        if (a.tag !== 'arg') throw new Error(`unexpected <${a.tag}> in <${m.tag}>`);
        const dir = a.attrs.direction;
        const direction = m.tag === 'signal' ? '' : (dir === 'out' ? 'out' : 'in');
        if (m.tag === 'signal' && dir !== undefined && dir !== 'out') {
          throw new Error(`signal ${member.name}: an argument with direction="${dir}"`);
        }
        if (dir !== undefined && dir !== 'in' && dir !== 'out') throw new Error(`bad direction "${dir}"`);
        member.args.push({ name: a.attrs.name ?? '', type: required(a, 'type'), direction });
      }
      (m.tag === 'method' ? iface.methods : iface.signals).push(member);
    }
    result.interfaces.push(iface);
  }
  return result;
}
