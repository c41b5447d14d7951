/**
 * The one place engine error codes become D-Bus error names. The table is
 * typed `Record<ErrorCode, string>`: adding a code to the engine without a
 * name here is a compile error.
 */
import { isPreStageError, type ErrorCode } from '../model/errors.js';

/** Prefix of this service's own error names. */
export const ERROR_PREFIX = 'org.containers.bootc.PreStage.Error.';

/** Standard D-Bus error names the object server answers with. */
export const DBUS_ERROR = {
  Failed: 'org.freedesktop.DBus.Error.Failed',
  InvalidArgs: 'org.freedesktop.DBus.Error.InvalidArgs',
  AccessDenied: 'org.freedesktop.DBus.Error.AccessDenied',
  UnknownObject: 'org.freedesktop.DBus.Error.UnknownObject',
  UnknownInterface: 'org.freedesktop.DBus.Error.UnknownInterface',
  UnknownMethod: 'org.freedesktop.DBus.Error.UnknownMethod',
  PropertyReadOnly: 'org.freedesktop.DBus.Error.PropertyReadOnly',
  NoReply: 'org.freedesktop.DBus.Error.NoReply',
  Disconnected: 'org.freedesktop.DBus.Error.Disconnected',
} as const;

export const ERROR_NAMES: Readonly<Record<ErrorCode, string>> = {
  InvalidDeployment: `${ERROR_PREFIX}InvalidDeployment`,
  InvalidHook: `${ERROR_PREFIX}InvalidHook`,
  NotFound: `${ERROR_PREFIX}NotFound`,
  Busy: `${ERROR_PREFIX}Busy`,
  HookFailed: `${ERROR_PREFIX}HookFailed`,
  Cancelled: `${ERROR_PREFIX}Cancelled`,
  Timeout: `${ERROR_PREFIX}Timeout`,
  Internal: `${ERROR_PREFIX}Internal`,
  InvalidArgs: DBUS_ERROR.InvalidArgs,
  AccessDenied: DBUS_ERROR.AccessDenied,
};

/** The D-Bus name of an engine error code; '' (no error) stays ''. */
export function errorNameFor(code: ErrorCode | ''): string {
  return code === '' ? '' : ERROR_NAMES[code];
}

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
