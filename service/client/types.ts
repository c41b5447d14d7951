/**
 * What the client reads from the service, as plain typed data: the
 * manager's and a transaction's properties and ListHooks entries (their
 * shapes are the protocol's, service/protocol/properties.ts), and the
 * events a followed transaction yields.
 */
import type { TransactionProperties } from '../protocol/properties.js';

export type { HookResult, Phase, StepResult, TransactionState } from '../model/types.js';
export type { HookEntry, HookRow, ManagerProperties, TransactionProperties } from '../protocol/properties.js';

/** What a followed transaction yields, in order. */
export type FollowEvent =
  /** The full current state: first the snapshot read on joining, then after every change. */
  | { type: 'state'; transaction: TransactionProperties }
  | { type: 'phase-started'; phase: string }
  | { type: 'hook-started'; hook: string; index: number; count: number }
  | { type: 'hook-progress'; hook: string; percent: number; status: string }
  | { type: 'hook-finished'; hook: string; result: string; message: string }
  | { type: 'message'; hook: string; line: string }
  /** Always the last event: the phase ended (or had ended before we looked). */
  | { type: 'finished'; state: string; error: string; message: string; transaction: TransactionProperties };

/** A signal of the service as `monitor` shows it. */
export interface ServiceSignal {
  path: string;
  interface: string;
  member: string;
  signature: string;
  /** Body with Variants unwrapped (64-bit integers stay BigInt). */
  args: unknown[];
}
