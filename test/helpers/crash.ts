/**
 * The crash harness: the real bootc-prestaged on a private bus with the
 * shipped policy and a real ostree sysroot, running a transaction of three
 * hooks whose steps record every run (test/fixtures/crash/step.sh), killed
 * with SIGKILL at a known point, restarted on the same state, and checked
 * against the invariants of docs/design.md "Transactions".
 *
 * Kill points are deterministic, never sleep-based:
 * - at a journal boundary: test/fixtures/crash/stop-at-record.mjs, loaded
 *   into the daemon, stops it (SIGSTOP) right after its N-th journal record
 *   is written; the harness sees the stopped process, checks the journal
 *   holds exactly N records, and kills it with SIGKILL from outside;
 * - while a step runs: a flag file makes the step wait (after it has left
 *   its background child behind); the harness kills the daemon once the
 *   step has said so in the record file.
 *
 * The invariants (see `checkRecovery`): after the restart the daemon
 * reaches idle with every transaction resting and no hook shown running;
 * the interrupted transaction ends as its journal says it must (an
 * interrupted prepare rolled back: the abort step of every hook whose
 * prepare step was journaled ran after the crash, in reverse order; an
 * interrupted commit or abort run again in full); no process of the killed
 * run (by its BOOTC_PRESTAGE_TRANSACTION marker and by recorded pid and
 * start time) survives the recovery, or writes anything once recovery has
 * started; every journal parses (only the last line may be torn); and a
 * new transaction for another deployment is accepted and prepares.
 */
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { PreStageClient } from '../../service/client/pre-stage-client.js';
import type { TransactionProperties } from '../../service/client/types.js';
import { parseJournal, type JournalRecord, type ReadJournal } from '../../service/engine/journal.js';
import { findProcessRefsByEnv, isSameProcess, processStartTime, type ProcessRef } from '../../service/engine/process-tree.js';
import { replayJournal } from '../../service/engine/recovery.js';
import type { Phase } from '../../service/model/types.js';
import { withDaemon, type DaemonContext } from './daemon.js';
import type { Sysroot } from './ostree.js';
import { sleep } from './processes.js';
import { FIXTURES_DIR, tmpDir } from './tmp.js';

export const CRASH_FIXTURES = path.join(FIXTURES_DIR, 'crash');
/** The preload that stops the daemon after its N-th journal record. */
export const STOP_PRELOAD = path.join(CRASH_FIXTURES, 'stop-at-record.mjs');
export const STEP_SCRIPT = path.join(CRASH_FIXTURES, 'step.sh');

/** States with no work running or pending (engine RESTING_STATES). */
export const RESTING = new Set(['prepared', 'committed', 'aborted', 'failed', 'cancelled']);
export const ERROR_PREFIX = 'org.containers.bootc.PreStage.Error.';

/** How a hook's steps leave a background child behind (see step.sh). */
export type ChildMode = 'none' | 'child' | 'setsid' | 'envless';

export interface CrashHook {
  name: string;
  child: ChildMode;
}

/**
 * The transaction every crash test runs, in plan order. Each step leaves
 * a background child that outlives it: h1's in its process group, h2's
 * escaped with setsid (found by its environment only), h3's in its group
 * with an empty environment (found by its recorded process group only).
 */
export const HOOKS: readonly CrashHook[] = [
  { name: 'h1', child: 'child' },
  { name: 'h2', child: 'setsid' },
  { name: 'h3', child: 'envless' },
];
export const HOOK_NAMES = HOOKS.map((h) => h.name);

/** One line of the record file. */
export interface RecordLine {
  /** 0-based line number. */
  index: number;
  hook: string;
  phase: Phase;
  event: 'start' | 'child' | 'blocked' | 'fail' | 'end';
  pid: number;
  tx: string;
}

/**
 * A hook file running step.sh for every phase. `newRoot`: every step runs
 * in the deployment (RootDirectory=, a busybox userspace), with the crash
 * directory bound in at its own path.
 */
