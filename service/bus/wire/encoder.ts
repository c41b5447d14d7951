/**
 * The value encoder: writes D-Bus values (dbus-next's JS representation,
 * see message.ts) little-endian into slabs, checking each against its type.
 */
import { Variant } from 'dbus-next';
import { MAX_ARRAY_BYTES, MAX_MESSAGE_BYTES, MAX_TOTAL_DEPTH, MarshalError, describe } from './marshal-error.js';
import { isValidObjectPath } from './names.js';
import {
  TYPE_CODES, TypeNode, parseBodySignature, parseVariantSignature,
} from './signature.js';

// Module-local copies of the type codes: the encoder's switches compare
// against them for every value, and an imported binding is a live lookup
// in unbundled ES modules (measured: ~1.6x the marshalling time of a
// 200-hook PropertiesChanged, against ~1.1x with these copies).
const { A, B, D, DICT, G, H, I, N, O, Q, S, STRUCT, T, U, V, X, Y } = TYPE_CODES;

const U64_MAX = 0xffffffffffffffffn;
const I64_MIN = -0x8000000000000000n;
const I64_MAX = 0x7fffffffffffffffn;
const TWO_32 = 4294967296;

/** Messages are cut from slabs of this size (a bigger one for a bigger message). */
export const SLAB_BYTES = 1 << 18;
/** Start a new slab when less than this is left in the current one. */
export const SLAB_MIN_ROOM = 1 << 12;

/**
 * Writes messages one after another into a slab and hands each out as a
 * view of it (as Node's Buffer pool does): no copy and no allocation per
 * message. A message starts at `base`, 8-aligned in the slab, so an
 * absolute offset has the alignment of the offset in the message (the
 * body starts on an 8-byte boundary, as the specification requires).
 * Bytes before `base` belong to messages already handed out and are
 * never written again; a slab is dropped, not reused, when full.
 */
export class Encoder {
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
      default:
        this.otherValue(t, v, depth);
    }
  }

  /** The types the daemon sends less often than s, u, i, b, arrays and structs. */
  private otherValue(t: TypeNode, v: unknown, depth: number): void {
    switch (t.code) {
      case Y:
      case N:
      case Q:
      case X:
      case T:
      case D:
        this.numberValue(t, v);
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

  /** y n q x t d: integers in range, 64-bit ones as BigInt or integral numbers, finite doubles. */
  private numberValue(t: TypeNode, v: unknown): void {
    switch (t.code) {
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
      if (elem.flat && v.length >= MEMO_MIN_ELEMENTS && depth + 1 < MAX_TOTAL_DEPTH) {
        this.flatArray(elem, v, depth);
      } else {
        const n = v.length;
        let i = 0;
        try {
          for (; i < n; i++) this.value(elem, v[i], depth + 1);
        } catch (e) {
          throw e instanceof MarshalError ? e.within(`[${i}]`) : e;
        }
      }
    }
    const len = this.pos - start;
    if (len > MAX_ARRAY_BYTES) {
      throw new MarshalError(`an array of ${len} bytes is longer than the D-Bus limit of ${MAX_ARRAY_BYTES}`);
    }
    this.u32At(lenAt, len);
  }

  /**
   * The elements of an array of flat structs (TypeNode.flat), at `pos`
   * (8-aligned): the runs of elements that are the very same frozen
   * arrays, at the same index, as in the last such array encoded are
   * copied from its bytes, the rest encoded. Frozen with basic members, an
   * element cannot have changed; starting on an 8-byte boundary, its bytes
   * do not depend on where it is. A transaction's Hooks (a(ssus), entries
   * frozen by bus/transaction-object.ts) is re-sent on every hook's
   * transition with one or two entries new: 200 hooks cost 800 values
   * encoded per PropertiesChanged before, two copies and one entry now.
   */
  private flatArray(elem: TypeNode, v: readonly unknown[], depth: number): void {
    const memo = flatArrayMemo.get(elem.sig);
    const base = this.pos;
    const n = v.length;
    const starts = new Uint32Array(n);
    const ends = new Uint32Array(n);
    const kept: unknown[] = new Array(n);
    let i = 0;
    try {
      while (i < n) {
        const e = v[i];
        if (memo !== undefined && i < memo.elems.length && memo.elems[i] === e) {
          let j = i + 1;
          while (j < n && j < memo.elems.length && memo.elems[j] === v[j]) j++;
          this.ensure(7);
          this.pad(8);
          const from = memo.starts[i]!;
          const len = memo.ends[j - 1]! - from;
          this.ensure(len);
          this.buf.set(memo.bytes.subarray(from, from + len), this.pos);
          const shift = this.pos - base - from;
          for (let k = i; k < j; k++) {
            starts[k] = memo.starts[k]! + shift;
            ends[k] = memo.ends[k]! + shift;
            kept[k] = v[k];
          }
          this.pos += len;
          i = j;
          continue;
        }
        this.ensure(7);
        this.pad(8);
        starts[i] = this.pos - base;
        this.value(elem, e, depth + 1);
        ends[i] = this.pos - base;
        // Only a frozen element can be recognised next time.
        kept[i] = Object.isFrozen(e) ? e : null;
        i++;
      }
    } catch (e) {
      throw e instanceof MarshalError ? e.within(`[${i}]`) : e;
    }
    if (flatArrayMemo.size >= FLAT_ARRAY_MEMO_MAX && memo === undefined) flatArrayMemo.clear();
    // A copy: the slab the bytes are in is let go once full.
    flatArrayMemo.set(elem.sig, { elems: kept, bytes: Buffer.from(this.buf.subarray(base, this.pos)), starts, ends });
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

/** Encoder.flatArray remembers arrays of at least this many elements (a shorter one costs little). */
const MEMO_MIN_ELEMENTS = 8;
/** The last array of flat structs encoded, by element signature; at most this many signatures. */
const FLAT_ARRAY_MEMO_MAX = 16;
const flatArrayMemo = new Map<string, {
  /** The elements, null where one was not frozen; bytes and offsets relative to the first element's start. */
  elems: unknown[]; bytes: Buffer; starts: Uint32Array; ends: Uint32Array;
}>();

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
