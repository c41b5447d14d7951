/**
 * Asks polkit whether a bus caller may perform an action:
 * org.freedesktop.PolicyKit1.Authority.CheckAuthorization with a
 * `system-bus-name` subject (the caller's unique name, as systemd and
 * rpm-ostree do: polkitd resolves it to the connection's credentials
 * itself, so there is no pid to race on).
 *
 * What must stay true (README.md, "Security"):
 *
 * - It never opens anything on failure. polkitd not running (no owner, not
 *   activatable), gone mid-call, slow (each check is bounded: 5 s, or 25 s
 *   when the caller allows interactive authentication and a person may be
 *   typing a password), not knowing the action (the .policy file is not
 *   installed), or answering something malformed: each is a `failure`
 *   result with a reason a person can act on, never `authorized`.
 * - A decision is reused only as polkit allows. An authorization obtained
 *   by authenticating for an `auth_admin_keep` action (polkit says so with
 *   `polkit.retains_authorization_after_challenge`, and keeps a temporary
 *   authorization for that caller) is remembered for at most
 *   CACHE_TTL_MS, well inside polkit's own five minutes; anything else
 *   (`yes` from a rule, which an administrator may change at any time; a
 *   denial; a failure) is asked again at the next call. Concurrent
 *   identical checks share one request. The entries of a caller go when its
 *   unique name leaves the bus, and all of them when polkitd does (its
 *   temporary authorizations die with it).
 */
import { DBusError, Message, Variant } from 'dbus-next';
import type { BusConnection } from './connection.js';
import { DBUS_ERROR } from '../protocol/errors.js';

export const POLKIT_BUS_NAME = 'org.freedesktop.PolicyKit1';
const AUTHORITY_PATH = '/org/freedesktop/PolicyKit1/Authority';
const AUTHORITY_INTERFACE = 'org.freedesktop.PolicyKit1.Authority';
/** CheckAuthorizationFlags.AllowUserInteraction. */
const ALLOW_USER_INTERACTION = 1;

/** How long a non-interactive check may take. */
export const CHECK_TIMEOUT_MS = 5_000;
/** How long an interactive check may take: libdbus's and sd-bus's default method timeout, which the caller most likely has too. */
export const INTERACTIVE_CHECK_TIMEOUT_MS = 25_000;
/** How long an authorization polkit retains (auth_admin_keep, after authenticating) is reused without asking again. */
export const CACHE_TTL_MS = 60_000;
/** A cache larger than this is dropped whole (eviction signals were missed). */
const CACHE_MAX = 4096;

export type PolkitResult =
  /** polkit authorized the subject. */
  | { kind: 'authorized'; details: Record<string, string> }
  /** polkit did not: `challenge` when authenticating would have helped. */
  | { kind: 'denied'; challenge: boolean; dismissed: boolean; details: Record<string, string> }
  /** No decision: polkit could not be asked or did not answer. `reason` is for people. */
  | { kind: 'failure'; reason: string };

export interface PolkitCheck {
  /** The caller's unique name (`:1.42`). */
  subject: string;
  action: string;
  /** Let polkit ask the caller's authentication agent (the call had ALLOW_INTERACTIVE_AUTHORIZATION). */
  interactive: boolean;
}

export interface PolkitAuthorityOptions {
  checkTimeoutMs?: number;
  interactiveTimeoutMs?: number;
  cacheTtlMs?: number;
  /** Milliseconds clock (tests). Default Date.now. */
  now?: () => number;
}

interface CacheEntry {
  expires: number;
  result: PolkitResult;
}

let nextCancellationId = 1;

/** polkit's client, on the daemon's own bus connection. */
export class PolkitAuthority {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inFlight = new Map<string, Promise<PolkitResult>>();
  private readonly removeWatch: () => void;
  private readonly checkTimeoutMs: number;
  private readonly interactiveTimeoutMs: number;
  private readonly cacheTtlMs: number;
  private readonly now: () => number;
  /** Number of CheckAuthorization calls sent (diagnostics, tests). */
  requests = 0;

  constructor(private readonly conn: BusConnection, opts: PolkitAuthorityOptions = {}) {
    this.checkTimeoutMs = opts.checkTimeoutMs ?? CHECK_TIMEOUT_MS;
    this.interactiveTimeoutMs = opts.interactiveTimeoutMs ?? INTERACTIVE_CHECK_TIMEOUT_MS;
    this.cacheTtlMs = opts.cacheTtlMs ?? CACHE_TTL_MS;
    this.now = opts.now ?? Date.now;
    this.removeWatch = conn.onNameVanished((name) => this.forget(name));
  }

  /** Drop what is remembered about `name` (a caller, or polkitd itself: everything). */
  forget(name: string): void {
    if (name === POLKIT_BUS_NAME) {
      this.cache.clear();
      return;
    }
    const prefix = `${name}\n`;
    for (const key of this.cache.keys()) if (key.startsWith(prefix)) this.cache.delete(key);
  }

