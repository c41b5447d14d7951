/**
 * The D-Bus wire format for outgoing messages: a marshaller for dbus-next
 * `Message` objects that writes little-endian, protocol-version-1 bytes
 * identical to dbus-next 0.10.2's `marshallMessage` (test/unit/bus-wire.test.ts
 * checks them byte for byte), at a small fraction of its cost. dbus-next
 * builds every value through the `put` package, one small Buffer per value
 * and one per padding run; on a 200-hook transaction that was ~8 ms per
 * hook for the PropertiesChanged carrying the whole `Hooks` array.
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
 */
import { Variant, type Message } from 'dbus-next';

/** Longest message the D-Bus specification allows (2^27 bytes). */
export const MAX_MESSAGE_BYTES = 134217728;
/** Longest array body the specification allows (2^26 bytes). */
export const MAX_ARRAY_BYTES = 67108864;
/** Longest signature, in bytes. */
const MAX_SIGNATURE_BYTES = 255;
/** Per-signature limits on array and struct/dict-entry nesting. */
const MAX_SIGNATURE_DEPTH = 32;
/** Containers (arrays, structs, dict entries, variants) nested in one message. */
const MAX_TOTAL_DEPTH = 64;
/** Longest bus, interface, member or error name. */
const MAX_NAME_BYTES = 255;

/**
 * A message or one of its values cannot be put on the wire: a body that
 * does not match its signature, a value out of range, an invalid name,
 * path or signature, or a spec limit exceeded. `location` says where in
 * the message (`body[1]["Hooks"][3][2]`, or a header field).
 */
export class MarshalError extends Error {
  /** Where the offending value is, outermost first. */
  location: string;
  /** What is wrong with it. */
  readonly reason: string;
  constructor(reason: string, location = '') {
    super(location ? `${reason} (at ${location})` : reason);
    this.name = 'MarshalError';
    this.reason = reason;
    this.location = location;
  }

  /** Prefix a path segment as the error leaves a container. */
  within(segment: string): MarshalError {
    this.location = segment + this.location;
    this.message = `${this.reason} (at ${this.location})`;
    return this;
  }
}

// Type codes, as char codes.
const Y = 0x79, B = 0x62, N = 0x6e, Q = 0x71, I = 0x69, U = 0x75, X = 0x78, T = 0x74;
const D = 0x64, H = 0x68, S = 0x73, O = 0x6f, G = 0x67, V = 0x76, A = 0x61;
const STRUCT = 0x28, STRUCT_END = 0x29, DICT = 0x7b, DICT_END = 0x7d;

/** One complete type of a parsed signature. */
class TypeNode {
  constructor(
    /** Type code (char code of y, b, ..., a, '(' or '{'). */
    readonly code: number,
    /** This complete type as signature text, for messages. */
    readonly sig: string,
    /** Alignment of the type's first byte. */
    readonly align: number,
    /** Array element type. */
    readonly elem: TypeNode | null,
    /** Struct members, or a dict entry's key and value. */
    readonly fields: TypeNode[] | null,
  ) {}
}

const BASIC_ALIGN: Record<number, number> = {
  [Y]: 1, [B]: 4, [N]: 2, [Q]: 2, [I]: 4, [U]: 4, [X]: 8, [T]: 8, [D]: 8, [H]: 4,
  [S]: 4, [O]: 4, [G]: 1, [V]: 1,
};
const BASIC_NODES = new Map<number, TypeNode>();
for (const [code, align] of Object.entries(BASIC_ALIGN)) {
  const c = Number(code);
  BASIC_NODES.set(c, new TypeNode(c, String.fromCharCode(c), align, null, null));
}

/** Parses signatures, enforcing the specification's grammar and limits. */
class SignatureParser {
  private i = 0;
  private arrays = 0;
  private structs = 0;
  constructor(private readonly sig: string) {}

  static parse(sig: string): TypeNode[] {
    if (sig.length > MAX_SIGNATURE_BYTES) {
      throw new MarshalError(`signature is longer than ${MAX_SIGNATURE_BYTES} bytes: '${sig.slice(0, 40)}...'`);
    }
    const p = new SignatureParser(sig);
    const out: TypeNode[] = [];
    while (p.i < sig.length) out.push(p.complete());
    return out;
  }

