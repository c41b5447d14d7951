/**
 * PolkitAuthority's cache and error mapping, and CallerAuthorizer's
 * decisions, against a scripted connection: a stand-in for polkitd, on
 * purpose, for what a real one cannot show in a test's time or at all
 * (the 60 s expiry with a fake clock, polkitd leaving the bus while
 * entries are cached, a malformed reply, a failed activation, the exact
 * message sent). The real polkitd — yes, no, authentication required, a
 * password typed into its agent and the retained authorization reused,
 * absent, paused, without the .policy — is in
 * test/integration/security-polkit.test.ts.
 */
import test from 'ava';
import { DBusError, Message, Variant } from 'dbus-next';
import { CallerAuthorizer } from '../../service/bus/caller-authorization.js';
import type { BusConnection, RawMethodHandler } from '../../service/bus/connection.js';
import { MANAGER, POLKIT_ACTIONS, type MethodSpec } from '../../service/protocol/members.js';
import { PolkitAuthority, POLKIT_BUS_NAME } from '../../service/bus/polkit.js';

type Answer = Message | Error | 'hang';

/** Answers CheckAuthorization from a script; records what was asked. */
class ScriptedConnection implements BusConnection {
  readonly uniqueName = ':1.1';
  readonly closed = false;
  readonly asked: { msg: Message; timeoutMs: number | undefined }[] = [];
  readonly uids = new Map<string, number>([[':1.50', 0], [':1.60', 1000], [':1.61', 1001]]);
  answers: Answer[] = [];
  private vanished = new Set<(name: string) => void>();

  call(msg: Message, timeoutMs?: number): Promise<Message> {
    this.asked.push({ msg, timeoutMs });
    if (msg.member !== 'CheckAuthorization') return Promise.resolve(Message.newMethodReturn(msg, '', []));
    const a = this.answers.shift() ?? new Error('no answer scripted');
    if (a === 'hang') {
      return new Promise((_, reject) => setTimeout(() => reject(new DBusError('org.freedesktop.DBus.Error.NoReply', 'timeout')), 5));
    }
    return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
  }
  send(): void {}
  requestName(): Promise<void> { return Promise.resolve(); }
  callerUid(sender: string): Promise<number> {
    const uid = this.uids.get(sender);
    return uid === undefined ? Promise.reject(new Error('gone')) : Promise.resolve(uid);
  }
  onNameVanished(cb: (name: string) => void): () => void {
    this.vanished.add(cb);
    return () => this.vanished.delete(cb);
  }
  addMethodHandler(_h: RawMethodHandler): () => void { return () => {}; }
  onLost(): void {}
  close(): void {}

  vanish(name: string): void {
    for (const cb of this.vanished) cb(name);
  }
  checks(): Message[] {
    return this.asked.map((a) => a.msg).filter((m) => m.member === 'CheckAuthorization');
  }
}

function result(authorized: boolean, challenge: boolean, details: Record<string, string> = {}): Message {
  const call = new Message({ serial: 1, destination: POLKIT_BUS_NAME, path: '/', member: 'CheckAuthorization' });
  return Message.newMethodReturn(call, '(bba{ss})', [[authorized, challenge, details]]);
}

const RETAINED = { 'polkit.retains_authorization_after_challenge': 'true', 'polkit.temporary_authorization_id': 'tmpauthz1' };
const start = MANAGER.methods.find((m) => m.name === 'StartPreStage')! as MethodSpec;

