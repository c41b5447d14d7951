/**
 * A subscription to the service's signals and to its bus name changing
 * hands, made with AddMatch rules (never proxies) and removed on close().
 *
 * Everything received from the moment the rules are in place is kept in a
 * backlog until a consumer takes it, so a caller can subscribe, then make a
 * call, then start consuming with nothing lost in between (follow.ts
 * relies on that to join a transaction whose path it learns from a reply).
 */
import { BUS_NAME, MANAGER_PATH } from '../protocol/members.js';
import type { ClientConnection, ReceivedSignal } from './connection.js';

const BUS_DAEMON = 'org.freedesktop.DBus';

/** What a watch delivers. */
export type WatchItem =
  | { kind: 'signal'; signal: ReceivedSignal }
  /** The service's bus name changed owner ('' = none): the daemon started or went away. */
  | { kind: 'owner'; seq: number; oldOwner: string; newOwner: string };

export interface WatchScope {
  /**
   * Only this transaction's signals (and the manager's). Without it, every
   * object under /org/containers/bootc/PreStage.
   */
  transactionPath?: string;
}

function quote(v: string): string {
  return `'${v.replace(/'/g, "'\\''")}'`;
}

/** The match rules of a scope (exported for tests). */
export function watchRules(scope: WatchScope): string[] {
  const svc = `type='signal',sender=${quote(BUS_NAME)}`;
  const owner = `type='signal',sender=${quote(BUS_DAEMON)},interface=${quote(BUS_DAEMON)},`
    + `member='NameOwnerChanged',arg0=${quote(BUS_NAME)}`;
  if (scope.transactionPath) {
    return [`${svc},path=${quote(MANAGER_PATH)}`, `${svc},path=${quote(scope.transactionPath)}`, owner];
  }
  return [`${svc},path_namespace=${quote(MANAGER_PATH)}`, owner];
}

function inScope(s: ReceivedSignal, scope: WatchScope): boolean {
  if (s.sender === BUS_DAEMON) {
    return s.member === 'NameOwnerChanged' && s.interface === BUS_DAEMON && s.body[0] === BUS_NAME;
  }
  // The bus delivers only what our rules match, but another part of the
  // program may have rules of its own on this connection.
  if (scope.transactionPath) return s.path === MANAGER_PATH || s.path === scope.transactionPath;
  return s.path === MANAGER_PATH || s.path.startsWith(`${MANAGER_PATH}/`);
}

export class ServiceWatch {
  private backlog: WatchItem[] | null = [];
  private readonly listeners = new Set<(item: WatchItem) => void>();
  private constructor(
    private readonly removers: (() => Promise<void>)[],
    private readonly stopListening: () => void,
  ) {}

  /** Subscribe; when this resolves, the rules are in place. */
  static async open(conn: ClientConnection, scope: WatchScope = {}): Promise<ServiceWatch> {
    let watch: ServiceWatch | null = null;
    const early: WatchItem[] = [];
    const stop = conn.onSignal((s) => {
      if (!inScope(s, scope)) return;
      const item: WatchItem = s.sender === BUS_DAEMON
        ? { kind: 'owner', seq: s.seq, oldOwner: String(s.body[1] ?? ''), newOwner: String(s.body[2] ?? '') }
        : { kind: 'signal', signal: s };
      if (watch) watch.deliver(item);
      else early.push(item);
    });
    const removers: (() => Promise<void>)[] = [];
    try {
      for (const rule of watchRules(scope)) removers.push(await conn.addMatch(rule));
    } catch (e) {
      stop();
      await Promise.all(removers.map((r) => r()));
      throw e;
    }
    watch = new ServiceWatch(removers, stop);
    watch.backlog!.push(...early);
    return watch;
  }

  private deliver(item: WatchItem): void {
    if (this.backlog) this.backlog.push(item);
    for (const l of [...this.listeners]) l(item);
  }

  /**
   * Everything received since open() (a copy), then every new item to
   * `listener` as it arrives. Taking the backlog ends it unless
   * `retainBacklog`: a watch shared by several follows (one per transaction
   * Reconcile returned) keeps its history for each of them.
   */
  consume(listener: (item: WatchItem) => void, opts: { retainBacklog?: boolean } = {}): {
    backlog: WatchItem[]; stop: () => void;
  } {
    const backlog = [...(this.backlog ?? [])];
    if (!opts.retainBacklog) this.backlog = null;
    this.listeners.add(listener);
    return { backlog, stop: () => { this.listeners.delete(listener); } };
  }

  /** Remove the match rules and stop delivering. Idempotent. */
  async close(): Promise<void> {
    this.stopListening();
    this.listeners.clear();
    this.backlog = null;
    const removers = this.removers.splice(0);
    await Promise.all(removers.map((r) => r()));
  }
}
