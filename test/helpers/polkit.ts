/**
 * A real polkitd (Debian `polkitd`, /usr/lib/polkit-1/polkitd) on a
 * private test bus, with the project's shipped .policy and a test's own
 * rules, without touching the machine's polkit configuration:
 *
 * - polkitd runs in its own mount namespace (`unshare -m`, private
 *   propagation), where test-owned directories are bind-mounted over
 *   /usr/share/polkit-1/actions, /usr/share/polkit-1/rules.d and
 *   /etc/polkit-1/rules.d; nothing outside that namespace sees them;
 * - it connects to the test bus through DBUS_SYSTEM_BUS_ADDRESS (GIO honours
 *   it) and owns org.freedesktop.PolicyKit1 there, which the bus allows
 *   because the bus includes polkit's own policy file (POLKIT_BUS_CONFIG);
 * - it starts as root and drops to the `polkitd` user itself, as it does
 *   on a real system, so the directories are world-readable.
 *
 * Test users: `bpstest-admin` in group `bpstest-admins`,
 * `bpstest-other` in no such group, and `bpstest-auth`, who authenticates
 * with a password through a real agent (startTtyAgent), made with groupadd/useradd when
 * missing (system accounts, no home, no login shell; names no one else
 * uses), so polkit's `subject.isInGroup` and `subject.user` see them in the
 * user database as they would see real administrators.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type { TestBus } from './bus.js';
import { busctlCallJson, runAs, type RunResult } from './busctl.js';
import { lineCollector, sleep, spawnTied, terminate } from './processes.js';
import { makeTmpDir, removeDir, REPO_ROOT } from './tmp.js';

const execFileP = promisify(execFile);

export const POLKITD = '/usr/lib/polkit-1/polkitd';
export const POLKIT_NAME = 'org.freedesktop.PolicyKit1';
/** The shipped actions file. */
export const SHIPPED_POLKIT_POLICY = path.join(REPO_ROOT, 'packaging', 'polkit', 'org.containers.bootc.PreStage.policy');
/** polkit's DTD for policy files, as the polkitd package installs it. */
export const POLKIT_DTD = '/usr/share/polkit-1/policyconfig-1.dtd';
/** Bus configuration that lets polkitd own its name and everyone call it (polkit's own file). */
export const POLKIT_BUS_CONFIG = '  <include>/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>';

export const ADMIN_GROUP = 'bpstest-admins';
export const ADMIN_USER = 'bpstest-admin';
export const OTHER_USER = 'bpstest-other';
/** Authenticates to polkit with a password (setRandomPassword) through a real agent (startTtyAgent). */
export const AUTH_USER = 'bpstest-auth';

export interface TestUser {
  name: string;
  uid: number;
  gid: number;
}

async function lookup(db: 'passwd' | 'group', name: string): Promise<string[] | null> {
  try {
    const { stdout } = await execFileP('getent', [db, name]);
    return stdout.trim().split(':');
  } catch {
    return null;
  }
}