export function crashHookFile(h: CrashHook, crashDir: string, after: string | null, newRoot = false): string {
  const step = `/bin/sh ${crashDir}/step.sh ${h.child}`;
  return [
    '[Hook]',
    `Description=crash harness hook ${h.name}`,
    `Prepare=${step}`,
    `Commit=${step}`,
    `Abort=${step}`,
    ...(after ? [`After=${after}`] : []),
    'TimeoutSec=120',
    `Environment=CRASH_DIR=${crashDir}`,
    ...(newRoot ? ['RootDirectory=${BOOTC_PRESTAGE_DEPLOYMENT}', `BindPaths=${crashDir}`] : []),
    '',
  ].join('\n');
}

/** A short name for a journal record, for test titles and messages. */
export function describeRecord(r: JournalRecord): string {
  switch (r.t) {
    case 'begin': return 'begin';
    case 'phase': return `phase ${r.phase}`;
    case 'state': return `state ${r.state}`;
    case 'step': return `${r.rollback ? 'rollback ' : ''}step ${r.phase} ${r.hook}`;
    case 'pid': return `pid ${r.phase} ${r.hook}`;
    case 'done': return `${r.rollback ? 'rollback ' : ''}done ${r.phase} ${r.hook} ${r.result}`;
    case 'retry': return `${r.rollback ? 'rollback ' : ''}retry ${r.phase} ${r.hook} attempt ${r.attempt}`;
  }
}

/** Run `fn` on every item with at most `n` at a time. */
export function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

/**
 * Rigs running at once in one test file (each is a bus, a daemon and its
 * hook processes): BOOTC_PRESTAGE_CRASH_JOBS, default 2. ava runs every
 * test of a file concurrently; on 2 cores more would only slow each down.
 */
export const rigSlot = limiter(Math.max(1, Number(process.env['BOOTC_PRESTAGE_CRASH_JOBS'] ?? 2) || 2));

/** What the harness saw at the moment it killed the daemon. */
export interface CrashSnapshot {
  /** The interrupted transaction. */
  txId: string;
  /** The phase the test asked for when it was killed. */
  phase: Phase;
  /** Its journal right after the kill. */
  journal: ReadJournal;
  /** Record-file lines written before the kill (the crash marker follows them). */
  linesBefore: number;
  /** Processes of the killed run alive right after the kill (marker or recorded pid). */
  alive: (ProcessRef & { why: string })[];
}

export interface CrashRigOptions {
  /** Deployments in the sysroot (default 3: staged, another, booted). */
  deployments?: number;
  /** Extra daemon arguments. */
  args?: string[];
  /**
   * Run every step in the deployment (bubblewrap, a PID namespace of its
   * own): step.sh then records pids as `<pid namespace> * 1e7 + <pid>`
   * (unique, never a host pid), and reads the daemon's pid from
   * CRASH_DIR/daemon, since its parent chain ends at the namespace's init.
   */
  newRoot?: boolean;
}

/** One daemon with the three crash hooks, and what it takes to crash it. */
export class CrashRig {
  private constructor(
    readonly t: ExecutionContext<unknown>,
    readonly ctx: DaemonContext,
    readonly client: PreStageClient,
    /** CRASH_DIR: step.sh, the record file, the control file, flags. */
    readonly dir: string,
    /** Every step runs in the deployment through bwrap (its pids are namespace-encoded). */
    readonly newRoot: boolean,
  ) {}

  static async create(t: ExecutionContext<unknown>, o: CrashRigOptions = {}): Promise<CrashRig> {
    const dir = await tmpDir(t, { prefix: 'crash-', mode: 0o755 });
    await fsp.copyFile(STEP_SCRIPT, path.join(dir, 'step.sh'));
    await fsp.chmod(path.join(dir, 'step.sh'), 0o644);
    await fsp.writeFile(path.join(dir, 'record'), '');
    await fsp.writeFile(path.join(dir, 'control'), '0\n');
    const etcHooks: Record<string, string> = {};
    await fsp.writeFile(path.join(dir, 'daemon'), 'none\n');
    HOOKS.forEach((h, i) => { etcHooks[`${h.name}.hook`] = crashHookFile(h, dir, i > 0 ? HOOKS[i - 1]!.name : null, o.newRoot); });
    const ctx = await withDaemon(t, {
      sysroot: { deployments: o.deployments ?? 3, ...(o.newRoot ? { userspace: true } : {}) },
      etcHooks,
      ...(o.args ? { args: o.args } : {}),
      // Start-up under load (other test files, other rigs) can be slow.
      timeoutMs: 90_000,
      env: {
        NODE_OPTIONS: `--import=${STOP_PRELOAD}`,
        BOOTC_PRESTAGE_CRASH_CONTROL: path.join(dir, 'control'),
      },
    });
    const client = await PreStageClient.connect({ address: ctx.bus.address, callTimeoutMs: 30_000 });
    t.teardown(() => client.close());
    const rig = new CrashRig(t, ctx, client, dir, o.newRoot ?? false);
    await rig.noteDaemon();
    return rig;
  }

