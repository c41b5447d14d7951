/** What every benchmark shares: the bus, the sysroot, sizes, and a daemon per benchmark. */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import * as path from 'node:path';
import { Variant } from 'dbus-next';
import {
  Client, MANAGER_PATH, SERVICE, TX_IFACE, makeDir, removeTree, startDaemon,
  type Bus, type Daemon, type Recorder, type Sysroot,
} from './env.js';
import type { Sizes } from './result.js';

export interface Ctx {
  bus: Bus;
  sysroot: Sysroot;
  sizes: Sizes;
  /** The daemon's entry point (another build, to compare before and after a change). */
  daemonEntry: string;
  /** Progress lines for the person running the benchmark (stderr). */
  note(text: string): void;
}

/** The deployment the benchmarks stage (the newest). */
export const target = (ctx: Ctx): string => ctx.sysroot.deployments[0]!;

export interface Running {
  daemon: Daemon;
  client: Client;
  /** Every signal of the Transaction interface since the daemon started. */
  tx: Recorder;
  dir: string;
  root: string;
  stateDir: string;
}

/**
 * A benchmark's own directory, root, state directory, daemon and client.
 * `setup` writes hooks and scripts before the daemon starts.
 */
export async function withDaemon<T>(
  ctx: Ctx, name: string, setup: (dir: string, root: string) => Promise<void>,
  body: (r: Running) => Promise<T>, args: string[] = [],
): Promise<T> {
  const dir = await makeDir(name);
  const root = path.join(dir, 'root');
  const stateDir = path.join(dir, 'state');
  let daemon: Daemon | null = null;
  let client: Client | null = null;
  try {
    await setup(dir, root);
    daemon = await startDaemon({
      bus: ctx.bus, sysroot: ctx.sysroot, stateDir, root, args, logFile: path.join(dir, 'daemon.log'), entry: ctx.daemonEntry,
    });
    client = await Client.connect(ctx.bus.address);
    const tx = await client.record(`type='signal',sender='${SERVICE}',interface='${TX_IFACE}'`);
    return await body({ daemon, client, tx, dir, root, stateDir });
  } finally {
    client?.close();
    await daemon?.stop();
    if (process.env['BENCH_KEEP'] === '1') ctx.note(`kept ${dir}`);
    else await removeTree(dir);
  }
}

export interface PhaseRun {
  path: string;
  id: string;
  /** From just before the StartPreStage call to the arrival of Finished. */
  ms: number;
  state: string;
  /** Performance.now() at the call. */
  t0: number;
}

/** StartPreStage on the target deployment and wait for its Finished signal. */
export async function runPrepare(ctx: Ctx, r: Running, opts: Record<string, boolean> = { force: true }): Promise<PhaseRun> {
  const o: Record<string, Variant> = {};
  for (const [k, v] of Object.entries(opts)) o[k] = new Variant('b', v);
  const t0 = performance.now();
  const [txPath] = await r.client.call(SERVICE, MANAGER_PATH, SERVICE, 'StartPreStage', 'sa{sv}', [target(ctx), o]);
  const p = String(txPath);
  const fin = await r.tx.waitFor((s) => s.at >= t0 && s.member === 'Finished' && s.path === p);
  return { path: p, id: p.slice(p.lastIndexOf('/') + 1), ms: fin.at - t0, state: String(fin.body[0]), t0 };
}

/**
 * The pipe floor: `argv` with its stdout (or, `fd3`, its fd 3) piped to
 * cat, which throws the bytes away (or stores them in `file`, removed
 * after). What any reader of a pipe costs the writer on this machine (the
 * pipe's 64 KiB fill and drain, two processes taking turns on the CPUs),
 * with none of the daemon's work; ms to exit.
 */
export async function timePipedToCat(argv: string[], env: NodeJS.ProcessEnv, fd3 = false, file = '/dev/null'): Promise<number> {
  const q = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const quoted = argv.map(q).join(' ');
  const cmd = fd3 ? `${quoted} 3>&1 >/dev/null | cat >${q(file)}` : `${quoted} | cat >${q(file)}`;
  const ms = await timeProgram(['/bin/sh', '-c', `set -e; ${cmd}`], env);
  if (file !== '/dev/null') await rm(file, { force: true });
  return ms;
}

/** Run a program with stdin, stdout, stderr at /dev/null (fd 3 too when `fd3`); ms to exit. */
export async function timeProgram(argv: string[], env: NodeJS.ProcessEnv = process.env, fd3 = false): Promise<number> {
  const devnull = openSync('/dev/null', 'r+');
  try {
    const t0 = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', devnull, devnull, ...(fd3 ? [devnull] : [])], env });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (c) => resolve(c));
    });
    const ms = performance.now() - t0;
    if (code !== 0) throw new Error(`${argv.join(' ')} exited with ${code}`);
    return ms;
  } finally {
    closeSync(devnull);
  }
}

/** A program that times its own work and prints the milliseconds as its last line of stdout (helper-loop.ts). */
export async function timedByItself(argv: string[]): Promise<number> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c) => resolve(c));
  });
  const ms = Number(out.trim().split('\n').at(-1));
  if (code !== 0 || !Number.isFinite(ms)) throw new Error(`${argv.join(' ')} exited with ${code}: ${err.trim() || out.trim()}`);
  return ms;
}
