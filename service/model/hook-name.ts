/**
 * Hook names: what may appear before `.hook` in a drop-in file name, in
 * After=/Before=, and as the `name` of RegisterHook/UnregisterHook.
 *
 * The first character may not be `.`, `-` or `_`, so a name is never a
 * hidden file, never looks like an option, and never escapes its directory
 * (no `/`, no `..`).
 */

/** The public name syntax of docs/design.md "Hooks"; keep it exactly. */
export const HOOK_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/;

/** True when `s` is a valid hook name (1-64 characters, see HOOK_NAME_RE). */
export function isValidHookName(s: string): boolean {
  return typeof s === 'string' && HOOK_NAME_RE.test(s);
}

/** File-name suffix of hook files. */
export const HOOK_FILE_SUFFIX = '.hook';
