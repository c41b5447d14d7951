/**
 * Error codes of the engine's operations, and the error that carries one.
 * Plain: the engine throws them, the protocol layer maps each code to a
 * D-Bus error name in one table (service/protocol/errors.ts, where the type
 * system checks that the table covers every code), and the CLI reads the
 * ones the model's own parsers throw.
 */
export type ErrorCode =
  | 'InvalidDeployment'
  | 'InvalidHook'
  | 'NotFound'
  | 'Busy'
  | 'HookFailed'
  | 'Cancelled'
  | 'Timeout'
  | 'Internal'
  | 'InvalidArgs'
  | 'AccessDenied';

export const ERROR_CODES: readonly ErrorCode[] = [
  'InvalidDeployment', 'InvalidHook', 'NotFound', 'Busy', 'HookFailed',
  'Cancelled', 'Timeout', 'Internal', 'InvalidArgs', 'AccessDenied',
];

/** An error a caller can act on: a code plus a message a person can read. */
export class PreStageError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'PreStageError';
    this.code = code;
  }
}

export function isPreStageError(e: unknown): e is PreStageError {
  return e instanceof PreStageError;
}

/** Any thrown value as a PreStageError; unknown errors become Internal. */
export function toPreStageError(e: unknown): PreStageError {
  if (e instanceof PreStageError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new PreStageError('Internal', msg);
}

export const invalidArgs = (msg: string) => new PreStageError('InvalidArgs', msg);
export const invalidHook = (msg: string) => new PreStageError('InvalidHook', msg);
export const invalidDeployment = (msg: string) => new PreStageError('InvalidDeployment', msg);
export const notFound = (msg: string) => new PreStageError('NotFound', msg);
