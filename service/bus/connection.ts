/**
 * One connection to a message bus, on top of dbus-next used only as a
 * connection and marshalling library (STACK.md lists its traps; this file
 * is where they are handled):
 *
 * - every outgoing call has a real timeout, and calls still pending when
 *   the connection goes away are rejected instead of hanging forever;
 * - a lost connection (socket end, close or fatal error) is reported once
 *   through `onLost`, so the daemon can exit non-zero and be restarted;
 * - the caller's uid comes from the bus (GetConnectionCredentials'
 *   UnixUserID, never a pid), cached per unique name and evicted when the
 *   name disappears;
 * - no promise created here is left without a rejection handler.
 */
import { EventEmitter } from 'node:events';
import { DBusError, Message, MessageType, Variant, sessionBus, type MessageBus } from 'dbus-next';
import { DBUS_ERROR } from './error-names.js';
import { marshalMessage } from './wire/message.js';

/** `system`, `session`, or a D-Bus address such as `unix:path=/run/x/bus`. */
export type BusSpec = 'system' | 'session' | string;

/** Handles an incoming METHOD_CALL; returns true when it took the message. */
export type RawMethodHandler = (msg: Message) => boolean;

export interface BusConnection {
  /** Our unique name on the bus (`:1.42`). */
  readonly uniqueName: string;
  /** True once the connection is lost or closed: sends will fail. */
  readonly closed: boolean;
  /**
   * Send a METHOD_CALL and wait for the reply. Rejects with a dbus-next
   * `DBusError` for an error reply, `org.freedesktop.DBus.Error.NoReply`
   * after `timeoutMs`, `org.freedesktop.DBus.Error.Disconnected` when the
   * connection goes away first.
   */
  call(msg: Message, timeoutMs?: number): Promise<Message>;
  /**
   * Send a message without waiting. Throws when the connection is closed or
   * the body does not match its signature (marshalling is synchronous).
   */
  send(msg: Message): void;
  /** Own `name` (DO_NOT_QUEUE); throws unless we became its primary owner. */
  requestName(name: string): Promise<void>;
  /** The uid of the process behind `sender` (a unique name), from the bus. */
  callerUid(sender: string): Promise<number>;
  /** Install a METHOD_CALL handler ahead of dbus-next's own; returns its remover. */
  addMethodHandler(handler: RawMethodHandler): () => void;
  /**
   * `cb` runs once when the connection is lost (not after `close()`); at
   * once (on the next tick) if it already was.
   */
  onLost(cb: (reason: Error) => void): void;
  /** Disconnect. Pending calls are rejected; `onLost` callbacks do not run. */
  close(): void;
}

export interface ConnectOptions {
  /** Give up connecting (socket, auth, Hello) after this long. Default 25 s. */
  connectTimeoutMs?: number;
  /** Environment to resolve `system`/`session` from. Default process.env. */
  env?: NodeJS.ProcessEnv;
}

/** libdbus's default method call timeout. */
export const DEFAULT_CALL_TIMEOUT_MS = 25_000;
const DEFAULT_SYSTEM_BUS = 'unix:path=/run/dbus/system_bus_socket';
const BUS_DAEMON = 'org.freedesktop.DBus';
const BUS_DAEMON_PATH = '/org/freedesktop/DBus';
const NAME_FLAG_DO_NOT_QUEUE = 4;
const REQUEST_NAME_REPLY = ['', 'PRIMARY_OWNER', 'IN_QUEUE', 'EXISTS', 'ALREADY_OWNER'];
/** A credentials cache larger than this is dropped whole (eviction signals were missed). */
const UID_CACHE_MAX = 4096;

/**
 * The address to connect to for a bus spec. `system` honours
 * DBUS_SYSTEM_BUS_ADDRESS like libdbus (dbus-next's systemBus() would too,
 * but it ignores every option, so we always connect through sessionBus()).
 */
