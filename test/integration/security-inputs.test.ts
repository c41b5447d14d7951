/**
 * Hostile input against the real daemon: every method x a table of bad
 * arguments, sent by root (so the uid check passes and validation is what
 * is tested). Each case must get its named error (the exact D-Bus error
 * name), leave the state as it was (no hook run, no file written, no
 * transaction created: see test/helpers/state-snapshot.ts), and leave the
 * daemon alive (Ping and ListTransactions answer, the same connection owns
 * the name).
 *
 * The daemon has done real work first: the staged deployment has a
 * prepared transaction, so a Commit or Abort whose bad options were
 * ignored, or a Start that slipped through, would visibly change things.
 *
 * What cannot reach the daemon at all: D-Bus strings are valid UTF-8
 * without NUL. dbus-daemon checks every message and drops the connection
 * of a client that sends invalid UTF-8 or a NUL inside a string (the raw
 * cases below write such bytes on the socket themselves, with a valid
 * control), so the daemon never sees either; dbus-next encodes a lone
 * UTF-16 surrogate as U+FFFD, and the cases below that send one show it
 * arrives as a replacement character and is refused on its merits.
 *
 * Which error for which input: sizes over the transport bounds of
 * service/protocol/options.ts (4096-byte strings, 256-entry arrays) and wrong
 * types or keys are InvalidArgs, decided before the engine sees the call;
 * a deployment path that does not name a deployment is InvalidDeployment;
 * a bad hook definition (meaning, not shape: a relative program, a reserved
 * variable, a cycle) is InvalidHook; a bad hook name is InvalidArgs (it is
 * the name argument that is wrong, as for UnregisterHook).
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { Message, Variant } from 'dbus-next';
import { busctlCall } from '../helpers/busctl.js';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import {
  DBusError, MANAGER_IFACE, MANAGER_PATH, SERVICE, TestClient, TRANSACTION_IFACE,
} from '../helpers/dbus-client.js';
import {
  captureState, diffStates, waitForQuietState, type CaptureOptions, type StateSnapshot,
} from '../helpers/state-snapshot.js';
import { makeTmpDir, removeDir } from '../helpers/tmp.js';

const E = {
  InvalidArgs: 'org.freedesktop.DBus.Error.InvalidArgs',
  UnknownObject: 'org.freedesktop.DBus.Error.UnknownObject',
  InvalidDeployment: 'org.containers.bootc.PreStage.Error.InvalidDeployment',
  InvalidHook: 'org.containers.bootc.PreStage.Error.InvalidHook',
  NotFound: 'org.containers.bootc.PreStage.Error.NotFound',
} as const;

const RECORD_PROGRAM = `#!/bin/sh
echo "$BOOTC_PRESTAGE_HOOK $BOOTC_PRESTAGE_PHASE $*" >> "$RECORD"
exit 0
`;

const MEGABYTE = 1024 * 1024;
const FAKE_SUM = 'f'.repeat(64);

interface Env {
  ctx: DaemonContext;
  sysrootPath: string;
  /** <sysroot>/ostree/deploy/<os>/deploy */
  deployDir: string;
  staged: string;
  other: string;
  txPath: string;
  program: string;
  recordFile: string;
  aux: string;
  capture: CaptureOptions;
  uniqueName: string;
  /** The state every case must leave as it found. */
  baseline: StateSnapshot;
}

let env: Env;
const cleanups: (() => Promise<void> | void)[] = [];

/** withDaemon outside a test (t.teardown is not allowed in hooks). */
function hookScope(): ExecutionContext {
  return { teardown: (fn: () => unknown) => { cleanups.push(fn as () => Promise<void>); } } as unknown as ExecutionContext;
}

