/** bootc-prestage-gate: the boot gate (service/gate/main.ts). */
import { main } from '../gate/main.js';

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stdout.write(`<3>bootc-prestage-gate: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
