/**
 * The start-up and memory baseline: a bare Node.js process that connects
 * with dbus-next, owns a name, and idles until SIGTERM.
 *
 *   node bare-owner.js ADDRESS NAME
 */
import { sessionBus } from 'dbus-next';

const [address, name] = process.argv.slice(2);
if (!address || !name) {
  process.stderr.write('usage: bare-owner ADDRESS NAME\n');
  process.exit(2);
}
const bus = sessionBus({ busAddress: address });
bus.on('error', (e: unknown) => {
  process.stderr.write(`bare-owner: ${String(e)}\n`);
  process.exit(1);
});
const reply = await bus.requestName(name, 4 /* DO_NOT_QUEUE */);
if (reply !== 1) {
  process.stderr.write(`bare-owner: RequestName replied ${reply}\n`);
  process.exit(1);
}
process.once('SIGTERM', () => { bus.disconnect(); process.exit(0); });
