/**
 * The client marks its calls ALLOW_INTERACTIVE_AUTHORIZATION (so polkit
 * may ask the user's authentication agent) only when asked to, and the CLI
 * asks only with a terminal on stdin and without --no-ask-password. A raw
 * connection owning the service's name on a private bus records the flags
 * each call arrives with.
 */
import test, { type ExecutionContext } from 'ava';
import dbus, { Message } from 'dbus-next';
import { withBus } from '../helpers/bus.js';
import { CliContext } from '../../service/cli/context.js';
import { parseCommandLine } from '../../service/cli/args.js';
import { PreStageClient } from '../../service/client/pre-stage-client.js';
import { ALLOW_INTERACTIVE_AUTHORIZATION, BUS_NAME } from '../../service/protocol/members.js';

async function recorder(t: ExecutionContext, address: string): Promise<number[]> {
  const server = dbus.sessionBus({ busAddress: address });
  t.teardown(() => server.disconnect());
  await server.requestName(BUS_NAME, 0);
  const flags: number[] = [];
  server.addMethodHandler((msg: Message) => {
    if (msg.member !== 'Reconcile') return false;
    flags.push(msg.flags);
    // dbus-next's typings declare newError's first parameter a string; it is the call.
    const newError = Message.newError as unknown as (m: Message, name: string, text: string) => Message;
    server.send(newError(msg, 'org.freedesktop.DBus.Error.AccessDenied', 'recorded'));
    return true;
  });
  return flags;
}

test('the client sets ALLOW_INTERACTIVE_AUTHORIZATION only with interactiveAuthorization', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const flags = await recorder(t, bus.address);
  for (const interactive of [true, false, undefined]) {
    const c = await PreStageClient.connect({ address: bus.address, ...(interactive === undefined ? {} : { interactiveAuthorization: interactive }) });
    await t.throwsAsync(c.reconcile(), { message: /access denied/ });
    c.close();
  }
  t.deepEqual(flags.map((f) => f & ALLOW_INTERACTIVE_AUTHORIZATION), [ALLOW_INTERACTIVE_AUTHORIZATION, 0, 0]);
});

test('the CLI asks for interactive authorization on a terminal, never without one or with --no-ask-password', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const flags = await recorder(t, bus.address);
  const io = (tty: boolean) => ({
    stdout: process.stdout, stderr: process.stderr, env: {}, stdinIsTty: tty, onInterrupt: () => () => {},
  });
  for (const [argv, tty] of [[['reconcile'], true], [['reconcile'], false], [['--no-ask-password', 'reconcile'], true]] as const) {
    const inv = parseCommandLine([...argv, '--address', bus.address]);
    const ctx = new CliContext(io(tty), inv.global);
    const c = await ctx.connect();
    await t.throwsAsync(c.reconcile());
    c.close();
  }
  t.deepEqual(flags.map((f) => f & ALLOW_INTERACTIVE_AUTHORIZATION), [ALLOW_INTERACTIVE_AUTHORIZATION, 0, 0]);
});
