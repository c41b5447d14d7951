/**
 * A typed client of org.containers.bootc.PreStage: one method per D-Bus
 * method, property reads decoded into plain data, errors turned into
 * ClientError. Used by the bootc-prestage command and by tests; anything
 * else that speaks D-Bus (busctl, bootc over zbus, Cockpit) sees the same
 * interface.
 */
import { toVariants } from '../connection/variants.js';
import {
  encodeHookDefinition, encodeLogOptions, encodePhaseOptions, encodeRegisterOptions, encodeStartOptions,
} from '../protocol/options.js';
import {
  ALLOW_INTERACTIVE_AUTHORIZATION, BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, PROPERTIES, TRANSACTION_INTERFACE, transactionIdFromPath,
} from '../protocol/members.js';
import type { HookDefinition } from '../model/types.js';
import {
  ClientConnection, resolveClientAddress, DEFAULT_CALL_TIMEOUT_MS, type Reply,
} from './connection.js';
import {
  decodeHookEntry, decodeManagerProperties, decodeTransactionProperties, unwrapVariants,
} from './decode.js';
import { ClientError, toClientError } from './errors.js';
import { ServiceWatch, type WatchScope } from './service-watch.js';
import type { HookEntry, ManagerProperties, TransactionProperties } from './types.js';

export interface ClientOptions {
  /** A D-Bus address; default $DBUS_SYSTEM_BUS_ADDRESS, else the system bus. */
  address?: string | null;
  env?: NodeJS.ProcessEnv;
  /** Per-call timeout (default 25 s, like libdbus). */
  callTimeoutMs?: number;
  /**
   * Mark calls ALLOW_INTERACTIVE_AUTHORIZATION, so that polkit may ask the
   * user's authentication agent (a password prompt) instead of refusing;
   * the CLI sets it when its stdin is a terminal. Default false.
   */
  interactiveAuthorization?: boolean;
}

// The option shapes are the model's, shared with the engine (types only).
import type { LogOptions, PhaseOptions, StartOptions } from '../model/options.js';
export type { LogOptions, PhaseOptions, StartOptions };

/** A transaction id or object path as a path; throws usage for anything else. */
export function transactionPathOf(idOrPath: string): string {
  const prefix = `${MANAGER_PATH}/Transaction/`;
  const p = idOrPath.startsWith('/') ? idOrPath : `${prefix}${idOrPath}`;
  if (transactionIdFromPath(p) === null) {
    throw new ClientError('usage',
      `'${idOrPath}' is not a transaction id or path (expected an id such as 3 or ${prefix}<id>)`);
  }
  return p;
}

export class PreStageClient {
  readonly conn: ClientConnection;
  private readonly timeoutMs: number;
  /** Unique name of the daemon that answered last (the name's owner then). */
  lastOwner = '';

  private constructor(conn: ClientConnection, timeoutMs: number, private readonly interactive: boolean) {
    this.conn = conn;
    this.timeoutMs = timeoutMs;
  }