  /** CRASH_DIR/daemon: the running daemon's pid, for steps in a PID namespace (step.sh). */
  async noteDaemon(): Promise<void> {
    const f = path.join(this.dir, 'daemon');
    await fsp.writeFile(`${f}.tmp`, `${this.ctx.daemon.hasExited ? 'none' : this.ctx.daemon.pid}\n`);
    await fsp.rename(`${f}.tmp`, f);
  }

  get sysroot(): Sysroot {
    return this.ctx.sysroot as Sysroot;
  }

  /** The deployment the crash tests prepare (the newest: "staged"). */
  get staged(): string {
    return this.sysroot.deployments[0]!;
  }

  /** Another deployment, for new work after the crash. */
  get other(): string {
    return this.sysroot.deployments[1]!;
  }

  get journalDir(): string {
    return path.join(this.ctx.stateDir, 'journal');
  }

  // ---- flags ------------------------------------------------------------------------

  /**
   * Make `hook`'s `phase` step wait until `unblock`: only when the running
   * daemon starts it (default), or whichever daemon does (`any`: for a
   * daemon not started yet). A restart retires the blocks (`restart`).
   */
  async block(hook: string, phase: Phase, who: 'current' | 'any' = 'current'): Promise<void> {
    await fsp.writeFile(path.join(this.dir, `block.${hook}.${phase}`), who === 'any' ? '' : String(this.ctx.daemon.pid));
  }

  async unblock(hook: string, phase: Phase): Promise<void> {
    await fsp.rm(path.join(this.dir, `block.${hook}.${phase}`), { force: true });
  }

  /**
   * Every block now holds only the steps of daemons that are gone: what a
   * killed daemon left blocked stays blocked (until recovery kills it), the
   * next daemon's steps run. Each file is replaced whole (rename), so a
   * step never reads a half-written one.
   */
  async retireBlocks(gonePid: number): Promise<void> {
    for (const n of await fsp.readdir(this.dir)) {
      if (!n.startsWith('block.')) continue;
      const f = path.join(this.dir, n);
      if ((await fsp.readFile(f, 'utf8').catch(() => 'x')) !== '') continue;
      await fsp.writeFile(`${f}.tmp`, String(gonePid));
      await fsp.rename(`${f}.tmp`, f);
    }
  }

  /** Make `hook`'s `phase` step fail (exit 3), or succeed again with `on` false. */
  async fail(hook: string, phase: Phase, on = true): Promise<void> {
    const f = path.join(this.dir, `fail.${hook}.${phase}`);
    if (on) await fsp.writeFile(f, '');
    else await fsp.rm(f, { force: true });
  }


  /**
   * Stop the daemon right after its `records`-th journal record since it
   * started (0: never). Read at every record, so it applies at once.
   */
  async arm(records: number): Promise<void> {
    await fsp.writeFile(path.join(this.dir, 'control'), `${records}\n`);
  }

  // ---- observation ------------------------------------------------------------------

  /** Every record-file line (crash markers excluded, but counted in `index`). */
  records(): RecordLine[] {
    const text = readFileSync(path.join(this.dir, 'record'), 'utf8');
    const out: RecordLine[] = [];
    text.split('\n').forEach((l, index) => {
      const m = /^(\S+) (prepare|commit|abort) (start|child|blocked|fail|end) (\d+) (\S+)$/.exec(l);
      if (m) {
        out.push({
          index, hook: m[1]!, phase: m[2] as Phase, event: m[3] as RecordLine['event'], pid: Number(m[4]), tx: m[5]!,
        });
      }
    });
    return out;
  }

  /** Lines in the record file so far (crash markers included): a `from` for later searches. */
  lineCount(): number {
    return readFileSync(path.join(this.dir, 'record'), 'utf8').split('\n').filter(Boolean).length;
  }