test.before(async () => {
  const aux = await makeTmpDir({ prefix: 'security-inputs-', mode: 0o755 });
  cleanups.push(() => removeDir(aux));
  const program = path.join(aux, 'bin', 'record');
  const recordDir = path.join(aux, 'record');
  const recordFile = path.join(recordDir, 'runs');
  await fsp.mkdir(path.dirname(program), { mode: 0o755 });
  await fsp.mkdir(recordDir, { mode: 0o755 });
  await fsp.writeFile(program, RECORD_PROGRAM, { mode: 0o755 });
  await fsp.chmod(program, 0o755);
  // 'present' runs after 'cycle-me' (a name no hook has yet): registering
  // cycle-me After=present closes a cycle.
  const present = ['[Hook]', `Prepare=${program} present`, `Commit=${program} present`, `Abort=${program} present`,
    `Environment=RECORD=${recordFile}`, 'After=cycle-me', ''].join('\n');
  const ctx = await withDaemon(hookScope(), {
    policy: 'shipped', sysroot: { deployments: 2 }, etcHooks: { 'present.hook': present },
  });
  const sysroot = ctx.sysroot as { path: string; osname: string; deployments: string[] };
  const deployDir = path.dirname(sysroot.deployments[0]!);

  // Things in the deployment directory that are named like deployments
  // but are not: a link out of the sysroot, a link loop, a file; and a
  // directory named like nothing.
  const outside = path.join(aux, 'outside', `${FAKE_SUM}.0`);
  await fsp.mkdir(outside, { recursive: true, mode: 0o755 });
  await fsp.symlink(outside, path.join(deployDir, `${FAKE_SUM}.90`));
  await fsp.symlink(`${FAKE_SUM}.91`, path.join(deployDir, `${FAKE_SUM}.91`));
  await fsp.writeFile(path.join(deployDir, `${FAKE_SUM}.92`), 'not a directory\n');
  await fsp.mkdir(path.join(deployDir, 'not-a-deployment'), { mode: 0o755 });
  // A deployment-shaped directory in another sysroot.
  await fsp.mkdir(path.join(aux, 'fake-sysroot', 'ostree', 'deploy', sysroot.osname, 'deploy', `${FAKE_SUM}.0`),
    { recursive: true, mode: 0o755 });

  const capture: CaptureOptions = { root: ctx.root, stateDir: ctx.stateDir, client: ctx.client, watch: [recordDir] };
  const [txPath] = await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [sysroot.deployments[0], {}]) as [string];
  await waitForQuietState(capture);
  if (await ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State') !== 'prepared') {
    throw new Error('setup: the staged deployment did not prepare');
  }
  env = {
    ctx, sysrootPath: sysroot.path, deployDir, staged: sysroot.deployments[0]!, other: sysroot.deployments[1]!,
    txPath, program, recordFile, aux, capture, uniqueName: ctx.daemon.uniqueName,
    baseline: await waitForQuietState(capture),
  };
});

test.after.always(async () => {
  for (const fn of cleanups.reverse()) {
    try { await fn(); } catch { /* keep tearing down */ }
  }
});

// ---- the table ---------------------------------------------------------------

interface Case {
  method: string;
  input: string;
  /** Default the manager. */
  objPath?: (e: Env) => string;
  /** Default the manager interface (the transaction's for Cancel and GetLog). */
  iface?: string;
  signature: string;
  args: (e: Env) => unknown[];
  expect: string;
  /** Part of the message, to show it is the refusal we meant. */
  mentions?: string | RegExp;
}

const v = (sig: string, value: unknown) => new Variant(sig, value);

/** A definition RegisterHook accepts, to which a case adds one bad key. */
function goodDefinition(e: Env): Record<string, Variant> {
  return {
    Prepare: v('as', [e.program, 'hostile']),
    Environment: v('as', [`RECORD=${e.recordFile}`]),
    Required: v('b', false),
  };
}

const CASES: Case[] = [];

