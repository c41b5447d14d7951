/**
 * The D-Bus wire format for outgoing messages: a marshaller for dbus-next
 * `Message` objects that writes little-endian, protocol-version-1 bytes
 * identical to dbus-next 0.10.2's `marshallMessage` (test/unit/bus-wire.test.ts
 * checks them byte for byte), at a small fraction of its cost. dbus-next
 * builds every value through the `put` package, one small Buffer per value
 * and one per padding run, which on a 200-hook transaction costs ~8 ms per
 * hook for the PropertiesChanged carrying the whole `Hooks` array
 * (test/bench/RESULTS.md).
 *
 * Values are dbus-next's JS representation, the one the rest of the daemon
 * already builds:
 * - y n q i u h: numbers (integers in range); b: boolean (or 0/1); d: a
 *   finite number; x t: BigInt or an integral number;
 * - s o g: strings (a Buffer is taken as its UTF-8 text, as dbus-next does);
 * - v: a dbus-next `Variant` (signature, value);
 * - a: an array; `ay` also a Buffer/Uint8Array; `a{..}` a plain object
 *   (keys are strings; a numeric or boolean key type reads them as the
 *   decimal/`true`/`false` text dbus-next's unmarshaller produces);
 * - (...): an array with one element per member.
 *
 * What must stay true:
 * - anything dbus-next would refuse to marshal is refused here too, with a
 *   `MarshalError` thrown synchronously (BusConnection.send's contract), and
 *   nothing is half-sent: the bytes are handed out only when the whole
 *   message is done;
 * - the spec's limits hold for every message sent (dbus-daemon drops a
 *   connection that sends a malformed message, which would end the
 *   daemon): names and paths valid, strings without NUL, signatures valid
 *   and at most 255 bytes, nesting at most 32 arrays / 32 structs per
 *   signature and 64 containers in all, arrays at most 64 MiB, messages at
 *   most 128 MiB, the header fields each message type requires present;
 * - deliberate differences from dbus-next, all where dbus-next is wrong or
 *   lax: INT64 -2^63 is accepted (dbus-next refuses it), a double -0 keeps
 *   its sign (dbus-next writes +0), 64-bit values given as strings are
 *   refused (dbus-next parses them), `ay` given as a string is refused,
 *   dictionaries with numeric or boolean keys are written (dbus-next
 *   cannot), and 'h' needs a caller-supplied fd list (see marshalMessage).
 *
 * This file writes a message (header and body); the values are
 * encoder.ts's, the signatures signature.ts's, the names names.ts's.
 */
import type { Message } from 'dbus-next';
import { Encoder, SLAB_BYTES, SLAB_MIN_ROOM } from './encoder.js';
import { MAX_MESSAGE_BYTES, MarshalError, describe } from './marshal-error.js';
import {
  isValidBusName, isValidInterfaceName, isValidMemberName, isValidObjectPath,
} from './names.js';
import { G, O, S, U, parseBodySignature } from './signature.js';

export { MAX_ARRAY_BYTES, MAX_MESSAGE_BYTES, MarshalError } from './marshal-error.js';
export { isValidObjectPath } from './names.js';

const LOCAL_PATH = '/org/freedesktop/DBus/Local';
const LOCAL_INTERFACE = 'org.freedesktop.DBus.Local';

const METHOD_CALL = 1, METHOD_RETURN = 2, ERROR = 3, SIGNAL = 4;
const FIELD_PATH = 1, FIELD_INTERFACE = 2, FIELD_MEMBER = 3, FIELD_ERROR_NAME = 4;
const FIELD_REPLY_SERIAL = 5, FIELD_DESTINATION = 6, FIELD_SENDER = 7, FIELD_SIGNATURE = 8;
const FIELD_UNIX_FDS = 9;
const MESSAGE_TYPE_NAMES = ['', 'method call', 'method return', 'error', 'signal'];
const FIELD_NAMES = ['', 'path', 'interface', 'member', 'errorName', 'replySerial', 'destination', 'sender', 'signature', 'unixFd'];

const shared = new Encoder(SLAB_BYTES);