/** Run a user database tool, retrying while another test worker holds its lock. */
async function userdb(cmd: string, args: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await execFileP(cmd, args);
      return;
    } catch (e) {
      const err = e as { code?: number; stderr?: string };
      // 9: the name exists (another worker made it first); fine.
      if (err.code === 9) return;
      if (attempt >= 20) throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr ?? String(e)}`);
      await sleep(100 * attempt);
    }
  }
}

/** Make the test group and users if they are missing (idempotent, safe in parallel). */
export async function ensureTestUsers(): Promise<{ admin: TestUser; other: TestUser; auth: TestUser }> {
  if (!await lookup('group', ADMIN_GROUP)) await userdb('groupadd', ['--system', ADMIN_GROUP]);
  for (const [name, groups] of [[ADMIN_USER, [ADMIN_GROUP]], [OTHER_USER, []], [AUTH_USER, []]] as const) {
    if (!await lookup('passwd', name)) {
      await userdb('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
        '--user-group', ...(groups.length ? ['--groups', groups.join(',')] : []), name]);
    }
  }
  const members = (await lookup('group', ADMIN_GROUP))?.[3]?.split(',') ?? [];
  if (!members.includes(ADMIN_USER)) await userdb('usermod', ['--append', '--groups', ADMIN_GROUP, ADMIN_USER]);
  const user = async (name: string): Promise<TestUser> => {
    const e = await lookup('passwd', name);
    if (!e) throw new Error(`the test user ${name} does not exist after useradd`);
    return { name, uid: Number(e[2]), gid: Number(e[3]) };
  };
  return { admin: await user(ADMIN_USER), other: await user(OTHER_USER), auth: await user(AUTH_USER) };
}

/**
 * Give `user` a new random password (chpasswd) and return it: PAM's
 * pam_unix checks it when polkit's agent helper authenticates the user.
 * The account keeps /usr/sbin/nologin, so the password opens no login.
 */
export async function setRandomPassword(user: TestUser): Promise<string> {
  const password = randomBytes(18).toString('base64url');
  await new Promise<void>((resolve, reject) => {
    const child = execFile('chpasswd', (err) => (err ? reject(new Error(`chpasswd failed: ${err.message}`)) : resolve()));
    child.stdin!.end(`${user.name}:${password}\n`);
  });
  return password;
}

export interface TtyAgent {
  /** Everything the agent printed on its terminal so far. */
  output(): string;
  /** Type a line on its terminal (the password when it asks). */
  type(line: string): void;
  stop(): Promise<void>;
}

/**
 * polkit's text authentication agent, `pkttyagent --process PID`,
 * registered for the process `pid` (polkit accepts only process and
 * session subjects for agents; it finds the agent of a bus caller through
 * the caller's process), on a terminal of its own (script(1) gives it
 * one; it reads the password from /dev/tty).
 *
 * It runs as root in its own mount namespace in which the test bus's
 * socket is /run/dbus/system_bus_socket: the agent starts the setuid
 * polkit-agent-helper-1 with a clean environment, so the helper finds the
 * bus only at the default system bus address.
 */
export async function startTtyAgent(bus: TestBus, pid: number): Promise<TtyAgent> {
  const dir = await makeTmpDir({ prefix: 'polkit-agent-', mode: 0o755 });
  await fsp.symlink(bus.socketPath, path.join(dir, 'system_bus_socket'));
  const child = spawnTied('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
    `mkdir -p /run/dbus && mount --bind ${dir} /run/dbus && exec script -qfec "pkttyagent --process ${pid}" /dev/null`], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C.UTF-8', TERM: 'dumb', DBUS_SYSTEM_BUS_ADDRESS: bus.address },
  });
  let text = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  return {
    output: () => text,
    type: (line) => { child.stdin!.write(`${line}\n`); },
    stop: async () => {
      await terminate(child, { graceMs: 2000 });
      await removeDir(dir);
    },
  };
}

/**
 * `argv` as `user`, with the user's own groups from the user database
 * (setpriv --init-groups), as a login would give them.
 */
export function runAsUser(user: TestUser, argv: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return runAs(['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups', '--', ...argv], opts);
}

export interface StartPolkitdOptions {
  /** Rules files (`NAME.rules` → JavaScript) for /etc/polkit-1/rules.d. */
  rules?: Record<string, string>;
  /** Actions files for /usr/share/polkit-1/actions (default: the shipped .policy only; `{}` for none). */
  actions?: Record<string, string>;
}

export interface TestPolkitd {
  pid: number;
  process: ChildProcess;
  /** polkitd's unique name on the bus. */
  uniqueName: string;
  /** Its stdout and stderr lines so far. */
  logs(): string[];
  /** SIGSTOP: polkitd stays on the bus and answers nothing. */
  pause(): void;
  resume(): void;
  /** Stop it and wait until its name is gone from the bus; removes its directories. Idempotent. */
  stop(): Promise<void>;
}

async function nameOwner(bus: TestBus, name: string): Promise<string | null> {
  try {
    const r = await busctlCallJson(bus.address, 'org.freedesktop.DBus', '/org/freedesktop/DBus',
      'org.freedesktop.DBus', 'GetNameOwner', ['s', name]);
    return String(r.data[0]);
  } catch {
    return null;
  }
}

/**
 * Start polkitd for `bus` (which must include POLKIT_BUS_CONFIG) and wait
 * until it owns org.freedesktop.PolicyKit1 there.
 */
export async function startPolkitd(bus: TestBus, opts: StartPolkitdOptions = {}): Promise<TestPolkitd> {
  const dir = await makeTmpDir({ prefix: 'polkit-', mode: 0o755 });
  const dirs = { actions: path.join(dir, 'actions'), etcRules: path.join(dir, 'etc-rules'), usrRules: path.join(dir, 'usr-rules') };
  for (const d of Object.values(dirs)) await fsp.mkdir(d, { mode: 0o755 });
  const actions = opts.actions ?? {
    [path.basename(SHIPPED_POLKIT_POLICY)]: await fsp.readFile(SHIPPED_POLKIT_POLICY, 'utf8'),
  };
  for (const [n, text] of Object.entries(actions)) await fsp.writeFile(path.join(dirs.actions, n), text, { mode: 0o644 });
  for (const [n, text] of Object.entries(opts.rules ?? {})) await fsp.writeFile(path.join(dirs.etcRules, n), text, { mode: 0o644 });

  const script = [
    `mount --bind ${dirs.actions} /usr/share/polkit-1/actions`,
    `mount --bind ${dirs.usrRules} /usr/share/polkit-1/rules.d`,
    `mount --bind ${dirs.etcRules} /etc/polkit-1/rules.d`,
    `exec ${POLKITD}`,
  ].join(' && ');
  const child = spawnTied('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C.UTF-8', DBUS_SYSTEM_BUS_ADDRESS: bus.address },
  });
  const out = lineCollector(child.stdout);
  const err = lineCollector(child.stderr);
  const logs = () => [...out.lines, ...err.lines];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    try { child.kill('SIGCONT'); } catch { /* gone */ }
    await terminate(child, { graceMs: 5000 });
    for (let i = 0; i < 100 && await nameOwner(bus, POLKIT_NAME) !== null; i++) await sleep(50);
    await removeDir(dir);
  };
  const deadline = Date.now() + 20_000;
  let owner: string | null = null;
  while ((owner = await nameOwner(bus, POLKIT_NAME)) === null) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`polkitd did not take ${POLKIT_NAME} on ${bus.address}:\n${logs().join('\n')}`);
    }
    await sleep(50);
  }
  return {
    pid: child.pid!, process: child, uniqueName: owner, logs,
    pause: () => { child.kill('SIGSTOP'); },
    resume: () => { child.kill('SIGCONT'); },
    stop,
  };
}

/** `pkaction --verbose --action-id ID` against the polkitd of `bus`, parsed into its `key: value` lines. */
export async function pkaction(bus: TestBus, actionId: string): Promise<{ result: RunResult; fields: Record<string, string> }> {
  const result = await runAs(['pkaction', '--verbose', '--action-id', actionId], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C.UTF-8', DBUS_SYSTEM_BUS_ADDRESS: bus.address },
  });
  const fields: Record<string, string> = {};
  for (const line of result.stdout.split('\n')) {
    const m = /^\s+([a-z_ ]+):\s*(.*)$/.exec(line);
    if (m) fields[m[1]!.trim()] = m[2]!.trim();
  }
  return { result, fields };
}