test('CheckAuthorization - system-bus-name subject, the action, no details, flags from the call', async (t) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  conn.answers = [result(true, false), result(true, false)];
  await polkit.check({ subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: false });
  await polkit.check({ subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: true });
  const [plain, interactive] = conn.asked;
  t.is(plain!.msg.destination, POLKIT_BUS_NAME);
  t.is(plain!.msg.path, '/org/freedesktop/PolicyKit1/Authority');
  t.is(plain!.msg.interface, 'org.freedesktop.PolicyKit1.Authority');
  t.is(plain!.msg.signature, '(sa{sv})sa{ss}us');
  const [subject, action, details, flags, cancellation] = plain!.msg.body as [[string, Record<string, Variant>], string, object, number, string];
  t.is(subject[0], 'system-bus-name');
  t.deepEqual(subject[1]['name'], new Variant('s', ':1.60'));
  t.is(action, POLKIT_ACTIONS.start);
  t.deepEqual(details, {});
  t.is(flags, 0);
  t.is(cancellation, '');
  t.is(plain!.timeoutMs, 5000, 'a non-interactive check is bounded at 5 s');
  t.is(interactive!.msg.body[3], 1, 'AllowUserInteraction');
  t.regex(interactive!.msg.body[4] as string, /^bootc-prestaged-\d+-\d+$/, 'a cancellation id, to take the dialog away on timeout');
  t.is(interactive!.timeoutMs, 25000);
});

test('cache - an authorization polkit retains is reused for that caller until it leaves the bus', async (t) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  conn.answers = [result(true, false, RETAINED), result(true, false, RETAINED)];
  const check = { subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: true };
  t.is((await polkit.check(check)).kind, 'authorized');
  t.is((await polkit.check({ ...check, interactive: false })).kind, 'authorized');
  t.is(conn.checks().length, 1, 'the second call was answered from the cache');
  t.is((await polkit.check({ ...check, subject: ':1.61' })).kind, 'authorized');
  t.is(conn.checks().length, 2, 'another caller is asked about');
  conn.vanish(':1.60');
  conn.answers = [result(false, true)];
  t.is((await polkit.check(check)).kind, 'denied', 'after the caller left its entry is gone');
  t.is(conn.checks().length, 3);
});

test('cache - entries expire after the TTL, and all go when polkitd leaves the bus', async (t) => {
  let now = 1000;
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn, { cacheTtlMs: 60_000, now: () => now });
  conn.answers = [result(true, false, RETAINED), result(true, false, RETAINED), result(true, false, RETAINED)];
  const check = { subject: ':1.60', action: POLKIT_ACTIONS.cancel, interactive: false };
  await polkit.check(check);
  now += 59_999;
  await polkit.check(check);
  t.is(conn.checks().length, 1);
  now += 2;
  await polkit.check(check);
  t.is(conn.checks().length, 2, 'expired after 60 s');
  t.is(polkit.cacheSize, 1);
  conn.vanish(POLKIT_BUS_NAME);
  t.is(polkit.cacheSize, 0, 'polkitd\'s temporary authorizations died with it');
});

test('cache - a yes without retained authorization, a denial and a failure are asked again each time', async (t) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  const check = { subject: ':1.60', action: POLKIT_ACTIONS.readLog, interactive: false };
  conn.answers = [result(true, false), result(true, false), result(false, false), result(false, false),
    new DBusError('org.freedesktop.DBus.Error.ServiceUnknown', 'x'), result(true, false)];
  for (let i = 0; i < 6; i++) await polkit.check(check);
  t.is(conn.checks().length, 6);
  t.is(polkit.cacheSize, 0);
});

test('in flight - identical concurrent checks share one request', async (t) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  conn.answers = [result(false, false)];
  const check = { subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: false };
  const [a, b] = await Promise.all([polkit.check(check), polkit.check(check)]);
  t.is(a, b);
  t.is(conn.checks().length, 1);
});

const failure = test.macro(async (t, answer: Answer, reason: RegExp) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  conn.answers = [answer];
  const r = await polkit.check({ subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: false });
  t.is(r.kind, 'failure');
  if (r.kind === 'failure') t.regex(r.reason, reason);
});

test('failure - no polkitd on the bus', failure, new DBusError('org.freedesktop.DBus.Error.ServiceUnknown', 'The name is not activatable'),
  /^polkit \(org\.freedesktop\.PolicyKit1\) is not running on this bus$/);
