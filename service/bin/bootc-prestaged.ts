#!/usr/bin/env node
/** Entry point of the daemon; see service/daemon/main.ts. */
import { main } from '../daemon/main.js';

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
