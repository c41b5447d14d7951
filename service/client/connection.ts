/**
 * The client's one connection to a message bus, over dbus-next's low-level
 * API only (STACK.md lists the traps this file handles):
 *
 * - `systemBus()` ignores its options, so every address goes through
 *   `sessionBus({ busAddress })`;
 * - no proxy objects (`getProxyObject` leaks match rules): calls are
 *   `bus.call(new Message(...))` with a real timeout, and a timed-out call's
 *   reply slot is dropped so a late reply finds nothing;
 * - a lost connection is reported once to every listener and fails every
 *   pending call, instead of leaving the caller waiting forever;
 * - every message that arrives gets a sequence number in arrival order, and
 *   each reply carries the number it arrived with, so a caller can tell
 *   which signals came before a reply and which after (see follow.ts: a
 *   property snapshot already contains every change signalled before it).
 */
import { DBusError, Message, MessageType, sessionBus, type MessageBus } from 'dbus-next';

/** libdbus's default method call timeout. */
export const DEFAULT_CALL_TIMEOUT_MS = 25_000;
/** The system bus socket when DBUS_SYSTEM_BUS_ADDRESS is unset (D-Bus specification). */
export const DEFAULT_SYSTEM_BUS_ADDRESS = 'unix:path=/run/dbus/system_bus_socket';

const BUS_DAEMON = 'org.freedesktop.DBus';
const BUS_DAEMON_PATH = '/org/freedesktop/DBus';
export const ERROR_NO_REPLY = 'org.freedesktop.DBus.Error.NoReply';
export const ERROR_DISCONNECTED = 'org.freedesktop.DBus.Error.Disconnected';

/**
 * The address the client connects to: `explicit` (from --address), else
 * $DBUS_SYSTEM_BUS_ADDRESS, else the system bus socket. Abstract sockets
 * need a native module dbus-next lacks; they are refused with a reason.
 */
export function resolveClientAddress(explicit: string | null | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const address = explicit || env['DBUS_SYSTEM_BUS_ADDRESS'] || DEFAULT_SYSTEM_BUS_ADDRESS;
  if (!/^[a-z][a-z0-9-]*:/.test(address)) {
    throw new Error(`'${address}' is not a D-Bus address (expected unix:path=/path/to/socket)`);
  }
  if (address.split(';').every((a) => a.startsWith('unix:abstract='))) {
    throw new Error(`abstract socket addresses are not supported: '${address}'; use unix:path=`);
  }
  return address;
}

/** A signal as received, with its arrival sequence number. */
export interface ReceivedSignal {
  /** Arrival order among every message of this connection. */
  seq: number;
  sender: string;
  path: string;
  interface: string;
  member: string;
  signature: string;
  /** As dbus-next unmarshalled it (Variants kept). */
  body: unknown[];
}

/** A method return, with its arrival sequence number. */
export interface Reply {
  seq: number;
  /** The unique name that answered (the service's current owner). */
  sender: string;
  body: unknown[];
}

export interface CallOptions {
  timeoutMs?: number;
  /** Message flags, e.g. MessageFlag.NO_AUTO_START. */
  flags?: number;
}

/** dbus-next internals this file relies on (the version is pinned to 0.10.2). */
interface RawBus {
  _connection: NodeJS.EventEmitter & {
    stream: NodeJS.EventEmitter & { destroy(): void; destroyed?: boolean; writable: boolean };
  };
  _methodReturnHandlers: Record<number, unknown>;
  name: string | null;
}

/** A D-Bus error reply or a local failure named like one. */
export function dbusError(name: string, text: string): DBusError {
  return new DBusError(name, text);
}

/** One client connection. */
export class BusConnection {
  readonly address: string;
  private readonly bus: MessageBus;
  private readonly raw: RawBus;
  private seq = 0;
  /** Arrival sequence of replies not yet claimed by their caller, by reply serial. */
  private readonly replySeq = new Map<number, number>();
  /** Serials of our calls still waiting for their reply. */
  private readonly waiting = new Set<number>();
  private readonly pending = new Set<(err: Error) => void>();
  private readonly signalListeners = new Set<(s: ReceivedSignal) => void>();
  private readonly lostListeners = new Set<(err: Error) => void>();
  private lost: Error | null = null;
  private closing = false;

