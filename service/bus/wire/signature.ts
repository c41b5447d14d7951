/**
 * D-Bus type signatures: the type codes, parsed complete types (TypeNode),
 * and a parser that enforces the specification's grammar and limits, with
 * a bounded cache of parsed signatures.
 */
import {
  MAX_SIGNATURE_BYTES, MAX_SIGNATURE_DEPTH, MarshalError, describe,
} from './marshal-error.js';

// Type codes, as char codes.
export const Y = 0x79, B = 0x62, N = 0x6e, Q = 0x71, I = 0x69, U = 0x75, X = 0x78, T = 0x74;
export const D = 0x64, H = 0x68, S = 0x73, O = 0x6f, G = 0x67, V = 0x76, A = 0x61;
export const STRUCT = 0x28, STRUCT_END = 0x29, DICT = 0x7b, DICT_END = 0x7d;
/** The codes as one object, for a module that keeps local copies (encoder.ts says why). */
export const TYPE_CODES = { Y, B, N, Q, I, U, X, T, D, H, S, O, G, V, A, STRUCT, STRUCT_END, DICT, DICT_END } as const;

/** One complete type of a parsed signature. */
export class TypeNode {
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
  ) {
    this.flat = code === STRUCT && fields!.every((f) => f.fields === null && f.elem === null && f.code !== V && f.code !== H);
  }

  /**
   * A struct of basic types other than 'v' and 'h': its bytes, once it
   * starts on its 8-byte boundary, do not depend on where in a message it
   * is, so the encoder may reuse them (Encoder, frozen values).
   */
  readonly flat: boolean;
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

export function parseBodySignature(sig: string): TypeNode[] {
  let types = bodyTypes.get(sig);
  if (types === undefined) {
    types = SignatureParser.parse(sig);
    if (bodyTypes.size >= SIGNATURE_CACHE_MAX) bodyTypes.clear();
    bodyTypes.set(sig, types);
  }
  return types;
}

export function parseVariantSignature(sig: unknown): TypeNode {
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
