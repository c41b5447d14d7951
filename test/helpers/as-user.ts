/**
 * Run a short Node.js ES module as another uid, for what busctl cannot do
 * as that user: send a call with no interface field, stay connected to
 * receive signals. The script runs from the repository root, so it can
 * `import ... from 'dbus-next'`; the bus address is in $BUS_ADDRESS.
 */
import { runAs, NOBODY, type RunResult } from './busctl.js';
import { REPO_ROOT } from './tmp.js';

export interface RunNodeAsOptions {
  /** Default 65534 (nobody). */
  uid?: number;
  /** Set as $BUS_ADDRESS for the script. */
  busAddress?: string;
  env?: Record<string, string>;
  /** Default 20 s. */
  timeoutMs?: number;
}

/**
 * `node --input-type=module -e SOURCE` as `uid`, from the repository
 * root, with a minimal environment. Resolves with exit code and output.
 */
export function runNodeAs(source: string, opts: RunNodeAsOptions = {}): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    LANG: 'C.UTF-8',
    HOME: '/',
    ...(opts.busAddress ? { BUS_ADDRESS: opts.busAddress } : {}),
    ...opts.env,
  };
  // cd first: the module's bare imports resolve from the working directory.
  const argv = ['sh', '-c', 'cd "$1" && shift && exec "$@"', 'sh', REPO_ROOT,
    process.execPath, '--input-type=module', '-e', source];
  return runAs(argv, { uid: opts.uid ?? NOBODY, env, ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}) });
}
