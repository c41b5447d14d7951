/**
 * What the daemon puts on the bus: a `dbus-monitor --pcap` of every message
 * the service sends (signals, replies, errors), counted and sized per
 * member. dbus-monitor is an independent observer (the bus daemon copies
 * each message to it as routed), so the numbers do not depend on the
 * daemon's own bookkeeping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { SERVICE, track } from './env.js';

export interface Traffic {
  messages: number;
  bytes: number;
  /** Per member (signals), 'method_return' or 'error': count and bytes. */
  byKind: Map<string, { messages: number; bytes: number }>;
}

export interface TrafficMonitor {
  /** Stop monitoring and count what was seen. */
  stop(): Promise<Traffic>;
}

/** Start monitoring what SERVICE sends on the bus at `address`; resolves once the monitor is in place. */
export async function monitorService(address: string): Promise<TrafficMonitor> {
  const child: ChildProcess = track(spawn('dbus-monitor', ['--address', address, '--pcap', `sender='${SERVICE}'`],
    { stdio: ['ignore', 'pipe', 'pipe'] }));
  const chunks: Buffer[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dbus-monitor wrote no pcap header in 10 s: ${stderr}`)), 10_000);
    child.stdout!.on('data', (d: Buffer) => {
      chunks.push(d);
      if (chunks.length === 1) { clearTimeout(timer); resolve(); }
    });
    child.once('exit', (c) => { clearTimeout(timer); reject(new Error(`dbus-monitor exited (${c}): ${stderr}`)); });
  });
  return {
    async stop() {
      // dbus-monitor writes each message as it gets it; give the last ones a moment.
      await new Promise((r) => setTimeout(r, 200));
      child.kill('SIGINT');
      await exited;
      return countPcap(Buffer.concat(chunks));
    },
  };
}

/** Count the D-Bus messages of a pcap stream (DLT_DBUS) by member. */
export function countPcap(buf: Buffer): Traffic {
  const traffic: Traffic = { messages: 0, bytes: 0, byKind: new Map() };
  if (buf.length < 24) return traffic;
  const le = buf.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  for (let off = 24; off + 16 <= buf.length;) {
    const len = u32(off + 8);
    const start = off + 16;
    if (start + len > buf.length) break;
    const kind = messageKind(buf.subarray(start, start + len));
    off = start + len;
    // The bus daemon's own messages to the monitor (NameAcquired, NameLost).
    if (kind === null) continue;
    traffic.messages += 1;
    traffic.bytes += len;
    const k = traffic.byKind.get(kind) ?? { messages: 0, bytes: 0 };
    k.messages += 1;
    k.bytes += len;
    traffic.byKind.set(kind, k);
  }
  return traffic;
}

/** A message's member (signals and calls) or type name; null for the bus daemon's own. */
function messageKind(m: Buffer): string | null {
  const type = m[1];
  let member: string | null = null;
  let sender = '';
  const little = m[0] === 0x6c; // 'l'
  const u32 = (o: number) => (little ? m.readUInt32LE(o) : m.readUInt32BE(o));
  const end = 16 + u32(12);
  let o = 16;
  const align = (n: number) => { o = (o + n - 1) & ~(n - 1); };
  while (o < end) {
    align(8);
    const code = m[o]!;
    const sigLen = m[o + 1]!;
    const sig = m.toString('latin1', o + 2, o + 2 + sigLen);
    o += 3 + sigLen;
    if (sig === 's' || sig === 'o') {
      align(4);
      const n = u32(o);
      if (code === 3) member = m.toString('utf8', o + 4, o + 4 + n);
      if (code === 7) sender = m.toString('utf8', o + 4, o + 4 + n);
      o += 4 + n + 1;
    } else if (sig === 'g') {
      o += 1 + m[o]! + 1;
    } else if (sig === 'u') {
      align(4);
      o += 4;
    } else {
      break;
    }
  }
  if (sender === 'org.freedesktop.DBus') return null;
  if (type === 2) return 'method_return';
  if (type === 3) return 'error';
  return member ?? (type === 4 ? 'signal' : 'method_call');
}

/** "PropertiesChanged 203 / 1.21 MB, HookFinished 200 / 41 kB, ..." largest first. */
export function trafficText(t: Traffic, perHook = 0): string {
  const kb = (b: number) => (b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : `${(b / 1e3).toFixed(1)} kB`);
  const parts = [...t.byKind.entries()].sort((a, b) => b[1].bytes - a[1].bytes)
    .map(([k, v]) => `${k} ${v.messages} / ${kb(v.bytes)}`);
  const per = perHook > 0 ? ` (${(t.messages / perHook).toFixed(1)} messages, ${kb(t.bytes / perHook)} per hook)` : '';
  return `${t.messages} messages, ${kb(t.bytes)}${per}: ${parts.join(', ')}`;
}