  private bad(why: string): MarshalError {
    return new MarshalError(`invalid signature '${this.sig}': ${why}`);
  }

  private complete(): TypeNode {
    const sig = this.sig;
    if (this.i >= sig.length) throw this.bad('a container ends early');
    const start = this.i;
    const c = sig.charCodeAt(this.i++);
    const basic = BASIC_NODES.get(c);
    if (basic !== undefined) return basic;
    if (c === A) {
      if (++this.arrays > MAX_SIGNATURE_DEPTH) throw this.bad(`more than ${MAX_SIGNATURE_DEPTH} nested arrays`);
      let elem: TypeNode;
      if (this.i < sig.length && sig.charCodeAt(this.i) === DICT) elem = this.dictEntry();
      else elem = this.complete();
      this.arrays--;
      return new TypeNode(A, sig.slice(start, this.i), 4, elem, null);
    }
    if (c === STRUCT) {
      if (++this.structs > MAX_SIGNATURE_DEPTH) throw this.bad(`more than ${MAX_SIGNATURE_DEPTH} nested structs`);
      const fields: TypeNode[] = [];
      while (this.i < sig.length && sig.charCodeAt(this.i) !== STRUCT_END) fields.push(this.complete());
      if (this.i >= sig.length) throw this.bad("a '(' is not closed");
      if (fields.length === 0) throw this.bad('an empty struct');
      this.i++;
      this.structs--;
      return new TypeNode(STRUCT, sig.slice(start, this.i), 8, null, fields);
    }
    if (c === DICT) throw this.bad('a dict entry outside an array');
    if (c === STRUCT_END || c === DICT_END) throw this.bad(`an unmatched '${sig[start]}'`);
    throw this.bad(`unknown type code '${sig[start]}'`);
  }

  private dictEntry(): TypeNode {
    const sig = this.sig;
    const start = this.i++;
    if (++this.structs > MAX_SIGNATURE_DEPTH) throw this.bad(`more than ${MAX_SIGNATURE_DEPTH} nested structs`);
    if (this.i >= sig.length) throw this.bad("a '{' is not closed");
    const key = this.complete();
    if (key.fields !== null || key.elem !== null || key.code === V) {
      throw this.bad(`a dict key must be a basic type, not '${key.sig}'`);
    }
    if (this.i >= sig.length || sig.charCodeAt(this.i) === DICT_END) throw this.bad('a dict entry without a value type');
    const value = this.complete();
    if (this.i >= sig.length) throw this.bad("a '{' is not closed");
    if (sig.charCodeAt(this.i) !== DICT_END) throw this.bad('a dict entry with more than two types');
    this.i++;
    this.structs--;
    return new TypeNode(DICT, sig.slice(start, this.i), 8, null, [key, value]);
  }
}

/**
 * Parsed signatures, by text. Bounded: variant signatures come from
 * values, so the set is open; when full it is simply dropped.
 */
const SIGNATURE_CACHE_MAX = 512;
const bodyTypes = new Map<string, TypeNode[]>();
const variantTypes = new Map<string, TypeNode>();

function parseBodySignature(sig: string): TypeNode[] {
  let types = bodyTypes.get(sig);
  if (types === undefined) {
    types = SignatureParser.parse(sig);
    if (bodyTypes.size >= SIGNATURE_CACHE_MAX) bodyTypes.clear();
    bodyTypes.set(sig, types);
  }
  return types;
}

function parseVariantSignature(sig: unknown): TypeNode {
  if (typeof sig !== 'string') throw new MarshalError(`a Variant's signature must be a string, got ${describe(sig)}`);
  let t = variantTypes.get(sig);
  if (t === undefined) {
    const types = SignatureParser.parse(sig);
    if (types.length !== 1) {
      throw new MarshalError(`a Variant's signature must be one complete type, got '${sig}'`);
    }
    t = types[0]!;
    if (variantTypes.size >= SIGNATURE_CACHE_MAX) variantTypes.clear();
    variantTypes.set(sig, t);
  }
  return t;
}

