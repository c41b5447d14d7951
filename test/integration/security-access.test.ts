/**
 * Who may call what, against the real daemon: every method of both
 * interfaces, and Properties.Set, x {root, uid 65534} x {the shipped bus
 * policy, a permissive one}, with no polkitd on the bus (the polkit cases
 * are test/integration/security-polkit.test.ts).
 *
 * - With the shipped policy uid 65534's mutating calls and GetLog/Cancel
 *   reach the daemon (so that polkit could decide), and the daemon refuses
 *   them with org.freedesktop.DBus.Error.AccessDenied because polkit cannot
 *   be asked: without polkit only root may change anything. The bus itself
 *   still refuses Properties.Set (the daemon never sees it).
 * - With the permissive policy the daemon answers the same: a missing or
 *   broken policy file opens nothing.
 * - Read-only members answer both users under both policies.
 *
 * uid 65534 sends exactly the calls that would change something if they
 * were allowed (start a prepare that runs a hook, commit a prepared
 * transaction, register a hook, unregister one, read a log), and after each
 * refusal the whole state is compared with what it was before: hook files,
 * journal, logs, hook state, transactions, hook processes, and a record
 * every hook program appends to.
 *
 * One daemon per policy serves every case (the cases run serially), so a
 * refused call is checked against a daemon that has done real work.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Variant } from 'dbus-next';
import type { BusPolicy } from '../helpers/bus.js';
import { busctlCall, isAccessDenied, NOBODY, type RunResult } from '../helpers/busctl.js';
import {
  DBusError, MANAGER_IFACE, MANAGER_PATH, PROPERTIES_IFACE, SERVICE, TRANSACTION_IFACE, unwrapVariants,
} from '../helpers/dbus-client.js';
import { fileScope, startPreparedDaemon, type PreparedDaemon } from '../helpers/prepared-daemon.js';
import { lineCollector, sleep } from '../helpers/processes.js';
import { captureState, diffStates, waitForQuietState, type StateSnapshot } from '../helpers/state-snapshot.js';
import { REPO_ROOT } from '../helpers/tmp.js';

const ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied';
const PROPERTY_READ_ONLY = 'org.freedesktop.DBus.Error.PropertyReadOnly';
const NOT_FOUND = 'org.containers.bootc.PreStage.Error.NotFound';
const PEER_IFACE = 'org.freedesktop.DBus.Peer';
const INTROSPECTABLE_IFACE = 'org.freedesktop.DBus.Introspectable';

// ---- a dbus-next client running as another uid ---------------------------------

/** What a call returned, as the peer reports it. */
type PeerReply =
  | { ok: true; signature: string; body: unknown[] }
  | { ok: false; name: string; text: string };

/**
 * The peer's script: one bus connection, then one JSON call per stdin line,
 * one JSON answer per stdout line. Variants travel as {"$variant": sig,
 * "value": v}. It exits when stdin closes (the test worker went away).
 */
const PEER_SCRIPT = `
import { sessionBus, Message, Variant } from 'dbus-next';
import { createInterface } from 'node:readline';
const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
bus.on('error', (e) => { console.log(JSON.stringify({ fatal: String(e) })); process.exit(1); });
await new Promise((r) => bus.once('connect', r));
const revive = (k, v) => (v && typeof v === 'object' && !Array.isArray(v) && '$variant' in v) ? new Variant(v.$variant, v.value) : v;
const replacer = (k, v) => (typeof v === 'bigint' ? v.toString() : v);
console.log(JSON.stringify({ ready: bus.name }));
const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const req = JSON.parse(line, revive);
  try {
    const reply = await bus.call(new Message({ destination: req.dest, path: req.path, interface: req.iface,
      member: req.member, signature: req.signature, body: req.body }));
    console.log(JSON.stringify({ id: req.id, ok: true, signature: reply.signature ?? '', body: reply.body }, replacer));
  } catch (e) {
    console.log(JSON.stringify({ id: req.id, ok: false, name: e.type ?? 'local:' + e.name, text: e.text ?? String(e) }));
  }
});
rl.on('close', () => { bus.disconnect(); process.exit(0); });
`;

