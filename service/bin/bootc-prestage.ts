#!/usr/bin/env node
/** Entry point of the client command; see service/cli/main.ts. */
import { main } from '../cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    // Let stdout and stderr drain (pipes are asynchronous) before exiting:
    // exiting at once could cut the last lines a script is waiting for.
    process.exitCode = code;
    const flushed = () => new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
    void flushed().then(() => process.exit(code));
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (e: unknown) => {
    process.stderr.write(`bootc-prestage: internal error: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  },
);
