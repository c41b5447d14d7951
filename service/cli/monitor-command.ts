/**
 * `bootc-prestage monitor`: every signal of the service until Ctrl-C, like
 * `busctl monitor` but decoded and without needing the bus's Monitoring
 * interface (root only): it is an ordinary subscriber, so anyone may run it.
 * It makes no call to the service, so it never starts the daemon.
 */
import { unwrapVariants } from '../client/decode.js';
import type { WatchItem } from '../client/service-watch.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { sanitize } from './format.js';
import { jsonLine } from './json-line.js';

function isoNow(): string {
  return new Date().toISOString();
}

/** One argument as monitor prints it: strings quoted, BigInts plain, containers as JSON. */
function show(v: unknown): string {
  if (typeof v === 'bigint') return v.toString();
  return sanitize(jsonLine(v).trimEnd());
}

export async function monitorCommand(ctx: CliContext): Promise<ExitCode> {
  const client = await ctx.connect();
  const watch = await client.watch();
  const print = (item: WatchItem) => {
    if (item.kind === 'owner') {
      const what = item.newOwner ? `bootc-prestaged is on the bus (${item.newOwner})` : `bootc-prestaged left the bus (${item.oldOwner})`;
      if (ctx.mode === 'json') ctx.out(jsonLine({ time: isoNow(), event: 'owner', oldOwner: item.oldOwner, newOwner: item.newOwner }));
      else ctx.out(`${isoNow()} ${what}\n`);
      return;
    }
    const s = item.signal;
    const args = s.body.map(unwrapVariants);
    if (ctx.mode === 'json') {
      ctx.out(jsonLine({ time: isoNow(), path: s.path, interface: s.interface, member: s.member, signature: s.signature, args }));
    } else {
      const iface = s.interface.replace(/^org\.containers\.bootc\.PreStage\.?/, '') || 'PreStage';
      ctx.out(`${isoNow()} ${s.path} ${iface}.${s.member} ${args.map(show).join(' ')}\n`);
    }
  };
  // On stderr in every mode (stdout carries only the signals): the
  // subscription is in place once this line is out.
  ctx.io.stderr.write('Monitoring org.containers.bootc.PreStage; press Ctrl-C to stop.\n');
  return new Promise<ExitCode>((resolve) => {
    const consumer = watch.consume(print);
    consumer.backlog.forEach(print);
    const finish = (code: ExitCode) => {
      stopInterrupt();
      stopLost();
      consumer.stop();
      void watch.close().finally(() => resolve(code));
    };
    const stopInterrupt = ctx.io.onInterrupt(() => finish(EXIT.OK));
    const stopLost = client.conn.onLost((e) => {
      ctx.error(e.message);
      finish(EXIT.UNREACHABLE);
    });
  });
}
