/**
 * Our own object dispatcher. dbus-next's `Interface` classes are not used
 * (docs/platform-notes.md "dbus-next: known bugs and how to live with them":
 * property Set assigns after refusing, introspection loses
 * argument names, handlers cannot see the caller); instead one raw method
 * handler takes every METHOD_CALL on the connection and answers it from
 * the member tables in service/protocol/members.ts:
 *
 * - the standard Peer, Introspectable and Properties interfaces on every
 *   exported object and on each of its ancestors (so `busctl tree` works);
 * - our methods, after an exact signature check and, for privileged
 *   members, the caller's authorization (caller-authorization.ts: uid 0
 *   from the bus's own credentials, or polkit);
 * - every thrown error mapped through error-reply.ts: callers see a named
 *   error and a short message, never a stack trace.
 *
 * The daemon's connection belongs to this service alone, so calls to paths
 * that are not ours are answered here too (UnknownObject) rather than left
 * to dbus-next's fallback, which ignores NO_REPLY_EXPECTED and can leak
 * stack traces.
 *
 * Nothing here throws into dbus-next: an exception escaping a method
 * handler would be sent to the caller with its stack by the library.
 */
import { readFileSync } from 'node:fs';
import { Message, MessageFlag, Variant } from 'dbus-next';
import type { Logger } from '../model/logger.js';
import { TurnQueue } from '../model/turn-queue.js';
import { ALLOW_INTERACTIVE_AUTHORIZATION, CallerAuthorizer, type CallAuthorizer } from './caller-authorization.js';
import type { BusConnection } from './connection.js';
import { toBusError } from './error-reply.js';
import { DBUS_ERROR } from '../protocol/errors.js';
import { introspectXml } from './introspection.js';
import {
  INTROSPECTABLE, PEER, PROPERTIES, SERVICE_INTERFACES, STANDARD_INTERFACES,
  findMethod, findProperty, signatureOf,
  type InterfaceSpec, type MethodName, type MethodSpec, type PropertyName,
} from '../protocol/members.js';

/** One incoming call, as a handler sees it. */
export interface MethodCall {
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  /** The body, already checked against the member's input signature. */
  readonly args: readonly unknown[];
  /** The caller's unique name. */
  readonly sender: string;
  /** True once a reply or an error has been sent (or suppressed by NO_REPLY_EXPECTED). */
  readonly replied: boolean;
  /**
   * Send the method return now, with the member's output signature. Use it
   * when the reply must leave before something else happens (StartPreStage
   * replies before any signal of its transaction); otherwise return the body.
   */
  reply(body: unknown[]): void;
}

/**
 * Handles one method. Returns the reply body (or nothing for a member
 * without output), or calls `call.reply` itself; a throw or rejection
 * becomes the mapped error reply.
 */
export type MethodHandler = (call: MethodCall) => unknown[] | void | Promise<unknown[] | void>;

/** One interface implemented by an exported object. */
export interface InterfaceImpl<T extends InterfaceSpec = InterfaceSpec> {
  readonly spec: T;
  /** One handler per method of the table: a missing one is a compile error. */
  readonly methods: { readonly [K in MethodName<T>]: MethodHandler };
  /**
   * The current value of every property, in the JS form dbus-next marshals
   * for its type (BigInt for 't'). Called on Get/GetAll; must be complete.
   */
  properties(): { readonly [K in PropertyName<T>]: unknown };
}

export interface ExportedObject {
  readonly path: string;
  readonly interfaces: readonly InterfaceImpl[];
}

/** Where bus objects send their signals; never throws. */
export interface SignalEmitter {
  /** Returns false when the signal could not be sent (closed bus, bad body). */
  emitSignal(path: string, iface: string, member: string, signature: string, body: unknown[]): boolean;
  /**
   * org.freedesktop.DBus.Properties.PropertiesChanged for `changed` (values
   * in JS form; each wrapped with its type from the member table).
   */
  emitPropertiesChanged(path: string, iface: string, changed: Record<string, unknown>): boolean;
}

