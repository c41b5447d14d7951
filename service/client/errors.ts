/**
 * What can go wrong for a client, in a few kinds a caller (the CLI's exit
 * status, a test) can act on, each with a one-line message for people and
 * the D-Bus error name it came from.
 */
import { DBusError } from '../connection/core.js';
import { ERROR_NAMES, ERROR_PREFIX } from '../protocol/errors.js';

/**
 * - `failed`: the work ran and failed (a hook failed, timed out, was
 *   cancelled; the daemon hit an internal error);
 * - `usage`: the request was malformed (InvalidArgs, a bad command line);
 * - `busy`: another transaction is running;
 * - `not-found`: no such transaction, deployment or hook, or an invalid
 *   deployment or hook definition;
 * - `unreachable`: no bus, no daemon, the daemon went away, no reply;
 * - `denied`: the bus policy or the daemon refused the caller.
 */
export type ClientErrorKind = 'failed' | 'usage' | 'busy' | 'not-found' | 'unreachable' | 'denied';

export class ClientError extends Error {
  readonly kind: ClientErrorKind;
  /** The D-Bus error name, or '' when the error is the client's own. */
  readonly errorName: string;

  constructor(kind: ClientErrorKind, message: string, errorName = '') {
    super(message);
    this.name = 'ClientError';
    this.kind = kind;
    this.errorName = errorName;
  }
}

const KIND_BY_NAME: ReadonlyMap<string, ClientErrorKind> = new Map<string, ClientErrorKind>([
  [ERROR_NAMES.Busy, 'busy'],
  [ERROR_NAMES.NotFound, 'not-found'],
  [ERROR_NAMES.InvalidDeployment, 'not-found'],
  [ERROR_NAMES.InvalidHook, 'not-found'],
  [ERROR_NAMES.HookFailed, 'failed'],
  [ERROR_NAMES.Cancelled, 'failed'],
  [ERROR_NAMES.Timeout, 'failed'],
  [ERROR_NAMES.Internal, 'failed'],
  [ERROR_NAMES.InvalidArgs, 'usage'],
  [ERROR_NAMES.AccessDenied, 'denied'],
  ['org.freedesktop.DBus.Error.UnknownObject', 'not-found'],
  ['org.freedesktop.DBus.Error.ServiceUnknown', 'unreachable'],
  ['org.freedesktop.DBus.Error.NameHasNoOwner', 'unreachable'],
  ['org.freedesktop.DBus.Error.NoReply', 'unreachable'],
  ['org.freedesktop.DBus.Error.Timeout', 'unreachable'],
  ['org.freedesktop.DBus.Error.TimedOut', 'unreachable'],
  ['org.freedesktop.DBus.Error.Disconnected', 'unreachable'],
  ['org.freedesktop.DBus.Error.NoServer', 'unreachable'],
  ['org.freedesktop.DBus.Error.NoNetwork', 'unreachable'],
  ['org.freedesktop.DBus.Error.LimitsExceeded', 'unreachable'],
]);

/** The kind of a D-Bus error name. */
export function kindOfErrorName(name: string): ClientErrorKind {
  const k = KIND_BY_NAME.get(name);
  if (k) return k;
  // Activation failures: Spawn.ChildExited, Spawn.ExecFailed, Spawn.ServiceNotFound...
  if (name.startsWith('org.freedesktop.DBus.Error.Spawn.')) return 'unreachable';
  if (name.startsWith(ERROR_PREFIX)) return 'failed';
  return 'failed';
}

/** A short label for an error name: our own lose their prefix. */
export function shortErrorName(name: string): string {
  if (name.startsWith(ERROR_PREFIX)) return name.slice(ERROR_PREFIX.length);
  const std = 'org.freedesktop.DBus.Error.';
  return name.startsWith(std) ? name.slice(std.length) : name;
}

/**
 * Any failure of a client operation as a ClientError. `context` says what
 * was being done ("StartPreStage", "reading transaction 7") and prefixes
 * messages that would not make sense alone.
 */
export function toClientError(e: unknown, context: string): ClientError {
  if (e instanceof ClientError) return e;
  if (e instanceof DBusError) {
    const name = e.type;
    const text = (e.text ?? e.message ?? '').split('\n', 1)[0] ?? '';
    const kind = kindOfErrorName(name);
    let message: string;
    switch (name) {
      case 'org.freedesktop.DBus.Error.ServiceUnknown':
      case 'org.freedesktop.DBus.Error.NameHasNoOwner':
        message = `bootc-prestaged is not running and could not be started by the bus (${text})`;
        break;
      case ERROR_NAMES.AccessDenied:
        message = `${context}: access denied (${text}); run as root, or as a user polkit authorizes for it`;
        break;
      default:
        if (name.startsWith('org.freedesktop.DBus.Error.Spawn.')) {
          message = `the bus could not start bootc-prestaged (${shortErrorName(name)}: ${text})`;
        } else if (name === ERROR_NAMES.Busy || name.startsWith(ERROR_PREFIX) || name === ERROR_NAMES.InvalidArgs) {
          message = text;
        } else {
          message = `${context}: ${text}`;
        }
    }
    return new ClientError(kind, message, name);
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new ClientError('failed', `${context}: ${msg}`);
}