function encodeForPeer(v: unknown): unknown {
  if (v instanceof Variant) return { $variant: v.signature, value: encodeForPeer(v.value) };
  if (Array.isArray(v)) return v.map(encodeForPeer);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, encodeForPeer(x)]));
  }
  return v;
}

class UidPeer {
  private nextId = 1;
  private readonly waiting = new Map<number, (r: PeerReply) => void>();

  private constructor(private readonly child: ChildProcess, readonly uniqueName: string) {}

  /** Start a peer as `uid` on the bus at `address`; resolves once it is connected. */
  static async start(address: string, uid: number): Promise<UidPeer> {
    const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--',
      process.execPath, '--input-type=module', '-e', PEER_SCRIPT], {
      cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: '/', LANG: 'C.UTF-8', BUS_ADDRESS: address },
    });
    const err = lineCollector(child.stderr);
    let peer: UidPeer | null = null;
    let pending = '';
    const ready = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the uid ${uid} peer did not connect: ${err.lines.join('\n')}`)), 20_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the uid ${uid} peer exited (${code}): ${err.lines.join('\n')}`));
      });
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (chunk: string) => {
        const lines = (pending + chunk).split('\n');
        pending = lines.pop()!;
        for (const line of lines) {
          if (line.trim() === '') continue;
          const msg = JSON.parse(line) as { ready?: string; id?: number; fatal?: string } & PeerReply;
          if (msg.ready) {
            clearTimeout(timer);
            resolve(msg.ready);
          } else if (msg.id !== undefined) {
            peer?.waiting.get(msg.id)?.(msg);
            peer?.waiting.delete(msg.id);
          }
        }
      });
    });
    peer = new UidPeer(child, await ready);
    return peer;
  }

  /** Call a method; resolves with the reply or the error (never rejects on a D-Bus error). */
  call(objPath: string, iface: string, member: string, signature: string, body: unknown[], timeoutMs = 15_000): Promise<PeerReply> {
    const id = this.nextId++;
    return new Promise<PeerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`${iface}.${member}: the peer got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, (r) => { clearTimeout(timer); resolve(r); });
      this.child.stdin!.write(`${JSON.stringify({
        id, dest: SERVICE, path: objPath, iface, member, signature, body: encodeForPeer(body),
      })}\n`);
    });
  }

  close(): void {
    this.child.stdin?.end();
    setTimeout(() => this.child.kill('SIGKILL'), 2000).unref();
  }
}

// ---- one daemon per policy -----------------------------------------------------

interface Env extends PreparedDaemon {
  policy: BusPolicy;
  /** A dbus-next client running as uid 65534. */
  nobody: UidPeer;
}

const envs = new Map<BusPolicy, Env>();
const scope = fileScope();

async function root(env: Env, objPath: string, iface: string, member: string, signature = '', body: unknown[] = []): Promise<PeerReply> {
  try {
    const reply = await env.ctx.client.callMessage(SERVICE, objPath, iface, member, signature, body);
    return { ok: true, signature: reply.signature ?? '', body: reply.body };
  } catch (e) {
    if (e instanceof DBusError) return { ok: false, name: e.type, text: e.text };
    throw e;
  }
}

async function setUp(policy: BusPolicy): Promise<Env> {
  const prepared = await startPreparedDaemon(scope.t, { prefix: `security-access-${policy}-`, policy });
  const nobody = await UidPeer.start(prepared.ctx.bus.address, NOBODY);
  scope.teardown(() => nobody.close());
  return { ...prepared, policy, nobody };
}

test.before(async () => {
  const made = await Promise.allSettled((['shipped', 'permissive'] as const).map(async (p) => envs.set(p, await setUp(p))));
  const failed = made.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
});

// ---- the matrix ----------------------------------------------------------------

type Who = 'root' | 'uid 65534';

/** A valid hook definition (what an intruder would like to install). */
function definition(env: Env, what: string): Record<string, Variant> {
  return {
    Prepare: new Variant('as', [env.recorder.program, what]),
    Environment: new Variant('as', [`RECORD=${env.recorder.recordFile}`]),
    Required: new Variant('b', false),
  };
}

interface Row {
  label: string;
  objPath: (env: Env) => string;
  iface: string;
  member: string;
  signature: string;
  /** What uid 65534 sends: a call that would change something if allowed. */
  args: (env: Env) => unknown[];
  /** The same call as busctl arguments (signature first), for an independent client. */
  busctl?: (env: Env) => string[];
  /** Denied to uid 65534. */
  privileged: boolean;
  /** The shipped bus policy refuses it to uid 65534 before the daemon sees it. */
  busRefuses?: boolean;
  /** What uid 65534 gets under the permissive policy when it is not AccessDenied. */
  nobodyPermissive?: string;
  /** Root's call, when it differs from uid 65534's. */
  rootArgs?: (env: Env) => unknown[];
  /** 'ok' or the error name root gets. */
  rootExpect: string;
  /** Runs before root's call. */
  rootBefore?: (env: Env) => Promise<void>;
  /** Checks root's reply and undoes what the call changed. */
  rootAfter?: (t: ExecutionContext, env: Env, reply: PeerReply) => Promise<void>;
}

/** Where a row's call goes: the manager, or the prepared transaction. */
const MGR = (): string => MANAGER_PATH;
const TX = (env: Env): string => env.txPath;

const ROWS: Row[] = [
  {
    label: 'StartPreStage', objPath: MGR, iface: MANAGER_IFACE, member: 'StartPreStage', signature: 'sa{sv}',
    args: (e) => [e.other, {}], busctl: (e) => ['sa{sv}', e.other, '0'], privileged: true,
    rootArgs: (e) => [e.other, { 'dry-run': new Variant('b', true) }], rootExpect: 'ok',
    rootAfter: async (t, e, r) => {
      const p = (r as { body: unknown[] }).body[0] as string;
      t.regex(p, /^\/org\/containers\/bootc\/PreStage\/Transaction\/\w+$/);
      await waitForQuietState(e.capture);
      t.is(await e.ctx.client.getProperty(SERVICE, p, TRANSACTION_IFACE, 'State'), 'aborted', 'a dry run ends aborted');
    },
  },
  {
    label: 'CommitPreStage', objPath: MGR, iface: MANAGER_IFACE, member: 'CommitPreStage', signature: 'sa{sv}',
    args: (e) => [e.staged, {}], busctl: (e) => ['sa{sv}', e.staged, '0'], privileged: true,
    // Root reaches the engine, which has nothing prepared for this one.
    rootArgs: (e) => [e.other, {}], rootExpect: NOT_FOUND,
  },
  {
    label: 'AbortPreStage', objPath: MGR, iface: MANAGER_IFACE, member: 'AbortPreStage', signature: 'sa{sv}',
    args: (e) => [e.staged, {}], busctl: (e) => ['sa{sv}', e.staged, '0'], privileged: true,
    rootArgs: (e) => [e.other, {}], rootExpect: NOT_FOUND,
  },
  {
    label: 'Reconcile', objPath: MGR, iface: MANAGER_IFACE, member: 'Reconcile', signature: 'a{sv}',
    args: () => [{}], busctl: () => ['a{sv}', '0'], privileged: true, rootExpect: 'ok',
    rootAfter: async (t, _e, r) => { t.deepEqual((r as { body: unknown[] }).body, [[]]); },
  },
  {
    label: 'RegisterHook', objPath: MGR, iface: MANAGER_IFACE, member: 'RegisterHook', signature: 'sa{sv}a{sv}',
    args: (e) => ['intruder', definition(e, 'intruder'), {}],
    busctl: (e) => ['sa{sv}a{sv}', 'intruder', '1', 'Prepare', 'as', '1',
      e.recorder.program, '0'],
    privileged: true,
    rootArgs: (e) => ['matrix-root', definition(e, 'matrix-root'), { runtime: new Variant('b', true) }], rootExpect: 'ok',
    rootAfter: async (t, e, _r) => {
      const file = path.join(e.ctx.root, 'run/bootc/pre-stage.d/matrix-root.hook');
      t.regex(await fsp.readFile(file, 'utf8'), /^Prepare=.*record matrix-root$/m);
      t.true((await root(e, MANAGER_PATH, MANAGER_IFACE, 'UnregisterHook', 's', ['matrix-root'])).ok);
    },
  },
  {
    label: 'UnregisterHook', objPath: MGR, iface: MANAGER_IFACE, member: 'UnregisterHook', signature: 's',
    args: () => ['present'], busctl: () => ['s', 'present'], privileged: true,
    rootArgs: () => ['matrix-tmp'], rootExpect: 'ok',
    rootBefore: async (e) => {
      const r = await root(e, MANAGER_PATH, MANAGER_IFACE, 'RegisterHook', 'sa{sv}a{sv}',
        ['matrix-tmp', definition(e, 'matrix-tmp'), { runtime: new Variant('b', true) }]);
      if (!r.ok) throw new Error(`RegisterHook matrix-tmp: ${r.name}: ${r.text}`);
    },
    rootAfter: async (t, e) => {
      await t.throwsAsync(fsp.stat(path.join(e.ctx.root, 'run/bootc/pre-stage.d/matrix-tmp.hook')), { code: 'ENOENT' });
    },
  },
  {
    label: 'ListHooks', objPath: MGR, iface: MANAGER_IFACE, member: 'ListHooks', signature: 's',
    args: (e) => [e.staged], privileged: false, rootExpect: 'ok',
  },
  {
    label: 'ListTransactions', objPath: MGR, iface: MANAGER_IFACE, member: 'ListTransactions', signature: '',
    args: () => [], privileged: false, rootExpect: 'ok',
  },
  {
    label: 'Transaction.Cancel', objPath: TX, iface: TRANSACTION_IFACE, member: 'Cancel', signature: '',
    args: () => [], busctl: () => [], privileged: true, rootExpect: 'ok',
  },
  {
    label: 'Transaction.GetLog', objPath: TX, iface: TRANSACTION_IFACE, member: 'GetLog', signature: 'a{sv}',
    args: () => [{}], busctl: () => ['a{sv}', '0'], privileged: true, rootExpect: 'ok',
    rootAfter: async (t, _e, r) => {
      const lines = (r as { body: unknown[] }).body[0] as string[];
      t.true(lines.some((l) => l.includes('present') && l.includes('prepare')), 'the log has the hook\'s step');
    },
  },
  {
    label: 'Properties.Set on the manager', objPath: MGR, iface: PROPERTIES_IFACE, member: 'Set', signature: 'ssv',
    args: () => [MANAGER_IFACE, 'State', new Variant('s', 'idle')], busctl: () => ['ssv', MANAGER_IFACE, 'State', 's', 'idle'],
    privileged: true, busRefuses: true, nobodyPermissive: PROPERTY_READ_ONLY, rootExpect: PROPERTY_READ_ONLY,
  },
  {
    label: 'Properties.Set on a transaction', objPath: TX, iface: PROPERTIES_IFACE, member: 'Set', signature: 'ssv',
    args: () => [TRANSACTION_IFACE, 'State', new Variant('s', 'committed')],
    busctl: () => ['ssv', TRANSACTION_IFACE, 'State', 's', 'committed'],
    privileged: true, busRefuses: true, nobodyPermissive: PROPERTY_READ_ONLY, rootExpect: PROPERTY_READ_ONLY,
  },
  {
    label: 'Properties.Get', objPath: TX, iface: PROPERTIES_IFACE, member: 'Get', signature: 'ss',
    args: () => [TRANSACTION_IFACE, 'State'], privileged: false, rootExpect: 'ok',
  },
  {
    label: 'Properties.GetAll', objPath: MGR, iface: PROPERTIES_IFACE, member: 'GetAll', signature: 's',
    args: () => [MANAGER_IFACE], privileged: false, rootExpect: 'ok',
  },
  {
    label: 'Introspectable.Introspect', objPath: TX, iface: INTROSPECTABLE_IFACE, member: 'Introspect', signature: '',
    args: () => [], privileged: false, rootExpect: 'ok',
  },
  {
    label: 'Peer.Ping', objPath: MGR, iface: PEER_IFACE, member: 'Ping', signature: '',
    args: () => [], privileged: false, rootExpect: 'ok',
  },
];

/** The daemon answers, is the same process, and lists its transactions. */
async function assertAlive(t: ExecutionContext, env: Env): Promise<void> {
  t.false(env.ctx.daemon.hasExited, 'the daemon is running');
  await env.ctx.client.call(SERVICE, MANAGER_PATH, PEER_IFACE, 'Ping');
  const [txs] = await env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions');
  t.true((txs as string[]).includes(env.txPath), 'ListTransactions still lists the prepared transaction');
  t.is(await env.ctx.client.nameOwner(SERVICE), env.uniqueName, 'the same connection owns the name');
}

function deniedLogs(env: Env, member: string): number {
  return env.ctx.daemon.jsonLogs().filter((l) => typeof l['message'] === 'string'
    && (l['message'] as string).startsWith('denied ') && (l['message'] as string).includes(`.${member} to uid ${NOBODY}`)).length;
}

const describeReply = (r: PeerReply) => (r.ok ? `reply (${r.signature}) ${JSON.stringify(unwrapVariants(r.body), (_k, v) => (typeof v === 'bigint' ? `${v}` : v)).slice(0, 200)}` : `${r.name}: ${r.text}`);

const matrix = test.macro({
  async exec(t, policy: BusPolicy, who: Who, row: Row) {
    const env = envs.get(policy)!;
    const objPath = row.objPath(env);
    const before: StateSnapshot = await waitForQuietState(env.capture);

    if (who === 'root') {
      await row.rootBefore?.(env);
      const base = row.rootBefore ? await waitForQuietState(env.capture) : before;
      const r = await root(env, objPath, row.iface, row.member, row.signature, (row.rootArgs ?? row.args)(env));
      if (row.rootExpect === 'ok') {
        t.true(r.ok, `root: ${describeReply(r)}`);
      } else {
        t.false(r.ok, `root: ${describeReply(r)}`);
        if (!r.ok) t.is(r.name, row.rootExpect, r.text);
      }
      await row.rootAfter?.(t, env, r);
      if (!row.privileged || row.rootExpect !== 'ok') {
        // A read, or a call the engine refused: nothing may change.
        t.deepEqual(diffStates(base, await captureState(env.capture)), [], 'state unchanged');
      }
      await assertAlive(t, env);
      return;
    }

    const deniedBefore = deniedLogs(env, row.member);
    const busRefuses = policy === 'shipped' && row.busRefuses === true;
    const r = await env.nobody.call(objPath, row.iface, row.member, row.signature, row.args(env));
    if (!row.privileged) {
      t.true(r.ok, `uid 65534: ${describeReply(r)}`);
    } else if (busRefuses) {
      // The bus refuses: its message names the rule, and the daemon never hears of it.
      t.false(r.ok, describeReply(r));
      if (!r.ok) {
        t.is(r.name, ACCESS_DENIED);
        t.regex(r.text, /^Rejected send message/, 'refused by dbus-daemon, not by the daemon');
      }
    } else if (row.nobodyPermissive) {
      t.false(r.ok, describeReply(r));
      if (!r.ok) t.is(r.name, row.nobodyPermissive, r.text);
    } else {
      // The bus lets it through: the daemon's own check answers, and
      // with no polkitd to ask, only root may call it.
      t.false(r.ok, describeReply(r));
      if (!r.ok) {
        t.is(r.name, ACCESS_DENIED);
        t.regex(r.text, new RegExp(`^${row.member} is not authorized for uid ${NOBODY}: polkit action org\\.containers\\.bootc\\.prestage\\.[a-z-]+ `
          + 'could not be checked: polkit \\(org\\.freedesktop\\.PolicyKit1\\) is not running on this bus; only root may call it$'));
      }
      await env.ctx.daemon.waitForLog((l) => typeof l['message'] === 'string'
        && (l['message'] as string).startsWith(`denied ${row.iface}.${row.member} to uid ${NOBODY}`));
    }
    t.deepEqual(diffStates(before, await captureState(env.capture)), [], 'state unchanged');

    // An independent client (sd-bus) as the same user gets the same answer.
    if (row.busctl && row.privileged) {
      const b: RunResult = await busctlCall(env.ctx.bus.address, SERVICE, objPath, row.iface, row.member,
        row.busctl(env), { uid: NOBODY });
      t.not(b.code, 0, `busctl as uid ${NOBODY} must fail: ${b.stdout}`);
      if (row.nobodyPermissive && !busRefuses) {
        t.regex(b.stderr, /read-only/i);
      } else {
        // busctl prints "Access denied" for every AccessDenied, whoever sent it.
        t.true(isAccessDenied(b), b.stderr);
        if (!busRefuses) {
          await env.ctx.daemon.waitForLog(() => deniedLogs(env, row.member) >= deniedBefore + 2);
        }
      }
      t.deepEqual(diffStates(before, await captureState(env.capture)), [], 'state unchanged after busctl');
    }
    if (busRefuses) {
      await sleep(50);
      t.is(deniedLogs(env, row.member), deniedBefore, 'the call never reached the daemon');
    }
    await assertAlive(t, env);
  },
  title(_provided, policy: BusPolicy, who: Who, row: Row) {
    let expect: string;
    if (who === 'root') expect = row.rootExpect === 'ok' ? 'answered' : row.rootExpect.replace(/^.*\.Error\./, '');
    else if (!row.privileged) expect = 'answered';
    else if (policy === 'shipped' && row.busRefuses) expect = 'refused by the bus';
    else expect = row.nobodyPermissive ? row.nobodyPermissive.replace(/^.*\.Error\./, '') : 'AccessDenied by the daemon';
    return `access - ${policy} policy - ${who} - ${row.label}: ${expect}${who === 'uid 65534' && row.privileged ? ', nothing changes' : ''}`;
  },
});

/** Every (policy, user, row): the number of matrix cases. */
const MATRIX_CASES = (['shipped', 'permissive'] as const).flatMap((policy) =>
  (['root', 'uid 65534'] as const).flatMap((who) => ROWS.map((row) => ({ policy, who, row }))));

for (const { policy, who, row } of MATRIX_CASES) test.serial(matrix, policy, who, row);

test.serial('access - the matrix covers every method of both interfaces', (t) => {
  const members = new Set(ROWS.filter((r) => r.iface === MANAGER_IFACE || r.iface === TRANSACTION_IFACE).map((r) => r.member));
  for (const m of ['StartPreStage', 'CommitPreStage', 'AbortPreStage', 'Reconcile', 'RegisterHook', 'UnregisterHook',
    'ListHooks', 'ListTransactions', 'Cancel', 'GetLog']) {
    t.true(members.has(m), m);
  }
  t.is(MATRIX_CASES.length, 64);
});

test.serial('access - after the matrix, the hook ran only for root\'s calls and each daemon is the same process', async (t) => {
  for (const env of envs.values()) {
    await assertAlive(t, env);
    // Setup's prepare ran 'present'; nothing uid 65534 sent ran anything,
    // and root's calls were a dry run and refused phases.
    t.is(await env.recorder.recordText(), 'present prepare present\n', env.policy);
    t.is(await env.ctx.client.getProperty(SERVICE, env.txPath, TRANSACTION_IFACE, 'State'), 'prepared', env.policy);
  }
});