  /** The first record line (past or future, at line `from` or later) matching `pred`; polls the file. */
  async waitForRecord(pred: (r: RecordLine) => boolean, timeoutMs = 60_000, from = 0): Promise<RecordLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.records().find((r) => r.index >= from && pred(r));
      if (hit) return hit;
      if (this.ctx.daemon.hasExited) throw new Error(`the daemon exited before the awaited step record\n${this.describe()}`);
      if (Date.now() > deadline) throw new Error(`no matching step record within ${timeoutMs} ms\n${this.describe()}`);
      await sleep(20);
    }
  }

  /** Every journal, parsed. */
  async journals(): Promise<ReadJournal[]> {
    const names = (await fsp.readdir(this.journalDir).catch(() => [] as string[])).filter((n) => n.endsWith('.jnl')).sort();
    return Promise.all(names.map(async (n) => parseJournal(n.slice(0, -4), await fsp.readFile(path.join(this.journalDir, n), 'utf8'))));
  }

  async journal(id: string): Promise<ReadJournal> {
    return parseJournal(id, await fsp.readFile(path.join(this.journalDir, `${id}.jnl`), 'utf8'));
  }

  /** Records in every journal together (what the preload counts). */
  async recordCount(): Promise<number> {
    return (await this.journals()).reduce((n, j) => n + j.records.length + (j.torn ? 1 : 0), 0);
  }

  /** Daemon output for failure messages. */
  describe(): string {
    const lines = this.ctx.daemon.logs().slice(-30).join('\n');
    const rec = readFileSync(path.join(this.dir, 'record'), 'utf8');
    return `--- daemon log (last 30 lines) ---\n${lines}\n--- record file ---\n${rec}`;
  }

  /** Resolves once the daemon has stopped itself (state T), as the preload does. */
  async waitStopped(timeoutMs = 60_000): Promise<void> {
    const pid = this.ctx.daemon.pid;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let state = '';
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
        state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '';
      } catch { /* gone */ }
      if (state === 'T') return;
      if (this.ctx.daemon.hasExited) throw new Error(`the daemon exited instead of stopping at its kill point\n${this.describe()}`);
      if (Date.now() > deadline) {
        throw new Error(`the daemon did not reach its kill point within ${timeoutMs} ms (preload log: ${
          readFileSync(path.join(this.dir, 'control.log'), 'utf8').trim().split('\n').pop() ?? 'none'} records)\n${this.describe()}`);
      }
      await sleep(5);
    }
  }

  // ---- crash and restart ------------------------------------------------------------------

  /**
   * SIGKILL the daemon (stopped or running), then note what survived it
   * and mark the record file. Flags that would block a re-run are cleared
   * by `restart`, not here.
   */
  async crash(txId: string, phase: Phase): Promise<CrashSnapshot> {
    const info = await this.ctx.daemon.kill('SIGKILL');
    if (info.signal !== 'SIGKILL') throw new Error(`the daemon exited on its own (${info.code ?? info.signal}) before the kill`);
    const journal = await this.journal(txId);
    const lines = readFileSync(path.join(this.dir, 'record'), 'utf8').split('\n').filter(Boolean);
    const alive = new Map<number, ProcessRef & { why: string }>();
    for (const r of await findProcessRefsByEnv({ BOOTC_PRESTAGE_TRANSACTION: txId })) {
      alive.set(r.pid, { ...r, why: 'has the transaction marker' });
    }
    for (const r of this.records()) {
      if (r.tx !== txId || alive.has(r.pid)) continue;
      const start = processStartTime(r.pid);
      if (start !== null && isSameProcess(r.pid, start)) alive.set(r.pid, { pid: r.pid, startTime: start, why: `recorded as ${r.hook} ${r.phase} ${r.event}` });
    }
    await fsp.appendFile(path.join(this.dir, 'record'), `--- crash: daemon ${this.ctx.daemon.pid} killed ---\n`);
    return { txId, phase, journal, linesBefore: lines.length, alive: [...alive.values()] };
  }

  /**
   * Start the daemon again on the same state (stopping it first if it
   * runs): disarmed (or armed at `armAt`), with every block retired and
   * the `block` ones set for the new daemon's steps.
   */
  async restart(o: { armAt?: number; bootedRoot?: string; block?: [string, Phase][] } = {}): Promise<void> {
    await this.arm(o.armAt ?? 0);
    const gone = this.ctx.daemon.pid;
    if (!this.ctx.daemon.hasExited) await this.ctx.daemon.stop();
    await this.retireBlocks(gone);
    for (const [hook, phase] of o.block ?? []) await this.block(hook, phase, 'any');
    // Until the new pid is written, a step reads 'none': it matches no retired block.
    await fsp.writeFile(path.join(this.dir, 'daemon'), 'none\n');
    await this.ctx.restart(o.bootedRoot ? { bootedRoot: o.bootedRoot } : {});
    await this.noteDaemon();
  }

  /**
   * Wait until the daemon is idle and every transaction rests, as a client
   * sees it; resolves with every transaction's properties.
   */
  async waitSettled(timeoutMs = 90_000): Promise<TransactionProperties[]> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const m = await this.client.managerProperties();
      if (m.state === 'idle' && m.activeTransaction === '/') {
        const txs = await Promise.all((await this.client.listTransactions()).map((p) => this.client.transactionProperties(p)));
        if (txs.every((x) => RESTING.has(x.state))) return txs;
        last = txs.map((x) => `${x.id}: ${x.state}`).join(', ');
      } else {
        last = `manager ${m.state} ${m.activeTransaction}`;
      }
      if (Date.now() > deadline) throw new Error(`not settled within ${timeoutMs} ms (${last})\n${this.describe()}`);
      await sleep(50);
    }
  }

  /**
   * Wait until one transaction rests (or is in one of `states`), in `phase`
   * when given (a phase's work starts after the reply, so a commit just
   * asked for still shows the prepare's rest).
   */
  async waitState(txPath: string, states: string[] = [...RESTING], timeoutMs = 90_000, phase?: Phase): Promise<TransactionProperties> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const p = await this.client.transactionProperties(txPath);
      if (states.includes(p.state) && (phase === undefined || p.phase === phase)) return p;
      if (Date.now() > deadline) throw new Error(`${p.id} is ${p.state}, not ${states.join('/')}, after ${timeoutMs} ms\n${this.describe()}`);
      await sleep(50);
    }
  }

  /** Start a phase and wait until it rests. */
  async runPhase(phase: Phase, deployment: string): Promise<TransactionProperties> {
    const p = phase === 'prepare' ? await this.client.startPreStage(deployment)
      : phase === 'commit' ? await this.client.commitPreStage(deployment)
        : await this.client.abortPreStage(deployment);
    return this.waitState(p, [...RESTING], 90_000, phase);
  }

  /**
   * Ask for `phase` of `deployment` without waiting for the reply (a kill
   * point may come before it); resolves with the path or the error.
   */
  request(phase: Phase, deployment: string): Promise<string | Error> {
    const p = phase === 'prepare' ? this.client.startPreStage(deployment)
      : phase === 'commit' ? this.client.commitPreStage(deployment)
        : this.client.abortPreStage(deployment);
    return p.catch((e: Error) => e);
  }

  /** The id of the newest transaction for `deployment`, from the journals. */
  async latestTxId(deployment: string): Promise<string> {
    const own = (await this.journals()).filter((j) => {
      const b = j.records[0];
      return b?.t === 'begin' && b.deployment === deployment;
    });
    const last = own.at(-1);
    if (!last) throw new Error(`no journal for ${deployment}\n${this.describe()}`);
    return last.id;
  }
}