  /** Number of remembered decisions (tests). */
  get cacheSize(): number {
    return this.cache.size;
  }

  close(): void {
    this.removeWatch();
    this.cache.clear();
  }

  /** polkit's decision for `check`; never rejects. */
  check(check: PolkitCheck): Promise<PolkitResult> {
    const key = `${check.subject}\n${check.action}`;
    const cached = this.cache.get(key);
    if (cached) {
      if (cached.expires > this.now()) return Promise.resolve(cached.result);
      this.cache.delete(key);
    }
    const flightKey = `${key}\n${check.interactive ? 'i' : ''}`;
    const pending = this.inFlight.get(flightKey);
    if (pending) return pending;
    const request = this.ask(check).then((result) => {
      this.inFlight.delete(flightKey);
      if (result.kind === 'authorized' && result.details['polkit.retains_authorization_after_challenge']) {
        if (this.cache.size >= CACHE_MAX) this.cache.clear();
        this.cache.set(key, { expires: this.now() + this.cacheTtlMs, result });
      }
      return result;
    });
    this.inFlight.set(flightKey, request);
    return request;
  }

  private async ask(check: PolkitCheck): Promise<PolkitResult> {
    const timeoutMs = check.interactive ? this.interactiveTimeoutMs : this.checkTimeoutMs;
    const cancellationId = check.interactive ? `bootc-prestaged-${process.pid}-${nextCancellationId++}` : '';
    this.requests++;
    let reply: Message;
    try {
      reply = await this.conn.call(new Message({
        destination: POLKIT_BUS_NAME, path: AUTHORITY_PATH, interface: AUTHORITY_INTERFACE,
        member: 'CheckAuthorization', signature: '(sa{sv})sa{ss}us',
        body: [
          ['system-bus-name', { name: new Variant('s', check.subject) }],
          check.action, {}, check.interactive ? ALLOW_USER_INTERACTION : 0, cancellationId,
        ],
      }), timeoutMs);
    } catch (e) {
      if (e instanceof DBusError && e.type === DBUS_ERROR.NoReply && cancellationId !== '') {
        // Take the authentication dialog away from the person: the caller has its answer.
        this.cancel(cancellationId);
      }
      return { kind: 'failure', reason: describeCallError(e, timeoutMs, check.action) };
    }
    return parseReply(reply);
  }

  private cancel(cancellationId: string): void {
    this.conn.call(new Message({
      destination: POLKIT_BUS_NAME, path: AUTHORITY_PATH, interface: AUTHORITY_INTERFACE,
      member: 'CancelCheckAuthorization', signature: 's', body: [cancellationId],
    }), this.checkTimeoutMs).catch(() => { /* best effort: polkitd may be gone */ });
  }
}

/** CheckAuthorization's `(bba{ss})`, checked field by field. */
function parseReply(reply: Message): PolkitResult {
  const r = reply.body[0] as unknown;
  if (reply.signature !== '(bba{ss})' || !Array.isArray(r) || typeof r[0] !== 'boolean' || typeof r[1] !== 'boolean'
    || r[2] === null || typeof r[2] !== 'object') {
    return { kind: 'failure', reason: `polkit answered with an unexpected reply (signature '${reply.signature ?? ''}')` };
  }
  const details = r[2] as Record<string, string>;
  if (r[0]) return { kind: 'authorized', details };
  return { kind: 'denied', challenge: r[1], dismissed: Boolean(details['polkit.dismissed']), details };
}

function describeCallError(e: unknown, timeoutMs: number, action: string): string {
  if (!(e instanceof DBusError)) return `asking polkit failed: ${(e as Error)?.message ?? String(e)}`;
  const text = (e.text ?? '').split('\n', 1)[0] ?? '';
  switch (e.type) {
    case 'org.freedesktop.DBus.Error.ServiceUnknown':
    case 'org.freedesktop.DBus.Error.NameHasNoOwner':
      return `polkit (${POLKIT_BUS_NAME}) is not running on this bus`;
    case DBUS_ERROR.NoReply:
      return `polkit (${POLKIT_BUS_NAME}) did not answer within ${Math.round(timeoutMs / 1000)} s`;
    case DBUS_ERROR.Disconnected:
      return 'the bus connection is closed';
    default:
      if (/not registered/i.test(text)) {
        return `polkit does not know the action ${action} (org.containers.bootc.PreStage.policy is not installed in /usr/share/polkit-1/actions/)`;
      }
      if (e.type.startsWith('org.freedesktop.DBus.Error.Spawn.')) {
        return `the bus could not start polkit (${e.type.replace(/^.*\.Error\./, '')}: ${text})`;
      }
      return `polkit failed: ${e.type}: ${text}`;
  }
}