test('failure - polkitd does not answer in time', failure, 'hang', /^polkit \(org\.freedesktop\.PolicyKit1\) did not answer within 5 s$/);
test('failure - the action is not installed', failure,
  new DBusError('org.freedesktop.PolicyKit1.Error.Failed', 'Action org.containers.bootc.prestage.start is not registered'),
  /^polkit does not know the action org\.containers\.bootc\.prestage\.start \(org\.containers\.bootc\.PreStage\.policy is not installed/);
test('failure - activation failed', failure, new DBusError('org.freedesktop.DBus.Error.Spawn.ChildExited', 'exited 1'),
  /^the bus could not start polkit \(Spawn\.ChildExited: exited 1\)$/);
test('failure - a malformed reply', failure, Message.newMethodReturn(new Message({ serial: 1, member: 'x', path: '/' }), 's', ['yes']),
  /unexpected reply \(signature 's'\)/);

test('interactive timeout - the pending dialog is cancelled with the same cancellation id', async (t) => {
  const conn = new ScriptedConnection();
  const polkit = new PolkitAuthority(conn);
  conn.answers = ['hang'];
  const r = await polkit.check({ subject: ':1.60', action: POLKIT_ACTIONS.start, interactive: true });
  t.is(r.kind, 'failure');
  const cancel = conn.asked.find((a) => a.msg.member === 'CancelCheckAuthorization');
  t.truthy(cancel);
  t.is(cancel!.msg.body[0], conn.checks()[0]!.body[4]);
});

// ---- CallerAuthorizer ----------------------------------------------------------

test('authorizer - uid 0 is allowed without asking polkit', async (t) => {
  const conn = new ScriptedConnection();
  const d = await new CallerAuthorizer(conn).authorize({ sender: ':1.50', method: start, interactive: false });
  t.deepEqual(d, { allowed: true, uid: 0, via: 'root' });
  t.is(conn.checks().length, 0);
});

test('authorizer - a non-root caller is allowed only on polkit\'s yes', async (t) => {
  const conn = new ScriptedConnection();
  const auth = new CallerAuthorizer(conn);
  conn.answers = [result(true, false), result(false, false), result(false, true)];
  t.deepEqual(await auth.authorize({ sender: ':1.60', method: start, interactive: false }), { allowed: true, uid: 1000, via: 'polkit' });
  const no = await auth.authorize({ sender: ':1.60', method: start, interactive: false });
  t.false(no.allowed);
  if (!no.allowed) t.regex(no.message, /^StartPreStage is not authorized for uid 1000: polkit action org\.containers\.bootc\.prestage\.start: polkit denied it; /);
  const challenge = await auth.authorize({ sender: ':1.60', method: start, interactive: false });
  if (!challenge.allowed) t.regex(challenge.message, /it needs authentication: call with interactive authorization allowed/);
  else t.fail('a challenge is not an authorization');
});

test('authorizer - root only without polkit, for a member without an action, and for an unknown caller', async (t) => {
  const conn = new ScriptedConnection();
  const rootOnly = new CallerAuthorizer(conn, null);
  const d1 = await rootOnly.authorize({ sender: ':1.60', method: start, interactive: false });
  t.deepEqual(d1, { allowed: false, uid: 1000, message: 'StartPreStage requires root; the caller runs as uid 1000' });
  const bare: MethodSpec = { name: 'Secret', in: [], out: [], privileged: true };
  const d2 = await new CallerAuthorizer(conn).authorize({ sender: ':1.60', method: bare, interactive: false });
  t.false(d2.allowed);
  const d3 = await new CallerAuthorizer(conn).authorize({ sender: ':1.404', method: start, interactive: false });
  t.deepEqual(d3, { allowed: false, uid: null, message: 'StartPreStage requires root or polkit authorization, and the caller could not be identified' });
  t.is(conn.checks().length, 0);
});