// ---- what recovery must have done ------------------------------------------------------------

/** The outcome the journal at crash time calls for. */
export interface Expected {
  state: string;
  /** Steps recovery must run, in this order: the hooks and the phase of their steps. */
  steps: { phase: Phase; hooks: string[] } | null;
}

/**
 * What recovery must do, derived from the journal at the crash and the
 * phase asked for, independently of the daemon's own replay code:
 * - a phase whose final state is journaled is over: nothing runs;
 * - a prepare that never journaled `preparing` ran nothing: cancelled;
 * - a prepare past that point is rolled back: the abort step of every hook
 *   with a (non-rollback) prepare step record, in reverse plan order, and
 *   it ends failed, or cancelled when a cancel was journaled;
 * - a commit or abort runs again in full (plan order, reverse for abort).
 */
export function expectedRecovery(snap: CrashSnapshot): Expected {
  const recs = snap.journal.records;
  // Only what this phase journaled counts (commit/abort follow a prepare).
  let from = 0;
  if (snap.phase !== 'prepare') {
    from = recs.findIndex((r) => r.t === 'phase' && r.phase === snap.phase);
    if (from < 0) from = recs.length; // the phase record itself was not written
  }
  const mine = recs.slice(from);
  const states = mine.filter((r): r is Extract<JournalRecord, { t: 'state' }> => r.t === 'state').map((r) => r.state);
  if (snap.phase === 'prepare') {
    const final = states.find((s) => s === 'prepared' || s === 'failed' || s === 'cancelled');
    if (final) return { state: final, steps: null };
    if (!states.includes('preparing')) return { state: 'cancelled', steps: null };
    const started = HOOK_NAMES.filter((h) => mine.some((r) => r.t === 'step' && r.phase === 'prepare' && !r.rollback && r.hook === h));
    return { state: states.includes('cancelling') ? 'cancelled' : 'failed', steps: { phase: 'abort', hooks: started.reverse() } };
  }
  const done = snap.phase === 'commit' ? 'committed' : 'aborted';
  if (states.includes(done)) return { state: done, steps: null };
  return { state: done, steps: { phase: snap.phase, hooks: snap.phase === 'abort' ? [...HOOK_NAMES].reverse() : [...HOOK_NAMES] } };
}

