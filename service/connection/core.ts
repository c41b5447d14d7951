/**
 * The one D-Bus connection core, shared by the daemon's adapter
 * (service/bus/connection.ts), the client library
 * (service/client/connection.ts), the test helpers and the benchmarks:
 * connect with a timeout, call with a timeout, and loss detection, over
 * dbus-next used as a connection and marshalling library only (no proxy
 * objects: `getProxyObject` leaks match rules; docs/platform-notes.md lists
 * dbus-next's traps).
 *
 * Every use of dbus-next's private API is in this file, in `rawOf` and the
 * `RawBus` shape below (dbus-next is pinned to 0.10.2, whose internals these
 * are):
 * - `_connection` (the connection's event emitter) and its `stream` (the
 *   socket): dbus-next emits no event when the bus ends the connection or
 *   the socket closes, and its 'error' event mixes fatal stream errors with
 *   single undecodable messages; only the stream tells them apart;
 * - `_connection.message`: the function every outgoing message ends in,
 *   replaced by `useMarshaller` so the daemon can put its own bytes on the
 *   wire;
 * - `_methodReturnHandlers`: dbus-next keeps a reply handler per call
 *   forever; a call that timed out must drop its own, or a late reply would
 *   find a stale handler;
 * - `name`: our unique name, which dbus-next keeps but does not expose.
 *
 * What must stay true: a call settles exactly once (reply, error reply,
 * timeout, or loss of the connection), and the loss of a connection is
 * reported once.
 */
import { EventEmitter } from 'node:events';
import { DBusError, Message, MessageType, sessionBus, type MessageBus } from 'dbus-next';

/** dbus-next's message, message type and error reply classes, for the client's use. */
export { DBusError, Message, MessageType };

/** libdbus's default method call timeout. */
export const DEFAULT_CALL_TIMEOUT_MS = 25_000;
/** The system bus socket when DBUS_SYSTEM_BUS_ADDRESS is unset (D-Bus specification). */
export const DEFAULT_SYSTEM_BUS_ADDRESS = 'unix:path=/run/dbus/system_bus_socket';
/** The bus daemon's own name, path and interface. */
export const BUS_DAEMON = 'org.freedesktop.DBus';
export const BUS_DAEMON_PATH = '/org/freedesktop/DBus';

/** dbus-next internals this file relies on (see the top of the file). */
interface RawStream extends EventEmitter {
  writable: boolean;
  destroyed?: boolean;
  /** Set on sockets that negotiated fd passing (dbus-next's optional usocket). */
  supportsUnixFd?: boolean;
  destroy(): void;
  write(chunk: Buffer | { data: Buffer; fds: number[] }): boolean;
  /** net.Socket's (a Writable); absent on other streams. */
  cork?(): void;
  uncork?(): void;
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

function rawOf(bus: MessageBus): RawBus {
  return bus as unknown as RawBus;
}

/** Why connecting failed: the callers word it for their readers. */
export class ConnectError extends Error {
  constructor(
    /** `create`: the address was refused; `error`: the socket failed; `end`: the bus closed; `timeout`. */
    readonly kind: 'create' | 'error' | 'end' | 'timeout',
    readonly address: string,
    readonly detail: unknown,
  ) {
    super(kind === 'timeout' ? `no answer from ${address}`
      : detail instanceof Error ? detail.message : String(detail ?? kind));
    this.name = 'ConnectError';
  }
}

/**
 * Connect to `address` and wait for the bus's Hello reply. Every address
 * goes through `sessionBus({ busAddress })`: dbus-next's `systemBus()`
 * ignores its options. Rejects with a ConnectError; the socket is closed then.
 */
export async function openMessageBus(address: string, timeoutMs: number): Promise<MessageBus> {
  let bus: MessageBus;
  try {
    bus = sessionBus({ busAddress: address });
  } catch (e) {
    throw new ConnectError('create', address, e);
  }
  const raw = rawOf(bus);
  // An EventEmitter without an 'error' listener throws: keep one for the
  // whole life of the bus object, whatever happens below.
  bus.on('error', () => { /* reported through the rejection below or CoreConnection's loss */ });
  await new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (err?: ConnectError) => {
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
    const onError = (e: unknown) => finish(new ConnectError('error', address, e));
    const onEnd = () => finish(new ConnectError('end', address, null));
    const timer = setTimeout(() => finish(new ConnectError('timeout', address, null)), timeoutMs);
    bus.on('connect', onConnect);
    bus.on('error', onError);
    raw._connection.on('end', onEnd);
  });
  return bus;
}

/** The header fields of a received signal, as the client and the test client keep them. */
export interface SignalFields {
  sender: string;
  path: string;
  interface: string;
  member: string;
  signature: string;
}

/** Writes one message's bytes; `fds` is given when the socket passes file descriptors. */
export type Marshaller = (msg: Message, fds?: number[]) => Buffer;

interface PendingCall {
  reject(err: Error): void;
}

/**
 * A connected bus: calls with a timeout, and loss detection. The owner
 * (the daemon's or the client's connection) decides what a loss means for
 * its own callers: `lost` runs once with the reason, and the owner fails
 * its pending calls with `failPending`.
 */