/** What the bus objects need from the object server. */
export interface ObjectRegistry extends SignalEmitter {
  exportObject(obj: ExportedObject): void;
  unexportObject(path: string): boolean;
  isExported(path: string): boolean;
}

export interface ObjectServerOptions {
  /** Files tried in order for Peer.GetMachineId. */
  machineIdFiles?: readonly string[];
  /** Who may call privileged members. Default: root, or whom polkit authorizes on this bus. */
  authorizer?: CallAuthorizer;
}

const NO_REPLY_EXPECTED = MessageFlag.NO_REPLY_EXPECTED as unknown as number;
const MACHINE_ID_FILES = ['/etc/machine-id', '/var/lib/dbus/machine-id'];

/** dbus-next's typings declare newError's first parameter as a string; it is the call. */
function errorReply(call: Message, name: string, text: string): Message {
  return (Message.newError as unknown as (m: Message, n: string, t: string) => Message)(call, name, text);
}

/** An error reply decided by the dispatcher itself. */
class ReplyError extends Error {
  constructor(readonly errorName: string, message: string) {
    super(message);
  }
}

class Call implements MethodCall {
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly args: readonly unknown[];
  readonly sender: string;
  private done: boolean;

  constructor(
    private readonly server: ObjectServer,
    private readonly msg: Message,
    iface: string,
    private readonly method: MethodSpec | null,
    private readonly noReply: boolean,
  ) {
    this.path = msg.path;
    this.interface = iface;
    this.member = msg.member;
    this.args = msg.body;
    this.sender = msg.sender;
    this.done = false;
  }

  get replied(): boolean {
    return this.done;
  }

  get what(): string {
    return `${this.interface}.${this.member}`;
  }

  reply(body: unknown[]): void {
    if (this.done) {
      this.server.log.error(`${this.what}: a second reply was dropped`, { path: this.path });
      return;
    }
    this.done = true;
    if (this.noReply) return;
    const signature = this.method ? signatureOf(this.method.out) : '';
    try {
      this.server.sendRaw(Message.newMethodReturn(this.msg, signature, body));
    } catch (e) {
      if (this.server.closedConnection()) return;
      // The body did not marshal: a bug in a handler. The caller still
      // gets an answer, and the log gets the details.
      this.server.log.error(`${this.what}: reply did not marshal as '${signature}': ${(e as Error).message}`,
        { path: this.path });
      this.sendError(toBusError(new Error('the reply could not be encoded'), this.what));
    }
  }

  fail(e: unknown): void {
    if (this.done) {
      this.server.log.error(`${this.what}: failed after replying: ${(e as Error)?.message ?? String(e)}`,
        { path: this.path });
      return;
    }
    this.done = true;
    if (e instanceof ReplyError) {
      this.sendError({ name: e.errorName, message: e.message });
      return;
    }
    const mapped = toBusError(e, this.what);
    if (mapped.internal) {
      this.server.log.error(`${this.what} failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`,
        { path: this.path, sender: this.sender });
    } else {
      this.server.log.debug(`${this.what} -> ${mapped.name}: ${mapped.message}`, { path: this.path });
    }
    this.sendError(mapped);
  }

  private sendError(err: { name: string; message: string }): void {
    if (this.noReply) return;
    try {
      this.server.sendRaw(errorReply(this.msg, err.name, err.message));
    } catch (e) {
      if (!this.server.closedConnection()) {
        this.server.log.error(`${this.what}: cannot send error reply: ${(e as Error).message}`);
      }
    }
  }
}

/** A node of the object tree: an exported object, or an ancestor of one. */
interface Node {
  object: ExportedObject | null;
  children: string[];
}

/** A signal emitted and not yet marshalled (ObjectServer.emitSignal). */
interface QueuedSignal { path: string; iface: string; member: string; signature: string; body: unknown[] }

export class ObjectServer implements ObjectRegistry {
  readonly log: Logger;
  private readonly objects = new Map<string, ExportedObject>();
  private readonly removeHandler: () => void;
  private readonly machineIdFiles: readonly string[];
  private readonly authorizer: CallAuthorizer;
  private machineId: string | null = null;
  private closedLogged = false;
  private stopped = false;
  /** Signals emitted and not yet sent (emitSignal). */
  private readonly queued = new TurnQueue<QueuedSignal>((signals) => this.sendSignals(signals));

