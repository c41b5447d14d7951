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

/** The demo sysroot of `npm start`: its deployments, or why it could not be made. */
export interface DemoSysroot {
  deployments: string[];
  error: string | null;
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

/** The parsed arguments, or the exit status of a run that ends here (usage, --help, --version). */
function parseOrAnswer(argv: string[], version: () => string): DaemonArgs | number {
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
  if (args.version) {
    process.stdout.write(`bootc-prestaged ${version()}\n`);
    return 0;
  }
  return args;
}

/** Where the daemon keeps its state and finds hooks and deployments. */
interface Places {
  /** `--bus auto` (npm start): everything local to the project. */
  auto: boolean;
  /** The project's `.state/` (auto only). */
  local: string;
  stateDir: string;
  root: string;
  sysroot: string;
  demo: DemoSysroot;
}

/**
 * `auto` (npm start): everything local to the project (state, hook
 * directories, a demo ostree sysroot), served on the system bus when we
 * may own the name there, otherwise on an embedded private bus.
 */
async function placesOf(args: DaemonArgs, log: Logger): Promise<Places> {
  const auto = args.bus === 'auto';
  const local = path.join(projectDir(), '.state');
  const stateDir = args.stateDir ?? (auto ? path.join(local, 'state') : '/var/lib/bootc-prestage');
  const root = args.root ?? (auto ? path.join(local, 'root') : '/');
  let sysroot = args.sysroot ?? '/sysroot';
  let demo: DemoSysroot = { deployments: [], error: null };
  if (auto && args.sysroot === null) {
    sysroot = path.join(local, 'sysroot');
    try {
      demo = { deployments: await ensureDemoSysroot(sysroot), error: null };
    } catch (e) {
      demo = { deployments: [], error: (e as Error).message.split('\n')[0]! };
      log.warn(`no demo deployment: could not create a demo sysroot with ostree (${demo.error}); pass --sysroot`);
    }
  }
  return { auto, local, stateDir, root, sysroot, demo };
}

/** The service on its bus: `--bus`'s, or for auto the system bus, else a private one started here. */
async function serve(places: Places, bus: string, engine: Engine, log: Logger):
  Promise<{ served: Served; embedded: EmbeddedBus | null; address: string }> {
  let embedded: EmbeddedBus | null = null;
  let address = places.auto ? 'system' : bus;
  try {
    let served: Served | null = null;
    if (places.auto) {
      try {
        served = await serveOn('system', engine, log);
      } catch (e) {
        log.info(`the system bus is not usable (${(e as Error).message}); starting a private bus`);
        embedded = await startEmbeddedBus(path.join(places.local, 'bus'), path.join(projectDir(), 'dbus', `${BUS_NAME}.conf`));
        address = embedded.address;
      }
    }
    served ??= await serveOn(address, engine, log);
    return { served, embedded, address };
  } catch (e) {
    await embedded?.stop();
    throw new Error(`cannot serve ${BUS_NAME} on ${address}: ${(e as Error).message}`);
  }
}

/** Runs the daemon; resolves with the process exit status. */
export async function main(argv: string[]): Promise<number> {
  const args = parseOrAnswer(argv, packageVersion);
  if (typeof args === 'number') return args;
  const version = packageVersion();
  const log = createLogger({ format: args.logFormat, level: args.logLevel });
  const places = await placesOf(args, log);
  const { stateDir, root, sysroot } = places;

  let engine: Engine;
  try {
    engine = await Engine.open({
      stateDir, root, sysroot, bootedRoot: args.bootedRoot, logger: log, version, historyLimit: args.history,
    });
  } catch (e) {
    // A state directory that cannot be made or opened, or one another
    // daemon holds: the message says what to fix, a stack would bury it.
    // The stack stays available at debug level for a genuine bug.
    log.error(`cannot start: ${(e as Error).message}`);
    if (e instanceof Error && e.stack) log.debug(e.stack);
    return 1;
  }

  let on: Awaited<ReturnType<typeof serve>>;
  try {
    on = await serve(places, args.bus, engine, log);
  } catch (e) {
    log.error((e as Error).message);
    await engine.shutdown();
    return 1;
  }
  const { served: svc, embedded, address } = on;
  log.info(`serving ${BUS_NAME} on ${address === 'system' || address === 'session' ? `the ${address} bus` : address}`,
    { version, stateDir, sysroot });
  if (embedded) process.stdout.write(embeddedHelp(embedded.address, places.demo));
  return runUntilStopped(args, engine, svc, embedded, log);
}

/** Serve until SIGTERM, SIGINT, the loss of the bus or `--idle-exit-sec`; then stop in order. */
function runUntilStopped(args: DaemonArgs, engine: Engine, svc: Served, embedded: EmbeddedBus | null, log: Logger): Promise<number> {
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

/**
 * What `npm start` prints when it serves on its own private bus: the address
 * and commands to paste. A demo deployment is named only when one was made;
 * otherwise the text says why not and the commands take a placeholder.
 */
export function embeddedHelp(address: string, demo: DemoSysroot): string {
  const bc = `busctl --address=${address}`;
  const dep = demo.deployments[0] ?? 'DEPLOYMENT';
  const where = demo.deployments[0] !== undefined
    ? `Demo deployment (a real ostree sysroot under .state/): ${dep}`
    : `No demo deployment: ${demo.error ?? 'the demo sysroot has none'}.
  DEPLOYMENT above stands for a deployment of a real ostree sysroot (--sysroot DIR).`;
  return `
No usable system bus: serving ${BUS_NAME} on a private bus.
  export DBUS_SYSTEM_BUS_ADDRESS=${address}
  ${bc} introspect ${BUS_NAME} /org/containers/bootc/PreStage
  ${bc} call ${BUS_NAME} /org/containers/bootc/PreStage ${BUS_NAME} ListHooks s ${dep}
  ${bc} call ${BUS_NAME} /org/containers/bootc/PreStage ${BUS_NAME} StartPreStage 'sa{sv}' ${dep} 0
  node dist/bootc-prestage.mjs --address=${address} start ${dep}
${where}
Press Ctrl-C to stop.

`;
}
