/**
 * The bus face of the engine: org.containers.bootc.PreStage at
 * /org/containers/bootc/PreStage. Methods decode and bound their arguments,
 * call the engine, and map its answers; signals and properties follow the
 * engine's observables.
 *
 * Contract kept here: a method that creates or rejoins a transaction
 * replies with the object path in the same callback in which the engine's
 * promise resolves. The engine starts work only after that (setImmediate),
 * and property changes it makes during the call are published on a later
 * turn (coalesce.ts), so the reply is on the wire before any signal of the
 * transaction, PropertiesChanged included.
 */
import { Subject, Subscription } from 'rxjs';
import type { EngineApi, EngineStatus, TransactionHandle } from '../engine/api.js';
import type { Logger } from '../model/logger.js';
import type { ResolvedHook } from '../model/types.js';
import { toVariants, type Variant } from '../connection/variants.js';
import { coalesceTicks } from './coalesce.js';
import { errorNameFor } from '../protocol/errors.js';
import { toBusString } from '../protocol/values.js';
import {
  MANAGER, MANAGER_PATH, findSignal, signatureOf, transactionPath, type SignalName,
} from '../protocol/members.js';
import type { InterfaceImpl, ObjectRegistry } from './object-server.js';
import {
  checkDeploymentArg, checkString, decodeHookDefinition, decodePhaseOptions,
  decodeReconcileOptions, decodeRegisterOptions, decodeStartOptions, encodeHookEntry,
} from '../protocol/options.js';

/** The transaction objects, as the manager needs them. */
export interface TransactionExports {
  /** Export the handle's object unless it already is; returns its path. */
  ensure(handle: TransactionHandle): string;
  /** Send everything pending on that transaction's object now. */
  flush(id: string): void;
}

export interface ManagerProperties {
  Version: string;
  State: string;
  ActiveTransaction: string;
}

/** Engine status as manager property values ('/' when no transaction runs). */
export function managerProperties(version: string, status: EngineStatus): ManagerProperties {
  let active = '/';
  if (status.active !== null) {
    try { active = transactionPath(status.active); } catch { active = '/'; }
  }
  return { Version: version, State: status.state, ActiveTransaction: active };
}

export class ManagerObject {
  readonly path = MANAGER_PATH;
  private readonly subs = new Subscription();
  private readonly propertyTick$ = new Subject<void>();
  private published: ManagerProperties;
  private exported = false;

  constructor(
    private readonly registry: ObjectRegistry,
    private readonly engine: EngineApi,
    private readonly transactions: TransactionExports,
    private readonly log: Logger,
    /** PropertiesChanged spacing, ms (coalesce.ts). */
    private readonly propertiesIntervalMs = 50,
  ) {
    this.published = managerProperties(engine.version, engine.status());
  }

  private impl(): InterfaceImpl<typeof MANAGER> {
    const engine = this.engine;
    const path = (h: TransactionHandle) => this.transactions.ensure(h);
    return {
      spec: MANAGER,
      methods: {
        StartPreStage: (call) => {
          const deployment = checkDeploymentArg(call.args[0] as string);
          const opts = decodeStartOptions(call.args[1]);
          return engine.start(deployment, opts).then((h) => call.reply([path(h)]));
        },
        CommitPreStage: (call) => {
          const deployment = checkDeploymentArg(call.args[0] as string);
          const opts = decodePhaseOptions(call.args[1], 'CommitPreStage');
          return engine.commit(deployment, opts).then((h) => call.reply([path(h)]));
        },
        AbortPreStage: (call) => {
          const deployment = checkDeploymentArg(call.args[0] as string);
          const opts = decodePhaseOptions(call.args[1], 'AbortPreStage');
          return engine.abort(deployment, opts).then((h) => call.reply([path(h)]));
        },
        Reconcile: (call) => {
          decodeReconcileOptions(call.args[0]);
          return engine.reconcile().then((hs) => call.reply([hs.map(path)]));
        },
        RegisterHook: async (call) => {
          const name = checkString(call.args[0] as string, 'the hook name');
          const definition = decodeHookDefinition(call.args[1]);
          const opts = decodeRegisterOptions(call.args[2]);
          const file = await engine.registerHook(name, definition, opts);
          this.log.info(`hook ${name} registered over D-Bus in ${file}`, { hook: name });
        },
        UnregisterHook: async (call) => {
          const name = checkString(call.args[0] as string, 'the hook name');
          await engine.unregisterHook(name);
          this.log.info(`hook ${name} unregistered over D-Bus`, { hook: name });
        },
        ListHooks: async (call) => {
          const deployment = checkDeploymentArg(call.args[0] as string);
          const set = await engine.listHooks(deployment);
          return [set.hooks.map(hookEntryReply)];
        },
        ListTransactions: () => [engine.transactions().map(path)],
      },
      properties: () => managerProperties(engine.version, engine.status()),
    };
  }