export function resolveBusAddress(spec: BusSpec, env: NodeJS.ProcessEnv = process.env): string {
  if (spec === 'system') return env.DBUS_SYSTEM_BUS_ADDRESS || DEFAULT_SYSTEM_BUS;
  if (spec === 'session') {
    if (env.DBUS_SESSION_BUS_ADDRESS) return env.DBUS_SESSION_BUS_ADDRESS;
    if (env.XDG_RUNTIME_DIR) return `unix:path=${env.XDG_RUNTIME_DIR}/bus`;
    throw new Error('no session bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set');
  }
  if (!/^[a-z]+:/.test(spec)) {
    throw new Error(`'${spec}' is not a bus: use 'system', 'session' or a D-Bus address (unix:path=...)`);
  }
  if (spec.split(';').some((a) => a.startsWith('unix:abstract='))) {
    // dbus-next needs an optional native module for abstract sockets.
    throw new Error(`abstract socket addresses are not supported: '${spec}'; use unix:path=`);
  }
  return spec;
}

/** dbus-next internals we rely on (version pinned to 0.10.2). */
interface RawStream extends EventEmitter {
  writable: boolean;
  destroyed?: boolean;
  /** Set on sockets that negotiated fd passing (dbus-next's optional usocket). */
  supportsUnixFd?: boolean;
  destroy(): void;
  write(chunk: Buffer | { data: Buffer; fds: number[] }): boolean;
}
interface RawConnection extends EventEmitter {
  stream: RawStream;
  /** Marshals and writes one message; bus.send and bus.call end here. */
  message(msg: Message): void;
}
interface RawBus {
  _connection: RawConnection;
  _methodReturnHandlers: Record<number, unknown>;
  name: string | null;
}

function disconnectedError(what: string): DBusError {
  return new DBusError(DBUS_ERROR.Disconnected, `${what}: the bus connection is closed`);
}

/** Connect to a bus and wait until the bus has answered Hello. */
export async function connectBus(spec: BusSpec, opts: ConnectOptions = {}): Promise<BusConnection> {
  const address = resolveBusAddress(spec, opts.env);
  const timeoutMs = opts.connectTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
  let bus: MessageBus;
  try {
    bus = sessionBus({ busAddress: address });
  } catch (e) {
    throw new Error(`cannot connect to the bus at ${address}: ${(e as Error).message}`);
  }
  const raw = bus as unknown as RawBus;
  // An EventEmitter without an 'error' listener throws: keep one for the
  // whole life of the bus object, whatever happens below. The listeners
  // that act on errors are added next to it.
  bus.on('error', () => { /* handled by the listeners below */ });

  await new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      bus.removeListener('connect', onConnect);
      bus.removeListener('error', onError);
      raw._connection.removeListener('end', onEnd);
      if (err) {
        try { raw._connection.stream.destroy(); } catch { /* already gone */ }
        reject(err);
      } else {
        resolve();
      }
    };
    const onConnect = () => finish();
    const onError = (err: unknown) => finish(new Error(
      `cannot connect to the bus at ${address}: ${err instanceof Error ? err.message : String(err)}`));
    const onEnd = () => finish(new Error(`cannot connect to the bus at ${address}: connection closed by the bus`));
    const timer = setTimeout(() => finish(new Error(
      `cannot connect to the bus at ${address}: no answer within ${timeoutMs} ms`)), timeoutMs);
    bus.on('connect', onConnect);
    bus.on('error', onError);
    raw._connection.on('end', onEnd);
  });

  const conn = new DbusNextConnection(bus, raw);
  try {
    await conn.watchNameOwners();
  } catch (e) {
    conn.close();
    throw new Error(`cannot subscribe to NameOwnerChanged on ${address}: ${(e as Error).message}`);
  }
  return conn;
}

