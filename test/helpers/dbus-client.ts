/**
 * A small D-Bus client for tests, on the project's connection core
 * (service/connection/core.ts: connect and call with a timeout, no proxy
 * objects, which leak match rules), plus AddMatch and the 'message' event.
 * It runs in the test process, so as root; calls as another uid go through
 * busctl (busctl.ts) or runNodeAs (as-user.ts).
 */
import type { ExecutionContext } from 'ava';
import type { MessageBus } from 'dbus-next';
import {
  CoreConnection, DBusError, Message, MessageType, openMessageBus, type ConnectError, type SignalFields,
} from '../../service/connection/core.js';
import { Variant, unwrapVariants } from '../../service/connection/variants.js';

export { DBusError, Variant, unwrapVariants };

/**
 * Well-known name, root path and interface names of the service under test,
 * written out rather than imported from service/protocol/, so that the tests
 * check the public names themselves.
 */
export const SERVICE = 'org.containers.bootc.PreStage';
export const MANAGER_PATH = '/org/containers/bootc/PreStage';
export const MANAGER_IFACE = 'org.containers.bootc.PreStage';
export const TRANSACTION_IFACE = 'org.containers.bootc.PreStage.Transaction';
export const PROPERTIES_IFACE = 'org.freedesktop.DBus.Properties';

const DBUS_NAME = 'org.freedesktop.DBus';
const DBUS_PATH = '/org/freedesktop/DBus';

/** A call that got no reply in time (the bus's own timeout is 25 s or more). */
export class CallTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what}: no reply within ${ms} ms`);
    this.name = 'CallTimeoutError';
  }
}

export interface CallOptions {
  /** Default 10 s. */
  timeoutMs?: number;
  /** Message flags (e.g. MessageFlag.NO_AUTO_START). */
  flags?: number;
}

/** Fields of a signal match; a field left out matches anything. */
export interface SignalMatch {
  /** A unique name is also checked here; a well-known one only by the bus. */
  sender?: string;
  path?: string;
  /** Match this path and every path below it. */
  pathNamespace?: string;
  interface?: string;
  member?: string;
  /** First body argument, a string. */
  arg0?: string;
}

/** One received signal. */
export interface RecordedSignal extends SignalFields {
  /** Body with variants unwrapped. */
  body: unknown[];
  /** Body as dbus-next delivered it (Variants kept, for signature checks). */
  rawBody: unknown[];
}

export interface SignalRecorder {
  /** Every matching signal so far, in arrival order. */
  readonly signals: RecordedSignal[];
  /**
   * Resolve with the first recorded signal (past or future) for which
   * `pred` holds; reject after `timeoutMs` (default 10 s) listing what came.
   */
  waitFor(pred: (s: RecordedSignal) => boolean, timeoutMs?: number): Promise<RecordedSignal>;
  /** Remove the match rule and stop recording. */
  stop(): Promise<void>;
}

function matchRule(m: SignalMatch): string {
  const q = (v: string) => `'${v.replace(/'/g, "'\\''")}'`;
  const parts = ["type='signal'"];
  if (m.sender) parts.push(`sender=${q(m.sender)}`);
  if (m.path) parts.push(`path=${q(m.path)}`);
  if (m.pathNamespace) parts.push(`path_namespace=${q(m.pathNamespace)}`);
  if (m.interface) parts.push(`interface=${q(m.interface)}`);
  if (m.member) parts.push(`member=${q(m.member)}`);
  if (m.arg0 !== undefined) parts.push(`arg0=${q(m.arg0)}`);
  return parts.join(',');
}

function matches(m: SignalMatch, msg: Message): boolean {
  if (m.sender?.startsWith(':') && msg.sender !== m.sender) return false;
  if (m.path && msg.path !== m.path) return false;
  if (m.pathNamespace && m.pathNamespace !== '/' && msg.path !== m.pathNamespace &&
      !msg.path.startsWith(`${m.pathNamespace}/`)) return false;
  if (m.interface && msg.interface !== m.interface) return false;
  if (m.member && msg.member !== m.member) return false;
  if (m.arg0 !== undefined && msg.body[0] !== m.arg0) return false;
  return true;
}

/** A connection to a test bus. */
export class TestClient {
  readonly bus: MessageBus;
  private readonly core: CoreConnection;
  private closed = false;
  /** Set when the connection failed after connecting (the bus went away). */
  private broken = false;

  private constructor(bus: MessageBus) {
    this.bus = bus;
    // A later connection error must not become an uncaught exception in ava.
    this.core = new CoreConnection(bus, () => { this.broken = true; });
  }

  /** Connect to `address` (unix:path=...) and wait for the Hello reply. */
  static async connect(address: string, timeoutMs = 10_000): Promise<TestClient> {
    try {
      return new TestClient(await openMessageBus(address, timeoutMs));
    } catch (e) {
      const err = e as ConnectError;
      if (err.kind === 'timeout') throw new Error(`no connection to ${address} within ${timeoutMs} ms`);
      throw new Error(`cannot connect to ${address}: ${err.message}`);
    }
  }

  /** This connection's unique name (":1.N"). */
  get uniqueName(): string {
    return this.core.uniqueName;
  }

