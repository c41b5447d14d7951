/**
 * The `a{sv}` option schemas of every method and their codec: typed
 * decoding of what callers send (option dictionaries, hook definitions, and
 * the size bounds every argument is held to), and the encoding a client
 * sends and ListHooks replies with. Everything
 * here checks types and sizes only and answers InvalidArgs, naming the key
 * and the expected type; what a value means (is the deployment real, is the
 * argv absolute, is there an ordering cycle) is the engine's to judge.
 */
import { DEFAULT_TIMEOUT_SEC } from '../model/hook-file.js';
import { invalidArgs } from '../model/errors.js';
import type { LogOptions, PhaseOptions, RegisterOptions, StartOptions } from '../model/options.js';
import type { HookDefinition, ResolvedHook } from '../model/types.js';
import { toUint32 } from './values.js';

/** Longest string argument or option value, in UTF-8 bytes, unless stated. */
export const MAX_STRING_BYTES = 4096;
/** Most entries in any array argument or option value. */
export const MAX_ARRAY_ENTRIES = 256;
/** Longest deployment path, in UTF-8 bytes (PATH_MAX). */
export const MAX_PATH_BYTES = 4096;
/** GetLog 'max-lines': default and upper bound. */
export const DEFAULT_LOG_LINES = 1000;
export const MAX_LOG_LINES = 100_000;

/**
 * A D-Bus variant as plain data: its signature and its value. dbus-next's
 * Variant has this shape, so what the bus unmarshals decodes here; what the
 * encoders here return becomes a Variant at the connection's edge
 * (service/connection/variants.ts), so this layer needs no dbus-next.
 */
export interface TypedValue {
  readonly signature: string;
  readonly value: unknown;
}

function isTypedValue(v: unknown): v is TypedValue {
  return typeof v === 'object' && v !== null && typeof (v as TypedValue).signature === 'string' && 'value' in v;
}

const typed = (signature: string, value: unknown): TypedValue => ({ signature, value });

/** The value types an option may have. */
export type OptionType = 'b' | 'u' | 's' | 'as';
export type OptionValue<T extends OptionType> =
  T extends 'b' ? boolean : T extends 'u' ? number : T extends 's' ? string : string[];
export type OptionSpec = Readonly<Record<string, OptionType>>;
/** Decoded options: a key is present only when the caller sent it. */
export type DecodedOptions<S extends OptionSpec> = { -readonly [K in keyof S]?: OptionValue<S[K]> };

/** Throws InvalidArgs when `value` is longer than `max` UTF-8 bytes. */
export function checkString(value: string, what: string, max: number = MAX_STRING_BYTES): string {
  if (Buffer.byteLength(value, 'utf8') > max) throw invalidArgs(`${what} is longer than ${max} bytes`);
  return value;
}

/** Throws InvalidArgs when `value` has more than `max` entries or a string too long. */
export function checkStringArray(value: readonly string[], what: string, max: number = MAX_ARRAY_ENTRIES): string[] {
  if (value.length > max) throw invalidArgs(`${what} has ${value.length} entries; at most ${max} are allowed`);
  value.forEach((s, i) => checkString(s, `${what}[${i}]`));
  return [...value];
}

/** A deployment path argument: bounded; its meaning is checked by the engine. */
export function checkDeploymentArg(value: string): string {
  return checkString(value, 'the deployment path', MAX_PATH_BYTES);
}

function describe(spec: OptionSpec): string {
  const keys = Object.keys(spec);
  return keys.length === 0 ? 'none are accepted' : `accepted: ${keys.map((k) => `'${k}' (${spec[k]})`).join(', ')}`;
}

/**
 * Decode an `a{sv}` dictionary (as dbus-next unmarshals it: an object of
 * Variants) against `spec`. Unknown keys, and values whose variant type is
 * not exactly the expected one, are InvalidArgs. `context` names the
 * argument in messages (`StartPreStage options`).
 */