  export(): void {
    if (this.exported) return;
    this.registry.exportObject({ path: this.path, interfaces: [this.impl()] });
    this.exported = true;
    const onError = (what: string) => (e: unknown) =>
      this.log.error(`engine ${what} stream failed: ${(e as Error).message}`);

    this.subs.add(this.propertyTick$.pipe(coalesceTicks(this.propertiesIntervalMs))
      .subscribe(() => this.publishProperties()));
    this.subs.add(this.engine.status$.subscribe({
      next: () => this.propertyTick$.next(),
      error: onError('status'),
    }));
    this.subs.add(this.engine.phaseStarted$.subscribe({
      next: ({ transaction, phase }) => {
        const p = this.pathOf(transaction);
        if (p === null) return;
        this.emit('TransactionStarted', [p, toBusString(transaction.deployment), phase]);
      },
      error: onError('phase'),
    }));
    this.subs.add(this.engine.finished$.subscribe({
      next: ({ transaction, snapshot }) => {
        const p = this.pathOf(transaction);
        if (p === null) return;
        // Final properties first: a client reacting to TransactionFinished
        // by reading the transaction's properties must see its end state.
        this.transactions.flush(transaction.id);
        this.publishProperties();
        this.emit('TransactionFinished', [p, snapshot.state, errorNameFor(snapshot.error)]);
      },
      error: onError('finished'),
    }));
  }

  dispose(): void {
    this.subs.unsubscribe();
    this.propertyTick$.complete();
    if (this.exported) this.registry.unexportObject(this.path);
    this.exported = false;
  }

  private pathOf(h: TransactionHandle): string | null {
    try {
      return this.transactions.ensure(h);
    } catch (e) {
      this.log.error(`transaction ${h.id} cannot be exported: ${(e as Error).message}`, { transaction: h.id });
      return null;
    }
  }

  private publishProperties(): void {
    if (!this.exported) return;
    let current: ManagerProperties;
    try {
      current = managerProperties(this.engine.version, this.engine.status());
    } catch (e) {
      this.log.error(`cannot read the engine status: ${(e as Error).message}`);
      return;
    }
    const changed: Record<string, unknown> = {};
    for (const key of Object.keys(current) as (keyof ManagerProperties)[]) {
      if (current[key] !== this.published[key]) changed[key] = current[key];
    }
    this.published = current;
    if (Object.keys(changed).length > 0) this.registry.emitPropertiesChanged(this.path, MANAGER.name, changed);
  }

  private emit(member: SignalName<typeof MANAGER>, body: unknown[]): void {
    const spec = findSignal(MANAGER, member)!;
    this.registry.emitSignal(this.path, MANAGER.name, member, signatureOf(spec.args), body);
  }
}

/** One ListHooks entry as sent: the protocol's encoding, its values as Variants. */
function hookEntryReply(hook: ResolvedHook): [string, Record<string, Variant>] {
  const [name, dict] = encodeHookEntry(hook);
  return [name, toVariants(dict)];
}
