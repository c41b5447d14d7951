/**
 * A Logger (service/model/logger.ts) that keeps every line it is given, for
 * tests that check what the daemon's parts log (a stack trace of an internal
 * error, a refused caller).
 */
import type { LogFields, Logger } from '../../service/model/logger.js';

export interface LoggedLine {
  level: 'error' | 'warn' | 'info' | 'debug';
  message: string;
  fields?: LogFields;
}

export class RecordingLogger implements Logger {
  readonly lines: LoggedLine[] = [];
  error(message: string, fields?: LogFields) { this.lines.push({ level: 'error', message, fields }); }
  warn(message: string, fields?: LogFields) { this.lines.push({ level: 'warn', message, fields }); }
  info(message: string, fields?: LogFields) { this.lines.push({ level: 'info', message, fields }); }
  debug(message: string, fields?: LogFields) { this.lines.push({ level: 'debug', message, fields }); }
}
