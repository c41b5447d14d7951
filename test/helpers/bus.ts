/**
 * A private system-like message bus for integration tests: a real
 * dbus-daemon with the host's system bus default policy and the project's
 * own policy file, listening on a socket in a temporary directory.
 *
 * Why not the host's system bus: tests must not need one, must not see
 * other services, and must exercise exactly the policy this project ships.
 *
 * Activation: a `type system` bus normally starts services through the
 * setuid `dbus-daemon-launch-helper`, which ignores our config (it reads the
 * compiled-in /usr/share/dbus-1/system.conf, so only the host's system
 * service directories), and must be run by the bus user. Without a
 * <servicehelper> element dbus-daemon instead forks and execs the service
 * itself, as the user running the bus (root here), with
 * DBUS_STARTER_ADDRESS and DBUS_SYSTEM_BUS_ADDRESS pointing at this bus; it
 * ignores SystemdService= unless started with --systemd-activation. So the
 * private bus keeps `type system` and its policy, and a <servicedir> given
 * here activates for real (checked by test/integration/harness.test.ts).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { killPids, lineCollector, processesMentioning, spawnTied, terminate } from './processes.js';
import { makeTmpDir, removeDir, REPO_ROOT } from './tmp.js';

/** The project's bus policy, included by absolute path. */
export const SHIPPED_POLICY = path.join(REPO_ROOT, 'dbus', 'org.containers.bootc.PreStage.conf');
/** The project's activation file. */
export const SHIPPED_SERVICE_FILE = path.join(REPO_ROOT, 'dbus', 'org.containers.bootc.PreStage.service');
/** Where the host's system bus default policy is copied from. */
export const HOST_SYSTEM_CONF = '/usr/share/dbus-1/system.conf';

export type BusPolicy = 'shipped' | 'permissive';

export interface StartBusOptions {
  /**
   * 'shipped' (default): the system default policy plus
   * dbus/org.containers.bootc.PreStage.conf. 'permissive': the system
   * default policy plus rules that let anyone own any name and call any
   * method, to prove checks the daemon makes itself.
   */
  policy?: BusPolicy;
  /** A directory of .service files for bus activation (see module doc). */
  servicedir?: string;
  /** More <busconfig> elements, appended last (so they win). */
  extraConfig?: string;
  /** Environment of dbus-daemon, inherited by activated services. */
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the bus to print its address (default 10 s). */
  timeoutMs?: number;
}

export interface TestBus {
  /** `unix:path=<socketPath>`, for --address, sessionBus({ busAddress }), --bus. */
  address: string;
  /** The address as dbus-daemon printed it (with guid). */
  printedAddress: string;
  socketPath: string;
  /** The bus's temporary directory (0755), holding socket and config. */
  dir: string;
  configPath: string;
  pid: number;
  /** dbus-daemon's stderr lines so far (activation, policy warnings). */
  logs(): string[];
  /**
   * Stop the bus, then every process still naming its address (activated
   * services, forgotten clients), and remove the directory. Idempotent.
   */
  stop(): Promise<void>;
}

let cachedDefaultPolicy: string | undefined;

/**
 * The <policy> elements of the host's system.conf, verbatim: the default
 * context (deny own, deny method calls, allow the bus driver...) and the
 * root policies (Monitoring for `busctl monitor`, Debug.Stats, the systemd
 * Activator).
 */