export function decodeOptions<S extends OptionSpec>(dict: unknown, spec: S, context: string): DecodedOptions<S> {
  if (typeof dict !== 'object' || dict === null || Array.isArray(dict)) {
    throw invalidArgs(`${context}: expected a dictionary of type a{sv}`);
  }
  // dbus-next builds the dictionary with plain assignment: a key named
  // __proto__ replaces the prototype instead of showing up as a key.
  if (Object.getPrototypeOf(dict) !== Object.prototype) {
    throw invalidArgs(`${context}: unknown key '__proto__'; ${describe(spec)}`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, raw] of Object.entries(dict as Record<string, unknown>)) {
    if (!Object.prototype.hasOwnProperty.call(spec, key)) {
      throw invalidArgs(`${context}: unknown key '${key.slice(0, 64)}'; ${describe(spec)}`);
    }
    const type = spec[key]!;
    if (!isTypedValue(raw)) throw invalidArgs(`${context}: '${key}' is not a variant`);
    if (raw.signature !== type) {
      throw invalidArgs(`${context}: '${key}' must have type '${type}', not '${raw.signature}'`);
    }
    out[key] = checkValue(raw.value, type, `${context}: '${key}'`);
  }
  return out as DecodedOptions<S>;
}

function checkValue(value: unknown, type: OptionType, what: string): unknown {
  switch (type) {
    case 'b':
      if (typeof value !== 'boolean') throw invalidArgs(`${what} must be a boolean`);
      return value;
    case 'u':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
        throw invalidArgs(`${what} must be an unsigned 32-bit integer`);
      }
      return value;
    case 's':
      if (typeof value !== 'string') throw invalidArgs(`${what} must be a string`);
      return checkString(value, what);
    case 'as':
      if (!Array.isArray(value) || !value.every((s) => typeof s === 'string')) {
        throw invalidArgs(`${what} must be an array of strings`);
      }
      return checkStringArray(value as string[], what);
  }
}

// ---- per-method option sets ------------------------------------------------------

export const START_OPTIONS = { force: 'b', wait: 'b', 'dry-run': 'b', 'timeout-sec': 'u' } as const;
export const PHASE_OPTIONS = { wait: 'b', 'timeout-sec': 'u' } as const;
export const RECONCILE_OPTIONS = {} as const;
export const REGISTER_OPTIONS = { runtime: 'b' } as const;
export const LOG_OPTIONS = { 'max-lines': 'u', hook: 's' } as const;

export function decodeStartOptions(dict: unknown): StartOptions {
  const o = decodeOptions(dict, START_OPTIONS, 'StartPreStage options');
  return {
    force: o.force ?? false,
    wait: o.wait ?? false,
    dryRun: o['dry-run'] ?? false,
    timeoutSec: o['timeout-sec'] ?? 0,
  };
}

export function decodePhaseOptions(dict: unknown, method: string): PhaseOptions {
  const o = decodeOptions(dict, PHASE_OPTIONS, `${method} options`);
  return { wait: o.wait ?? false, timeoutSec: o['timeout-sec'] ?? 0 };
}

export function decodeReconcileOptions(dict: unknown): void {
  decodeOptions(dict, RECONCILE_OPTIONS, 'Reconcile options');
}

export function decodeRegisterOptions(dict: unknown): RegisterOptions {
  const o = decodeOptions(dict, REGISTER_OPTIONS, 'RegisterHook options');
  return { runtime: o.runtime ?? false };
}

export function decodeLogOptions(dict: unknown): LogOptions {
  const o = decodeOptions(dict, LOG_OPTIONS, 'GetLog options');
  const maxLines = o['max-lines'] ?? DEFAULT_LOG_LINES;
  if (maxLines < 1 || maxLines > MAX_LOG_LINES) {
    throw invalidArgs(`GetLog options: 'max-lines' must be between 1 and ${MAX_LOG_LINES}, not ${maxLines}`);
  }
  return { maxLines, hook: o.hook ?? '' };
}

/**
 * The option dictionaries a client sends, as typed values: only the keys
 * whose value differs from the default are sent (the daemon reads an absent
 * key as its default).
 */
