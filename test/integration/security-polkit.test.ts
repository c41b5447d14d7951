/**
 * Authorization through polkit, end to end, with real components only: the
 * daemon on a private system-like bus with the shipped bus policy, a real
 * polkitd (its own mount namespace: the shipped .policy and this file's
 * rules, never the machine's; helpers/polkit.ts), busctl and dbus-next
 * clients running as real test users.
 *
 * The rules are README.md's example for "allow a group", with the group
 * `wheel` replaced by the test group, plus two test-only rules:
 * `bpstest-other` is refused StartPreStage by a rule (polkit.Result.NO)
 * and asked to authenticate for GetLog (AUTH_ADMIN); everything else it
 * asks falls to the shipped defaults (no session here, so `allow_any`: no).
 * `bpstest-auth` authenticates with its password through polkit's own
 * text agent (pkttyagent) for GetLog (AUTH_SELF_KEEP) and Reconcile
 * (AUTH_SELF), which shows what the daemon reuses and what it does not.
 *
 * The cases run serially on one daemon and change polkitd on the way: it
 * answers, then is paused (SIGSTOP), then runs without the .policy, then
 * is stopped.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { busctlMonitor, isAccessDenied, runAs } from '../helpers/busctl.js';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, Variant } from '../helpers/dbus-client.js';
import {
  ADMIN_GROUP, POLKIT_BUS_CONFIG, POLKIT_DTD, SHIPPED_POLKIT_POLICY,
  ensureTestUsers, pkaction, runAsUser, setRandomPassword, startPolkitd, startTtyAgent, type TestPolkitd, type TestUser, type TtyAgent,
} from '../helpers/polkit.js';
import { runNodeAs } from '../helpers/as-user.js';
import { sleep } from '../helpers/processes.js';
import { makeTmpDir, removeDir, REPO_ROOT } from '../helpers/tmp.js';
import { MANAGER, POLKIT_ACTIONS, TRANSACTION } from '../../service/protocol/members.js';

const ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied';
const A = POLKIT_ACTIONS;

/** A prepare step that records its phase and runs until it is cancelled. */
const STEP_PROGRAM = `#!/bin/sh
echo "$BOOTC_PRESTAGE_PHASE" >> "$RECORD"
if [ "$BOOTC_PRESTAGE_PHASE" = prepare ]; then exec sleep 300; fi
exit 0
`;

/** README.md's rules example (the first ```js block after "polkit rules"), for `group`. */
async function readmeRule(group: string): Promise<string> {
  const readme = await fsp.readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('/etc/polkit-1/rules.d/');
  const m = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  if (at < 0 || !m) throw new Error('README.md has no polkit rules example (a ```js block after /etc/polkit-1/rules.d/)');
  if (!m[1]!.includes('"wheel"')) throw new Error('README.md\'s polkit rules example does not name the group "wheel"');
  return m[1]!.replaceAll('"wheel"', JSON.stringify(group));
}

const TEST_RULES = `// Test only (test/integration/security-polkit.test.ts).
polkit.addRule(function (action, subject) {
  if (subject.user === "bpstest-auth" && action.id === "${A.readLog}") return polkit.Result.AUTH_SELF_KEEP;
  if (subject.user === "bpstest-auth" && action.id === "${A.reconcile}") return polkit.Result.AUTH_SELF;
  if (subject.user !== "bpstest-other") return polkit.Result.NOT_HANDLED;
  if (action.id === "${A.start}") return polkit.Result.NO;
  if (action.id === "${A.readLog}") return polkit.Result.AUTH_ADMIN;
  return polkit.Result.NOT_HANDLED;
});
`;

interface Env {
  ctx: DaemonContext;
  polkitd: TestPolkitd;
  admin: TestUser;
  other: TestUser;
  auth: TestUser;
  staged: string;
  /** A finished transaction (root's dry run of the other deployment), for Cancel and GetLog. */
  finishedTx: string;
  recordFile: string;
  rules: Record<string, string>;
}

let env: Env | undefined;
const cleanups: (() => Promise<void> | void)[] = [];

