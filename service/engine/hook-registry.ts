/**
 * The engine's hook operations: the hooks a transaction is planned with
 * (discovery, with a refused required hook an error), ListHooks, and
 * RegisterHook/UnregisterHook with their checks. Hook files themselves are
 * hook-store.ts's (writing) and hook-discovery.ts's (reading).
 */
import { PreStageError } from '../model/errors.js';
import { validateDefinition } from '../model/hook-file.js';
import { isValidHookName } from '../model/hook-name.js';
import type { Logger } from '../model/logger.js';
import type { HookDefinition, HookSet } from '../model/types.js';
import { discoverHooks } from './hook-discovery.js';
import { registerHookFile, unregisterHookFile } from './hook-store.js';
import { orderHooks } from './plan.js';

export class HookRegistry {
  constructor(
    /** Hook directories /etc/bootc/pre-stage.d and /run/bootc/pre-stage.d live under this. */
    private readonly root: string,
    private readonly trustedUid: number,
    private readonly log: Logger,
  ) {}

  /**
   * Every hook of the host and of `deployment` (null: host only), refused
   * ones marked. Refused hooks are listed, even required ones (which make
   * StartPreStage fail): ListHooks is where an admin sees why.
   */
  list(deployment: string | null): Promise<HookSet> {
    return discoverHooks({ root: this.root, deployment, trustedUid: this.trustedUid, logger: this.log });
  }

  /** The hooks a transaction of `deployment` runs; InvalidHook when a required one is refused. */
  async forTransaction(deployment: string | null): Promise<HookSet> {
    const set = await this.list(deployment);
    const refusedRequired = set.hooks.filter((h) => h.refused && h.definition.required);
    if (refusedRequired.length > 0) {
      throw new PreStageError('InvalidHook', refusedRequired
        .map((h) => `required hook ${h.name} (${h.source}) is refused: ${h.refused}`).join('; '));
    }
    return set;
  }

  /** Write a hook file for `name`; returns its path. */
  async register(name: string, definition: HookDefinition, runtime: boolean): Promise<string> {
    if (!isValidHookName(name)) {
      throw new PreStageError('InvalidArgs', `invalid hook name '${name.slice(0, 80)}': expected [A-Za-z0-9][A-Za-z0-9_.@-]{0,63}`);
    }
    validateDefinition(definition, `definition of hook '${name}'`);
    // Refuse a definition that would make the host hooks unorderable.
    const host = await this.list(null);
    const nodes = host.hooks.filter((h) => h.name !== name)
      .map((h) => ({ name: h.name, after: h.definition.after, before: h.definition.before, source: h.source }));
    nodes.push({ name, after: definition.after, before: definition.before, source: `definition of hook '${name}'` });
    orderHooks(nodes);
    const file = await registerHookFile(this.root, name, definition, runtime);
    this.log.info(`registered hook ${name}`, { hook: name, file });
    return file;
  }

  async unregister(name: string): Promise<void> {
    if (!isValidHookName(name)) {
      throw new PreStageError('InvalidArgs', `invalid hook name '${name.slice(0, 80)}'`);
    }
    const removed = await unregisterHookFile(this.root, name);
    this.log.info(`unregistered hook ${name}`, { hook: name, files: removed.join(' ') });
  }
}
