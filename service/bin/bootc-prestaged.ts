#!/usr/bin/env node
/** Entry point of the daemon; see service/daemon/main.ts. */
import { main } from '../daemon/main.js';

// The last line of defence: a bug that escapes every handler must not leave
// a half-working daemon on the bus. Exit non-zero so the service manager
// restarts us; the journal makes the restart safe.
for (const ev of ['unhandledRejection', 'uncaughtException'] as const) {
  process.on(ev, (e: unknown) => {
    process.stderr.write(`bootc-prestaged: fatal (${ev}): ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    // Let stdout drain (winston writes asynchronously) before exiting.
    process.exitCode = code;
    setTimeout(() => process.exit(code), 200).unref();
  },
  (e: unknown) => {
    process.stderr.write(`bootc-prestaged: fatal: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  },
);
