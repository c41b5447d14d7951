/**
 * What every command gets: where to write, in which mode, and a connected
 * client (made on first use, closed by main when the command returns).
 */
import { PreStageClient } from '../client/pre-stage-client.js';
import type { GlobalOptions } from './args.js';
import { JsonDisplay, LineDisplay, type FollowDisplay } from './follow-display.js';
import { outputMode, utf8Locale, type CliIo, type OutputMode } from './io.js';
import { TtyDisplay } from './tty-display.js';

export class CliContext {
  readonly mode: OutputMode;
  private client: PreStageClient | null = null;

  constructor(readonly io: CliIo, readonly global: GlobalOptions) {
    this.mode = outputMode(io, global.json);
  }

  /** The client, connected on first use. Rejects with a ClientError. */
  async connect(): Promise<PreStageClient> {
    this.client ??= await PreStageClient.connect({
      address: this.global.address, env: this.io.env,
      // As systemctl does: on a terminal polkit may ask for a password, unless --no-ask-password.
      interactiveAuthorization: this.global.askPassword && this.io.stdinIsTty === true,
    });
    return this.client;
  }

  /** A display for one followed transaction, in the output mode. */
  display(): FollowDisplay {
    switch (this.mode) {
      case 'json': return new JsonDisplay(this.io.stdout);
      case 'plain': return new LineDisplay(this.io.stdout);
      case 'tty': return new TtyDisplay(this.io.stdout, {
        utf8: utf8Locale(this.io.env),
        color: this.io.env['NO_COLOR'] === undefined || this.io.env['NO_COLOR'] === '',
        fallbackColumns: Number(this.io.env['COLUMNS']) > 0 ? Number(this.io.env['COLUMNS']) : 80,
      });
    }
  }

  out(s: string): void {
    this.io.stdout.write(s);
  }

  /** The one-line reason on stderr. */
  error(message: string): void {
    this.io.stderr.write(`bootc-prestage: ${message.replace(/\n/g, ' ')}\n`);
  }

  warn(message: string): void {
    this.io.stderr.write(`bootc-prestage: warning: ${message.replace(/\n/g, ' ')}\n`);
  }

  close(): void {
    this.client?.close();
    this.client = null;
  }
}
