/**
 * The pipes a step's stdout, stderr and fd 3 are made of when Node spawns
 * it (without the spawn helper, which makes its own: spawner.ts), in a pool.
 *
 * They are real pipes (FIFOs created and unlinked at once), not the socket
 * pairs Node makes: with a socket, a script's `echo x >/dev/stderr` fails
 * with ENXIO. Every fd is close-on-exec, so a pooled pipe never leaks into
 * another step.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants as fsConstants, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeErrno } from './step-spec.js';

export interface PipePair { read: number; write: number }

const MKFIFO = ['/usr/bin/mkfifo', '/bin/mkfifo'];

/** Pipes made per mkfifo run: enough for PIPE_BATCH / 3 steps. */
export const PIPE_BATCH = 24;
/** Below this many pooled pipes a refill starts in the background. */
const PIPE_LOW_WATER = 12;
/** Pooled pipes are closed after this long without a step (an idle daemon holds no spare fds). */
const PIPE_IDLE_MS = 30_000;

function mkfifoBinary(): string | undefined {
  return MKFIFO.find((p) => existsSync(p));
}

/**
 * Open the FIFOs at `paths` as pipes and unlink them. The read ends are
 * non-blocking for libuv; the write ends, which a step inherits, are
 * blocking, as a program expects its stdout to be. Every fd is close-on-exec
 * (libuv opens so), so a pooled pipe never leaks into another step.
 */
function openFifos(paths: string[]): PipePair[] {
  const pairs: PipePair[] = [];
  try {
    for (const p of paths) {
      const read = openSync(p, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      pairs.push({ read, write: -1 });
      // Cannot block: the read end is open.
      pairs[pairs.length - 1]!.write = openSync(p, fsConstants.O_WRONLY);
    }
    return pairs;
  } catch (e) {
    closePipes(pairs);
    throw e;
  }
}

/**
 * `n` anonymous pipes, made as FIFOs in a private directory of `base` that
 * is removed before returning (Node cannot call pipe(2)). Blocks on one
 * mkfifo run. Returns the reason on failure.
 */
function makePipesSync(n: number, base: string): PipePair[] | string {
  const bin = mkfifoBinary();
  if (bin === undefined) return 'mkfifo not found';
  let dir: string;
  try {
    dir = mkdtempSync(join(base, 'bootc-prestage-step-'));
  } catch (e) {
    return `cannot create a directory in ${base}: ${describeErrno(e)}`;
  }
  try {
    const paths = Array.from({ length: n }, (_, i) => join(dir, String(i)));
    const r = spawnSync(bin, ['-m', '600', '--', ...paths], { stdio: 'ignore', env: {}, timeout: 10_000 });
    if (r.status !== 0) return `mkfifo failed (${r.error ? describeErrno(r.error) : `status ${r.status}`})`;
    return openFifos(paths);
  } catch (e) {
    return `cannot open pipes: ${describeErrno(e)}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** makePipesSync without blocking the event loop; rejects on failure. */
async function makePipes(n: number, base: string): Promise<PipePair[]> {
  const bin = mkfifoBinary();
  if (bin === undefined) throw new Error('mkfifo not found');
  const dir = await mkdtemp(join(base, 'bootc-prestage-step-'));
  try {
    const paths = Array.from({ length: n }, (_, i) => join(dir, String(i)));
    await new Promise<void>((resolve, reject) => {
      const child = spawn(bin, ['-m', '600', '--', ...paths], { stdio: 'ignore', env: {} });
      child.once('error', reject);
      child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`mkfifo exited with ${code}`))));
    });
    return openFifos(paths);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Pipes made ahead of need. Forking mkfifo for every step cost more than
 * the step itself (tens of milliseconds on a loaded machine); the pool makes
 * PIPE_BATCH at a time, synchronously only when it is empty, otherwise in
 * the background once it runs low, so a run of steps forks nothing but the
 * steps. Pipes have no state before use, so a pooled pair is as good as a
 * fresh one. The pool follows the temporary directory: when TMPDIR changes,
 * the pipes made in the old one are dropped and the new one is used (and a
 * directory that cannot be used makes runStep fall back to socket pairs).
 */
class PipePool {
  private pairs: PipePair[] = [];
  private base: string | null = null;
  private refilling = false;
  private idleTimer: NodeJS.Timeout | null = null;

  take(n: number, base: string = tmpdir()): PipePair[] | string {
    if (base !== this.base) {
      this.drop();
      this.base = base;
    }
    if (this.pairs.length < n) {
      const made = makePipesSync(Math.max(n, PIPE_BATCH), base);
      if (typeof made === 'string') return made;
      this.pairs.push(...made);
    }
    const out = this.pairs.splice(0, n);
    if (this.pairs.length < PIPE_LOW_WATER) this.refill(base);
    this.armIdle();
    return out;
  }

  private refill(base: string): void {
    if (this.refilling) return;
    this.refilling = true;
    makePipes(PIPE_BATCH, base).then((made) => {
      if (base === this.base) {
        this.pairs.push(...made);
        this.armIdle();
      } else {
        closePipes(made);
      }
    }, () => {
      // The next take() makes pipes synchronously and reports why it cannot.
    }).finally(() => { this.refilling = false; });
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => { this.idleTimer = null; this.drop(); }, PIPE_IDLE_MS);
    this.idleTimer.unref();
  }

  private drop(): void {
    closePipes(this.pairs);
    this.pairs = [];
  }
}

/** The pool of Node-spawned steps. */
export const pipePool = new PipePool();

export function closeFd(fd: number): void {
  if (fd < 0) return;
  try { closeSync(fd); } catch { /* already closed */ }
}

export function closePipes(pairs: PipePair[]): void {
  for (const p of pairs) { closeFd(p.read); closeFd(p.write); p.read = -1; p.write = -1; }
}