/**
 * Check every invariant after recovery; returns the violations (empty when
 * all hold) so a test can show them all at once.
 */
/** "hook phase" of each step the snapshot's journal shows spawned that wrote no `start` line before it. */
function spawnedWithoutStart(snap: CrashSnapshot, before: RecordLine[]): string[] {
  const started = new Set(before.filter((r) => r.event === 'start').map((r) => `${r.hook} ${r.phase}`));
  return snap.journal.records.flatMap((r) => (r.t === 'pid' && !started.has(`${r.hook} ${r.phase}`) ? [`${r.hook} ${r.phase}`] : []));
}

export async function checkRecovery(rig: CrashRig, snap: CrashSnapshot, txs: TransactionProperties[]): Promise<string[]> {
  const bad: string[] = [];
  const exp = expectedRecovery(snap);

  // The journal at the crash: only its last line may be torn.
  if (snap.journal.corruptLine !== null) bad.push(`journal at the crash is corrupt at line ${snap.journal.corruptLine}`);

  // No transaction in a running state; no hook shown running.
  for (const x of txs) {
    if (!RESTING.has(x.state)) bad.push(`transaction ${x.id} is ${x.state} after recovery`);
    for (const h of x.hooks) if (h.result === 'running') bad.push(`transaction ${x.id} (${x.state}) shows hook ${h.name} running`);
  }
  const tx = txs.find((x) => x.id === snap.txId);
  if (!tx) {
    bad.push(`transaction ${snap.txId} is not on the bus after the restart`);
    return bad;
  }
  if (tx.state !== exp.state) bad.push(`transaction ends ${tx.state} (${tx.error} ${tx.errorMessage}), expected ${exp.state}`);
  if (exp.state === 'failed' && !tx.error.startsWith(ERROR_PREFIX)) bad.push(`a failed transaction has no error name: '${tx.error}'`);
  if (exp.state === 'cancelled' && tx.error !== `${ERROR_PREFIX}Cancelled`) bad.push(`a cancelled transaction has error '${tx.error}'`);

  // Steps after the crash.
  const all = rig.records();
  const after = all.filter((r) => r.index > snap.linesBefore - 1 && r.tx === snap.txId);
  const before = all.filter((r) => r.index < snap.linesBefore && r.tx === snap.txId);
  // A line is the writer's own (its pid is $$), except `child` lines: those
  // carry the child's pid and say nothing about who is still running.
  const fresh = new Set<string>(); // pid@index of lines by a process started after the crash
  const startedAfter = new Set<number>();
  // A step started before the crash may write its `start` line after the
  // snapshot: the daemon journals its pid as soon as the spawn helper has
  // exec'd it, before the shell has run a line. Such a step is not new.
  const startedBefore = new Set<number>([
    ...snap.alive.map((p) => p.pid),
    ...snap.journal.records.flatMap((r) => (r.t === 'pid' ? [r.pid] : [])),
  ]);
  // In a new root the step's own pid lives in the PID namespace bwrap makes
  // after its exec, so it can match no host pid: there, the one step the
  // journal shows spawned (a `pid` record) that wrote no `start` line before
  // the snapshot owns the first `start` line of its hook and phase after it.
  // A real re-run shows as a second `start`, or as a completed prepare below.
  const spawnedUnstarted = new Set<string>(rig.newRoot ? spawnedWithoutStart(snap, before) : []);
  for (const r of after) {
    if (r.event === 'child') continue;
    if (r.event === 'start' && spawnedUnstarted.delete(`${r.hook} ${r.phase}`)) continue;
    if (r.event === 'start' && !startedBefore.has(r.pid)) startedAfter.add(r.pid);
    if (startedAfter.has(r.pid)) fresh.add(`${r.pid}@${r.index}`);
  }
  const newRuns = after.filter((r) => fresh.has(`${r.pid}@${r.index}`));
  const ends = newRuns.filter((r) => r.event === 'end').map((r) => `${r.hook} ${r.phase}`);
  const want = exp.steps ? exp.steps.hooks.map((h) => `${h} ${exp.steps!.phase}`) : [];
  if (JSON.stringify(ends) !== JSON.stringify(want)) {
    bad.push(`steps completed after the crash: [${ends.join(', ')}], expected [${want.join(', ')}]`);
  }
  if (newRuns.some((r) => r.event === 'start' && r.phase === 'prepare')) bad.push('recovery ran a prepare step again');
  // Every hook whose prepare step started before the crash was aborted after it (when rolled back).
  if (snap.phase === 'prepare' && exp.steps) {
    for (const h of new Set(before.filter((r) => r.phase === 'prepare' && r.event === 'start').map((r) => r.hook))) {
      if (!ends.includes(`${h} abort`)) bad.push(`hook ${h} ran its prepare step before the crash but no abort after it`);
    }
  }
  // Nothing of the killed run acts once recovery has started a step.
  const firstNew = newRuns[0]?.index ?? Infinity;
  for (const r of after) {
    if (r.event !== 'child' && r.index > firstNew && !fresh.has(`${r.pid}@${r.index}`)) {
      bad.push(`process ${r.pid} of the killed run wrote '${r.hook} ${r.phase} ${r.event}' after recovery started`);
    }
  }

  // No process of the killed run survives.
  for (const p of snap.alive) {
    if (isSameProcess(p.pid, p.startTime)) bad.push(`process ${p.pid} (${p.why}) survived the recovery`);
  }
  for (const x of txs) {
    const left = await findProcessRefsByEnv({ BOOTC_PRESTAGE_TRANSACTION: x.id });
    if (left.length) bad.push(`processes of transaction ${x.id} still running: ${left.map((p) => p.pid).join(' ')}`);
  }
  for (const p of await hookProcesses(rig)) bad.push(`hook process left running: ${p}`);

  // Every journal parses; recovered ones are whole again.
  for (const j of await rig.journals()) {
    if (j.corruptLine !== null) bad.push(`journal ${j.id} is corrupt at line ${j.corruptLine}`);
    const r = replayJournal(j);
    if (!r.ok) bad.push(`journal ${j.id} does not replay: ${r.reason}`);
    else if (r.value.interrupted) bad.push(`journal ${j.id} still says ${r.value.state}`);
  }

  // Hook state: kept while prepared, removed once aborted or committed.
  const keyDir = path.join(rig.ctx.stateDir, 'hooks', `${rig.sysroot.osname}-${path.basename(rig.staged)}`);
  if (exp.state === 'prepared' && !existsSync(keyDir)) bad.push('hook state of a prepared transaction is gone');
  if (exp.state !== 'prepared' && existsSync(keyDir)) {
    bad.push(`hook state is left after the transaction ended ${exp.state}: ${keyDir}: ${(await fsp.readdir(keyDir)).join(' ')}`);
  }
  return bad;
}

