/**
 * An engine (no D-Bus) over a real ostree sysroot, a temporary root for the
 * /etc and /run hook directories, and a real hook program that records what
 * it was run with. For engine-level integration tests.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { firstValueFrom, filter } from 'rxjs';
import type { TransactionHandle } from '../../service/engine/api.js';
import { Engine, type EngineOptions } from '../../service/engine/engine.js';
import type { Logger } from '../../service/model/logger.js';
import type { TransactionEvent, TransactionSnapshot } from '../../service/model/types.js';
import { RESTING_STATES } from '../../service/model/types.js';
import { withSysroot, type Sysroot } from './ostree.js';
import { tmpDir } from './tmp.js';

/**
 * The step program: appends "<hook> <phase> <action>" to $RECORD, then acts:
 * ok, fail (exit 3), skip (exit 77), sleep (30 s), progress (fd 3),
 * env (dumps its environment to $RECORD.env.<hook>.<phase>), chatty (output).
 */
export const STEP_PROGRAM = `#!/bin/sh
echo "$BOOTC_PRESTAGE_HOOK $BOOTC_PRESTAGE_PHASE $1" >> "$RECORD"
case "$1" in
  fail) echo "failing on purpose" >&2; exit 3 ;;
  skip) exit 77 ;;
  sleep) sleep 30 ;;
  progress) echo PROGRESS=50 >&3; echo STATUS=half way >&3; echo PROGRESS=100 >&3 ;;
  env) env | sort > "$RECORD.env.$BOOTC_PRESTAGE_HOOK.$BOOTC_PRESTAGE_PHASE"; pwd > "$RECORD.cwd.$BOOTC_PRESTAGE_HOOK" ;;
  chatty) i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done ;;
esac
exit 0
`;

export interface HookSpec {
  prepare?: string;
  commit?: string;
  abort?: string;
  after?: string;
  before?: string;
  required?: boolean;
  timeoutSec?: string;
  extra?: string;
}

export interface EngineEnv {
  engine: Engine;
  sysroot: Sysroot;
  root: string;
  stateDir: string;
  bin: string;
  record: string;
  logs: { level: string; message: string; fields?: Record<string, unknown> }[];
  /** Write /etc/bootc/pre-stage.d/NAME.hook running the step program. */
  hook(name: string, spec: HookSpec): Promise<string>;
  /** Lines the step program recorded, in order. */
  recorded(): Promise<string[]>;
  /** Re-open the engine on the same state (a restart). */
  reopen(extra?: Partial<EngineOptions>): Promise<Engine>;
}

export async function withEngine(t: ExecutionContext, extra: Partial<EngineOptions> = {}): Promise<EngineEnv> {
  const sysroot = await withSysroot(t, { deployments: 2 });
  const base = await tmpDir(t, { prefix: 'engine-', mode: 0o755 });
  const root = path.join(base, 'root');
  const stateDir = path.join(base, 'state');
  const bin = path.join(base, 'bin');
  const record = path.join(base, 'record');
  await fsp.mkdir(path.join(root, 'etc/bootc/pre-stage.d'), { recursive: true, mode: 0o755 });
  await fsp.mkdir(bin, { recursive: true, mode: 0o755 });
  await fsp.writeFile(path.join(bin, 'step'), STEP_PROGRAM, { mode: 0o755 });
  await fsp.writeFile(record, '');
  const logs: EngineEnv['logs'] = [];
  const logger: Logger = {
    error: (message, fields) => logs.push({ level: 'error', message, fields }),
    warn: (message, fields) => logs.push({ level: 'warn', message, fields }),
    info: (message, fields) => logs.push({ level: 'info', message, fields }),
    debug: () => {},
  };
  const opts: EngineOptions = {
    stateDir, root, sysroot: sysroot.path, bootedRoot: sysroot.bootedRoot, logger, version: 'test',
    killGraceMs: 1000, ...extra,
  };
  let engine = await Engine.open(opts);
  const env: EngineEnv = {
    get engine() { return engine; },
    sysroot, root, stateDir, bin, record, logs,
    async hook(name, s) {
      const step = (a?: string) => (a ? `${bin}/step ${a}` : '');
      const lines = ['[Hook]', `Description=test hook ${name}`];
      if (s.prepare) lines.push(`Prepare=${step(s.prepare)}`);
      if (s.commit) lines.push(`Commit=${step(s.commit)}`);
      if (s.abort) lines.push(`Abort=${step(s.abort)}`);
      if (s.after) lines.push(`After=${s.after}`);
      if (s.before) lines.push(`Before=${s.before}`);
      if (s.required === false) lines.push('Required=no');
      if (s.timeoutSec) lines.push(`TimeoutSec=${s.timeoutSec}`);
      lines.push(`Environment=RECORD=${record}`);
      if (s.extra) lines.push(s.extra);
      const file = path.join(root, 'etc/bootc/pre-stage.d', `${name}.hook`);
      await fsp.writeFile(file, lines.join('\n') + '\n', { mode: 0o644 });
      return file;
    },
    async recorded() {
      return (await fsp.readFile(record, 'utf8')).split('\n').filter(Boolean);
    },
    async reopen(more = {}) {
      await engine.shutdown();
      engine = await Engine.open({ ...opts, ...more });
      return engine;
    },
  };
  t.teardown(() => engine.shutdown());
  return env;
}

/**
 * Resolves with the snapshot once the transaction rests (prepared, failed,
 * ...) or, with `states`, once it is in one of those.
 */
export function settled(tx: TransactionHandle, states?: string[], timeoutMs = 60_000): Promise<TransactionSnapshot> {
  const ok = (s: TransactionSnapshot) => (states ? states.includes(s.state) : RESTING_STATES.has(s.state) && s.finishedUsec > 0);
  const rest = firstValueFrom(tx.state$.pipe(filter(ok)));
  return Promise.race([
    rest,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`transaction ${tx.id} did not settle in ${timeoutMs} ms: ${tx.snapshot().state}`)), timeoutMs).unref()),
  ]);
}

/** Record every event of a transaction from now on. */
export function recordEvents(tx: TransactionHandle): TransactionEvent[] {
  const out: TransactionEvent[] = [];
  tx.events$.subscribe((e) => out.push(e));
  return out;
}