/**
 * Put outgoing messages on the wire with wire/message.ts instead of dbus-next's
 * marshaller (which cost ~1 ms per PropertiesChanged of 200 hooks; ours
 * writes the same bytes ~90x faster). Only the last step changes:
 * dbus-next's bus.send/bus.call still allocate serials and register reply
 * handlers, then call `connection.message(msg)`, which this replaces with
 * a copy of dbus-next's post-connect version (connection.js) calling our
 * marshaller. It throws synchronously, as before, when the stream is
 * closed or the body does not fit its signature (a MarshalError). On
 * stream end dbus-next swaps `message` again for its error emitter, which
 * is still what we want.
 */
function useFastMarshaller(conn: RawConnection): void {
  const stream = conn.stream;
  conn.message = (msg: Message): void => {
    if (!stream.writable) throw new Error('Cannot send message, stream is closed');
    if (stream.supportsUnixFd) {
      const fds: number[] = [];
      const data = marshalMessage(msg, fds);
      stream.write({ data, fds });
    } else {
      // Without fd passing a message carrying an 'h' is refused here
      // (dbus-next would warn and send a message the bus rejects).
      stream.write(marshalMessage(msg));
    }
  };
}

interface PendingCall {
  reject(err: Error): void;
}

class DbusNextConnection implements BusConnection {
  readonly uniqueName: string;
  private lostReason: Error | null = null;
  private closing = false;
  private readonly lostCallbacks: ((reason: Error) => void)[] = [];
  private readonly pending = new Set<PendingCall>();
  private readonly uidCache = new Map<string, Promise<number>>();

  constructor(private readonly bus: MessageBus, private readonly raw: RawBus) {
    this.uniqueName = raw.name ?? '';
    bus.on('error', (err: unknown) => {
      const e = err instanceof Error ? err : new Error(String(err));
      // dbus-next reports both fatal stream errors and per-message decode
      // errors here; only the former leave the stream unusable.
      const stream = raw._connection.stream;
      if (stream.destroyed || !stream.writable) this.markLost(e);
    });
    raw._connection.on('end', () => this.markLost(new Error('the bus closed the connection')));
    raw._connection.stream.on('close', () => this.markLost(new Error('the bus connection was closed')));
    bus.on('message', (msg: Message) => this.onMessage(msg));
    useFastMarshaller(raw._connection);
  }

  get closed(): boolean {
    return this.closing || this.lostReason !== null;
  }

  /** Subscribe to the bus's "name vanished" signals that evict the uid cache. */
  async watchNameOwners(): Promise<void> {
    await this.call(new Message({
      destination: BUS_DAEMON, path: BUS_DAEMON_PATH, interface: BUS_DAEMON, member: 'AddMatch',
      signature: 's',
      body: [`type='signal',sender='${BUS_DAEMON}',path='${BUS_DAEMON_PATH}',`
        + `interface='${BUS_DAEMON}',member='NameOwnerChanged',arg2=''`],
    }));
  }

  private onMessage(msg: Message): void {
    if (msg.type === MessageType.SIGNAL && msg.sender === BUS_DAEMON
      && msg.interface === BUS_DAEMON && msg.member === 'NameOwnerChanged'
      && typeof msg.body[0] === 'string') {
      this.uidCache.delete(msg.body[0]);
    }
  }

  private markLost(reason: Error): void {
    if (this.lostReason !== null) return;
    this.lostReason = reason;
    this.failPending(disconnectedError('call aborted'));
    this.uidCache.clear();
    if (this.closing) return;
    for (const cb of this.lostCallbacks.splice(0)) {
      try { cb(reason); } catch { /* a callback must not stop the others */ }
    }
  }

  private failPending(err: Error): void {
    for (const p of [...this.pending]) p.reject(err);
    this.pending.clear();
  }

