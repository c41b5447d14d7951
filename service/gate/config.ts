/**
 * `/etc/bootc-prestage/config`: the boot gate's settings (README, "The
 * boot gate"). `KEY=VALUE` lines, `#` and `;` comments, blank lines; the
 * same file is valid as a systemd EnvironmentFile= and for sh.
 *
 *   Trigger=yes         start the prepare phase when a deployment is staged
 *                       (bootc-prestage-staged.path)
 *   AutoUnlock=yes      after a successful prepare, lift the finalization
 *                       lock the trigger (or start --staged) wrote; `no`
 *                       keeps the stage locked until
 *                       `bootc upgrade --from-downloaded`
 *   GateWaitSec=180     how long the shutdown gate waits for a running
 *                       prepare of the staged deployment before it locks
 *
 * `BOOTC_PRESTAGE_CONFIG` names another file (tests).
 */
import { readFileSync } from 'node:fs';

export const CONFIG_FILE = '/etc/bootc-prestage/config';

export interface GateConfig {
  trigger: boolean;
  autoUnlock: boolean;
  gateWaitSec: number;
}

export const DEFAULT_CONFIG: GateConfig = { trigger: true, autoUnlock: true, gateWaitSec: 180 };

export interface LoadedConfig {
  config: GateConfig;
  /** Problems, each naming file and line; a bad value keeps that key's default. */
  problems: string[];
  /** True when a value could not be used (callers then take the safe side). */
  invalid: boolean;
}

function parseBool(v: string): boolean | null {
  const s = v.trim().toLowerCase();
  if (['yes', 'true', 'on', '1'].includes(s)) return true;
  if (['no', 'false', 'off', '0'].includes(s)) return false;
  return null;
}

export function parseConfig(text: string, file = CONFIG_FILE): LoadedConfig {
  const config = { ...DEFAULT_CONFIG };
  const problems: string[] = [];
  let invalid = false;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) {
      problems.push(`${file}:${i + 1}: not KEY=VALUE: '${line}'`);
      invalid = true;
      continue;
    }
    const key = line.slice(0, eq).trim();
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.endsWith(value[0]!)) value = value.slice(1, -1);
    switch (key) {
      case 'Trigger':
      case 'AutoUnlock': {
        const b = parseBool(value);
        if (b === null) {
          problems.push(`${file}:${i + 1}: ${key}= takes yes or no, not '${value}'`);
          invalid = true;
        } else if (key === 'Trigger') config.trigger = b;
        else config.autoUnlock = b;
        break;
      }
      case 'GateWaitSec': {
        if (!/^\d{1,6}$/.test(value)) {
          problems.push(`${file}:${i + 1}: GateWaitSec= takes whole seconds (0-999999), not '${value}'`);
          invalid = true;
        } else config.gateWaitSec = Number(value);
        break;
      }
      default:
        problems.push(`${file}:${i + 1}: unknown key '${key}' ignored`);
    }
  }
  return { config, problems, invalid };
}

/** Read the config; a missing file is the defaults, an unreadable one is invalid. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): LoadedConfig & { file: string } {
  const file = env.BOOTC_PRESTAGE_CONFIG || CONFIG_FILE;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { config: { ...DEFAULT_CONFIG }, problems: [], invalid: false, file };
    return { config: { ...DEFAULT_CONFIG }, problems: [`${file}: cannot read: ${err.message}`], invalid: true, file };
  }
  return { ...parseConfig(text, file), file };
}