/** A value, briefly, for an error message (never the whole of a big one). */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  switch (typeof v) {
    case 'string': return v.length > 40 ? `a string '${v.slice(0, 40)}...'` : `'${v}'`;
    case 'number': return String(v);
    case 'bigint': return `${v}n`;
    case 'boolean': return String(v);
    case 'object': {
      if (Array.isArray(v)) return `an array of ${v.length}`;
      if (Buffer.isBuffer(v)) return `a Buffer of ${v.length} bytes`;
      const name = (v as object).constructor?.name;
      return name ? `a ${name}` : 'an object';
    }
    default: return `a ${typeof v}`;
  }
}

/** `[A-Za-z_][A-Za-z0-9_]*`, as member names and name elements need. */
function isElementChar(c: number, first: boolean): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || (!first && c >= 0x30 && c <= 0x39);
}

/** An object path: `/`, or `/`-separated non-empty `[A-Za-z0-9_]` elements. */
export function isValidObjectPath(p: string): boolean {
  const n = p.length;
  if (n === 0 || p.charCodeAt(0) !== 0x2f) return false;
  if (n === 1) return true;
  let prevSlash = true;
  for (let i = 1; i < n; i++) {
    const c = p.charCodeAt(i);
    if (c === 0x2f) {
      if (prevSlash) return false;
      prevSlash = true;
    } else if ((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f) {
      prevSlash = false;
    } else {
      return false;
    }
  }
  return !prevSlash;
}

/** An interface or error name: two or more `.`-separated elements. */
function isValidInterfaceName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  let elements = 1;
  let first = true;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (first) return false;
      elements++;
      first = true;
    } else if (isElementChar(c, first)) {
      first = false;
    } else {
      return false;
    }
  }
  return !first && elements >= 2;
}

function isValidMemberName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  for (let i = 0; i < n; i++) if (!isElementChar(s.charCodeAt(i), i === 0)) return false;
  return true;
}

/** A unique (`:1.42`) or well-known (`org.example.Name`) bus name. */
function isValidBusName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  const unique = s.charCodeAt(0) === 0x3a;
  let elements = 1;
  let first = true;
  for (let i = unique ? 1 : 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (first) return false;
      elements++;
      first = true;
    } else if (isElementChar(c, first && !unique) || c === 0x2d) {
      first = false;
    } else {
      return false;
    }
  }
  return !first && elements >= 2;
}

const LOCAL_PATH = '/org/freedesktop/DBus/Local';
const LOCAL_INTERFACE = 'org.freedesktop.DBus.Local';

const METHOD_CALL = 1, METHOD_RETURN = 2, ERROR = 3, SIGNAL = 4;
const FIELD_PATH = 1, FIELD_INTERFACE = 2, FIELD_MEMBER = 3, FIELD_ERROR_NAME = 4;
const FIELD_REPLY_SERIAL = 5, FIELD_DESTINATION = 6, FIELD_SENDER = 7, FIELD_SIGNATURE = 8;
const FIELD_UNIX_FDS = 9;
const MESSAGE_TYPE_NAMES = ['', 'method call', 'method return', 'error', 'signal'];
const FIELD_NAMES = ['', 'path', 'interface', 'member', 'errorName', 'replySerial', 'destination', 'sender', 'signature', 'unixFd'];

const U64_MAX = 0xffffffffffffffffn;
const I64_MIN = -0x8000000000000000n;
const I64_MAX = 0x7fffffffffffffffn;
const TWO_32 = 4294967296;

/** Messages are cut from slabs of this size (a bigger one for a bigger message). */
const SLAB_BYTES = 1 << 18;
/** Start a new slab when less than this is left in the current one. */
const SLAB_MIN_ROOM = 1 << 12;

/**
 * Writes messages one after another into a slab and hands each out as a
 * view of it (as Node's Buffer pool does): no copy and no allocation per
 * message. A message starts at `base`, 8-aligned in the slab, so an
 * absolute offset has the alignment of the offset in the message (the
 * body starts on an 8-byte boundary, as the specification requires).
 * Bytes before `base` belong to messages already handed out and are
 * never written again; a slab is dropped, not reused, when full.
 */