  private constructor(address: string, bus: MessageBus) {
    this.address = address;
    this.bus = bus;
    this.raw = bus as unknown as RawBus;
    bus.on('message', (msg: Message) => this.onMessage(msg));
    bus.on('error', (e: unknown) => {
      // dbus-next reports fatal stream errors and single undecodable
      // messages alike; only the former leave the stream unusable.
      const stream = this.raw._connection.stream;
      if (stream.destroyed || !stream.writable) this.markLost(e instanceof Error ? e : new Error(String(e)));
    });
    this.raw._connection.stream.on('close', () => this.markLost(new Error('the bus connection was closed')));
    this.raw._connection.on('end', () => this.markLost(new Error('the bus closed the connection')));
  }

  /** Connect and wait for the bus's Hello reply. */
  static async connect(address: string, timeoutMs = DEFAULT_CALL_TIMEOUT_MS): Promise<BusConnection> {
    let bus: MessageBus;
    try {
      bus = sessionBus({ busAddress: address });
    } catch (e) {
      throw dbusError(ERROR_DISCONNECTED, `cannot connect to the bus at ${address}: ${(e as Error).message}`);
    }
    const raw = bus as unknown as RawBus;
    // An EventEmitter without an 'error' listener throws; keep one for the
    // bus object's whole life, whatever happens below.
    bus.on('error', () => { /* reported through connect's rejection or markLost */ });
    await new Promise<void>((resolve, reject) => {
      const finish = (err?: Error) => {
        clearTimeout(timer);
        bus.off('connect', onConnect);
        bus.off('error', onError);
        raw._connection.off('end', onEnd);
        if (err) {
          try { raw._connection.stream.destroy(); } catch { /* already gone */ }
          reject(err);
        } else {
          resolve();
        }
      };
      const onConnect = () => finish();
      const onError = (e: unknown) => finish(dbusError(ERROR_DISCONNECTED,
        `cannot connect to the bus at ${address}: ${describeSocketError(e)}`));
      const onEnd = () => finish(dbusError(ERROR_DISCONNECTED,
        `cannot connect to the bus at ${address}: the bus closed the connection`));
      const timer = setTimeout(() => finish(dbusError(ERROR_NO_REPLY,
        `cannot connect to the bus at ${address}: no answer within ${timeoutMs} ms`)), timeoutMs);
      bus.on('connect', onConnect);
      bus.on('error', onError);
      raw._connection.on('end', onEnd);
    });
    return new BusConnection(address, bus);
  }

  /** Our unique name on the bus. */
  get uniqueName(): string {
    return this.raw.name ?? '';
  }

  get closed(): boolean {
    return this.closing || this.lost !== null;
  }

  private onMessage(msg: Message): void {
    const seq = ++this.seq;
    if (msg.type === MessageType.METHOD_RETURN || msg.type === MessageType.ERROR) {
      // dbus-next types replySerial as a string; it is the number we sent.
      // Only calls still waiting get an entry (a late reply leaves none).
      const serial = Number(msg.replySerial);
      if (this.waiting.has(serial)) this.replySeq.set(serial, seq);
      return;
    }
    if (msg.type !== MessageType.SIGNAL) return;
    const s: ReceivedSignal = {
      seq, sender: msg.sender, path: msg.path, interface: msg.interface, member: msg.member,
      signature: msg.signature ?? '', body: msg.body,
    };
    for (const l of [...this.signalListeners]) {
      try { l(s); } catch { /* one listener must not stop the others */ }
    }
  }

  private markLost(err: Error): void {
    if (this.lost || this.closing) return;
    this.lost = err;
    const e = dbusError(ERROR_DISCONNECTED, `lost the bus connection: ${err.message}`);
    for (const p of [...this.pending]) p(e);
    for (const l of [...this.lostListeners]) {
      try { l(e); } catch { /* keep going */ }
    }
  }

