/**
 * bootc-prestaged: wire the engine to the bus and serve.
 *
 * Start-up order matters: the engine opens its state and queues the
 * recovery of anything interrupted *before* the service is exported, so the
 * first call on the bus already sees recovered transactions and new work
 * waits behind the recovery.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectBus, type BusConnection } from '../bus/connection.js';
import { BUS_NAME } from '../protocol/members.js';
import { exportService } from '../bus/service.js';
import { Engine } from '../engine/engine.js';
import type { Logger } from '../model/logger.js';
import { parseDaemonArgs, UsageError, USAGE, type DaemonArgs } from './args.js';
import { ensureDemoSysroot } from './demo-sysroot.js';
import { startEmbeddedBus, type EmbeddedBus } from './embedded-bus.js';
import { createLogger } from './log.js';


/** The project directory (holds package.json), from dist/ or from the sources. */
export function projectDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the project directory');
    dir = up;
  }
  return dir;
}

export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(projectDir(), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

interface Served {
  conn: BusConnection;
  close(): Promise<void> | void;
}

async function serveOn(address: string, engine: Engine, log: Logger): Promise<Served> {
  const conn = await connectBus(address);
  try {
    const svc = await exportService(conn, engine, log);
    return { conn, close: () => svc.close() };
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** Runs the daemon; resolves with the process exit status. */
export async function main(argv: string[]): Promise<number> {
  let args: DaemonArgs;
  try {
    args = parseDaemonArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`bootc-prestaged: ${e.message}\n${USAGE}`);
      return 2;
    }
    throw e;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const version = packageVersion();
  if (args.version) {
    process.stdout.write(`bootc-prestaged ${version}\n`);
    return 0;
  }
  const log = createLogger({ format: args.logFormat, level: args.logLevel });

  // `auto` (npm start): everything local to the project (state, hook
  // directories, a demo ostree sysroot), served on the system bus when we
  // may own the name there, otherwise on an embedded private bus.
  const auto = args.bus === 'auto';
  const local = path.join(projectDir(), '.state');
  const stateDir = args.stateDir ?? (auto ? path.join(local, 'state') : '/var/lib/bootc-prestage');
  const root = args.root ?? (auto ? path.join(local, 'root') : '/');
  let sysroot = args.sysroot ?? '/sysroot';
  let demoDeployments: string[] = [];
  if (auto && args.sysroot === null) {
    sysroot = path.join(local, 'sysroot');
    try {
      demoDeployments = await ensureDemoSysroot(sysroot);
    } catch (e) {
      log.warn(`could not create a demo sysroot with ostree (${(e as Error).message.split('\n')[0]}); pass --sysroot`);
    }
  }

  const engine = await Engine.open({
    stateDir, root, sysroot, bootedRoot: args.bootedRoot, logger: log, version, historyLimit: args.history,
  });

  let embedded: EmbeddedBus | null = null;
  let address = auto ? 'system' : args.bus;
  let served: Served | null = null;
  try {
    if (auto) {
      try {
        served = await serveOn('system', engine, log);
      } catch (e) {
        log.info(`the system bus is not usable (${(e as Error).message}); starting a private bus`);
        embedded = await startEmbeddedBus(path.join(local, 'bus'), path.join(projectDir(), 'dbus', `${BUS_NAME}.conf`));
        address = embedded.address;
      }
    }
    served ??= await serveOn(address, engine, log);
  } catch (e) {
    log.error(`cannot serve ${BUS_NAME} on ${address}: ${(e as Error).message}`);
    await engine.shutdown();
    await embedded?.stop();
    return 1;
  }
  const svc = served;
  log.info(`serving ${BUS_NAME} on ${address === 'system' || address === 'session' ? `the ${address} bus` : address}`,
    { version, stateDir, sysroot });
  if (embedded) printEmbeddedHelp(embedded.address, demoDeployments);

  let exiting = false;
  const stop = async (code: number, why: string): Promise<number> => {
    if (exiting) return code;
    exiting = true;
    log.info(`stopping: ${why}`);
    await engine.shutdown();
    await svc.close();
    svc.conn.close();
    await embedded?.stop();
    return code;
  };

  return new Promise<number>((resolve) => {
    const done = (code: number, why: string) => { void stop(code, why).then(resolve); };
    svc.conn.onLost((err) => done(1, `lost the bus connection: ${err.message}`));
    process.once('SIGTERM', () => done(0, 'SIGTERM'));
    process.once('SIGINT', () => done(0, 'SIGINT'));
    // Reconcile at start-up; it queues behind any recovery.
    engine.reconcile().catch((e) => log.error(`reconcile at start-up failed: ${(e as Error).message}`));
    if (args.idleExitSec > 0) {
      let timer: NodeJS.Timeout | null = null;
      engine.status$.subscribe((s) => {
        if (timer) clearTimeout(timer);
        timer = null;
        if (s.state === 'idle') {
          timer = setTimeout(() => done(0, `idle for ${args.idleExitSec}s`), args.idleExitSec * 1000);
        }
      });
    }
  });
}

function printEmbeddedHelp(address: string, deployments: string[]): void {
  const bc = `busctl --address=${address}`;
  const dep = deployments[0] ?? '/sysroot/ostree/deploy/<os>/deploy/<checksum>.<serial>';
  process.stdout.write(`
No usable system bus: serving ${BUS_NAME} on a private bus.
  export DBUS_SYSTEM_BUS_ADDRESS=${address}
  ${bc} introspect ${BUS_NAME} /org/containers/bootc/PreStage
  ${bc} call ${BUS_NAME} /org/containers/bootc/PreStage ${BUS_NAME} ListHooks s ${dep}
  ${bc} call ${BUS_NAME} /org/containers/bootc/PreStage ${BUS_NAME} StartPreStage 'sa{sv}' ${dep} 0
  node dist/bootc-prestage.mjs --address=${address} start ${dep}
Demo deployment (a real ostree sysroot under .state/): ${dep}
Press Ctrl-C to stop.

`);
}
