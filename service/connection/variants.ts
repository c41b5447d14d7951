/**
 * Variants at the connection's edge: the protocol layer's plain typed
 * values become dbus-next Variants on the way out, and received values lose
 * their Variant wrappers on the way in. The only other place that touches
 * dbus-next's value types is the daemon's marshaller (service/bus/wire/).
 */
import { Variant } from 'dbus-next';
import type { TypedValue } from '../protocol/options.js';

export { Variant };

/** A dictionary of the protocol's typed values as Variants, ready to send as `a{sv}`. */
export function toVariants<K extends string>(dict: Readonly<Record<K, TypedValue>>): Record<K, Variant> {
  const out = {} as Record<K, Variant>;
  for (const key of Object.keys(dict) as K[]) {
    const v = dict[key];
    out[key] = new Variant(v.signature, v.value);
  }
  return out;
}

/** Replace every Variant by its value, recursively; BigInts and Buffers stay. */
export function unwrapVariants(value: unknown): unknown {
  if (value instanceof Variant) return unwrapVariants(value.value);
  if (Array.isArray(value)) return value.map(unwrapVariants);
  if (value !== null && typeof value === 'object' && !Buffer.isBuffer(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = unwrapVariants(v);
    return out;
  }
  return value;
}
