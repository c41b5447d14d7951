/**
 * The daemon the security tests (and the fuzzer) judge calls against: a
 * real daemon on a private bus with a two-deployment sysroot and one host
 * hook, `present`, that runs the record program (test/helpers/record-hook.ts),
 * which has done real work first: the staged (newest) deployment has a
 * prepared transaction whose hook ran once. A refused or ignored call is
 * then checked against a daemon with a journal, a log, hook state and a
 * transaction that Commit, Abort, Cancel and GetLog could act on.
 *
 * `fileScope()` lets such a daemon serve every test of a file: it is set up
 * in `test.before`, where `t.teardown` is not allowed, so its teardowns are
 * collected and run by the `test.after.always` the scope registers.
 */
import test, { type ExecutionContext } from 'ava';
import type { BusPolicy } from './bus.js';
import { withDaemon, type DaemonContext } from './daemon.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE } from './dbus-client.js';
import { makeRecorder, type Recorder } from './record-hook.js';
import { waitForQuietState, type CaptureOptions } from './state-snapshot.js';
import { makeTmpDir, removeDir } from './tmp.js';

/** Teardowns of set-up done in test.before, run (newest first) after every test of the file. */
export interface FileScope {
  /** Stands in for a test's ExecutionContext where only `teardown` is used (withDaemon, tmpDir). */
  readonly t: ExecutionContext;
  /** Register a teardown. */
  teardown(fn: () => unknown): void;
}

/**
 * A scope for set-up shared by a whole test file; call it at module level.
 * A teardown that fails does not stop the others.
 */
export function fileScope(): FileScope {
  const teardowns: (() => unknown)[] = [];
  const teardown = (fn: () => unknown) => { teardowns.push(fn); };
  test.after.always(async () => {
    for (const fn of teardowns.reverse()) {
      try { await fn(); } catch { /* keep tearing down */ }
    }
  });
  return { t: { teardown } as unknown as ExecutionContext, teardown };
}

export interface PreparedDaemonOptions {
  /** Prefix of the auxiliary directory (the record program and its record). */
  prefix: string;
  policy: BusPolicy;
  /** More lines for the `present` hook's [Hook] section. */
  presentHook?: string[];
}

export interface PreparedDaemon {
  ctx: DaemonContext;
  /** The auxiliary directory (0755): bin/record, record/runs; removed at teardown. */
  aux: string;
  recorder: Recorder;
  sysroot: { path: string; osname: string; deployments: string[] };
  /** The staged deployment, prepared in set-up. */
  staged: string;
  /** Another deployment, never prepared. */
  other: string;
  /** The prepared transaction of `staged`. */
  txPath: string;
  /** What a state snapshot covers: root, state directory, the bus, the record directory. */
  capture: CaptureOptions;
  /** The daemon's unique name at set-up: it must not change (no crash, no restart). */
  uniqueName: string;
}

/** Start the daemon and prepare the staged deployment; throws when the set-up did not do what it must. */
export async function startPreparedDaemon(t: ExecutionContext, opts: PreparedDaemonOptions): Promise<PreparedDaemon> {
  const aux = await makeTmpDir({ prefix: opts.prefix, mode: 0o755 });
  t.teardown(() => removeDir(aux));
  const recorder = await makeRecorder(aux);
  const ctx = await withDaemon(t, {
    policy: opts.policy, sysroot: { deployments: 2 },
    etcHooks: { 'present.hook': recorder.hookText('present', opts.presentHook) },
  });
  const sysroot = ctx.sysroot as PreparedDaemon['sysroot'];
  const [staged, other] = sysroot.deployments as [string, string];
  const capture: CaptureOptions = { root: ctx.root, stateDir: ctx.stateDir, client: ctx.client, watch: [recorder.recordDir] };
  const [txPath] = await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
    [staged, {}]) as [string];
  await waitForQuietState(capture);
  const state = await ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State');
  if (state !== 'prepared') throw new Error(`set-up: the transaction is ${String(state)}, not prepared`);
  const runs = await recorder.recordText();
  if (runs !== 'present prepare present\n') throw new Error(`set-up: the hook did not run once: ${JSON.stringify(runs)}`);
  return { ctx, aux, recorder, sysroot, staged, other, txPath, capture, uniqueName: ctx.daemon.uniqueName };
}