  /** Connect to the bus (the daemon itself is started by the bus on the first call). */
  static async connect(opts: ClientOptions = {}): Promise<PreStageClient> {
    let address: string;
    try {
      address = resolveClientAddress(opts.address, opts.env);
    } catch (e) {
      throw new ClientError('usage', (e as Error).message);
    }
    try {
      const conn = await ClientConnection.connect(address, opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
      return new PreStageClient(conn, opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS, opts.interactiveAuthorization === true);
    } catch (e) {
      throw toClientError(e, 'connecting to the bus');
    }
  }

  close(): void {
    this.conn.close();
  }

  /** A raw call to the service; rejects with ClientError. */
  async callService(
    path: string, iface: string, member: string, signature = '', body: unknown[] = [], context = member,
  ): Promise<Reply> {
    try {
      const reply = await this.conn.call(BUS_NAME, path, iface, member, signature, body, {
        timeoutMs: this.timeoutMs, ...(this.interactive ? { flags: ALLOW_INTERACTIVE_AUTHORIZATION } : {}),
      });
      this.lastOwner = reply.sender;
      return reply;
    } catch (e) {
      throw toClientError(e, context);
    }
  }

  private manager(member: string, signature = '', body: unknown[] = []): Promise<Reply> {
    return this.callService(MANAGER_PATH, MANAGER_INTERFACE, member, signature, body);
  }

  /** Subscribe to the service's signals (see ServiceWatch). */
  async watch(scope: WatchScope = {}): Promise<ServiceWatch> {
    try {
      return await ServiceWatch.open(this.conn, scope);
    } catch (e) {
      throw toClientError(e, 'subscribing to signals');
    }
  }

  /** StartPreStage: resolves with the transaction's object path. */
  async startPreStage(deployment: string, o: StartOptions = {}): Promise<string> {
    const r = await this.manager('StartPreStage', 'sa{sv}', [deployment, toVariants(encodeStartOptions(o))]);
    return String(r.body[0]);
  }

  async commitPreStage(deployment: string, o: PhaseOptions = {}): Promise<string> {
    const r = await this.manager('CommitPreStage', 'sa{sv}', [deployment, toVariants(encodePhaseOptions(o))]);
    return String(r.body[0]);
  }

  async abortPreStage(deployment: string, o: PhaseOptions = {}): Promise<string> {
    const r = await this.manager('AbortPreStage', 'sa{sv}', [deployment, toVariants(encodePhaseOptions(o))]);
    return String(r.body[0]);
  }

  /** Reconcile: the transactions it queued work for. */
  async reconcile(): Promise<string[]> {
    const r = await this.manager('Reconcile', 'a{sv}', [{}]);
    return (r.body[0] as string[]).map(String);
  }

  async registerHook(name: string, definition: HookDefinition, o: { runtime?: boolean } = {}): Promise<void> {
    await this.manager('RegisterHook', 'sa{sv}a{sv}', [
      name, toVariants(encodeHookDefinition(definition)), toVariants(encodeRegisterOptions(o)),
    ]);
  }

  async unregisterHook(name: string): Promise<void> {
    await this.manager('UnregisterHook', 's', [name]);
  }

  /** The effective hooks for `deployment` ('' = host hooks only), in run order. */
  async listHooks(deployment: string): Promise<HookEntry[]> {
    const r = await this.manager('ListHooks', 's', [deployment]);
    return (r.body[0] as unknown[]).map(decodeHookEntry);
  }

  async listTransactions(): Promise<string[]> {
    const r = await this.manager('ListTransactions');
    return (r.body[0] as string[]).map(String);
  }

  async managerProperties(): Promise<ManagerProperties> {
    const r = await this.callService(MANAGER_PATH, PROPERTIES.name, 'GetAll', 's', [MANAGER_INTERFACE], 'reading the service state');
    return decodeManagerProperties(r.body[0]);
  }

  /** GetAll of a transaction, with the reply's arrival sequence number. */
  async transactionPropertiesAt(path: string): Promise<{ tx: TransactionProperties; reply: Reply }> {
    const id = transactionIdFromPath(path) ?? path;
    const reply = await this.callService(path, PROPERTIES.name, 'GetAll', 's', [TRANSACTION_INTERFACE],
      `reading transaction ${id}`);
    return { tx: decodeTransactionProperties(path, reply.body[0]), reply };
  }

  async transactionProperties(path: string): Promise<TransactionProperties> {
    return (await this.transactionPropertiesAt(path)).tx;
  }

  /** Transaction.Cancel. */
  async cancel(path: string): Promise<void> {
    await this.callService(path, TRANSACTION_INTERFACE, 'Cancel', '', [], 'Cancel');
  }

  /** Transaction.GetLog. */
  async getLog(path: string, o: Partial<LogOptions> = {}): Promise<string[]> {
    const r = await this.callService(path, TRANSACTION_INTERFACE, 'GetLog', 'a{sv}',
      [toVariants(encodeLogOptions(o))], 'GetLog');
    return (unwrapVariants(r.body[0]) as string[]).map(String);
  }
}