// Deployment paths: StartPreStage, CommitPreStage, AbortPreStage, ListHooks.
{
  type DeploymentInput = { input: string; path: (e: Env) => string; expect: string; abortExpect?: string; mentions?: string | RegExp };
  const inputs: DeploymentInput[] = [
    { input: 'a relative path', path: (e) => path.relative('/', e.staged), expect: E.InvalidDeployment, mentions: 'not an absolute path' },
    { input: "'..' out of the deployment directory", path: (e) => `${e.staged}/../../../..`, expect: E.InvalidDeployment, mentions: 'is not a deployment' },
    { input: "'..' out of the sysroot", path: (e) => `${e.staged}/${'../'.repeat(12)}tmp`, expect: E.InvalidDeployment, mentions: 'is not a deployment' },
    { input: 'a link named like a deployment, pointing out of the sysroot', path: (e) => path.join(e.deployDir, `${FAKE_SUM}.90`), expect: E.InvalidDeployment, mentions: 'is not a deployment' },
    { input: 'a symlink loop', path: (e) => path.join(e.deployDir, `${FAKE_SUM}.91`), expect: E.InvalidDeployment, mentions: 'symbolic links' },
    { input: 'a file instead of a directory', path: (e) => path.join(e.deployDir, `${FAKE_SUM}.92`), expect: E.InvalidDeployment, mentions: 'not a directory' },
    // Abort accepts a deployment that is gone (discarded by ostree); it has no transaction.
    { input: 'a deployment that does not exist', path: (e) => path.join(e.deployDir, `${FAKE_SUM}.93`), expect: E.InvalidDeployment, abortExpect: E.NotFound },
    { input: 'a path inside a deployment', path: (e) => path.join(e.staged, 'usr'), expect: E.InvalidDeployment, mentions: 'is not a deployment' },
    { input: 'a directory not named like a deployment', path: (e) => path.join(e.deployDir, 'not-a-deployment'), expect: E.InvalidDeployment, mentions: 'named like a deployment' },
    { input: 'the sysroot itself', path: (e) => e.sysrootPath, expect: E.InvalidDeployment },
    { input: "'/'", path: () => '/', expect: E.InvalidDeployment },
    { input: 'a deployment of another sysroot', path: (e) => path.join(e.aux, 'fake-sysroot', 'ostree', 'deploy', path.basename(path.dirname(e.deployDir)), 'deploy', `${FAKE_SUM}.0`), expect: E.InvalidDeployment, mentions: 'is not a deployment' },
    { input: 'a megabyte-long string', path: () => `/${'a'.repeat(MEGABYTE)}`, expect: E.InvalidArgs, mentions: '4096' },
    { input: 'a lone surrogate (arrives as U+FFFD)', path: (e) => `${e.staged}\ud800`, expect: E.InvalidDeployment },
  ];
  for (const d of inputs) {
    for (const method of ['StartPreStage', 'CommitPreStage', 'AbortPreStage'] as const) {
      const expect = method === 'AbortPreStage' && d.abortExpect ? d.abortExpect : d.expect;
      CASES.push({
        method, input: d.input, signature: 'sa{sv}', args: (e) => [d.path(e), {}], expect,
        ...(expect === d.expect && d.mentions ? { mentions: d.mentions } : {}),
      });
    }
    CASES.push({ method: 'ListHooks', input: d.input, signature: 's', args: (e) => [d.path(e)], expect: d.expect, ...(d.mentions ? { mentions: d.mentions } : {}) });
  }
  for (const method of ['StartPreStage', 'CommitPreStage', 'AbortPreStage'] as const) {
    CASES.push({ method, input: 'an empty path', signature: 'sa{sv}', args: () => ['', {}], expect: E.InvalidDeployment, mentions: 'empty' });
  }
}

