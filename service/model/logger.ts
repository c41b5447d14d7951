/**
 * The engine and its adapters log through this interface only; the daemon
 * backs it with winston (service/daemon/log.ts), tests with a collector.
 */
export interface LogFields {
  transaction?: string;
  hook?: string;
  deployment?: string;
  phase?: string;
  [key: string]: unknown;
}

export interface Logger {
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
}

export const nullLogger: Logger = {
  error() {}, warn() {}, info() {}, debug() {},
};