test.before(async () => {
  const { admin, other, auth } = await ensureTestUsers();
  const aux = await makeTmpDir({ prefix: 'security-polkit-', mode: 0o755 });
  cleanups.push(() => removeDir(aux));
  const program = path.join(aux, 'bin', 'step');
  const recordFile = path.join(aux, 'record', 'runs');
  await fsp.mkdir(path.dirname(program), { mode: 0o755 });
  await fsp.mkdir(path.dirname(recordFile), { mode: 0o755 });
  await fsp.writeFile(program, STEP_PROGRAM, { mode: 0o755 });
  await fsp.chmod(program, 0o755);
  const scope = { teardown: (fn: () => unknown) => { cleanups.push(fn as () => Promise<void>); } } as unknown as ExecutionContext;
  const ctx = await withDaemon(scope, {
    busExtraConfig: POLKIT_BUS_CONFIG,
    sysroot: { deployments: 2 },
    etcHooks: { 'wait.hook': `[Hook]\nPrepare=${program}\nAbort=${program}\nEnvironment=RECORD=${recordFile}\n` },
    args: ['--log-format', 'json'],
  });
  const rules = { '50-bootc-prestage.rules': await readmeRule(ADMIN_GROUP), '60-test.rules': TEST_RULES };
  const polkitd = await startPolkitd(ctx.bus, { rules });
  cleanups.push(() => polkitd.stop());
  const deployments = (ctx.sysroot as { deployments: string[] }).deployments;
  const [finishedTx] = await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [deployments[1]!, { 'dry-run': new Variant('b', true), wait: new Variant('b', true) }]);
  env = { ctx, polkitd, admin, other, auth, staged: deployments[0]!, finishedTx: finishedTx as string, recordFile, rules };
  await waitForState(env.finishedTx, ['aborted']);
});

test.after.always(async () => {
  for (const fn of cleanups.reverse()) {
    try { await fn(); } catch { /* keep tearing down */ }
  }
});

// ---- clients -------------------------------------------------------------------

/** busctl as `user` (busctl allows interactive authorization by default). */
function busctlAs(user: TestUser, args: string[]) {
  return runAsUser(user, ['busctl', `--address=${env!.ctx.bus.address}`, '--timeout=60', '--json=short', ...args], { timeoutMs: 70_000 });
}

type Reply = { ok: true; body: unknown[] } | { ok: false; name: string; text: string };