// Option dictionaries. Start goes to the deployment that has no transaction
// (accepted, it would create one); Commit and Abort to the prepared one
// (accepted, they would run its hooks).
{
  type OptionCase = { input: string; options: (e: Env) => Record<string, unknown>; mentions?: string | RegExp };
  const common: OptionCase[] = [
    { input: 'an unknown option key', options: () => ({ bogus: v('b', true) }), mentions: "unknown key 'bogus'" },
    { input: 'a megabyte-long option key', options: () => ({ ['k'.repeat(MEGABYTE)]: v('b', true) }), mentions: 'unknown key' },
    { input: 'a variant inside the variant', options: () => ({ wait: v('v', v('b', true)) }) },
  ];
  const perMethod: Record<string, OptionCase[]> = {
    StartPreStage: [
      { input: "'force' as a string", options: () => ({ force: v('s', 'yes') }), mentions: "'force' must have type 'b', not 's'" },
      { input: "'Force' (wrong case)", options: () => ({ Force: v('b', true) }), mentions: "unknown key 'Force'" },
      { input: "'dry-run' as an int32", options: () => ({ 'dry-run': v('i', 1) }) },
      { input: "'timeout-sec' as a uint64", options: () => ({ 'timeout-sec': v('t', 10n) }) },
      { input: "'timeout-sec' as a string", options: () => ({ 'timeout-sec': v('s', '10') }) },
      { input: "'wait' as an array of booleans", options: () => ({ wait: v('ab', [true]) }) },
    ],
    CommitPreStage: [
      { input: "'wait' as a string", options: () => ({ wait: v('s', 'true') }) },
      { input: "'force' (a StartPreStage option)", options: () => ({ force: v('b', true) }), mentions: "unknown key 'force'" },
      { input: "'timeout-sec' as an int32", options: () => ({ 'timeout-sec': v('i', -1) }) },
    ],
    AbortPreStage: [
      { input: "'wait' as a byte", options: () => ({ wait: v('y', 1) }) },
      { input: "'dry-run' (a StartPreStage option)", options: () => ({ 'dry-run': v('b', true) }) },
    ],
    Reconcile: [
      { input: "'force' (no key is accepted)", options: () => ({ force: v('b', true) }), mentions: 'none are accepted' },
    ],
    RegisterHook: [
      { input: "'runtime' as a string", options: () => ({ runtime: v('s', 'yes') }) },
      { input: "'Runtime' (wrong case)", options: () => ({ Runtime: v('b', true) }) },
    ],
    GetLog: [
      { input: "'max-lines' as a string", options: () => ({ 'max-lines': v('s', '10') }) },
      { input: "'max-lines' 0", options: () => ({ 'max-lines': v('u', 0) }), mentions: 'between 1 and' },
      { input: "'max-lines' over the cap", options: () => ({ 'max-lines': v('u', 100_001) }), mentions: 'between 1 and' },
      { input: "'hook' a megabyte long", options: () => ({ hook: v('s', 'h'.repeat(MEGABYTE)) }), mentions: '4096' },
      { input: "'hook' as an array", options: () => ({ hook: v('as', ['present']) }) },
    ],
  };
  for (const [method, list] of Object.entries(perMethod)) {
    for (const o of [...common, ...list]) {
      let c: Case;
      switch (method) {
        case 'StartPreStage':
          c = { method, input: o.input, signature: 'sa{sv}', args: (e) => [e.other, o.options(e)], expect: E.InvalidArgs };
          break;
        case 'CommitPreStage':
        case 'AbortPreStage':
          c = { method, input: o.input, signature: 'sa{sv}', args: (e) => [e.staged, o.options(e)], expect: E.InvalidArgs };
          break;
        case 'Reconcile':
          c = { method, input: o.input, signature: 'a{sv}', args: (e) => [o.options(e)], expect: E.InvalidArgs };
          break;
        case 'RegisterHook':
          c = { method, input: o.input, signature: 'sa{sv}a{sv}', args: (e) => ['hostile', goodDefinition(e), o.options(e)], expect: E.InvalidArgs };
          break;
        default:
          c = {
            method, input: o.input, objPath: (e) => e.txPath, iface: TRANSACTION_IFACE, signature: 'a{sv}',
            args: (e) => [o.options(e)], expect: E.InvalidArgs,
          };
      }
      if (o.mentions) c.mentions = o.mentions;
      CASES.push(c);
    }
  }
}

// Hook names: RegisterHook (with a good definition) and UnregisterHook.
{
  const names: { input: string; name: string }[] = [
    { input: 'an empty name', name: '' },
    { input: "'../x'", name: '../x' },
    { input: 'a name with a slash', name: 'a/b' },
    { input: 'a 65-character name', name: 'a'.repeat(65) },
    { input: "a leading '-'", name: '-x' },
    { input: "a leading '.'", name: '.hidden' },
    { input: 'a name with a space', name: 'two words' },
    { input: 'a name ending in .hook/..', name: 'x.hook/..' },
    { input: 'a lone surrogate (arrives as U+FFFD)', name: 'x\udc00' },
    { input: 'a megabyte-long name', name: 'n'.repeat(MEGABYTE) },
  ];
  for (const n of names) {
    CASES.push({
      method: 'RegisterHook', input: n.input, signature: 'sa{sv}a{sv}',
      args: (e) => [n.name, goodDefinition(e), {}], expect: E.InvalidArgs,
    });
    CASES.push({ method: 'UnregisterHook', input: n.input, signature: 's', args: () => [n.name], expect: E.InvalidArgs });
  }
  CASES.push({ method: 'UnregisterHook', input: 'a hook that is not registered', signature: 's', args: () => ['absent'], expect: E.NotFound });
}

