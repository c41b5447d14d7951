/**
 * winston, configured for a system service: one line per event on stdout,
 * with `<N>` syslog level prefixes when running under systemd
 * (JOURNAL_STREAM set) so journald keeps the priority, or JSON lines with
 * `--log-format=json`. Fields (transaction, hook, deployment, phase) go on
 * the same line. Newlines in messages are escaped: one event, one journal
 * entry.
 */
import stringify from 'safe-stable-stringify';
import winston from 'winston';
import type { Logger, LogFields } from '../model/logger.js';

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

export function createLogger(opts: { format: LogFormat; level: LogLevel; journal?: boolean; stream?: NodeJS.WritableStream }): Logger & { close(): void } {
  const journal = opts.journal ?? Boolean(process.env.JOURNAL_STREAM);
  const line = opts.format === 'json'
    ? winston.format.printf((info) => {
      const { level, message, ...rest } = info as Record<string, unknown>;
      return stringify({ timestamp: new Date().toISOString(), level, message, ...rest }) ?? '';
    })
    : winston.format.printf((info) => {
      const msg = escapeLine(`${String(info.message)}${fieldText(info as Record<string, unknown>)}`);
      // systemd adds its own timestamps; elsewhere a person wants one.
      return journal ? `<${SYSLOG_PRIORITY[info.level] ?? 6}>${msg}`
        : `${new Date().toISOString()} ${info.level}: ${msg}`;
    });
  const transport = new winston.transports.Stream({ stream: opts.stream ?? process.stdout });
  const w = winston.createLogger({ level: opts.level, format: line, transports: [transport] });
  // A level below the configured one returns here: winston would build the
  // entry and pass it through its stream before dropping it, on every step.
  const shown = LOG_LEVELS.indexOf(opts.level);
  const at = (level: LogLevel) => LOG_LEVELS.indexOf(level) > shown
    ? () => {}
    : (message: string, fields?: LogFields) => { w.log(level, message, fields ?? {}); };
  return {
    error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'),
    close: () => w.close(),
  };
}
