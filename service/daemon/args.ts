/** Command-line options of bootc-prestaged. */
import { parseArgs } from 'node:util';
import { LOG_LEVELS, type LogFormat, type LogLevel } from './log.js';

export interface DaemonArgs {
  /** 'system', 'session', 'auto' (system if usable, else an embedded private bus) or an address. */
  bus: string;
  stateDir: string | null;
  root: string | null;
  sysroot: string | null;
  bootedRoot: string;
  idleExitSec: number;
  logFormat: LogFormat;
  logLevel: LogLevel;
  history: number;
  help: boolean;
  version: boolean;
}

export const USAGE = `Usage: bootc-prestaged [OPTIONS]

The bootc pre-stage daemon: owns org.containers.bootc.PreStage and runs
registered hooks as one transaction before a staged deployment is booted.

Options:
  --bus system|session|auto|ADDRESS  bus to serve on (default: system; auto
                             falls back to an embedded private bus)
  --state-dir DIR            journal, logs and hook state (default: /var/lib/bootc-prestage)
  --root DIR                 use DIR/etc and DIR/run hook directories (default: /)
  --sysroot DIR              the ostree sysroot (default: /sysroot)
  --booted-root DIR          the booted root, to find the booted deployment (default: /)
  --idle-exit-sec N          exit after N seconds with nothing to do (default: 0, never)
  --log-format text|json     log line format (default: text; <N> prefixes under systemd)
  --log-level error|warn|info|debug  (default: info)
  --history N                finished transactions to keep (default: 50, at least 20)
  --version                  print the version and exit
  -h, --help                 print this help and exit
`;

export class UsageError extends Error {}

export function parseDaemonArgs(argv: string[]): DaemonArgs {
  let v;
  try {
    v = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        bus: { type: 'string' },
        'state-dir': { type: 'string' },
        root: { type: 'string' },
        sysroot: { type: 'string' },
        'booted-root': { type: 'string' },
        'idle-exit-sec': { type: 'string' },
        'log-format': { type: 'string' },
        'log-level': { type: 'string' },
        history: { type: 'string' },
        version: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const num = (name: string, s: string | undefined, dflt: number): number => {
    if (s === undefined) return dflt;
    if (!/^\d{1,9}$/.test(s)) throw new UsageError(`--${name} takes a whole number of seconds, not '${s}'`);
    return Number(s);
  };
  const fmt = v['log-format'] ?? 'text';
  if (fmt !== 'text' && fmt !== 'json') throw new UsageError(`--log-format takes text or json, not '${fmt}'`);
  const lvl = v['log-level'] ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(lvl)) {
    throw new UsageError(`--log-level takes ${LOG_LEVELS.join(', ')}, not '${lvl}'`);
  }
  return {
    bus: v.bus ?? 'system',
    stateDir: v['state-dir'] ?? null,
    root: v.root ?? null,
    sysroot: v.sysroot ?? null,
    bootedRoot: v['booted-root'] ?? '/',
    idleExitSec: num('idle-exit-sec', v['idle-exit-sec'], 0),
    logFormat: fmt,
    logLevel: lvl as LogLevel,
    history: num('history', v.history, 50),
    help: v.help ?? false,
    version: v.version ?? false,
  };
}
