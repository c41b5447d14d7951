/**
 * Decoding what the service sends into the plain types of types.ts. Every
 * value is checked: a property of the wrong type is a protocol error named
 * after the property, never a silent `undefined` further down.
 */
import { unwrapVariants } from '../connection/variants.js';
import type { HookEntry, HookRow, ManagerProperties, TransactionProperties } from './types.js';
import type { HookResult, Phase, TransactionState } from '../model/types.js';

export { unwrapVariants };

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function str(dict: Record<string, unknown>, key: string, what: string): string {
  const v = dict[key];
  if (typeof v !== 'string') throw new ProtocolError(`${what}: property ${key} is missing or not a string`);
  return v;
}

function uint(dict: Record<string, unknown>, key: string, what: string): number {
  const v = dict[key];
  if (typeof v === 'bigint') return Number(v);
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new ProtocolError(`${what}: property ${key} is missing or not a number`);
  }
  return v;
}

function strArray(dict: Record<string, unknown>, key: string, what: string, dflt?: string[]): string[] {
  const v = dict[key];
  if (v === undefined && dflt) return dflt;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw new ProtocolError(`${what}: ${key} is missing or not an array of strings`);
  }
  return v as string[];
}

/** A GetAll reply of the manager interface. */
export function decodeManagerProperties(raw: unknown): ManagerProperties {
  const d = unwrapVariants(raw) as Record<string, unknown>;
  const what = 'manager properties';
  return {
    version: str(d, 'Version', what),
    state: str(d, 'State', what),
    activeTransaction: str(d, 'ActiveTransaction', what),
  };
}

/** The `Hooks` property, `a(ssus)`. */
export function decodeHookRows(raw: unknown, what: string): HookRow[] {
  const v = unwrapVariants(raw);
  if (!Array.isArray(v)) throw new ProtocolError(`${what}: Hooks is not an array`);
  return v.map((row, i) => {
    if (!Array.isArray(row) || row.length !== 4 || typeof row[0] !== 'string' || typeof row[1] !== 'string'
      || typeof row[2] !== 'number' || typeof row[3] !== 'string') {
      throw new ProtocolError(`${what}: Hooks[${i}] is not (ssus)`);
    }
    return { name: row[0], result: row[1] as HookResult, percent: row[2], status: row[3] };
  });
}

/** A GetAll reply of a transaction object. */
export function decodeTransactionProperties(path: string, raw: unknown): TransactionProperties {
  const d = unwrapVariants(raw) as Record<string, unknown>;
  const what = `transaction ${path}`;
  return {
    path,
    id: str(d, 'Id', what),
    deployment: str(d, 'Deployment', what),
    phase: str(d, 'Phase', what) as Phase,
    state: str(d, 'State', what) as TransactionState,
    progress: uint(d, 'Progress', what),
    currentHook: str(d, 'CurrentHook', what),
    hooks: decodeHookRows(d['Hooks'], what),
    error: str(d, 'Error', what),
    errorMessage: str(d, 'ErrorMessage', what),
    startedUsec: uint(d, 'StartedUsec', what),
    finishedUsec: uint(d, 'FinishedUsec', what),
  };
}

/**
 * Merge a PropertiesChanged `changed` dictionary into a snapshot. Unknown
 * properties are ignored (a newer daemon may add some); known ones are
 * type-checked like GetAll.
 */
export function applyTransactionChanges(tx: TransactionProperties, rawChanged: unknown): TransactionProperties {
  const d = unwrapVariants(rawChanged) as Record<string, unknown>;
  const what = `transaction ${tx.path}`;
  const next = { ...tx };
  if ('Id' in d) next.id = str(d, 'Id', what);
  if ('Deployment' in d) next.deployment = str(d, 'Deployment', what);
  if ('Phase' in d) next.phase = str(d, 'Phase', what) as Phase;
  if ('State' in d) next.state = str(d, 'State', what) as TransactionState;
  if ('Progress' in d) next.progress = uint(d, 'Progress', what);
  if ('CurrentHook' in d) next.currentHook = str(d, 'CurrentHook', what);
  if ('Hooks' in d) next.hooks = decodeHookRows(d['Hooks'], what);
  if ('Error' in d) next.error = str(d, 'Error', what);
  if ('ErrorMessage' in d) next.errorMessage = str(d, 'ErrorMessage', what);
  if ('StartedUsec' in d) next.startedUsec = uint(d, 'StartedUsec', what);
  if ('FinishedUsec' in d) next.finishedUsec = uint(d, 'FinishedUsec', what);
  return next;
}

const DEFINITION_KEYS = new Set([
  'Description', 'Prepare', 'Commit', 'Abort', 'After', 'Before', 'Environment', 'Required', 'TimeoutSec', 'Source',
]);

/** One ListHooks entry, `(sa{sv})`. */
export function decodeHookEntry(raw: unknown): HookEntry {
  if (!Array.isArray(raw) || raw.length !== 2 || typeof raw[0] !== 'string') {
    throw new ProtocolError('ListHooks: an entry is not (sa{sv})');
  }
  const name = raw[0];
  const d = unwrapVariants(raw[1]) as Record<string, unknown>;
  const what = `hook ${name}`;
  const extra: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(d)) if (!DEFINITION_KEYS.has(k)) extra[k] = v;
  const required = d['Required'];
  return {
    name,
    description: typeof d['Description'] === 'string' ? d['Description'] : '',
    prepare: strArray(d, 'Prepare', what, []),
    commit: strArray(d, 'Commit', what, []),
    abort: strArray(d, 'Abort', what, []),
    after: strArray(d, 'After', what, []),
    before: strArray(d, 'Before', what, []),
    environment: strArray(d, 'Environment', what, []),
    required: typeof required === 'boolean' ? required : true,
    timeoutSec: typeof d['TimeoutSec'] === 'number' ? d['TimeoutSec'] : 0,
    source: typeof d['Source'] === 'string' ? d['Source'] : '',
    extra,
  };
}