// Hook definitions: RegisterHook.
{
  type DefCase = { input: string; def: (e: Env) => Record<string, Variant>; expect: string; mentions?: string | RegExp };
  const withKey = (key: string, value: Variant) => (e: Env) => ({ ...goodDefinition(e), [key]: value });
  const env = (entries: string[]) => (e: Env) => ({ ...goodDefinition(e), Environment: v('as', [`RECORD=${e.recordFile}`, ...entries]) });
  const defs: DefCase[] = [
    { input: 'a relative program path', def: withKey('Prepare', v('as', ['bin/true'])), expect: E.InvalidHook, mentions: 'absolute path' },
    { input: 'a program that expands to a relative path', def: withKey('Prepare', v('as', ['${UNSET}bin/true'])), expect: E.InvalidHook, mentions: 'absolute path' },
    { input: 'an empty program', def: withKey('Prepare', v('as', [''])), expect: E.InvalidHook },
    { input: "a systemd '-' prefix", def: withKey('Prepare', v('as', ['-/bin/true'])), expect: E.InvalidHook },
    { input: 'no step at all', def: () => ({ Required: v('b', true) }), expect: E.InvalidHook, mentions: 'no step' },
    { input: 'an empty definition', def: () => ({}), expect: E.InvalidHook },
    { input: 'an environment of 257 entries', def: env(Array.from({ length: 256 }, (_, i) => `V${i}=x`)), expect: E.InvalidArgs, mentions: '257 entries' },
    { input: 'an environment value of 5000 bytes', def: env([`BIG=${'x'.repeat(5000)}`]), expect: E.InvalidArgs, mentions: '4096' },
    { input: 'an environment entry too long for a hook file line once quoted', def: env([`BIG="${'x'.repeat(4085)}`]), expect: E.InvalidHook },
    { input: 'a reserved BOOTC_PRESTAGE_ variable', def: env(['BOOTC_PRESTAGE_DEPLOYMENT=/']), expect: E.InvalidHook, mentions: 'reserved' },
    { input: 'another reserved BOOTC_PRESTAGE_ name', def: env(['BOOTC_PRESTAGE_ANYTHING=1']), expect: E.InvalidHook, mentions: 'reserved' },
    { input: 'an environment entry without =', def: env(['PATH']), expect: E.InvalidHook },
    { input: 'an invalid environment name', def: env(['1X=y']), expect: E.InvalidHook },
    { input: 'an ordering cycle against an existing hook', def: withKey('After', v('as', ['present'])), expect: E.InvalidHook, mentions: 'cycle' },
    { input: 'an invalid name in After', def: withKey('After', v('as', ['../x'])), expect: E.InvalidHook },
    { input: '257 names in Before', def: withKey('Before', v('as', Array.from({ length: 257 }, (_, i) => `h${i}`))), expect: E.InvalidArgs },
    { input: 'TimeoutSec over the cap (7 days)', def: withKey('TimeoutSec', v('u', 7 * 24 * 3600 + 1)), expect: E.InvalidHook, mentions: '604800' },
    { input: 'TimeoutSec as the maximum uint32', def: withKey('TimeoutSec', v('u', 0xffffffff)), expect: E.InvalidHook },
    { input: 'TimeoutSec as a string', def: withKey('TimeoutSec', v('s', '10')), expect: E.InvalidArgs },
    { input: 'Required as a string', def: withKey('Required', v('s', 'yes')), expect: E.InvalidArgs },
    { input: 'Prepare as a string', def: withKey('Prepare', v('s', '/bin/true')), expect: E.InvalidArgs },
    { input: '257 Prepare words', def: withKey('Prepare', v('as', ['/bin/true', ...Array.from({ length: 256 }, () => 'x')])), expect: E.InvalidArgs },
    { input: 'a Description that would add a line to the file', def: withKey('Description', v('s', 'x\nPrepare=/bin/sh')), expect: E.InvalidHook },
    { input: 'a Description of 1025 bytes', def: withKey('Description', v('s', 'd'.repeat(1025))), expect: E.InvalidHook },
    { input: 'a megabyte-long Description', def: withKey('Description', v('s', 'd'.repeat(MEGABYTE))), expect: E.InvalidArgs },
    { input: "an unknown key ('ExecStart')", def: withKey('ExecStart', v('as', ['/bin/true'])), expect: E.InvalidArgs, mentions: 'ExecStart' },
    { input: "a ListHooks-only key ('Source')", def: withKey('Source', v('s', '/etc/passwd')), expect: E.InvalidArgs },
  ];
  for (const d of defs) {
    CASES.push({
      method: 'RegisterHook', input: d.input, signature: 'sa{sv}a{sv}',
      args: (e) => [d.input.includes('cycle') ? 'cycle-me' : 'hostile', d.def(e), {}], expect: d.expect,
      ...(d.mentions ? { mentions: d.mentions } : {}),
    });
  }
}