  /** Send a method call; resolve with the whole reply Message. */
  async callMessage(
    dest: string, objPath: string, iface: string, member: string,
    signature = '', body: unknown[] = [], opts: CallOptions = {},
  ): Promise<Message> {
    const ms = opts.timeoutMs ?? 10_000;
    const msg = new Message({
      destination: dest, path: objPath, interface: iface, member, signature, body: body as any[],
      ...(opts.flags !== undefined ? { flags: opts.flags } : {}),
    });
    const reply = await this.core.call(msg, ms,
      () => new CallTimeoutError(`${iface}.${member} on ${dest} ${objPath}`, ms));
    if (!reply) throw new Error(`${iface}.${member}: no reply message`);
    return reply;
  }

  /**
   * Call a method and resolve with the reply body (Variants kept). A D-Bus
   * error rejects with dbus-next's DBusError (`.type` is the error name,
   * `.text` the message).
   */
  async call(
    dest: string, objPath: string, iface: string, member: string,
    signature = '', body: unknown[] = [], opts: CallOptions = {},
  ): Promise<any[]> {
    return (await this.callMessage(dest, objPath, iface, member, signature, body, opts)).body;
  }

  /** Properties.Get, unwrapped. */
  async getProperty(dest: string, objPath: string, iface: string, name: string, opts: CallOptions = {}): Promise<unknown> {
    const [v] = await this.call(dest, objPath, PROPERTIES_IFACE, 'Get', 'ss', [iface, name], opts);
    return unwrapVariants(v);
  }

  /** Properties.GetAll, unwrapped into a plain object. */
  async getAllProperties(dest: string, objPath: string, iface: string, opts: CallOptions = {}): Promise<Record<string, unknown>> {
    const [v] = await this.call(dest, objPath, PROPERTIES_IFACE, 'GetAll', 's', [iface], opts);
    return unwrapVariants(v) as Record<string, unknown>;
  }

  /** Properties.Set (to prove read-only properties refuse it). */
  async setProperty(
    dest: string, objPath: string, iface: string, name: string, value: Variant, opts: CallOptions = {},
  ): Promise<void> {
    await this.call(dest, objPath, PROPERTIES_IFACE, 'Set', 'ssv', [iface, name, value], opts);
  }

  /** Introspectable.Introspect: the XML. */
  async introspect(dest: string, objPath: string, opts: CallOptions = {}): Promise<string> {
    const [xml] = await this.call(dest, objPath, 'org.freedesktop.DBus.Introspectable', 'Introspect', '', [], opts);
    return xml as string;
  }

  /** The unique name owning `name`, or null. */
  async nameOwner(name: string): Promise<string | null> {
    try {
      const [owner] = await this.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, 'GetNameOwner', 's', [name]);
      return owner as string;
    } catch (e) {
      if (e instanceof DBusError && e.type === 'org.freedesktop.DBus.Error.NameHasNoOwner') return null;
      throw e;
    }
  }

  /** Resolve with the owner of `name` once it has one (now or later). */
  async waitForName(name: string, timeoutMs = 10_000): Promise<string> {
    const rec = await this.collectSignals({
      sender: DBUS_NAME, path: DBUS_PATH, interface: DBUS_NAME, member: 'NameOwnerChanged', arg0: name,
    });
    try {
      // Asked after the match is in place, so an owner appearing in
      // between is seen by one or the other.
      const now = await this.nameOwner(name);
      if (now) return now;
      const s = await rec.waitFor((sig) => sig.body[2] !== '', timeoutMs);
      return s.body[2] as string;
    } finally {
      await rec.stop();
    }
  }

  /**
   * Record signals matching `match` from now on. The match rule is in
   * place when this resolves, so nothing sent after it is missed.
   */
  async collectSignals(match: SignalMatch): Promise<SignalRecorder> {
    const rule = matchRule(match);
    const signals: RecordedSignal[] = [];
    const waiters = new Set<() => void>();
    const onMessage = (msg: Message) => {
      if (msg.type !== MessageType.SIGNAL || !matches(match, msg)) return;
      signals.push({
        sender: msg.sender, path: msg.path, interface: msg.interface, member: msg.member,
        signature: msg.signature ?? '', body: msg.body.map(unwrapVariants), rawBody: msg.body,
      });
      for (const w of waiters) w();
    };
    this.bus.on('message', onMessage);
    try {
      await this.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, 'AddMatch', 's', [rule]);
    } catch (e) {
      this.bus.off('message', onMessage);
      throw e;
    }
    let stopped = false;
    return {
      signals,
      waitFor: (pred, timeoutMs = 10_000) => new Promise<RecordedSignal>((resolve, reject) => {
        const check = () => {
          const hit = signals.find(pred);
          if (hit) { done(); resolve(hit); }
        };
        const timer = setTimeout(() => {
          done();
          const seen = signals.map((s) => `${s.member}${JSON.stringify(s.body, bigintSafe)}`).join('\n  ');
          reject(new Error(`no signal matching ${rule} and the predicate within ${timeoutMs} ms; received:\n  ${seen}`));
        }, timeoutMs);
        const done = () => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
        check();
      }),
      stop: async () => {
        if (stopped) return;
        stopped = true;
        this.bus.off('message', onMessage);
        if (!this.closed && !this.broken) {
          await this.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, 'RemoveMatch', 's', [rule]).catch(() => undefined);
        }
      },
    };
  }

  /** Close the connection. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.core.disconnect();
  }
}

function bigintSafe(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `${v}n` : v;
}

/** Connect a TestClient (the caller closes it). */
export function connectClient(address: string): Promise<TestClient> {
  return TestClient.connect(address);
}

/** Connect a TestClient closed in the test's teardown. */
export async function withClient(t: ExecutionContext, address: string): Promise<TestClient> {
  const client = await TestClient.connect(address);
  t.teardown(() => client.close());
  return client;
}