export class CoreConnection {
  readonly bus: MessageBus;
  private readonly raw: RawBus;
  private lostReason: Error | null = null;
  private readonly pending = new Set<PendingCall>();

  constructor(bus: MessageBus, lost: (reason: Error) => void) {
    this.bus = bus;
    this.raw = rawOf(bus);
    const markLost = (reason: Error) => {
      if (this.lostReason !== null) return;
      this.lostReason = reason;
      lost(reason);
    };
    bus.on('error', (err: unknown) => {
      // dbus-next reports both fatal stream errors and per-message decode
      // errors here; only the former leave the stream unusable.
      const stream = this.raw._connection.stream;
      if (stream.destroyed || !stream.writable) markLost(err instanceof Error ? err : new Error(String(err)));
    });
    this.raw._connection.on('end', () => markLost(new Error('the bus closed the connection')));
    this.raw._connection.stream.on('close', () => markLost(new Error('the bus connection was closed')));
  }

  /** Our unique name on the bus (`:1.42`); '' before Hello was answered. */
  get uniqueName(): string {
    return this.raw.name ?? '';
  }

  /** The reason the connection was lost, or null. */
  get lost(): Error | null {
    return this.lostReason;
  }

  newSerial(): number {
    return this.bus.newSerial();
  }

  /**
   * Send a METHOD_CALL and settle with its reply (null when sent with
   * NO_REPLY_EXPECTED), dbus-next's DBusError for an error reply,
   * `timeoutError()` after `timeoutMs`, or what `failPending` is given.
   * `msg.serial` may be set beforehand (from newSerial) so the caller knows
   * it; dbus-next assigns one otherwise.
   */
  call(msg: Message, timeoutMs: number, timeoutError: () => Error): Promise<Message | null> {
    return new Promise<Message | null>((resolve, reject) => {
      let done = false;
      const forgetReply = () => {
        if (typeof msg.serial === 'number') delete this.raw._methodReturnHandlers[msg.serial];
      };
      const settle = () => {
        done = true;
        clearTimeout(timer);
        this.pending.delete(entry);
      };
      const entry: PendingCall = {
        reject: (err) => {
          if (done) return;
          settle();
          // Forget the reply slot, or a late reply would find a stale handler.
          forgetReply();
          reject(err);
        },
      };
      const timer = setTimeout(() => entry.reject(timeoutError()), timeoutMs);
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
        settle();
        resolve(reply);
      }, (err: unknown) => {
        if (done) return;
        settle();
        // A message that did not marshal leaves dbus-next's reply handler
        // registered (a reply has removed it already otherwise).
        forgetReply();
        reject(err instanceof Error ? err : new Error(String(err)));
      });
    });
  }

  /** Reject every call still waiting for its reply. */
  failPending(err: Error): void {
    for (const p of [...this.pending]) p.reject(err);
    this.pending.clear();
  }

  /** Send without waiting; throws when the stream is closed or the body does not marshal. */
  send(msg: Message): void {
    this.bus.send(msg);
  }

  /** Every message this connection receives, in arrival order. */
  onMessage(listener: (msg: Message) => void): () => void {
    this.bus.on('message', listener);
    return () => { this.bus.off('message', listener); };
  }

  /**
   * Put outgoing messages on the wire with `marshal` instead of dbus-next's
   * marshaller. Only the last step changes: dbus-next's bus.send/bus.call
   * still allocate serials and register reply handlers, then call
   * `connection.message(msg)`, which this replaces with a copy of
   * dbus-next's post-connect version (connection.js) calling `marshal`. It
   * throws synchronously, as dbus-next's does, when the stream is closed or
   * the body does not fit its signature. On stream end dbus-next swaps
   * `message` again for its error emitter, which is still what we want.
   */
  useMarshaller(marshal: Marshaller): void {
    const conn = this.raw._connection;
    const stream = conn.stream;
    // The messages of one turn of the event loop go out in one writev: a
    // hook step's HookFinished, PropertiesChanged and the next step's
    // bookkeeping are one system call instead of one each. Order is kept
    // (a corked stream queues in call order), and end() uncorks, so a
    // disconnect in the same turn still sends what came before it.
    let corked = false;
    const uncork = (): void => {
      corked = false;
      stream.uncork?.();
    };
    conn.message = (msg: Message): void => {
      if (!stream.writable) throw new Error('Cannot send message, stream is closed');
      if (stream.supportsUnixFd) {
        const fds: number[] = [];
        const data = marshal(msg, fds);
        stream.write({ data, fds });
        return;
      }
      // Without fd passing a message carrying an 'h' is refused by the
      // marshaller (dbus-next would warn and send a message the bus rejects).
      const data = marshal(msg);
      if (!corked && stream.cork !== undefined) {
        corked = true;
        stream.cork();
        process.nextTick(uncork);
      }
      stream.write(data);
    };
  }

  /** Disconnect (idempotent); the owner fails its pending calls first. */
  disconnect(): void {
    try { this.bus.disconnect(); } catch { /* already gone */ }
  }
}
