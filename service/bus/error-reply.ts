/**
 * Anything a method handler throws, as the error reply its caller gets.
 * The names come from service/protocol/errors.ts.
 */
import { isPreStageError } from '../model/errors.js';
import { ERROR_NAMES } from '../protocol/errors.js';

/** A D-Bus error reply's name and text. */
export interface BusError {
  name: string;
  message: string;
}

/** Longest error text we put on the bus for an unexpected (non-engine) error. */
const INTERNAL_TEXT_MAX = 240;

/**
 * Map anything thrown by a handler to the reply a caller gets. A
 * PreStageError keeps its message (written for people). Anything else is a
 * bug or an environment failure: the caller gets Error.Internal with the
 * first line of the message only, never a stack trace; `internal` is true
 * so the caller of this function logs the full error.
 */
export function toBusError(e: unknown, context: string): BusError & { internal: boolean } {
  if (isPreStageError(e)) {
    return { name: ERROR_NAMES[e.code], message: e.message, internal: false };
  }
  const raw = e instanceof Error ? e.message : String(e);
  let first = raw.split('\n', 1)[0] ?? '';
  if (first.length > INTERNAL_TEXT_MAX) first = `${first.slice(0, INTERNAL_TEXT_MAX)}...`;
  const message = first === ''
    ? `${context} failed with an internal error; see the daemon's log`
    : `${context} failed with an internal error: ${first}`;
  return { name: ERROR_NAMES.Internal, message, internal: true };
}