  constructor(private readonly conn: BusConnection, logger: Logger, opts: ObjectServerOptions = {}) {
    this.log = logger;
    this.machineIdFiles = opts.machineIdFiles ?? MACHINE_ID_FILES;
    this.authorizer = opts.authorizer ?? new CallerAuthorizer(conn);
    this.removeHandler = conn.addMethodHandler((msg) => this.onMethodCall(msg));
  }

  exportObject(obj: ExportedObject): void {
    if (this.objects.has(obj.path)) throw new Error(`object ${obj.path} is already exported`);
    this.objects.set(obj.path, obj);
  }

  unexportObject(path: string): boolean {
    return this.objects.delete(path);
  }

  isExported(path: string): boolean {
    return this.objects.has(path);
  }

  /** Paths of every exported object. */
  exportedPaths(): string[] {
    return [...this.objects.keys()];
  }

  /** Stop answering: calls then fall to dbus-next (nothing else is exported). */
  close(): void {
    if (this.stopped) return;
    this.flushSignals();
    this.stopped = true;
    this.removeHandler();
    this.authorizer.close();
    this.objects.clear();
  }

  closedConnection(): boolean {
    return this.conn.closed;
  }

  /** Send on the connection, after the signals queued before it; throws like BusConnection.send. */
  sendRaw(msg: Message): void {
    this.flushSignals();
    this.conn.send(msg);
  }

  /**
   * Queue a signal; it is marshalled and sent at the end of this turn of
   * the event loop (setImmediate), or before the next reply, whichever
   * comes first, so the wire keeps the order of every emit and reply.
   * Marshalling is most of a signal's cost (a transaction's
   * PropertiesChanged carries the whole Hooks array): done later, it runs
   * while the engine waits for a step's start instead of delaying it.
   * False when the connection is closed (nothing is queued then). A body
   * that does not marshal is logged and dropped when sent.
   */
  emitSignal(path: string, iface: string, member: string, signature: string, body: unknown[]): boolean {
    if (this.conn.closed) {
      this.noteClosed();
      return false;
    }
    this.queued.push({ path, iface, member, signature, body });
    return true;
  }

  /** Send every queued signal now, in order. */
  flushSignals(): void {
    this.queued.flush();
  }

  private sendSignals(signals: QueuedSignal[]): void {
    for (const { path, iface, member, signature, body } of signals) {
      if (this.conn.closed) {
        this.noteClosed();
        return;
      }
      try {
        this.conn.send(Message.newSignal(path, iface, member, signature, body));
      } catch (e) {
        if (this.conn.closed) this.noteClosed();
        else this.log.error(`cannot emit ${iface}.${member} on ${path}: ${(e as Error).message}`);
      }
    }
  }

  emitPropertiesChanged(path: string, iface: string, changed: Record<string, unknown>): boolean {
    const spec = this.objects.get(path)?.interfaces.find((i) => i.spec.name === iface)?.spec
      ?? SERVICE_INTERFACES.find((s) => s.name === iface);
    if (!spec) {
      this.log.error(`PropertiesChanged for unknown interface ${iface} on ${path}`);
      return false;
    }
    const dict: Record<string, Variant> = {};
    for (const [name, value] of Object.entries(changed)) {
      const prop = findProperty(spec, name);
      if (!prop) {
        this.log.error(`PropertiesChanged: ${iface} has no property ${name}`);
        continue;
      }
      dict[name] = new Variant(prop.type, value);
    }
    if (Object.keys(dict).length === 0) return true;
    return this.emitSignal(path, PROPERTIES.name, 'PropertiesChanged', 'sa{sv}as', [iface, dict, []]);
  }

  private noteClosed(): void {
    if (this.closedLogged) return;
    this.closedLogged = true;
    this.log.warn('the bus connection is closed: signals are no longer sent');
  }

