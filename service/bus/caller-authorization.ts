/**
 * Who may call a privileged member (README.md, "Security"):
 *
 * - uid 0, from the bus's own credentials for the sender, without asking
 *   anyone (no polkit round trip, so root works with polkitd absent);
 * - any other uid only when polkit authorizes the member's action for the
 *   caller's unique name;
 * - nobody else: a caller the bus cannot identify, a member without an
 *   action, a polkit that is absent, slow, or does not know the action.
 *
 * The bus policy lets every caller reach these members so that polkit can
 * decide: this check is the gate, and every path that is not a positive
 * answer (from the bus or from polkit) is a refusal.
 */
import type { BusConnection } from './connection.js';
import type { MethodSpec } from '../protocol/members.js';
import { PolkitAuthority, type PolkitAuthorityOptions } from './polkit.js';

/** The incoming call, as far as authorization needs it. */
export interface AuthorizationRequest {
  readonly sender: string;
  readonly method: MethodSpec;
  /** The message had ALLOW_INTERACTIVE_AUTHORIZATION (0x4): polkit may ask the caller's agent. */
  readonly interactive: boolean;
}

export type AuthorizationDecision =
  | { readonly allowed: true; readonly uid: number; readonly via: 'root' | 'polkit' }
  /** `message` is the AccessDenied text for the caller; `uid` is null when the caller could not be identified. */
  | { readonly allowed: false; readonly uid: number | null; readonly message: string };

export interface CallAuthorizer {
  /** The decision for one call; never rejects. */
  authorize(req: AuthorizationRequest): Promise<AuthorizationDecision>;
  close(): void;
}

/** The flag of a D-Bus message header that lets the service start interactive authorization. */
export { ALLOW_INTERACTIVE_AUTHORIZATION } from '../protocol/members.js';

const HOW_TO = 'run it as root, or ask an administrator to allow the action (README.md, "Security")';

/** uid 0, or polkit's decision; `polkit: null` makes it root only. */
export class CallerAuthorizer implements CallAuthorizer {
  readonly polkit: PolkitAuthority | null;

  constructor(private readonly conn: BusConnection, polkit: PolkitAuthority | PolkitAuthorityOptions | null = {}) {
    this.polkit = polkit === null || polkit instanceof PolkitAuthority ? polkit : new PolkitAuthority(conn, polkit);
  }

  async authorize(req: AuthorizationRequest): Promise<AuthorizationDecision> {
    const name = req.method.name;
    let uid: number;
    try {
      uid = await this.conn.callerUid(req.sender);
    } catch {
      return { allowed: false, uid: null, message: `${name} requires root or polkit authorization, and the caller could not be identified` };
    }
    if (uid === 0) return { allowed: true, uid, via: 'root' };
    const action = req.method.action;
    if (!action || !this.polkit) {
      return { allowed: false, uid, message: `${name} requires root; the caller runs as uid ${uid}` };
    }
    const r = await this.polkit.check({ subject: req.sender, action, interactive: req.interactive });
    switch (r.kind) {
      case 'authorized':
        return { allowed: true, uid, via: 'polkit' };
      case 'denied': {
        let why: string;
        if (r.dismissed) why = 'the authentication dialog was dismissed';
        else if (r.challenge && req.interactive) why = 'it needs authentication, and no authentication agent of the caller answered';
        else if (r.challenge) why = 'it needs authentication: call with interactive authorization allowed and an authentication agent running (for example pkttyagent)';
        else why = 'polkit denied it';
        return { allowed: false, uid, message: `${name} is not authorized for uid ${uid}: polkit action ${action}: ${why}; ${HOW_TO}` };
      }
      case 'failure':
        return {
          allowed: false, uid,
          message: `${name} is not authorized for uid ${uid}: polkit action ${action} could not be checked: ${r.reason}; only root may call it`,
        };
    }
  }

  close(): void {
    this.polkit?.close();
  }
}