/**
 * The bytes of `msg` on the wire (little endian, protocol version 1),
 * equal to dbus-next's `marshallMessage(msg)[0]`. `msg` is not modified
 * (dbus-next's marshaller rewrites `body` and `signature` in place).
 *
 * Unix fds: each 'h' value is an fd number; it is appended to `fds` and
 * its index there is written, with a UNIX_FDS header field, as dbus-next
 * does. Without `fds` (a connection that did not negotiate fd passing) a
 * message carrying an 'h' is refused.
 *
 * @throws MarshalError when the message or its body cannot be put on the
 *   wire; nothing is written anywhere in that case.
 */
export function marshalMessage(msg: Message, fds?: number[]): Buffer {
  // A getter or proxy in a body could send another message while this one
  // is half-built: it gets an encoder of its own.
  const enc = shared.busy ? new Encoder(SLAB_MIN_ROOM) : shared;
  enc.busy = true;
  enc.begin();
  const fdStart = fds === undefined ? 0 : fds.length;
  enc.fds = fds ?? null;
  enc.fdBase = fdStart;
  try {
    writeMessage(enc, msg);
    return enc.finish();
  } catch (e) {
    enc.abandon();
    if (fds !== undefined) fds.length = fdStart;
    throw e;
  } finally {
    enc.busy = false;
    enc.fds = null;
  }
}

function headerString(enc: Encoder, code: number, value: unknown, sigChar: number, valid: (s: string) => boolean,
  what: string): void {
  if (typeof value !== 'string' || !valid(value)) {
    throw new MarshalError(`invalid ${what} ${describe(value)}`, `header ${FIELD_NAMES[code]}`);
  }
  enc.ensure(11);
  enc.pad(8);
  fieldStart(enc, code, sigChar);
  enc.pos += 4;
  if (sigChar === G) {
    enc.signature(value);
  } else {
    try {
      enc.string(value);
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`header ${FIELD_NAMES[code]}`) : e;
    }
  }
}

function headerUint32(enc: Encoder, code: number, value: number): void {
  enc.ensure(7);
  enc.pad(8);
  fieldStart(enc, code, U);
  enc.u32At(enc.pos + 4, value);
  enc.pos += 8;
}

/**
 * A header field's first 4 bytes at enc.pos (8-aligned, room ensured): its
 * code and its variant's one-character signature. Does not advance.
 */
function fieldStart(enc: Encoder, code: number, sigChar: number): void {
  const b = enc.buf;
  b[enc.pos] = code;
  b[enc.pos + 1] = 1;
  b[enc.pos + 2] = sigChar;
  b[enc.pos + 3] = 0;
}

const isSignature = (s: string): boolean => {
  parseBodySignature(s);
  return true;
};

/**
 * Write `msg` at `enc.base`: the fixed header, the header fields, the
 * body, the UNIX_FDS field if the body passed fds, then the lengths.
 */
function writeMessage(enc: Encoder, msg: Message): void {
  const type = checkFixedHeader(msg);
  const signature = msg.signature || '';
  checkRequiredFields(type, msg);
  const base = enc.base;
  writeFixedHeader(enc, type, msg);
  writeHeaderFields(enc, msg, signature);
  let fieldsEnd = enc.pos;
  enc.ensure(7);
  enc.pad(8);
  let bodyStart = enc.pos;
  writeBody(enc, msg, signature);
  let end = enc.pos;
  if (enc.fds !== null && enc.fds.length > enc.fdBase) {
    moveBodyForUnixFds(enc, bodyStart, end);
    fieldsEnd = bodyStart + 8;
    bodyStart += 8;
    end += 8;
  }
  if (end - base > MAX_MESSAGE_BYTES) {
    throw new MarshalError(`the message is ${end - base} bytes, longer than the D-Bus limit of ${MAX_MESSAGE_BYTES}`);
  }
  // The buffer may have been replaced while the body was written.
  enc.u32At(base + 4, end - bodyStart);
  enc.u32At(base + 12, fieldsEnd - base - 16);
  enc.pos = end;
}

/** The message type, after checking it, the flags and the serial. */
function checkFixedHeader(msg: Message): number {
  const type: number = (msg.type as number) || METHOD_CALL;
  const flags: unknown = msg.flags || 0;
  const serial = msg.serial as unknown;
  if (type !== METHOD_CALL && type !== METHOD_RETURN && type !== ERROR && type !== SIGNAL) {
    throw new MarshalError(`unknown message type ${describe(type)}`, 'header type');
  }
  if (typeof flags !== 'number' || (flags & 0xff) !== flags) {
    throw new MarshalError(`message flags must be a byte, got ${describe(flags)}`, 'header flags');
  }
  if (typeof serial !== 'number' || serial === 0 || (serial >>> 0) !== serial) {
    throw new MarshalError(`the message has no valid serial (got ${describe(serial)})`, 'header serial');
  }
  return type;
}

