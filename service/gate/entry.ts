/** bootc-prestage-gate: the boot gate (main.ts; bundled as dist/bootc-prestage-gate.mjs). */
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stdout.write(`<3>bootc-prestage-gate: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