// Signatures: every method with arguments of the wrong type or number.
{
  const sigs: { method: string; tx?: boolean; signature: string; args: (e: Env) => unknown[] }[] = [
    { method: 'StartPreStage', signature: 's', args: (e) => [e.other] },
    { method: 'StartPreStage', signature: 'sa{ss}', args: (e) => [e.other, { force: 'true' }] },
    { method: 'StartPreStage', signature: 'oa{sv}', args: () => ['/org/x', {}] },
    { method: 'CommitPreStage', signature: 'a{sv}s', args: (e) => [{}, e.staged] },
    { method: 'AbortPreStage', signature: '', args: () => [] },
    { method: 'Reconcile', signature: 'a{sv}a{sv}', args: () => [{}, {}] },
    { method: 'RegisterHook', signature: 'sa{sv}', args: (e) => ['hostile', goodDefinition(e)] },
    { method: 'UnregisterHook', signature: 'as', args: () => [['present']] },
    { method: 'ListHooks', signature: 'o', args: () => ['/org'] },
    { method: 'ListTransactions', signature: 's', args: () => [''] },
    { method: 'Cancel', tx: true, signature: 'b', args: () => [true] },
    { method: 'GetLog', tx: true, signature: 'a{ss}', args: () => [{ hook: 'present' }] },
  ];
  for (const s of sigs) {
    CASES.push({
      method: s.method, input: `signature '${s.signature}'`, signature: s.signature, args: s.args,
      expect: E.InvalidArgs, mentions: 'expected signature',
      ...(s.tx ? { objPath: (e: Env) => e.txPath, iface: TRANSACTION_IFACE } : {}),
    });
  }
  // Transaction methods on a transaction that does not exist.
  for (const m of [{ method: 'Cancel', signature: '', args: [] }, { method: 'GetLog', signature: 'a{sv}', args: [{}] }]) {
    CASES.push({
      method: m.method, input: 'a transaction that does not exist', signature: m.signature, args: () => m.args,
      objPath: () => `${MANAGER_PATH}/Transaction/nope`, iface: TRANSACTION_IFACE, expect: E.UnknownObject,
    });
  }
}

// ---- running a case ----------------------------------------------------------

async function assertAlive(t: ExecutionContext): Promise<void> {
  t.false(env.ctx.daemon.hasExited, 'the daemon is running');
  await env.ctx.client.call(SERVICE, MANAGER_PATH, 'org.freedesktop.DBus.Peer', 'Ping');
  const [txs] = await env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions');
  t.deepEqual([...(txs as string[])].sort(), env.baseline.transactions, 'ListTransactions answers, unchanged');
  t.is(await env.ctx.client.nameOwner(SERVICE), env.uniqueName, 'the same connection owns the name');
}

/** Compare with the baseline; after a failure, take a new one so later cases are judged alone. */
async function assertUnchanged(t: ExecutionContext): Promise<void> {
  const diff = diffStates(env.baseline, await captureState(env.capture));
  if (diff.length > 0) env.baseline = await waitForQuietState(env.capture);
  t.deepEqual(diff, [], 'state unchanged');
}