  call(msg: Message, timeoutMs: number = DEFAULT_CALL_TIMEOUT_MS): Promise<Message> {
    const what = `${msg.interface ?? ''}.${msg.member}`;
    if (this.closed) return Promise.reject(disconnectedError(what));
    return new Promise<Message>((resolve, reject) => {
      let done = false;
      const entry: PendingCall = {
        reject: (err) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          this.pending.delete(entry);
          // Forget the reply slot, or a late reply would find a stale handler.
          if (typeof msg.serial === 'number') delete this.raw._methodReturnHandlers[msg.serial];
          reject(err);
        },
      };
      const timer = setTimeout(() => entry.reject(
        new DBusError(DBUS_ERROR.NoReply, `${what} did not answer within ${timeoutMs} ms`)), timeoutMs);
      this.pending.add(entry);
      let sent: Promise<Message | null>;
      try {
        sent = this.bus.call(msg);
      } catch (e) {
        entry.reject(e as Error);
        return;
      }
      sent.then((reply) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.pending.delete(entry);
        if (reply === null) reject(new Error(`${what} was sent with NO_REPLY_EXPECTED; use send()`));
        else resolve(reply);
      }, (err: unknown) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.pending.delete(entry);
        // A message that did not marshal leaves dbus-next's reply handler
        // registered (a reply has removed it already otherwise).
        if (typeof msg.serial === 'number') delete this.raw._methodReturnHandlers[msg.serial];
        reject(err instanceof Error ? err : new Error(String(err)));
      });
    });
  }

  send(msg: Message): void {
    if (this.closed) throw disconnectedError(`sending ${msg.interface ?? ''}.${msg.member ?? ''}`);
    this.bus.send(msg);
  }

  async requestName(name: string): Promise<void> {
    let reply: Message;
    try {
      reply = await this.call(new Message({
        destination: BUS_DAEMON, path: BUS_DAEMON_PATH, interface: BUS_DAEMON, member: 'RequestName',
        signature: 'su', body: [name, NAME_FLAG_DO_NOT_QUEUE],
      }));
    } catch (e) {
      const text = e instanceof DBusError ? `${e.type}: ${e.text}` : (e as Error).message;
      throw new Error(`cannot own the bus name ${name}: ${text}`);
    }
    const code = reply.body[0] as number;
    if (code !== 1) {
      const label = REQUEST_NAME_REPLY[code] ?? String(code);
      const why = code === 3 ? 'another connection owns it' : `RequestName answered ${label}`;
      throw new Error(`cannot own the bus name ${name}: ${why} (reply ${code} ${label})`);
    }
  }

  callerUid(sender: string): Promise<number> {
    if (!sender || !sender.startsWith(':')) {
      return Promise.reject(new Error(`cannot identify the caller '${sender}': not a unique bus name`));
    }
    const cached = this.uidCache.get(sender);
    if (cached) return cached;
    if (this.uidCache.size >= UID_CACHE_MAX) this.uidCache.clear();
    const lookup = this.call(new Message({
      destination: BUS_DAEMON, path: BUS_DAEMON_PATH, interface: BUS_DAEMON,
      member: 'GetConnectionCredentials', signature: 's', body: [sender],
    })).then((reply) => {
      const creds = reply.body[0] as Record<string, unknown> | undefined;
      const uid = creds?.UnixUserID;
      if (!(uid instanceof Variant) || typeof uid.value !== 'number') {
        throw new Error(`the bus did not report a uid for ${sender}`);
      }
      return uid.value;
    });
    // Failed lookups are not cached. This branch handles the rejection for
    // the cache; the caller handles the promise it gets.
    lookup.catch(() => {
      if (this.uidCache.get(sender) === lookup) this.uidCache.delete(sender);
    });
    this.uidCache.set(sender, lookup);
    return lookup;
  }

  addMethodHandler(handler: RawMethodHandler): () => void {
    this.bus.addMethodHandler(handler);
    return () => this.bus.removeMethodHandler(handler);
  }

  onLost(cb: (reason: Error) => void): void {
    if (this.lostReason !== null) {
      if (!this.closing) {
        const reason = this.lostReason;
        process.nextTick(() => cb(reason));
      }
      return;
    }
    this.lostCallbacks.push(cb);
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    this.failPending(disconnectedError('call aborted'));
    this.uidCache.clear();
    try { this.bus.disconnect(); } catch { /* already closed */ }
  }
}
