/**
 * winston, configured for a system service: one line per event on stdout,
 * with `<N>` syslog level prefixes when running under systemd
 * (JOURNAL_STREAM set) so journald keeps the priority, or JSON lines with
 * `--log-format=json`. Fields (transaction, hook, deployment, phase) go on
 * the same line. Newlines in messages are escaped: one event, one journal
 * entry.
 *
 * Lines below `error` are handed to winston at the end of the event loop's
 * turn, in order, not when logged: a step's outcome line then costs the
 * next step nothing, since it is written while the spawn helper syncs the
 * journal (docs/architecture.md, "Cost per step"). An error line, and
 * anything queued before it, goes out at once, and whatever is queued goes
 * out when the process exits, so nothing logged is lost to a crash that
 * lets the process exit.
 */
import stringify from 'safe-stable-stringify';
import winston from 'winston';
import type { Logger, LogFields } from '../model/logger.js';
import { TurnQueue } from '../model/turn-queue.js';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

const SYSLOG_PRIORITY: Record<string, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const RESERVED = new Set(['level', 'message', 'timestamp', Symbol.for('level') as unknown as string]);

function escapeLine(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}

function fieldText(info: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(info)) {
    if (RESERVED.has(k) || v === undefined || v === '') continue;
    const s = typeof v === 'string' ? v : stringify(v) ?? '';
    parts.push(/[\s"=]/.test(s) ? `${k}=${JSON.stringify(s)}` : `${k}=${s}`);
  }
  return parts.length ? ' ' + parts.join(' ') : '';
}

/** When the line was logged (queued lines carry it), as ISO 8601 text. */
function loggedAt(info: Record<string, unknown>): string {
  return new Date(typeof info.timestamp === 'number' ? info.timestamp : Date.now()).toISOString();
}

/** Every logger's flush, run once when the process exits (one listener, however many loggers). */
const exitFlushes = new Set<() => void>();
process.on('exit', () => {
  for (const f of exitFlushes) f();
});

export function createLogger(opts: { format: LogFormat; level: LogLevel; journal?: boolean; stream?: NodeJS.WritableStream }): Logger & { close(): void } {
  const journal = opts.journal ?? Boolean(process.env.JOURNAL_STREAM);
  const line = opts.format === 'json'
    ? winston.format.printf((info) => {
      const { level, message, timestamp: _at, ...rest } = info as Record<string, unknown>;
      return stringify({ timestamp: loggedAt(info), level, message, ...rest }) ?? '';
    })
    : winston.format.printf((info) => {
      const msg = escapeLine(`${String(info.message)}${fieldText(info as Record<string, unknown>)}`);
      // systemd adds its own timestamps; elsewhere a person wants one.
      return journal ? `<${SYSLOG_PRIORITY[info.level] ?? 6}>${msg}`
        : `${loggedAt(info)} ${info.level}: ${msg}`;
    });
  const transport = new winston.transports.Stream({ stream: opts.stream ?? process.stdout });
  const w = winston.createLogger({ level: opts.level, format: line, transports: [transport] });
  // A level below the configured one returns here: winston would build the
  // entry and pass it through its stream before dropping it, on every step.
  const shown = LOG_LEVELS.indexOf(opts.level);
  // Run later than the call that logged, a failing line must not take the
  // daemon down with it (nor the rest of its batch): it is reported on stderr.
  const write = (level: LogLevel, message: string, fields: Record<string, unknown>) => {
    try {
      w.log(level, message, fields);
    } catch (e) {
      try {
        process.stderr.write(`bootc-prestaged: a log line could not be written (${e instanceof Error ? e.message : String(e)}): `
          + `${escapeLine(String(message)).slice(0, 500)}\n`);
      } catch { /* stderr is gone too */ }
    }
  };
  const queued = new TurnQueue<[LogLevel, string, Record<string, unknown>]>((lines) => {
    for (const [level, message, fields] of lines) write(level, message, fields);
  });
  const flush = () => queued.flush();
  exitFlushes.add(flush);
  const at = (level: LogLevel): ((message: string, fields?: LogFields) => void) => {
    if (LOG_LEVELS.indexOf(level) > shown) return () => {};
    if (level === 'error') {
      return (message, fields) => {
        flush();
        write(level, message, fields ?? {});
      };
    }
    return (message, fields) => queued.push([level, message, { ...fields, timestamp: Date.now() }]);
  };
  return {
    error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'),
    close: () => {
      flush();
      exitFlushes.delete(flush);
      w.close();
    },
  };
}