/** One call with dbus-next as `user`'s uid, to see the error's name (busctl prints only its text). */
async function callAs(uid: number, objPath: string, iface: string, member: string, signature: string, body: unknown[],
  opts: { interactive?: boolean } = {}): Promise<Reply> {
  const script = `
import { sessionBus, Message } from 'dbus-next';
const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
bus.on('error', () => {});
try {
  const reply = await bus.call(new Message({ destination: '${SERVICE}', path: ${JSON.stringify(objPath)},
    interface: ${JSON.stringify(iface)}, member: ${JSON.stringify(member)}, signature: ${JSON.stringify(signature)},
    body: ${JSON.stringify(body)}, flags: ${opts.interactive ? 4 : 0} }));
  console.log(JSON.stringify({ ok: true, body: reply.body }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, name: e.type ?? 'local', text: e.text ?? String(e) }));
}
bus.disconnect();
`;
  const r = await runNodeAs(script, { uid, busAddress: env!.ctx.bus.address, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`the client as uid ${uid} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim()) as Reply;
}

async function state(objPath: string): Promise<unknown> {
  return env!.ctx.client.getProperty(SERVICE, objPath, TRANSACTION_IFACE, 'State');
}

async function waitForState(objPath: string, want: string[]): Promise<string> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const s = String(await state(objPath));
    if (want.includes(s)) return s;
    if (Date.now() > deadline) throw new Error(`${objPath} stayed ${s}, wanted ${want.join('|')}`);
    await sleep(50);
  }
}

async function transactions(): Promise<string[]> {
  const [txs] = await env!.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions');
  return txs as string[];
}

async function record(): Promise<string> {
  return fsp.readFile(env!.recordFile, 'utf8').catch(() => '');
}

function assertDenied(t: ExecutionContext, r: Reply, pattern: RegExp): void {
  t.false(r.ok, JSON.stringify(r));
  if (!r.ok) {
    t.is(r.name, ACCESS_DENIED);
    t.regex(r.text, pattern);
  }
}

// ---- the shipped .policy -------------------------------------------------------

const DEFAULTS: Record<string, string> = {
  [A.start]: 'auth_admin_keep', [A.commit]: 'auth_admin_keep', [A.abort]: 'auth_admin_keep',
  [A.reconcile]: 'auth_admin_keep', [A.manageHooks]: 'auth_admin', [A.cancel]: 'auth_admin_keep',
  [A.readLog]: 'auth_admin_keep',
};

test.serial('policy file - valid against polkit\'s DTD (xmllint)', async (t) => {
  const r = await runAs(['xmllint', '--noout', '--dtdvalid', POLKIT_DTD, SHIPPED_POLKIT_POLICY]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
});

test.serial('policy file - polkitd loads every action (pkaction --verbose) with its defaults and a message', async (t) => {
  const file = await fsp.readFile(SHIPPED_POLKIT_POLICY, 'utf8');
  const ids = [...file.matchAll(/<action id="([^"]+)"/g)].map((m) => m[1]);
  t.deepEqual(ids.sort(), Object.values(A).sort(), 'the file defines exactly the actions the daemon asks about');
  for (const id of Object.values(A)) {
    const { result, fields } = await pkaction(env!.ctx.bus, id);
    t.is(result.code, 0, `${id}: ${result.stderr}`);
    t.is(fields['implicit any'], 'no', id);
    t.is(fields['implicit inactive'], 'no', id);
    t.is(fields['implicit active'], DEFAULTS[id], id);
    t.regex(fields['message'] ?? '', /^Authentication is required to .+\.$/, id);
    t.true((fields['description'] ?? '').length > 10, id);
  }
});

test.serial('policy file - every privileged member names an action, and only those do', (t) => {
  for (const m of [...MANAGER.methods, ...TRANSACTION.methods]) {
    const action = (m as { action?: string }).action;
    if (m.privileged) t.true(action !== undefined && Object.values(A).includes(action as never), `${m.name}: ${action}`);
    else t.is(action, undefined, m.name);
  }
});

// ---- polkitd answering ---------------------------------------------------------

test.serial('allowed group - a user in the group starts a prepare and cancels it with busctl', async (t) => {
  const { admin, staged } = env!;
  const before = (await transactions()).length;
  const start = await busctlAs(admin, ['call', SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', staged, '0']);
  t.is(start.code, 0, start.stderr);
  const txPath = (JSON.parse(start.stdout) as { data: string[] }).data[0]!;
  t.regex(txPath, /^\/org\/containers\/bootc\/PreStage\/Transaction\/\w+$/);
  t.is((await transactions()).length, before + 1);
  // The step runs (it records its phase, then waits to be cancelled).
  const deadline = Date.now() + 60_000;
  while (!(await record()).includes('prepare') && Date.now() < deadline) await sleep(50);
  t.is(await state(txPath), 'preparing');

  const log = await busctlAs(admin, ['call', SERVICE, txPath, TRANSACTION_IFACE, 'GetLog', 'a{sv}', '0']);
  t.is(log.code, 0, `GetLog: ${log.stderr}`);

  const cancel = await busctlAs(admin, ['call', SERVICE, txPath, TRANSACTION_IFACE, 'Cancel']);
  t.is(cancel.code, 0, cancel.stderr);
  t.is(await waitForState(txPath, ['cancelled', 'failed', 'aborted', 'prepared']), 'cancelled');
  t.is(await record(), 'prepare\nabort\n', 'the prepare step ran, was cancelled and rolled back');
  // The daemon says who was let in and why.
  const entries = env!.ctx.daemon.jsonLogs().map((l) => String(l['message']));
  t.true(entries.some((m) => m.startsWith(`polkit authorized ${MANAGER_IFACE}.StartPreStage for uid ${admin.uid} `)), entries.join('\n'));
  t.true(entries.some((m) => m.startsWith(`polkit authorized ${TRANSACTION_IFACE}.Cancel for uid ${admin.uid} `)));
  await fsp.writeFile(env!.recordFile, '');
});

test.serial('allowed group - the same user may register and unregister a hook (manage-hooks)', async (t) => {
  const { admin } = env!;
  const reg = await busctlAs(admin, ['call', SERVICE, MANAGER_PATH, MANAGER_IFACE, 'RegisterHook', 'sa{sv}a{sv}',
    'from-admin', '1', 'Prepare', 'as', '1', '/bin/true', '1', 'runtime', 'b', 'true']);
  t.is(reg.code, 0, reg.stderr);
  const file = path.join(env!.ctx.root, 'run/bootc/pre-stage.d/from-admin.hook');
  t.regex(await fsp.readFile(file, 'utf8'), /^Prepare=\/bin\/true$/m);
  const unreg = await busctlAs(admin, ['call', SERVICE, MANAGER_PATH, MANAGER_IFACE, 'UnregisterHook', 's', 'from-admin']);
  t.is(unreg.code, 0, unreg.stderr);
  await t.throwsAsync(fsp.stat(file), { code: 'ENOENT' });
});

test.serial('outside the group - StartPreStage (denied by a rule) is AccessDenied naming the action; nothing runs', async (t) => {
  const { other, staged } = env!;
  const before = await transactions();
  const r = await callAs(other.uid, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', [staged, {}]);
  assertDenied(t, r, new RegExp(`^StartPreStage is not authorized for uid ${other.uid}: polkit action ${A.start.replaceAll('.', '\\.')}: polkit denied it; `));
  // busctl, an independent client, is refused too (it prints "Access denied" for any AccessDenied, not the text).
  const b = await busctlAs(other, ['call', SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', staged, '0']);
  t.true(isAccessDenied(b), b.stderr);
  t.deepEqual(await transactions(), before, 'no transaction was made');
  t.is(await record(), '', 'no step ran');
});

test.serial('outside the group - the shipped defaults refuse every other change (allow_any is no)', async (t) => {
  const { other, staged } = env!;
  const cases: [string, string, string, string, unknown[], string][] = [
    [MANAGER_PATH, MANAGER_IFACE, 'CommitPreStage', 'sa{sv}', [staged, {}], A.commit],
    [MANAGER_PATH, MANAGER_IFACE, 'AbortPreStage', 'sa{sv}', [staged, {}], A.abort],
    [MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}], A.reconcile],
    [MANAGER_PATH, MANAGER_IFACE, 'UnregisterHook', 's', ['wait'], A.manageHooks],
  ];
  const txs = await transactions();
  for (const [p, iface, member, sig, body, action] of cases) {
    const r = await callAs(other.uid, p, iface, member, sig, body);
    assertDenied(t, r, new RegExp(`^${member} is not authorized for uid ${other.uid}: polkit action ${action.replaceAll('.', '\\.')}: polkit denied it`));
  }
  const cancel = await callAs(other.uid, env!.finishedTx, TRANSACTION_IFACE, 'Cancel', '', []);
  assertDenied(t, cancel, new RegExp(`polkit action ${A.cancel.replaceAll('.', '\\.')}: polkit denied it`));
  // dbus-send, another independent client, prints the error's name and text.
  const d = await runAsUser(other, ['dbus-send', `--bus=${env!.ctx.bus.address}`, '--print-reply', `--dest=${SERVICE}`,
    env!.finishedTx, `${TRANSACTION_IFACE}.Cancel`]);
  t.not(d.code, 0);
  t.true(d.stderr.startsWith(`Error ${ACCESS_DENIED}: Cancel is not authorized for uid ${other.uid}: polkit action ${A.cancel}: polkit denied it;`), d.stderr);
  t.deepEqual(await transactions(), txs);
  await fsp.stat(path.join(env!.ctx.root, 'etc/bootc/pre-stage.d/wait.hook'));
});

test.serial('outside the group - an action that needs authentication says so, with and without interactive authorization', async (t) => {
  const { other } = env!;
  const tx = env!.finishedTx;
  const plain = await callAs(other.uid, tx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  assertDenied(t, plain, new RegExp(`^GetLog is not authorized for uid ${other.uid}: polkit action ${A.readLog.replaceAll('.', '\\.')}: it needs authentication: call with interactive authorization allowed`));
  // With ALLOW_INTERACTIVE_AUTHORIZATION polkit looks for the caller's agent; there is none.
  const interactive = await callAs(other.uid, tx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}], { interactive: true });
  assertDenied(t, interactive, new RegExp(`^GetLog is not authorized for uid ${other.uid}: polkit action ${A.readLog.replaceAll('.', '\\.')}: it needs authentication, and no authentication agent of the caller answered; `));
});

test.serial('root - needs no polkit: no CheckAuthorization is sent for root\'s calls', async (t) => {
  const mon = await busctlMonitor(env!.ctx.bus.address, ["type='method_call',destination='org.freedesktop.PolicyKit1'"]);
  t.teardown(() => mon.stop());
  const [txPath] = await env!.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [env!.staged, { 'dry-run': new Variant('b', true) }]);
  await waitForState(txPath as string, ['aborted', 'prepared', 'failed']);
  await env!.ctx.client.call(SERVICE, txPath as string, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  // A marker call from the admin goes through polkit: once the monitor has
  // seen it, it would have seen root's calls before it too.
  const r = await callAs(env!.admin.uid, txPath as string, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  t.true(r.ok, JSON.stringify(r));
  await mon.waitFor((m) => m['member'] === 'CheckAuthorization');
  const checks = mon.messages().filter((m) => m['member'] === 'CheckAuthorization');
  t.is(checks.length, 1, 'only the admin\'s call was checked with polkit');
});

/**
 * A dbus-next connection as `user` that stays open (one call per stdin
 * line, one answer per stdout line), so that an agent can be registered
 * for its unique name and polkit's temporary authorization belongs to it.
 */
class Peer {
  private buffered = '';
  private readonly waiting: ((r: Reply) => void)[] = [];
  private constructor(private readonly child: ChildProcess, readonly uniqueName: string) {}

  get pid(): number {
    return this.child.pid!;
  }

  static async start(user: TestUser): Promise<Peer> {
    const script = `
import { sessionBus, Message } from 'dbus-next';
import { createInterface } from 'node:readline';
const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
bus.on('error', (e) => { process.exit(1); });
await new Promise((r) => bus.once('connect', r));
console.log(JSON.stringify({ ready: bus.name }));
createInterface({ input: process.stdin }).on('line', async (line) => {
  const q = JSON.parse(line);
  try {
    const reply = await bus.call(new Message({ destination: '${SERVICE}', path: q.path, interface: q.iface, member: q.member,
      signature: q.signature, body: q.body, flags: q.interactive ? 4 : 0 }));
    console.log(JSON.stringify({ ok: true, body: reply.body }));
  } catch (e) { console.log(JSON.stringify({ ok: false, name: e.type ?? 'local', text: e.text ?? String(e) })); }
}).on('close', () => process.exit(0));
`;
    const child = spawn('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups', '--',
      process.execPath, '--input-type=module', '-e', script], {
      cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'],
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: '/', LANG: 'C.UTF-8', BUS_ADDRESS: env!.ctx.bus.address },
    });
    let peer: Peer | null = null;
    const ready = new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`the peer as ${user.name} exited (${code})`)));
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        const lines = ((peer?.buffered ?? '') + d).split('\n');
        const rest = lines.pop()!;
        if (peer) peer.buffered = rest;
        for (const line of lines.filter((l) => l.trim() !== '')) {
          const m = JSON.parse(line) as { ready?: string } & Reply;
          if (m.ready) resolve(m.ready);
          else peer?.waiting.shift()?.(m);
        }
      });
    });
    const name = await ready;
    peer = new Peer(child, name);
    return peer;
  }

  call(objPath: string, iface: string, member: string, signature: string, body: unknown[], interactive = false): Promise<Reply> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin!.write(`${JSON.stringify({ path: objPath, iface, member, signature, body, interactive })}\n`);
    });
  }

  close(): void {
    this.child.stdin!.end();
    setTimeout(() => this.child.kill('SIGKILL'), 2000).unref();
  }
}

/**
 * Make an interactive call and type `password` when the agent asks. The
 * agent registers asynchronously: a call made before it has finds none and
 * is refused, and is made again.
 */
async function withPassword(agent: TtyAgent, password: string, call: () => Promise<Reply>): Promise<Reply> {
  const deadline = Date.now() + 30_000;
  const prompts = () => agent.output().split('Password:').length - 1;
  const before = prompts();
  for (;;) {
    const pending = call();
    let settled = false;
    void pending.then(() => { settled = true; });
    while (!settled && prompts() === before && Date.now() < deadline) await sleep(50);
    if (prompts() > before) {
      agent.type(password);
      return pending;
    }
    const r = await pending;
    if (r.ok || !/no authentication agent/.test(r.text) || Date.now() > deadline) return r;
    await sleep(200);
  }
}

test.serial('authentication - a password typed into polkit\'s agent authorizes the call; polkit retains it (auth_self_keep) and the daemon reuses it for that connection only', async (t) => {
  const { auth, finishedTx, ctx } = env!;
  const password = await setRandomPassword(auth);
  const peer = await Peer.start(auth);
  t.teardown(() => peer.close());
  const agent = await startTtyAgent(ctx.bus, peer.pid);
  t.teardown(() => agent.stop());

  const r = await withPassword(agent, password, () => peer.call(finishedTx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}], true));
  t.true(r.ok, `${JSON.stringify(r)}\nagent: ${agent.output()}`);
  t.regex(agent.output(), /AUTHENTICATING FOR org\.containers\.bootc\.prestage\.read-log/);
  t.regex(agent.output(), /Authentication is required to read the output of the hooks/, 'the agent shows the .policy\'s message');
  t.regex(agent.output(), /AUTHENTICATION COMPLETE/);

  // The same connection again, without interaction: answered from the
  // daemon's cache, no CheckAuthorization on the bus.
  const mon = await busctlMonitor(ctx.bus.address, ["type='method_call',destination='org.freedesktop.PolicyKit1'"]);
  t.teardown(() => mon.stop());
  const again = await peer.call(finishedTx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  t.true(again.ok, JSON.stringify(again));
  // Another connection of the same user is asked about, and polkit wants the password again.
  const fresh = await callAs(auth.uid, finishedTx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  assertDenied(t, fresh, /it needs authentication/);
  await mon.waitFor((m) => m['member'] === 'CheckAuthorization');
  t.is(mon.messages().filter((m) => m['member'] === 'CheckAuthorization').length, 1, 'only the other connection was checked');

  // auth_self (no _keep): polkit does not retain it, so neither does the daemon.
  const once = await withPassword(agent, password, () => peer.call(MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}], true));
  t.true(once.ok, `${JSON.stringify(once)}\nagent: ${agent.output()}`);
  const twice = await peer.call(MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}]);
  assertDenied(t, twice, new RegExp(`polkit action ${A.reconcile.replaceAll('.', '\\.')}: it needs authentication`));
  const checks = () => mon.messages().filter((m) => m['member'] === 'CheckAuthorization').length;
  await mon.waitFor(() => checks() >= 3);
  t.is(checks(), 3, 'each Reconcile was checked with polkit');
});

// ---- polkitd slow, without the policy, gone ------------------------------------

test.serial('polkitd not answering - a non-root call is AccessDenied after the bounded wait, never a hang', async (t) => {
  env!.polkitd.pause();
  try {
    const r = await callAs(env!.admin.uid, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}]);
    assertDenied(t, r, new RegExp(`^Reconcile is not authorized for uid ${env!.admin.uid}: polkit action ${A.reconcile.replaceAll('.', '\\.')} could not be checked: polkit \\(org\\.freedesktop\\.PolicyKit1\\) did not answer within 5 s; only root may call it$`));
  } finally {
    env!.polkitd.resume();
  }
  // Answering again, it authorizes again (a failure is not remembered).
  const again = await callAs(env!.admin.uid, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}]);
  t.true(again.ok, JSON.stringify(again));
});

test.serial('polkitd without the .policy - a non-root call is AccessDenied saying the action is unknown', async (t) => {
  await env!.polkitd.stop();
  env!.polkitd = await startPolkitd(env!.ctx.bus, { rules: env!.rules, actions: {} });
  const r = await callAs(env!.admin.uid, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}]);
  assertDenied(t, r, new RegExp(`could not be checked: polkit does not know the action ${A.reconcile.replaceAll('.', '\\.')} \\(org\\.containers\\.bootc\\.PreStage\\.policy is not installed in /usr/share/polkit-1/actions/\\); only root may call it$`));
});

test.serial('polkitd stopped - non-root calls fail at once with a clear message; root still works', async (t) => {
  await env!.polkitd.stop();
  const { admin, staged } = env!;
  const r = await callAs(admin.uid, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', [staged, {}]);
  assertDenied(t, r, new RegExp(`^StartPreStage is not authorized for uid ${admin.uid}: polkit action ${A.start.replaceAll('.', '\\.')} could not be checked: polkit \\(org\\.freedesktop\\.PolicyKit1\\) is not running on this bus; only root may call it$`));
  const b = await busctlAs(admin, ['call', SERVICE, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', '0']);
  t.true(isAccessDenied(b), b.stderr);
  const d = await runAsUser(admin, ['dbus-send', `--bus=${env!.ctx.bus.address}`, '--print-reply', `--dest=${SERVICE}`,
    MANAGER_PATH, `${MANAGER_IFACE}.UnregisterHook`, 'string:wait']);
  t.is(d.stderr.trim(), `Error ${ACCESS_DENIED}: UnregisterHook is not authorized for uid ${admin.uid}: polkit action ${A.manageHooks} could not be checked: polkit (org.freedesktop.PolicyKit1) is not running on this bus; only root may call it`);
  t.is(await record(), '', 'no step ran');
  // Root: no polkit on the bus at all, and everything works.
  const [txPath] = await env!.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [staged, { 'dry-run': new Variant('b', true) }]);
  t.is(await waitForState(txPath as string, ['aborted', 'prepared', 'failed']), 'aborted', 'a dry run ends aborted');
  const [lines] = await env!.ctx.client.call(SERVICE, txPath as string, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]);
  t.true(Array.isArray(lines));
});
