/**
 * The client's one connection to a message bus, on the connection core
 * (service/connection/core.ts: connect and call with a timeout, loss
 * detection, dbus-next's traps):
 *
 * - a lost connection is reported once to every listener and fails every
 *   pending call, instead of leaving the caller waiting forever;
 * - every message that arrives gets a sequence number in arrival order, and
 *   each reply carries the number it arrived with, so a caller can tell
 *   which signals came before a reply and which after (see follow.ts: a
 *   property snapshot already contains every change signalled before it).
 */
import {
  BUS_DAEMON, DBusError, Message, MessageType, BUS_DAEMON_PATH, CoreConnection, DEFAULT_CALL_TIMEOUT_MS, DEFAULT_SYSTEM_BUS_ADDRESS,
  openMessageBus, type ConnectError, type SignalFields,
} from '../connection/core.js';
import { DBUS_ERROR } from '../protocol/errors.js';

export { DEFAULT_CALL_TIMEOUT_MS };
const ERROR_NO_REPLY = DBUS_ERROR.NoReply;
const ERROR_DISCONNECTED = DBUS_ERROR.Disconnected;

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
export interface ReceivedSignal extends SignalFields {
  /** Arrival order among every message of this connection. */
  seq: number;
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

/** A D-Bus error reply or a local failure named like one. */
export function dbusError(name: string, text: string): DBusError {
  return new DBusError(name, text);
}

/** One client connection. */
export class ClientConnection {
  readonly address: string;
  private readonly core: CoreConnection;
  private seq = 0;
  /** Arrival sequence of replies not yet claimed by their caller, by reply serial. */
  private readonly replySeq = new Map<number, number>();
  /** Serials of our calls still waiting for their reply. */
  private readonly waiting = new Set<number>();
  private readonly signalListeners = new Set<(s: ReceivedSignal) => void>();
  private readonly lostListeners = new Set<(err: Error) => void>();
  private lost: Error | null = null;
  private closing = false;

  private constructor(address: string, core: (lost: (reason: Error) => void) => CoreConnection) {
    this.address = address;
    this.core = core((reason) => this.markLost(reason));
    this.core.onMessage((msg: Message) => this.onMessage(msg));
  }

  /** Connect and wait for the bus's Hello reply. */
  static async connect(address: string, timeoutMs = DEFAULT_CALL_TIMEOUT_MS): Promise<ClientConnection> {
    try {
      const bus = await openMessageBus(address, timeoutMs);
      return new ClientConnection(address, (lost) => new CoreConnection(bus, lost));
    } catch (e) {
      throw connectError(e as ConnectError, timeoutMs);
    }
  }

  /** Our unique name on the bus. */
  get uniqueName(): string {
    return this.core.uniqueName;
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
    this.core.failPending(e);
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
  async call(
    destination: string, path: string, iface: string, member: string,
    signature = '', body: unknown[] = [], opts: CallOptions = {},
  ): Promise<Reply> {
    const what = `${iface}.${member}`;
    if (this.closed) throw dbusError(ERROR_DISCONNECTED, `${what}: the bus connection is closed`);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const msg = new Message({
      destination, path, interface: iface, member, signature, body: body as any[],
      ...(opts.flags !== undefined ? { flags: opts.flags } : {}),
    });
    // Our own serial, so the reply's arrival sequence can be kept for it.
    const serial = this.core.newSerial();
    msg.serial = serial;
    this.waiting.add(serial);
    let reply: Message | null;
    try {
      reply = await this.core.call(msg, timeoutMs, () => dbusError(ERROR_NO_REPLY,
        `${what} got no reply within ${Math.round(timeoutMs / 1000)} s`));
    } catch (e) {
      this.waiting.delete(serial);
      this.replySeq.delete(serial);
      throw e;
    }
    this.waiting.delete(serial);
    const seq = this.replySeq.get(serial) ?? this.seq;
    this.replySeq.delete(serial);
    return { seq, sender: reply?.sender ?? '', body: reply?.body ?? [] };
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
    this.core.failPending(dbusError(ERROR_DISCONNECTED, 'the bus connection was closed'));
    this.core.disconnect();
  }
}

/** Why connecting failed, as a D-Bus error a person can read. */
function connectError(e: ConnectError, timeoutMs: number): DBusError {
  const at = `cannot connect to the bus at ${e.address}`;
  switch (e.kind) {
    case 'create': return dbusError(ERROR_DISCONNECTED, `${at}: ${e.message}`);
    case 'error': return dbusError(ERROR_DISCONNECTED, `${at}: ${describeSocketError(e.detail)}`);
    case 'end': return dbusError(ERROR_DISCONNECTED, `${at}: the bus closed the connection`);
    case 'timeout': return dbusError(ERROR_NO_REPLY, `${at}: no answer within ${timeoutMs} ms`);
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