const hostile = test.macro({
  async exec(t, c: Case) {
    let err: DBusError | null = null;
    try {
      const reply = await env.ctx.client.callMessage(SERVICE, c.objPath?.(env) ?? MANAGER_PATH, c.iface ?? MANAGER_IFACE,
        c.method, c.signature, c.args(env), { timeoutMs: 20_000 });
      t.fail(`expected ${c.expect}, got a reply: ${JSON.stringify(reply.body, (_k, x) => (typeof x === 'bigint' ? `${x}` : x)).slice(0, 300)}`);
    } catch (e) {
      if (!(e instanceof DBusError)) throw e;
      err = e;
    }
    if (err) {
      t.is(err.type, c.expect, err.text);
      t.notRegex(err.text, /\n\s+at |\.[jt]s:\d+/, 'no stack trace');
      t.true(err.text.length <= 2048, `a short message (${err.text.length} characters)`);
      if (c.mentions) {
        if (typeof c.mentions === 'string') t.true(err.text.includes(c.mentions), `'${err.text.slice(0, 300)}' mentions '${c.mentions}'`);
        else t.regex(err.text, c.mentions);
      }
    }
    await assertUnchanged(t);
    await assertAlive(t);
  },
  title: (_p, c: Case) => `inputs - ${c.method} - ${c.input}: ${c.expect.replace(/^.*\.Error\./, '')}`,
});

for (const c of CASES) test.serial(hostile, c);

/**
 * Send UnregisterHook(name) with the name's bytes put on the wire as they
 * are, on a connection of its own, bypassing every client library's
 * checks. Resolves with the error name of the reply, or 'closed' when
 * dbus-daemon closed the connection instead.
 */
async function sendRawName(t: ExecutionContext, bytes: number[]): Promise<string> {
  const raw = await TestClient.connect(env.ctx.bus.address);
  t.teardown(() => raw.close());
  const { marshallMessage } = createRequire(import.meta.url)('dbus-next/lib/marshall-compat.js') as
    { marshallMessage(m: Message): [Buffer, unknown[]] };
  const placeholder = 'p'.repeat(bytes.length);
  const msg = new Message({
    destination: SERVICE, path: MANAGER_PATH, interface: MANAGER_IFACE, member: 'UnregisterHook',
    signature: 's', body: [placeholder],
  });
  const serial = raw.bus.newSerial();
  msg.serial = serial;
  const [data] = marshallMessage(msg);
  Buffer.from(bytes).copy(data, data.indexOf(placeholder));
  const internals = raw.bus as unknown as {
    _connection: { stream: NodeJS.WritableStream & NodeJS.EventEmitter };
    _methodReturnHandlers: Record<number, (reply: Message) => void>;
  };
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('neither a reply nor a closed connection within 10 s')), 10_000);
    const done = (what: string) => { clearTimeout(timer); resolve(what); };
    internals._methodReturnHandlers[serial] = (reply: Message) => done(reply.errorName ?? 'reply');
    internals._connection.stream.once('close', () => done('closed'));
    internals._connection.stream.write(data);
  });
}

const rawName = test.macro({
  async exec(t, bytes: number[], expected: string) {
    const logged = env.ctx.daemon.logs().length;
    t.is(await sendRawName(t, bytes), expected);
    await assertUnchanged(t);
    await assertAlive(t);
    const saw = env.ctx.daemon.logs().slice(logged).some((l) => l.includes('UnregisterHook'));
    t.is(saw, expected !== 'closed', expected === 'closed' ? 'the daemon never saw the call' : 'the daemon answered the call');
  },
  title: (what = '', _bytes: number[], expected: string) => `inputs - UnregisterHook - ${what}: ${expected === 'closed'
    ? 'never reaches the daemon, dbus-daemon drops the sender' : expected.replace(/^.*\.Error\./, '')}`,
});

// The control: the same bytes path, valid, reaches the daemon.
test.serial('a raw valid name that is not registered', rawName, [...Buffer.from('absent')], E.NotFound);
test.serial('a raw name that is not valid UTF-8', rawName, [0x70, 0xff, 0xfe, 0x80, 0xc0, 0x70], 'closed');
test.serial('a raw name with a NUL byte', rawName, [0x70, 0x72, 0x00, 0x65, 0x73], 'closed');

test.serial("inputs - StartPreStage - the option key '__proto__' (sent by busctl): refused", async (t) => {
  // dbus-next cannot send it (an object literal's __proto__ is its
  // prototype); busctl can, and only prints the message.
  const r = await busctlCall(env.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage',
    ['sa{sv}', env.other, '1', '__proto__', 'b', 'true']);
  t.not(r.code, 0);
  t.regex(r.stderr, /unknown key '__proto__'/);
  await assertUnchanged(t);
  await assertAlive(t);
});

