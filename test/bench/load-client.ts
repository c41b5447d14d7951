/**
 * Load generator for the property-read benchmark, run as its own process
 * so its JavaScript does not share an event loop with the process that
 * measures: CLIENTS connections each call one method back to back for
 * DURATION_MS, then the latencies are summarised on stdout as JSON.
 *
 *   node load-client.js ADDRESS CLIENTS DURATION_MS DEST PATH IFACE MEMBER [SIGNATURE ARG]
 */
import { DEFAULT_CALL_TIMEOUT_MS, Message, openMessageBus } from '../../service/connection/core.js';
import { percentile } from './stats.js';

// Calls go straight to dbus-next's bus.call, without the core's timeout
// timer: the load must cost the measured daemon, not this process.
const connect = (address: string) => openMessageBus(address, DEFAULT_CALL_TIMEOUT_MS);

async function main(): Promise<void> {
  const [address, clientsText, durationText, dest, objPath, iface, member, signature = '', arg] = process.argv.slice(2);
  if (!address || !dest || !objPath || !iface || !member) throw new Error('usage: ADDRESS CLIENTS DURATION_MS DEST PATH IFACE MEMBER [SIGNATURE ARG]');
  const clients = Number(clientsText);
  const durationMs = Number(durationText);
  const buses = await Promise.all(Array.from({ length: clients }, () => connect(address)));
  const latencies: number[] = [];
  let errors = 0;
  const end = performance.now() + durationMs;
  await Promise.all(buses.map(async (bus) => {
    while (performance.now() < end) {
      const msg = new Message({ destination: dest, path: objPath, interface: iface, member, signature, body: arg === undefined ? [] : [arg] });
      const t0 = performance.now();
      try {
        await bus.call(msg);
        latencies.push(performance.now() - t0);
      } catch {
        errors += 1;
      }
    }
  }));
  for (const b of buses) b.disconnect();
  process.stdout.write(JSON.stringify({
    calls: latencies.length, errors,
    p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: Math.max(...latencies),
  }) + '\n');
}

main().then(() => process.exit(0), (e: unknown) => {
  process.stderr.write(`load-client: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