  // ---- dispatch ------------------------------------------------------------------

  private onMethodCall(msg: Message): boolean {
    try {
      this.dispatch(msg);
    } catch (e) {
      // Only a bug gets here (dispatch catches handler errors itself).
      this.log.error(`dispatching ${msg.interface ?? ''}.${msg.member} failed: ${(e as Error).stack ?? String(e)}`);
      if (!((msg.flags & NO_REPLY_EXPECTED) !== 0)) {
        try {
          this.sendRaw(errorReply(msg, toBusError(e, msg.member).name, 'internal error while dispatching'));
        } catch { /* closed */ }
      }
    }
    return true;
  }

  private nodeAt(path: string): Node | null {
    const object = this.objects.get(path) ?? null;
    const children = new Set<string>();
    const prefix = path === '/' ? '/' : `${path}/`;
    for (const p of this.objects.keys()) {
      if (p !== path && p.startsWith(prefix)) children.add(p.slice(prefix.length).split('/', 1)[0]!);
    }
    if (!object && children.size === 0) return null;
    return { object, children: [...children].sort() };
  }

  private dispatch(msg: Message): void {
    const noReply = (msg.flags & NO_REPLY_EXPECTED) !== 0;
    const ifaceName = msg.interface ?? '';
    const node = this.nodeAt(msg.path);
    // Peer is answered on every path: it is about the connection, not an object.
    const impls: InterfaceImpl[] = node
      ? [...this.standardImpls(msg.path, node), ...(node.object?.interfaces ?? [])]
      : [this.peerImpl()];

    let impl: InterfaceImpl | undefined;
    if (ifaceName !== '') {
      impl = impls.find((i) => i.spec.name === ifaceName);
    } else {
      impl = impls.find((i) => findMethod(i.spec, msg.member) !== undefined);
    }
    const method = impl ? findMethod(impl.spec, msg.member) ?? null : null;
    const call = new Call(this, msg, impl?.spec.name ?? ifaceName, method, noReply);

    if (!node && !(impl && method)) {
      call.fail(new ReplyError(DBUS_ERROR.UnknownObject, `Unknown object '${msg.path}'`));
      return;
    }
    if (!impl) {
      call.fail(ifaceName !== ''
        ? new ReplyError(DBUS_ERROR.UnknownInterface, `Unknown interface '${ifaceName}' on object '${msg.path}'`)
        : new ReplyError(DBUS_ERROR.UnknownMethod, `Unknown method '${msg.member}' on object '${msg.path}'`));
      return;
    }
    if (!method) {
      call.fail(new ReplyError(DBUS_ERROR.UnknownMethod,
        `Unknown method '${msg.member}' on interface '${impl.spec.name}'`));
      return;
    }
    const expected = signatureOf(method.in);
    if ((msg.signature ?? '') !== expected) {
      call.fail(new ReplyError(DBUS_ERROR.InvalidArgs,
        `Invalid arguments for ${impl.spec.name}.${method.name}: expected signature '${expected}', `
        + `got '${msg.signature ?? ''}'`));
      return;
    }
    const handler = (impl.methods as Record<string, MethodHandler>)[method.name];
    if (!handler) {
      call.fail(new Error(`no handler for ${impl.spec.name}.${method.name}`));
      return;
    }
    if (!method.privileged) {
      this.invoke(call, method, handler);
      return;
    }
    this.authorizer.authorize({
      sender: msg.sender, method, interactive: (msg.flags & ALLOW_INTERACTIVE_AUTHORIZATION) !== 0,
    }).then((d) => {
      if (d.allowed) {
        if (d.via === 'polkit') this.log.info(`polkit authorized ${call.interface}.${method.name} for uid ${d.uid} (${msg.sender})`, { path: msg.path });
        this.invoke(call, method, handler);
        return;
      }
      this.log.info(`denied ${call.interface}.${method.name} to uid ${d.uid ?? 'unknown'} (${msg.sender}): ${d.message}`, { path: msg.path });
      call.fail(new ReplyError(DBUS_ERROR.AccessDenied, d.message));
    }).catch((e: unknown) => call.fail(e));
  }