/** Required fields, as the specification (and dbus-daemon) demand. */
function checkRequiredFields(type: number, msg: Message): void {
  const { path, interface: iface, member, errorName } = msg;
  const replySerial = msg.replySerial as unknown;
  const missing = (f: string) => new MarshalError(`a ${MESSAGE_TYPE_NAMES[type]} needs a ${f}`, `header ${f}`);
  if ((type === METHOD_CALL || type === SIGNAL) && (!path || !member)) throw missing(!path ? 'path' : 'member');
  if (type === SIGNAL && !iface) throw missing('interface');
  if (type === ERROR && !errorName) throw missing('errorName');
  if ((type === ERROR || type === METHOD_RETURN) && !replySerial) throw missing('replySerial');
}

/** Endianness, type, flags, version and serial; the two lengths are filled in last. */
function writeFixedHeader(enc: Encoder, type: number, msg: Message): void {
  const base = enc.base;
  enc.ensure(16);
  const b = enc.buf;
  b[base] = 0x6c; // 'l': little endian
  b[base + 1] = type;
  b[base + 2] = msg.flags || 0;
  b[base + 3] = 1; // protocol version
  enc.u32At(base + 8, msg.serial as number);
  enc.pos = base + 16;
}

/** Header fields in code order, each present when truthy (as dbus-next). */
function writeHeaderFields(enc: Encoder, msg: Message, signature: string): void {
  const { path, interface: iface, member, errorName, destination, sender } = msg;
  const replySerial = msg.replySerial as unknown;
  if (path) {
    headerString(enc, FIELD_PATH, path, O, isValidObjectPath, 'object path');
    if (path === LOCAL_PATH) throw new MarshalError(`${LOCAL_PATH} is reserved`, 'header path');
  }
  if (iface) {
    headerString(enc, FIELD_INTERFACE, iface, S, isValidInterfaceName, 'interface name');
    if (iface === LOCAL_INTERFACE) throw new MarshalError(`${LOCAL_INTERFACE} is reserved`, 'header interface');
  }
  if (member) headerString(enc, FIELD_MEMBER, member, S, isValidMemberName, 'member name');
  if (errorName) headerString(enc, FIELD_ERROR_NAME, errorName, S, isValidInterfaceName, 'error name');
  if (replySerial) {
    if (typeof replySerial !== 'number' || (replySerial >>> 0) !== replySerial) {
      throw new MarshalError(`invalid reply serial ${describe(replySerial)}`, 'header replySerial');
    }
    headerUint32(enc, FIELD_REPLY_SERIAL, replySerial);
  }
  if (destination) headerString(enc, FIELD_DESTINATION, destination, S, isValidBusName, 'bus name');
  if (sender) headerString(enc, FIELD_SENDER, sender, S, isValidBusName, 'bus name');
  if (signature) headerString(enc, FIELD_SIGNATURE, signature, G, isSignature, 'signature');
}

/** The body's values, each checked against its type in `signature`. */
function writeBody(enc: Encoder, msg: Message, signature: string): void {
  const types = parseBodySignature(signature);
  const body = (msg.body ?? []) as unknown;
  if (!Array.isArray(body) || body.length !== types.length) {
    throw new MarshalError(
      `the body has ${Array.isArray(body) ? `${body.length} values` : describe(body)} for signature '${signature}'`
      + ` (${types.length} values)`, 'body');
  }
  for (let i = 0; i < types.length; i++) {
    try {
      enc.value(types[i]!, body[i], 0);
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`body[${i}]`) : e;
    }
  }
}

/**
 * UNIX_FDS is the last field: it goes where the body now starts (an
 * 8-aligned slot of exactly 8 bytes), and the body moves up by 8, which
 * keeps every alignment within it.
 */
function moveBodyForUnixFds(enc: Encoder, bodyStart: number, end: number): void {
  enc.ensure(8);
  enc.buf.copyWithin(bodyStart + 8, bodyStart, end);
  enc.pos = bodyStart;
  headerUint32(enc, FIELD_UNIX_FDS, enc.fds!.length - enc.fdBase);
}
