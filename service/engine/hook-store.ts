/**
 * Hooks registered over D-Bus (RegisterHook/UnregisterHook) are ordinary
 * hook files in /etc (persistent) or /run (until reboot), so discovery,
 * precedence and masking treat them exactly like files an admin wrote.
 */
import { isDeepStrictEqual } from 'node:util';
import * as nodePath from 'node:path';
import { PreStageError } from '../model/errors.js';
import { mkdirDurable, unlinkDurable, writeFileAtomic } from './fs-atomic.js';
import { ETC_HOOK_DIR, RUN_HOOK_DIR, programsOf } from './hook-discovery.js';
import { parseHookFile, serializeHookFile, validateDefinition } from '../model/hook-file.js';
import { HOOK_FILE_SUFFIX, isValidHookName } from '../model/hook-name.js';
import type { HookDefinition } from '../model/types.js';

const DIR_MODE = 0o755;
const FILE_MODE = 0o644;

/** Where RegisterHook writes: `<root>/etc/bootc/pre-stage.d`, or `<root>/run/...` when `runtime`. */
export function hookWriteDir(root: string, runtime: boolean): string {
  return nodePath.join(nodePath.resolve(root), runtime ? RUN_HOOK_DIR : ETC_HOOK_DIR);
}

function checkName(name: string): void {
  if (!isValidHookName(name)) {
    throw new PreStageError('InvalidArgs',
      `invalid hook name '${String(name).slice(0, 80)}': use 1-64 of A-Z a-z 0-9 _ . @ -, starting with a letter or digit`);
  }
}

/**
 * Validate, then write `NAME.hook` atomically and durably (mode 0644, the
 * directory created 0755 if missing), replacing any file of that name there
 * (including a mask). Returns the path written. Throws InvalidArgs for a bad
 * name and InvalidHook for a bad definition, before touching the disk; the
 * file is either fully written or unchanged.
 */
export async function registerHookFile(
  root: string, name: string, def: HookDefinition, runtime: boolean,
): Promise<string> {
  checkName(name);
  validateDefinition(def, `definition of hook '${name}'`);
  // A program that expands to a relative path would make every later
  // discovery (ListHooks, StartPreStage) fail on this file: refuse it now.
  programsOf(name, `definition of hook '${name}'`, def, '');
  const dir = hookWriteDir(root, runtime);
  const path = nodePath.join(dir, `${name}${HOOK_FILE_SUFFIX}`);
  const text = serializeHookFile(def);
  // The store must never write what discovery would read differently.
  if (!isDeepStrictEqual(parseHookFile(text, path).definition, def)) {
    throw new PreStageError('Internal', `hook '${name}' would not read back as registered; not written`);
  }
  try {
    await mkdirDurable(dir, DIR_MODE);
    await writeFileAtomic(path, text, FILE_MODE);
  } catch (e) {
    throw new PreStageError('Internal', `cannot write ${path}: ${(e as Error).message}`);
  }
  return path;
}

/**
 * Remove `NAME.hook` (a hook or a mask) from both the /etc and /run hook
 * directories under `root`; returns the paths removed. Throws InvalidArgs
 * for a bad name and NotFound when neither has it.
 */
export async function unregisterHookFile(root: string, name: string): Promise<string[]> {
  checkName(name);
  const removed: string[] = [];
  for (const runtime of [false, true]) {
    const path = nodePath.join(hookWriteDir(root, runtime), `${name}${HOOK_FILE_SUFFIX}`);
    try {
      if (await unlinkDurable(path)) removed.push(path);
    } catch (e) {
      throw new PreStageError('Internal', `cannot remove ${path}: ${(e as Error).message}`);
    }
  }
  if (removed.length === 0) {
    throw new PreStageError('NotFound',
      `no hook '${name}' in ${hookWriteDir(root, false)} or ${hookWriteDir(root, true)}; ` +
      `hooks shipped by an image cannot be unregistered, but an empty file ` +
      `${nodePath.join(hookWriteDir(root, false), `${name}${HOOK_FILE_SUFFIX}`)} masks one`);
  }
  return removed;
}