  private invoke(call: Call, method: MethodSpec, handler: MethodHandler): void {
    let result: unknown[] | void | Promise<unknown[] | void>;
    try {
      result = handler(call);
    } catch (e) {
      call.fail(e);
      return;
    }
    const settle = (body: unknown[] | void) => {
      if (call.replied) return;
      if (Array.isArray(body)) call.reply(body);
      else if (method.out.length === 0) call.reply([]);
      else call.fail(new Error(`handler of ${method.name} returned no reply body`));
    };
    if (result instanceof Promise) result.then(settle, (e: unknown) => call.fail(e));
    else settle(result);
  }

  // ---- standard interfaces -------------------------------------------------------

  private peerImpl(): InterfaceImpl<typeof PEER> {
    return {
      spec: PEER,
      methods: {
        Ping: () => [],
        GetMachineId: () => [this.readMachineId()],
      },
      properties: () => ({}),
    };
  }

  private readMachineId(): string {
    if (this.machineId !== null) return this.machineId;
    for (const f of this.machineIdFiles) {
      try {
        const id = readFileSync(f, 'utf8').trim();
        if (/^[0-9a-f]{32}$/.test(id)) {
          this.machineId = id;
          return id;
        }
      } catch { /* try the next one */ }
    }
    throw new ReplyError(DBUS_ERROR.Failed, `no machine id in ${this.machineIdFiles.join(' or ')}`);
  }

  private standardImpls(path: string, node: Node): InterfaceImpl[] {
    const own = node.object?.interfaces ?? [];
    const introspectable: InterfaceImpl<typeof INTROSPECTABLE> = {
      spec: INTROSPECTABLE,
      methods: {
        Introspect: () => [introspectXml([...STANDARD_INTERFACES, ...own.map((i) => i.spec)], node.children)],
      },
      properties: () => ({}),
    };
    const findIface = (name: string): InterfaceImpl | null => {
      const i = own.find((x) => x.spec.name === name);
      if (i) return i;
      if (STANDARD_INTERFACES.some((s) => s.name === name)) return null; // exists, has no properties
      throw new ReplyError(DBUS_ERROR.UnknownInterface, `Unknown interface '${name}' on object '${path}'`);
    };
    const findProp = (ifaceName: string, prop: string): { impl: InterfaceImpl; type: string } => {
      const candidates = ifaceName === '' ? own : [findIface(ifaceName)].filter((x): x is InterfaceImpl => x !== null);
      for (const impl of candidates) {
        const p = findProperty(impl.spec, prop);
        if (p) return { impl, type: p.type };
      }
      throw new ReplyError(DBUS_ERROR.InvalidArgs,
        `Unknown property '${prop}' on interface '${ifaceName || '(any)'}' of object '${path}'`);
    };
    const properties: InterfaceImpl<typeof PROPERTIES> = {
      spec: PROPERTIES,
      methods: {
        Get: (call) => {
          const [ifaceName, prop] = call.args as [string, string];
          const { impl, type } = findProp(ifaceName, prop);
          const values = impl.properties() as Record<string, unknown>;
          return [new Variant(type, values[prop])];
        },
        GetAll: (call) => {
          const [ifaceName] = call.args as [string];
          const impls = ifaceName === '' ? own : [findIface(ifaceName)].filter((x): x is InterfaceImpl => x !== null);
          const dict: Record<string, Variant> = {};
          for (const impl of impls) {
            const values = impl.properties() as Record<string, unknown>;
            for (const p of impl.spec.properties) dict[p.name] = new Variant(p.type, values[p.name]);
          }
          return [dict];
        },
        Set: (call) => {
          const [ifaceName, prop] = call.args as [string, string];
          const { impl } = findProp(ifaceName, prop);
          throw new ReplyError(DBUS_ERROR.PropertyReadOnly,
            `Property '${prop}' of interface '${impl.spec.name}' is read-only`);
        },
      },
      properties: () => ({}),
    };
    return [this.peerImpl(), introspectable, properties];
  }
}