  /**
   * Call a method and resolve with its reply. An error reply rejects with
   * dbus-next's DBusError (`.type` is the name, `.text` the message); no
   * reply in time rejects with Error.NoReply; a lost connection with
   * Error.Disconnected.
   */
  call(
    destination: string, path: string, iface: string, member: string,
    signature = '', body: unknown[] = [], opts: CallOptions = {},
  ): Promise<Reply> {
    const what = `${iface}.${member}`;
    if (this.closed) return Promise.reject(dbusError(ERROR_DISCONNECTED, `${what}: the bus connection is closed`));
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const msg = new Message({
      destination, path, interface: iface, member, signature, body: body as any[],
      ...(opts.flags !== undefined ? { flags: opts.flags } : {}),
    });
    // Our own serial, so a timed-out call's reply slot can be removed.
    const serial = this.bus.newSerial();
    msg.serial = serial;
    this.waiting.add(serial);
    return new Promise<Reply>((resolve, reject) => {
      let done = false;
      const fail = (err: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.waiting.delete(serial);
        this.pending.delete(fail);
        delete this.raw._methodReturnHandlers[serial];
        this.replySeq.delete(serial);
        reject(err);
      };
      const timer = setTimeout(() => fail(dbusError(ERROR_NO_REPLY,
        `${what} got no reply within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
      this.pending.add(fail);
      let sent: Promise<Message | null>;
      try {
        sent = this.bus.call(msg);
      } catch (e) {
        fail(e as Error);
        return;
      }
      sent.then((reply) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.waiting.delete(serial);
        this.pending.delete(fail);
        const seq = this.replySeq.get(serial) ?? this.seq;
        this.replySeq.delete(serial);
        resolve({ seq, sender: reply?.sender ?? '', body: reply?.body ?? [] });
      }, (err: unknown) => {
        if (done) return;
        this.replySeq.delete(serial);
        fail(err instanceof Error ? err : new Error(String(err)));
      });
    });
  }

  /** Call a method of the bus itself (org.freedesktop.DBus). */
  callBus(member: string, signature = '', body: unknown[] = []): Promise<Reply> {
    return this.call(BUS_DAEMON, BUS_DAEMON_PATH, BUS_DAEMON, member, signature, body);
  }

  /** Add a match rule; resolves with a function that removes it (never rejects). */
  async addMatch(rule: string): Promise<() => Promise<void>> {
    await this.callBus('AddMatch', 's', [rule]);
    let removed = false;
    return async () => {
      if (removed || this.closed) return;
      removed = true;
      await this.callBus('RemoveMatch', 's', [rule]).catch(() => undefined);
    };
  }

  /** Listen to every signal this connection receives; returns the remover. */
  onSignal(listener: (s: ReceivedSignal) => void): () => void {
    this.signalListeners.add(listener);
    return () => { this.signalListeners.delete(listener); };
  }

  /** `listener` runs once if the connection is lost (not after close()). */
  onLost(listener: (err: Error) => void): () => void {
    if (this.lost) {
      const err = dbusError(ERROR_DISCONNECTED, `lost the bus connection: ${this.lost.message}`);
      queueMicrotask(() => listener(err));
      return () => {};
    }
    this.lostListeners.add(listener);
    return () => { this.lostListeners.delete(listener); };
  }

  /** Disconnect; pending calls fail with Error.Disconnected. Idempotent. */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    const e = dbusError(ERROR_DISCONNECTED, 'the bus connection was closed');
    for (const p of [...this.pending]) p(e);
    try { this.bus.disconnect(); } catch { /* already gone */ }
  }
}

/** A socket error as a person reads it: "no such socket", "permission denied". */
function describeSocketError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err?.code) {
    case 'ENOENT': return 'no bus socket there (is dbus running? is the address right?)';
    case 'ECONNREFUSED': return 'connection refused (the bus is not running)';
    case 'EACCES': return 'permission denied on the bus socket';
    default: return err instanceof Error ? err.message : String(e);
  }
}