class Encoder {
  buf: Buffer;
  dv: DataView;
  /** Where the message being written starts in `buf`. */
  base = 0;
  /** The next byte to write, an absolute offset in `buf`. */
  pos = 0;
  fds: number[] | null = null;
  /** Length of `fds` before this message: 'h' indices count from here. */
  fdBase = 0;
  busy = false;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafeSlow(size);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** Start a message at the next 8-aligned offset, in a new slab if need be. */
  begin(): void {
    const base = (this.pos + 7) & -8;
    if (this.buf.length - base < SLAB_MIN_ROOM || this.buf.length > SLAB_BYTES) {
      this.newSlab(SLAB_BYTES);
      this.base = 0;
    } else {
      this.base = base;
    }
    this.pos = this.base;
  }

  /** The finished message: a view of the slab, which moves on past it. */
  finish(): Buffer {
    return this.buf.subarray(this.base, this.pos);
  }

  /** Forget a message that failed: the next one starts at the same place. */
  abandon(): void {
    this.pos = this.base;
  }

  private newSlab(size: number): void {
    this.buf = Buffer.allocUnsafeSlow(size);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** Room for `n` more bytes; the message limit is enforced here. */
  ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(this.pos + n);
  }

  /**
   * Move the message to a bigger slab, at the same offset, so that every
   * offset taken so far (array length slots, the body start) stays valid.
   */
  private grow(need: number): void {
    // Padding and the 3-bytes-per-char string estimate may ask a little
    // past the limit; the exact check is done on the finished message.
    if (need - this.base > MAX_MESSAGE_BYTES + 1024) {
      throw new MarshalError(`the message is longer than the D-Bus limit of ${MAX_MESSAGE_BYTES} bytes`);
    }
    let size = Math.max(SLAB_BYTES, this.buf.length);
    while (size < need) size *= 2;
    const old = this.buf;
    this.newSlab(size);
    old.copy(this.buf, this.base, this.base, this.pos);
  }

  /** Zero-pad to a multiple of `a` (a power of two). Caller ensured room. */
  pad(a: number): void {
    let p = this.pos;
    const end = (p + a - 1) & -a;
    const b = this.buf;
    while (p < end) b[p++] = 0;
    this.pos = p;
  }

  u32At(p: number, v: number): void {
    const b = this.buf;
    b[p] = v;
    b[p + 1] = v >>> 8;
    b[p + 2] = v >>> 16;
    b[p + 3] = v >>> 24;
  }

  u32(v: number): void {
    this.ensure(7);
    this.pad(4);
    this.u32At(this.pos, v);
    this.pos += 4;
  }

