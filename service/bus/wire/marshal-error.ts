/**
 * The D-Bus specification's limits, and the error every refusal to marshal
 * throws.
 */

/** Longest message the D-Bus specification allows (2^27 bytes). */
export const MAX_MESSAGE_BYTES = 134217728;
/** Longest array body the specification allows (2^26 bytes). */
export const MAX_ARRAY_BYTES = 67108864;
/** Longest signature, in bytes. */
export const MAX_SIGNATURE_BYTES = 255;
/** Per-signature limits on array and struct/dict-entry nesting. */
export const MAX_SIGNATURE_DEPTH = 32;
/** Containers (arrays, structs, dict entries, variants) nested in one message. */
export const MAX_TOTAL_DEPTH = 64;
/** Longest bus, interface, member or error name. */
export const MAX_NAME_BYTES = 255;

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

/** A value, briefly, for an error message (never the whole of a big one). */
export function describe(v: unknown): string {
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
