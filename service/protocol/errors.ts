/**
 * The one place error codes become D-Bus error names, shared by the daemon
 * (which replies with them) and the client (which reads them). The table is
 * typed `Record<ErrorCode, string>`: adding a code to the model without a
 * name here is a compile error.
 */
import type { ErrorCode } from '../model/errors.js';

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