  /** A string's UTF-8 bytes with a 4-byte length and a NUL (s, o). */
  string(s: string): void {
    const n = s.length;
    // UTF-8 needs at most 3 bytes per UTF-16 unit; exact for long ones,
    // so a big string does not reserve three times its size.
    const room = n > 1024 ? Buffer.byteLength(s, 'utf8') : n * 3;
    this.ensure(room + 8);
    this.pad(4);
    const b = this.buf;
    const start = this.pos + 4;
    let len = 0;
    if (n <= 48) {
      // Short ASCII strings: cheaper in JS than a call into C++.
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c === 0 || c >= 0x80) break;
        b[start + i] = c;
      }
      if (i === n) len = n;
      else len = this.utf8(s, start);
    } else {
      len = this.utf8(s, start);
    }
    this.u32At(this.pos, len);
    b[start + len] = 0;
    this.pos = start + len + 1;
  }

  private utf8(s: string, at: number): number {
    if (s.indexOf('\0') !== -1) throw new MarshalError('a string contains a NUL character');
    return this.buf.write(s, at);
  }

  /** A signature (g): 1-byte length, ASCII, NUL. Already validated. */
  signature(s: string): void {
    const n = s.length;
    this.ensure(n + 2);
    const b = this.buf;
    let p = this.pos;
    b[p++] = n;
    for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
    b[p++] = 0;
    this.pos = p;
  }

  /** A 64-bit integer, two's complement for negative ones. */
  int64(t: TypeNode, v: unknown): void {
    const signed = t.code === X;
    if (typeof v === 'number') {
      if (Number.isSafeInteger(v) && (signed || v >= 0)) {
        this.ensure(15);
        this.pad(8);
        this.u32At(this.pos, v >>> 0);
        this.u32At(this.pos + 4, Math.floor(v / TWO_32) >>> 0);
        this.pos += 8;
        return;
      }
      if (!Number.isInteger(v) || Math.abs(v) >= 1e21) {
        throw new MarshalError(`expected an integer for '${t.sig}', got ${describe(v)}`);
      }
      // An integral double past 2^53: dbus-next reads it as its decimal text.
      v = BigInt(String(v));
    } else if (typeof v !== 'bigint') {
      throw new MarshalError(`expected a BigInt or integer for '${t.sig}', got ${describe(v)}`);
    }
    const big = v as bigint;
    if (signed ? big < I64_MIN || big > I64_MAX : big < 0n || big > U64_MAX) {
      throw new MarshalError(`${big}n is out of range for '${t.sig}'`);
    }
    this.ensure(15);
    this.pad(8);
    if (signed) this.dv.setBigInt64(this.pos, big, true);
    else this.dv.setBigUint64(this.pos, big, true);
    this.pos += 8;
  }

  /** Any value of type `t`; `depth` counts enclosing containers. */
  value(t: TypeNode, v: unknown, depth: number): void {
    switch (t.code) {
      case S: {
        if (typeof v !== 'string') v = this.textOf(t, v);
        this.string(v as string);
        return;
      }
      case U:
        if (typeof v !== 'number' || (v >>> 0) !== v) throw this.intError(t, v, '0..4294967295');
        this.u32(v);
        return;
      case STRUCT:
        this.struct(t, v, depth);
        return;
      case A:
        this.array(t, v, depth);
        return;
      case I:
        if (typeof v !== 'number' || (v | 0) !== v) throw this.intError(t, v, '-2147483648..2147483647');
        this.u32(v);
        return;
      case B:
        if (v === true || v === 1) this.u32(1);
        else if (v === false || v === 0) this.u32(0);
        else throw new MarshalError(`expected a boolean for 'b', got ${describe(v)}`);
        return;
      case Y:
        if (typeof v !== 'number' || (v & 0xff) !== v) throw this.intError(t, v, '0..255');
        this.ensure(1);
        this.buf[this.pos++] = v;
        return;
      case N:
      case Q: {
        if (typeof v !== 'number' || (t.code === N ? (v << 16) >> 16 : v & 0xffff) !== v) {
          throw this.intError(t, v, t.code === N ? '-32768..32767' : '0..65535');
        }
        this.ensure(3);
        this.pad(2);
        const b = this.buf;
        b[this.pos] = v;
        b[this.pos + 1] = v >>> 8;
        this.pos += 2;
        return;
      }
      case X:
      case T:
        this.int64(t, v);
        return;
      case D:
        if (typeof v !== 'number' || !Number.isFinite(v)) {
          throw new MarshalError(`expected a finite number for 'd', got ${describe(v)}`);
        }
        this.ensure(15);
        this.pad(8);
        this.dv.setFloat64(this.pos, v, true);
        this.pos += 8;
        return;
      case O: {
        if (typeof v !== 'string') v = this.textOf(t, v);
        if (!isValidObjectPath(v as string)) throw new MarshalError(`invalid object path ${describe(v)}`);
        this.string(v as string);
        return;
      }
      case G: {
        if (typeof v !== 'string') v = this.textOf(t, v);
        parseBodySignature(v as string);
        this.signature(v as string);
        return;
      }
      case H: {
        if (typeof v !== 'number' || (v | 0) !== v || v < 0) {
          throw new MarshalError(`expected a file descriptor (an integer >= 0) for 'h', got ${describe(v)}`);
        }
        if (this.fds === null) {
          throw new MarshalError("cannot send a unix fd ('h'): this connection does not pass file descriptors");
        }
        this.u32(this.fds.push(v) - 1 - this.fdBase);
        return;
      }
      case V: {
        if (!(v instanceof Variant)) throw new MarshalError(`expected a Variant for 'v', got ${describe(v)}`);
        if (depth >= MAX_TOTAL_DEPTH) throw new MarshalError(`more than ${MAX_TOTAL_DEPTH} nested containers`);
        const inner = parseVariantSignature(v.signature);
        this.signature(inner.sig);
        try {
          this.value(inner, v.value, depth + 1);
        } catch (e) {
          throw e instanceof MarshalError ? e.within(`<${inner.sig}>`) : e;
        }
        return;
      }
      default:
        throw new MarshalError(`cannot marshal type '${t.sig}'`);
    }
  }

  private textOf(t: TypeNode, v: unknown): string {
    // dbus-next writes a Buffer given for a string type as its UTF-8 text.
    if (Buffer.isBuffer(v)) return v.toString();
    throw new MarshalError(`expected a string for '${t.sig}', got ${describe(v)}`);
  }

  private intError(t: TypeNode, v: unknown, range: string): MarshalError {
    return new MarshalError(`expected an integer in ${range} for '${t.sig}', got ${describe(v)}`);
  }

  private struct(t: TypeNode, v: unknown, depth: number): void {
    const fields = t.fields!;
    if (!Array.isArray(v) || v.length !== fields.length) {
      throw new MarshalError(`expected an array of ${fields.length} members for '${t.sig}', got ${describe(v)}`);
    }
    if (depth >= MAX_TOTAL_DEPTH) throw new MarshalError(`more than ${MAX_TOTAL_DEPTH} nested containers`);
    this.ensure(7);
    this.pad(8);
    let i = 0;
    try {
      for (; i < fields.length; i++) this.value(fields[i]!, v[i], depth + 1);
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`[${i}]`) : e;
    }
  }

  private array(t: TypeNode, v: unknown, depth: number): void {
    if (depth >= MAX_TOTAL_DEPTH) throw new MarshalError(`more than ${MAX_TOTAL_DEPTH} nested containers`);
    const elem = t.elem!;
    // The length, then padding to the element's alignment even when the
    // array is empty; the length counts neither.
    this.ensure(15);
    this.pad(4);
    const lenAt = this.pos;
    this.pos += 4;
    this.pad(elem.align);
    const start = this.pos;
    if (elem.code === DICT) {
      this.dict(t, v, depth + 1);
    } else if (elem.code === Y && v instanceof Uint8Array) {
      this.ensure(v.length);
      this.buf.set(v, this.pos);
      this.pos += v.length;
    } else {
      if (!Array.isArray(v)) throw new MarshalError(`expected an array for '${t.sig}', got ${describe(v)}`);
      const n = v.length;
      let i = 0;
      try {
        for (; i < n; i++) this.value(elem, v[i], depth + 1);
      } catch (e) {
        throw e instanceof MarshalError ? e.within(`[${i}]`) : e;
      }
    }
    const len = this.pos - start;
    if (len > MAX_ARRAY_BYTES) {
      throw new MarshalError(`an array of ${len} bytes is longer than the D-Bus limit of ${MAX_ARRAY_BYTES}`);
    }
    this.u32At(lenAt, len);
  }

  private dict(t: TypeNode, v: unknown, depth: number): void {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new MarshalError(`expected a plain object for '${t.sig}', got ${describe(v)}`);
    }
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      throw new MarshalError(`expected a plain object for '${t.sig}', got ${describe(v)}`);
    }
    if (depth >= MAX_TOTAL_DEPTH) throw new MarshalError(`more than ${MAX_TOTAL_DEPTH} nested containers`);
    const [keyType, valueType] = t.elem!.fields!;
    const obj = v as Record<string, unknown>;
    const keys = Object.keys(obj);
    let k = '';
    try {
      for (let i = 0; i < keys.length; i++) {
        k = keys[i]!;
        this.ensure(7);
        this.pad(8);
        if (keyType!.code === S) this.string(k);
        else this.value(keyType!, dictKey(keyType!, k), depth + 1);
        this.value(valueType!, obj[k], depth + 1);
      }
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`[${JSON.stringify(k)}]`) : e;
    }
  }

}