test.serial('inputs - RegisterHook - newlines in argv and Environment are kept as data, never become keys', async (t) => {
  const def = {
    Prepare: v('as', [env.program, 'a\nCommit=/bin/sh']),
    Environment: v('as', [`RECORD=${env.recordFile}`, 'X=1\nAbort=/bin/sh', 'Y=ends with a backslash\\']),
    Required: v('b', false),
  };
  await env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'RegisterHook', 'sa{sv}a{sv}', ['newlines', def, { runtime: v('b', true) }]);
  t.teardown(() => env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'UnregisterHook', 's', ['newlines']).then(() => undefined, () => undefined));
  const [hooks] = await env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListHooks', 's', ['']) as [[string, Record<string, Variant>][]];
  const h = hooks.find(([name]) => name === 'newlines');
  t.truthy(h);
  const d = h![1];
  t.deepEqual(d['Prepare']!.value, [env.program, 'a\nCommit=/bin/sh']);
  t.deepEqual(d['Commit']!.value, [], 'no Commit step appeared');
  t.deepEqual(d['Abort']!.value, [], 'no Abort step appeared');
  t.deepEqual(d['Environment']!.value, [`RECORD=${env.recordFile}`, 'X=1\nAbort=/bin/sh', 'Y=ends with a backslash\\']);
  await env.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'UnregisterHook', 's', ['newlines']);
  env.baseline = await waitForQuietState(env.capture);
});

test.serial('inputs - after every case, no hook ran beyond setup and the prepared transaction is intact', async (t) => {
  t.is(await fsp.readFile(env.recordFile, 'utf8'), 'present prepare present\n');
  t.is(await env.ctx.client.getProperty(SERVICE, env.txPath, TRANSACTION_IFACE, 'State'), 'prepared');
  await assertAlive(t);
  t.log(`${CASES.length} table-driven hostile-input cases, plus the raw-byte, __proto__, newline and queue cases`);
});

test.serial('inputs - StartPreStage with wait - the queue is bounded: with 16 waiting, the next is Busy and creates nothing', async (t) => {
  // One daemon of its own: 18 deployments, one running (a step that
  // sleeps), 16 waiting, one too many.
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 18 },
    etcHooks: { 'slow.hook': '[Hook]\nPrepare=/bin/sleep 60\nAbort=/bin/true\n' },
  });
  const deployments = (ctx.sysroot as { deployments: string[] }).deployments;
  const capture: CaptureOptions = { root: ctx.root, stateDir: ctx.stateDir, client: ctx.client };
  const start = (d: string) => ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [d, { wait: v('b', true) }]) as Promise<[string]>;
  const paths: string[] = [];
  paths.push((await start(deployments[0]!))[0]);
  for (let i = 1; i <= 16; i++) paths.push((await start(deployments[i]!))[0]);
  t.is(new Set(paths).size, 17);
  for (const p of paths.slice(1)) t.is(await ctx.client.getProperty(SERVICE, p, TRANSACTION_IFACE, 'State'), 'queued');

  // Let the first step start and every log be flushed (on a loaded machine
  // this lags the replies), so only the refused call could add anything.
  for (let i = 0; i < 300; i++) {
    if (await ctx.client.getProperty(SERVICE, paths[0]!, TRANSACTION_IFACE, 'CurrentHook') === 'slow') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 500));
  const before = await captureState({ ...capture, processes: false });
  const e = await t.throwsAsync(start(deployments[17]!)) as unknown as DBusError;
  t.is(e.type, 'org.containers.bootc.PreStage.Error.Busy', e.text);
  t.regex(e.text, /queue is full \(16 transactions waiting\)/);
  // The running step and the queued transactions' logs may still be
  // written; what must not appear is a transaction or a file.
  const created = diffStates(before, await captureState({ ...capture, processes: false }))
    .filter((d) => / added | removed |^transactions: /.test(d));
  t.deepEqual(created, [], 'nothing was created');

  for (const p of [...paths].reverse()) await ctx.client.call(SERVICE, p, TRANSACTION_IFACE, 'Cancel');
  const end = await waitForQuietState(capture, { timeoutMs: 60_000 });
  t.deepEqual(end.processes, []);
  for (const p of paths) t.is(end.transactionStates?.[p], 'cancelled', p);
});