async function hostSystemPolicies(): Promise<string> {
  if (cachedDefaultPolicy !== undefined) return cachedDefaultPolicy;
  let conf: string;
  try {
    conf = await fsp.readFile(HOST_SYSTEM_CONF, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${HOST_SYSTEM_CONF} (install the dbus-daemon package): ${(e as Error).message}`);
  }
  const policies = conf.replace(/<!--[\s\S]*?-->/g, '').match(/<policy\b[\s\S]*?<\/policy>/g) ?? [];
  if (!policies.some((p) => /context="default"/.test(p))) {
    throw new Error(`${HOST_SYSTEM_CONF} has no <policy context="default">`);
  }
  const monitoring = policies.some((p) => p.includes('org.freedesktop.DBus.Monitoring'));
  cachedDefaultPolicy = policies.join('\n') + (monitoring ? '' : `
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>`);
  return cachedDefaultPolicy;
}

const PERMISSIVE_POLICY = `
  <!-- Test only: anyone may own any name and call anything. -->
  <policy context="default">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>`;

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The bus configuration startBus writes (exported for inspection in tests). */
export async function busConfig(socketPath: string, opts: StartBusOptions = {}): Promise<string> {
  const policy = opts.policy ?? 'shipped';
  const parts = [
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
    '<busconfig>',
    '  <type>system</type>',
    '  <auth>EXTERNAL</auth>',
    `  <listen>unix:path=${xmlEscape(socketPath)}</listen>`,
  ];
  if (opts.servicedir) parts.push(`  <servicedir>${xmlEscape(opts.servicedir)}</servicedir>`);
  parts.push(await hostSystemPolicies());
  if (policy === 'shipped') {
    await fsp.access(SHIPPED_POLICY);
    parts.push(`  <include>${xmlEscape(SHIPPED_POLICY)}</include>`);
  } else {
    parts.push(PERMISSIVE_POLICY);
  }
  if (opts.extraConfig) parts.push(opts.extraConfig);
  parts.push('</busconfig>', '');
  return parts.join('\n');
}

/**
 * Start a private bus. The caller must `stop()` it (or use `withBus`).
 * Clients as another uid can connect: the directory is 0755 and
 * dbus-daemon makes the socket 0777.
 */
export async function startBus(opts: StartBusOptions = {}): Promise<TestBus> {
  const dir = await makeTmpDir({ prefix: 'bus-', mode: 0o755 });
  const socketPath = path.join(dir, 'bus');
  const configPath = path.join(dir, 'bus.conf');
  try {
    await fsp.writeFile(configPath, await busConfig(socketPath, opts), { mode: 0o644 });
  } catch (e) {
    await removeDir(dir);
    throw e;
  }
  const child = spawnTied('dbus-daemon', [
    `--config-file=${configPath}`, '--nofork', '--print-address=1', '--nopidfile', '--nosyslog',
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  const stderr = lineCollector(child.stderr);
  const stdout = lineCollector(child.stdout);

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await terminate(child, { graceMs: 5000 });
    // Activated services are not children of dbus-daemon (its babysitter
    // detaches them: their parent is pid 1), but each has this bus in
    // DBUS_STARTER_ADDRESS; so has any client a test left connected.
    // dbus-daemon's own argv names the config, never `unix:path=`.
    const left = await processesMentioning(`unix:path=${socketPath}`);
    await killPids(left.map((p) => p.pid), { graceMs: 5000 });
    await removeDir(dir);
  };

  const timeoutMs = opts.timeoutMs ?? 10_000;
  const failure = await new Promise<string | null>((resolve) => {
    const timer = setTimeout(() => finish(`printed no address within ${timeoutMs} ms`), timeoutMs);
    const onData = () => { if (stdout.lines.length > 0) finish(null); };
    const onExit = (code: number | null, signal: string | null) => finish(`exited (${code ?? signal})`);
    function finish(why: string | null) {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      resolve(why);
    }
    // lineCollector's listener was added first, so lines are split already.
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
  if (failure !== null) {
    await stop();
    throw new Error(`dbus-daemon ${failure} with config ${configPath}:\n${stderr.lines.join('\n')}`);
  }
  return {
    address: `unix:path=${socketPath}`,
    printedAddress: stdout.lines[0]!,
    socketPath,
    dir,
    configPath,
    pid: child.pid!,
    logs: () => [...stderr.lines],
    stop,
  };
}

/** startBus, stopped in the test's teardown. */
export async function withBus(t: ExecutionContext, opts: StartBusOptions = {}): Promise<TestBus> {
  const bus = await startBus(opts);
  t.teardown(() => bus.stop());
  return bus;
}

export interface ActivationFileOptions {
  /** Bus name (default org.containers.bootc.PreStage). */
  name?: string;
  /** argv of the service; each word must be free of spaces (dbus splits Exec= on whitespace). */
  exec: string[];
  /** User= line (default root, as shipped). */
  user?: string;
  /** SystemdService= line, ignored by the private bus (default as shipped). */
  systemdService?: string;
}

/**
 * Write `<dir>/<name>.service`. With no overrides but `exec`, the file keeps
 * every key of the shipped activation file and replaces only Exec=, so an
 * activation test exercises the shipped Name=, User= and SystemdService=.
 */
export async function writeActivationFile(dir: string, opts: ActivationFileOptions): Promise<string> {
  for (const w of opts.exec) {
    if (/\s/.test(w) || w === '') throw new Error(`Exec= word '${w}' is empty or has whitespace`);
  }
  const shipped = await fsp.readFile(SHIPPED_SERVICE_FILE, 'utf8');
  const key = (k: string) => new RegExp(`^${k}=(.*)$`, 'm').exec(shipped)?.[1];
  const name = opts.name ?? key('Name') ?? 'org.containers.bootc.PreStage';
  const lines = ['[D-BUS Service]', `Name=${name}`, `Exec=${opts.exec.join(' ')}`];
  const user = opts.user ?? key('User');
  if (user) lines.push(`User=${user}`);
  const unit = opts.systemdService ?? key('SystemdService');
  if (unit) lines.push(`SystemdService=${unit}`);
  await fsp.mkdir(dir, { recursive: true });
  const file = path.join(dir, `${name}.service`);
  await fsp.writeFile(file, lines.join('\n') + '\n', { mode: 0o644 });
  return file;
}
