/**
 * Puts the engine on the bus: the manager object, one object per
 * transaction (exported when the engine adds it, before the call that made
 * it returns; unexported when the engine prunes it), then the bus name.
 * The name is requested last so no client can reach a half-exported
 * service.
 */
import { Subscription } from 'rxjs';
import type { EngineApi, TransactionHandle } from '../engine/api.js';
import type { Logger } from '../model/logger.js';
import type { BusConnection } from './connection.js';
import { ManagerObject, type TransactionExports } from './manager-object.js';
import { BUS_NAME } from '../protocol/members.js';
import { ObjectServer, type ObjectRegistry, type ObjectServerOptions } from './object-server.js';
import { TransactionObject, type RateLimits } from './transaction-object.js';

export interface ExportOptions extends ObjectServerOptions {
  /** Override the signal rate limits (tests). */
  rateLimits?: Partial<RateLimits>;
  /** The name to own. Default org.containers.bootc.PreStage. */
  busName?: string;
}

export interface ServiceHandle {
  /** The object server, for introspection of what is exported (tests, diagnostics). */
  readonly server: ObjectServer;
  /**
   * Stop following the engine and answering calls, flush pending signals
   * and unexport every object. The bus name and the connection stay as
   * they are: the daemon closes the connection (which drops the name).
   */
  close(): void;
}

/** Transaction objects by id. */
class TransactionObjects implements TransactionExports {
  private readonly objects = new Map<string, TransactionObject>();

  constructor(
    private readonly registry: ObjectRegistry,
    private readonly log: Logger,
    private readonly limits: Partial<RateLimits>,
  ) {}

  ensure(handle: TransactionHandle): string {
    const existing = this.objects.get(handle.id);
    if (existing) return existing.path;
    const obj = new TransactionObject(this.registry, handle, this.log, this.limits);
    obj.export();
    this.objects.set(handle.id, obj);
    return obj.path;
  }

  flush(id: string): void {
    this.objects.get(id)?.flush();
  }

  remove(id: string): void {
    const obj = this.objects.get(id);
    if (!obj) return;
    this.objects.delete(id);
    obj.dispose();
  }

  disposeAll(): void {
    for (const id of [...this.objects.keys()]) this.remove(id);
  }
}

/**
 * Export the service on `conn` and own the bus name. Rejects (with
 * everything undone) when the name cannot be owned.
 */
export async function exportService(
  conn: BusConnection, engine: EngineApi, logger: Logger, opts: ExportOptions = {},
): Promise<ServiceHandle> {
  const server = new ObjectServer(conn, logger, opts);
  const transactions = new TransactionObjects(server, logger, opts.rateLimits ?? {});
  const manager = new ManagerObject(server, engine, transactions, logger, opts.rateLimits?.propertiesIntervalMs);
  const subs = new Subscription();
  let closed = false;

  const track = (h: TransactionHandle) => {
    try {
      transactions.ensure(h);
    } catch (e) {
      logger.error(`transaction ${h.id} cannot be exported: ${(e as Error).message}`, { transaction: h.id });
    }
  };

  const close = () => {
    if (closed) return;
    closed = true;
    subs.unsubscribe();
    manager.dispose();
    transactions.disposeAll();
    server.close();
  };

  try {
    manager.export();
    // Subscribe before listing so a transaction added in between is not
    // missed; ensure() makes the overlap harmless.
    subs.add(engine.added$.subscribe({
      next: track,
      error: (e: unknown) => logger.error(`engine added stream failed: ${(e as Error).message}`),
    }));
    subs.add(engine.removed$.subscribe({
      next: (id) => transactions.remove(id),
      error: (e: unknown) => logger.error(`engine removed stream failed: ${(e as Error).message}`),
    }));
    for (const h of engine.transactions()) track(h);
    await conn.requestName(opts.busName ?? BUS_NAME);
  } catch (e) {
    close();
    throw e;
  }
  logger.debug(`exported ${opts.busName ?? BUS_NAME} as ${conn.uniqueName}`);
  return { server, close };
}