/**
 * A dict key as its type's JS value. Keys of plain objects are strings;
 * numeric and boolean ones must be the canonical text of a value (as
 * dbus-next's unmarshaller makes them), so nothing is silently rounded.
 */
function dictKey(t: TypeNode, k: string): unknown {
  switch (t.code) {
    case O:
    case G:
      return k;
    case B:
      if (k === 'true') return true;
      if (k === 'false') return false;
      break;
    case X:
    case T: {
      let n: bigint | undefined;
      try { n = BigInt(k); } catch { n = undefined; }
      if (n !== undefined && String(n) === k) return n;
      break;
    }
    default: {
      const n = Number(k);
      if (k !== '' && String(n) === k) return n;
    }
  }
  throw new MarshalError(`dict key ${JSON.stringify(k)} is not a '${t.sig}'`);
}

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
  const b = enc.buf;
  b[enc.pos] = code;
  b[enc.pos + 1] = 1;
  b[enc.pos + 2] = sigChar;
  b[enc.pos + 3] = 0;
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
  const b = enc.buf;
  b[enc.pos] = code;
  b[enc.pos + 1] = 1;
  b[enc.pos + 2] = U;
  b[enc.pos + 3] = 0;
  enc.u32At(enc.pos + 4, value);
  enc.pos += 8;
}

