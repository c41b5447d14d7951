/**
 * A private dbus-daemon for `npm start` on machines without a usable system
 * bus (containers, CI, a developer's laptop). It runs with a system-like
 * policy (deny by default) plus this project's own policy file, so what
 * works here works on the system bus.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

export interface EmbeddedBus {
  address: string;
  stop(): Promise<void>;
}

/** A system-bus-like configuration that includes `policyFile`. */
export function systemLikeConfig(socketPath: string, policyFile: string): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=${socketPath}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- As /usr/share/dbus-1/system.conf: deny everything not allowed elsewhere. -->
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>${policyFile}</include>
</busconfig>
`;
}

/** Start dbus-daemon with its socket in `dir`; resolves once it listens. */
export async function startEmbeddedBus(dir: string, policyFile: string): Promise<EmbeddedBus> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
  await fsp.chmod(dir, 0o755);
  const socket = path.join(dir, 'system_bus_socket');
  // A private bus left behind by a daemon that was killed: stop it first.
  const pidFile = path.join(dir, 'pid');
  const stale = Number(await fsp.readFile(pidFile, 'utf8').catch(() => ''));
  if (stale > 1) {
    // Guard against PID reuse: only a dbus-daemon running our config.
    const cmdline = await fsp.readFile(`/proc/${stale}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('dbus-daemon') && cmdline.includes(dir)) {
      try { process.kill(stale, 'SIGTERM'); } catch { /* gone */ }
    }
  }
  await fsp.rm(socket, { force: true });
  const conf = path.join(dir, 'bus.conf');
  await fsp.writeFile(conf, systemLikeConfig(socket, policyFile));
  const child: ChildProcess = spawn('dbus-daemon', [`--config-file=${conf}`, '--nofork', '--nopidfile', '--print-address=1'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    // Its own process group: Ctrl-C in the terminal must reach only us, so
    // we can shut down in order and stop the bus last.
    detached: true,
  });
  if (child.pid) await fsp.writeFile(pidFile, String(child.pid));
  // dbus-daemon prints its address once it listens: that is the readiness signal.
  await new Promise<string>((resolve, reject) => {
    let out = '';
    child.once('error', (e) => reject(new Error(`cannot start dbus-daemon: ${e.message} (install the dbus-daemon package)`)));
    child.once('exit', (code) => reject(new Error(`dbus-daemon exited with status ${code}`)));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl).trim());
    });
  });
  await fsp.chmod(socket, 0o666).catch(() => {});
  return {
    // The printed address carries a guid; a plain path is what clients need.
    address: `unix:path=${socket}`,
    stop: () => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => { void fsp.rm(pidFile, { force: true }).then(() => resolve()); });
      child.kill('SIGTERM');
    }),
  };
}