export function encodeStartOptions(o: StartOptions): Record<string, TypedValue> {
  const opts: Record<string, TypedValue> = {};
  if (o.force) opts['force'] = typed('b', true);
  if (o.wait) opts['wait'] = typed('b', true);
  if (o.dryRun) opts['dry-run'] = typed('b', true);
  if (o.timeoutSec) opts['timeout-sec'] = typed('u', o.timeoutSec);
  return opts;
}

export function encodePhaseOptions(o: PhaseOptions): Record<string, TypedValue> {
  const opts: Record<string, TypedValue> = {};
  if (o.wait) opts['wait'] = typed('b', true);
  if (o.timeoutSec) opts['timeout-sec'] = typed('u', o.timeoutSec);
  return opts;
}

export function encodeRegisterOptions(o: Partial<RegisterOptions>): Record<string, TypedValue> {
  return o.runtime ? { runtime: typed('b', true) } : {};
}

export function encodeLogOptions(o: Partial<LogOptions>): Record<string, TypedValue> {
  const opts: Record<string, TypedValue> = {};
  if (o.maxLines !== undefined) opts['max-lines'] = typed('u', o.maxLines);
  if (o.hook) opts['hook'] = typed('s', o.hook);
  return opts;
}

// ---- hook definitions ------------------------------------------------------------

/** The keys of a hook definition dictionary: the hook-file keys. */
export const HOOK_DEFINITION = {
  Description: 's',
  Prepare: 'as',
  Commit: 'as',
  Abort: 'as',
  After: 'as',
  Before: 'as',
  Environment: 'as',
  Required: 'b',
  TimeoutSec: 'u',
} as const;

/** Keys ListHooks adds to each definition. */
export const HOOK_ENTRY_EXTRA = {
  Source: 's',
  Origin: 's',
  Refused: 's',
  Digest: 's',
} as const;

/**
 * RegisterHook's definition to the engine's HookDefinition. Absent keys take
 * the hook-file defaults; an empty Prepare/Commit/Abort means "no such
 * step", as an absent key does (and as ListHooks encodes one), and
 * TimeoutSec 0 means infinity.
 */
export function decodeHookDefinition(dict: unknown): HookDefinition {
  const o = decodeOptions(dict, HOOK_DEFINITION, 'RegisterHook definition');
  const step = (argv: string[] | undefined) => (argv === undefined || argv.length === 0 ? null : argv);
  const timeout = o.TimeoutSec;
  return {
    description: o.Description ?? '',
    prepare: step(o.Prepare),
    commit: step(o.Commit),
    abort: step(o.Abort),
    after: o.After ?? [],
    before: o.Before ?? [],
    environment: o.Environment ?? [],
    required: o.Required ?? true,
    timeoutSec: timeout === undefined ? DEFAULT_TIMEOUT_SEC : (timeout === 0 ? null : timeout),
  };
}

/** A HookDefinition as a definition dictionary (the inverse of decodeHookDefinition). */
export function encodeHookDefinition(def: HookDefinition): Record<keyof typeof HOOK_DEFINITION, TypedValue> {
  return {
    Description: typed('s', def.description),
    Prepare: typed('as', def.prepare ?? []),
    Commit: typed('as', def.commit ?? []),
    Abort: typed('as', def.abort ?? []),
    After: typed('as', def.after),
    Before: typed('as', def.before),
    Environment: typed('as', def.environment),
    Required: typed('b', def.required),
    TimeoutSec: typed('u', toUint32(def.timeoutSec ?? 0)),
  };
}

/** One ListHooks entry, `(sa{sv})`: the definition plus where it came from. */
export function encodeHookEntry(hook: ResolvedHook): [string, Record<string, TypedValue>] {
  return [hook.name, {
    ...encodeHookDefinition(hook.definition),
    Source: typed('s', hook.source),
    Origin: typed('s', hook.origin),
    Refused: typed('s', hook.refused ?? ''),
    Digest: typed('s', hook.digest),
  }];
}