const isSignature = (s: string): boolean => {
  parseBodySignature(s);
  return true;
};

function writeMessage(enc: Encoder, msg: Message): void {
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

  // Required fields, as the specification (and dbus-daemon) demand.
  const { path, interface: iface, member, errorName, destination, sender } = msg;
  const replySerial = msg.replySerial as unknown;
  const signature = msg.signature || '';
  const missing = (f: string) => new MarshalError(`a ${MESSAGE_TYPE_NAMES[type]} needs a ${f}`, `header ${f}`);
  if ((type === METHOD_CALL || type === SIGNAL) && (!path || !member)) throw missing(!path ? 'path' : 'member');
  if (type === SIGNAL && !iface) throw missing('interface');
  if (type === ERROR && !errorName) throw missing('errorName');
  if ((type === ERROR || type === METHOD_RETURN) && !replySerial) throw missing('replySerial');

  const base = enc.base;
  enc.ensure(16);
  const b = enc.buf;
  b[base] = 0x6c; // 'l': little endian
  b[base + 1] = type;
  b[base + 2] = flags;
  b[base + 3] = 1; // protocol version
  enc.u32At(base + 8, serial);
  enc.pos = base + 16;

  // Header fields in code order, each present when truthy (as dbus-next).
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

  let fieldsEnd = enc.pos;
  enc.ensure(7);
  enc.pad(8);
  let bodyStart = enc.pos;

  const types = parseBodySignature(signature);
  const body = (msg.body ?? []) as unknown;
  if (!Array.isArray(body) || body.length !== types.length) {
    throw new MarshalError(
      `the body has ${Array.isArray(body) ? `${body.length} values` : describe(body)} for signature '${signature}'`
      + ` (${types.length} values)`, 'body');
  }
  const fds = enc.fds;
  const fdStart = enc.fdBase;
  for (let i = 0; i < types.length; i++) {
    try {
      enc.value(types[i]!, body[i], 0);
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`body[${i}]`) : e;
    }
  }
  let end = enc.pos;

  if (fds !== null && fds.length > fdStart) {
    // UNIX_FDS is the last field: it goes where the body now starts (an
    // 8-aligned slot of exactly 8 bytes), and the body moves up by 8,
    // which keeps every alignment within it.
    enc.ensure(8);
    enc.buf.copyWithin(bodyStart + 8, bodyStart, end);
    enc.pos = bodyStart;
    headerUint32(enc, FIELD_UNIX_FDS, fds.length - fdStart);
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