/**
 * Live processes started by this rig's hooks (their environment has its
 * CRASH_DIR), described by transaction, hook and phase. Every step's
 * processes must be gone once the daemon has finished with it.
 */
export async function hookProcesses(rig: CrashRig): Promise<string[]> {
  const out: string[] = [];
  for (const ref of await findProcessRefsByEnv({ CRASH_DIR: rig.dir })) {
    let env: string[];
    try {
      env = readFileSync(`/proc/${ref.pid}/environ`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (!isSameProcess(ref.pid, ref.startTime)) continue;
    const v = (k: string) => env.find((e) => e.startsWith(`${k}=`))?.slice(k.length + 1) ?? '?';
    const cmd = readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
    out.push(`${ref.pid} '${cmd}' of ${v('BOOTC_PRESTAGE_TRANSACTION')} ${v('BOOTC_PRESTAGE_HOOK')} ${v('BOOTC_PRESTAGE_PHASE')}`);
  }
  return out;
}

/**
 * New work after recovery: StartPreStage of another deployment is accepted
 * and prepares; its steps ran. Returns the violations.
 */
export async function checkNewWork(rig: CrashRig): Promise<string[]> {
  const p = await rig.client.startPreStage(rig.other);
  const s = await rig.waitState(p);
  const bad: string[] = [];
  if (s.state !== 'prepared') bad.push(`new work on ${rig.other} ended ${s.state}: ${s.errorMessage}`);
  const ran = rig.records().filter((r) => r.tx === s.id && r.event === 'end').map((r) => `${r.hook} ${r.phase}`);
  if (JSON.stringify(ran) !== JSON.stringify(HOOK_NAMES.map((h) => `${h} prepare`))) bad.push(`new work ran [${ran.join(', ')}]`);
  for (const p of await hookProcesses(rig)) bad.push(`hook process left running: ${p}`);
  return bad;
}

// ---- calibration ------------------------------------------------------------------------------

/** The journal records one clean run of each phase writes, in order. */
export interface Calibration {
  /** A prepare that succeeds. */
  prepare: JournalRecord[];
  /** The commit of that transaction. */
  commit: JournalRecord[];
  /** The abort of a prepared transaction. */
  abort: JournalRecord[];
  /** A prepare whose last hook (h3) fails: the steps, the rollback, the end. */
  rollback: JournalRecord[];
  /** How long the clean runs took, daemon start included. */
  ms: number;
}

/**
 * A stand-in for ava's ExecutionContext outside a test (calibration runs
 * at load time, before tests are declared): teardowns run in reverse order
 * of registration, as ava runs them, when `close()` is called.
 */
export function looseScope(): { t: ExecutionContext<unknown>; close(): Promise<void> } {
  const fns: (() => unknown)[] = [];
  const t = { teardown: (fn: () => unknown) => { fns.push(fn); }, log: () => {} } as unknown as ExecutionContext<unknown>;
  return {
    t,
    async close() {
      const errors: unknown[] = [];
      for (const fn of fns.reverse()) {
        try { await fn(); } catch (e) { errors.push(e); }
      }
      if (errors.length) throw errors[0];
    },
  };
}

/**
 * Count the records clean runs write (N for each phase): the kill points
 * are then records 1..N. One daemon, the same hooks as the crash tests.
 */
export async function calibrate(): Promise<Calibration> {
  const t0 = Date.now();
  const s = looseScope();
  try {
    const rig = await CrashRig.create(s.t);
    const [d0, d1, d2] = rig.sysroot.deployments as [string, string, string];
    const expectState = (p: TransactionProperties, state: string) => {
      if (p.state !== state) throw new Error(`calibration: ${p.phase} of ${p.deployment} ended ${p.state} (${p.errorMessage}), not ${state}\n${rig.describe()}`);
    };
    const a = await rig.runPhase('prepare', d0);
    expectState(a, 'prepared');
    const prepare = (await rig.journal(a.id)).records;
    expectState(await rig.runPhase('commit', d0), 'committed');
    const commit = (await rig.journal(a.id)).records.slice(prepare.length);
    const b = await rig.runPhase('prepare', d1);
    expectState(b, 'prepared');
    const bPrepared = (await rig.journal(b.id)).records.length;
    expectState(await rig.runPhase('abort', d1), 'aborted');
    const abort = (await rig.journal(b.id)).records.slice(bPrepared);
    await rig.fail('h3', 'prepare');
    const c = await rig.runPhase('prepare', d2);
    expectState(c, 'failed');
    const rollback = (await rig.journal(c.id)).records;
    await rig.fail('h3', 'prepare', false);
    return { prepare, commit, abort, rollback, ms: Date.now() - t0 };
  } finally {
    await s.close();
  }
}
