/**
 * The daemon's state directory: its lock, the per-transaction logs, the hook
 * state directories, and the pruning of finished history.
 *
 * Layout (all mode 0700, owned by the daemon):
 *   daemon.lock                      pid and start time of the daemon using it
 *   journal/<id>.journal             one journal per transaction (journal.ts)
 *   logs/<id>.log                    the transaction's hook output (transaction-log.ts)
 *   hooks/<deployment key>/<hook>/   BOOTC_PRESTAGE_STATE_DIRECTORY of a hook's steps
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { PreStageError } from '../model/errors.js';
import { mkdirp, writeFileAtomic } from './fs-atomic.js';
import { isSameProcess, processStartTime } from './process-tree.js';

export class StateDir {
  /** Absolute path of the state directory. */
  readonly root: string;
  private lockFile: string | null = null;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** The journal store's directory. */
  get journalDir(): string {
    return path.join(this.root, 'journal');
  }

  get logDir(): string {
    return path.join(this.root, 'logs');
  }

  get hookStateRoot(): string {
    return path.join(this.root, 'hooks');
  }

  /**
   * Create the directory tree and take the lock. Fails Busy while another
   * live daemon holds the lock.
   */
  async open(): Promise<void> {
    await mkdirp(this.root, 0o700).catch((err: Error) => {
      throw new Error(`cannot create the state directory ${this.root}: ${err.message}`);
    });
    await this.lock();
    await fsp.mkdir(this.logDir, { recursive: true, mode: 0o700 });
    await fsp.mkdir(this.hookStateRoot, { recursive: true, mode: 0o700 });
  }

  /**
   * One daemon per state directory: a second one would recover (roll back)
   * transactions the first is running. The lock names its holder by pid and
   * start time, so a lock left by a killed daemon is taken over, never one
   * held by a live daemon.
   */
  private async lock(): Promise<void> {
    const file = path.join(this.root, 'daemon.lock');
    const me = `${process.pid} ${processStartTime(process.pid) ?? ''}\n`;
    const held = await fsp.readFile(file, 'utf8').catch(() => '');
    const [pidText, start] = held.trim().split(' ');
    const pid = Number(pidText);
    if (pid > 0 && pid !== process.pid && isSameProcess(pid, start || null)) {
      throw new PreStageError('Busy', `another bootc-prestaged (pid ${pid}) uses the state directory ${this.root}`);
    }
    await writeFileAtomic(file, me, 0o600);
    this.lockFile = file;
  }

  /** Drop the lock (at shutdown). */
  async release(): Promise<void> {
    if (this.lockFile) await fsp.rm(this.lockFile, { force: true }).catch(() => {});
  }

  logFile(transactionId: string): string {
    return path.join(this.logDir, `${transactionId}.log`);
  }

  async removeLog(transactionId: string): Promise<void> {
    await fsp.rm(this.logFile(transactionId), { force: true });
  }

  hookStateDir(deploymentKey: string, hook: string): string {
    return path.join(this.hookStateRoot, deploymentKey, hook);
  }

  async removeHookState(deploymentKey: string, hook: string): Promise<void> {
    await fsp.rm(this.hookStateDir(deploymentKey, hook), { recursive: true, force: true });
  }

  /** Removes the deployment's directory only when every hook's is gone. */
  async cleanDeploymentState(deploymentKey: string): Promise<void> {
    await fsp.rmdir(path.join(this.hookStateRoot, deploymentKey)).catch(() => {});
  }
}

/** What history pruning needs to know of a transaction. */
export interface PrunableTransaction {
  readonly createdUsec: number;
}

/**
 * The oldest of `finished` beyond the newest `limit`, oldest first: what
 * pruning removes. `finished` holds only transactions that rest with no work
 * owed and none queued. Pure.
 */
export function historyToPrune<T extends PrunableTransaction>(finished: readonly T[], limit: number): T[] {
  const sorted = [...finished].sort((a, b) => a.createdUsec - b.createdUsec);
  const excess = sorted.length - limit;
  return excess > 0 ? sorted.slice(0, excess) : [];
}
