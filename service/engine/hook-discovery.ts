/**
 * Find the effective hooks for a deployment: read the three hook
 * directories, apply precedence and masking, parse, check trust, order.
 *
 * Trust follows sudo and sshd: a hook file, the directory it is listed in,
 * and every program its steps name must be owned by the trusted uid (root)
 * and not writable by group or others, and so must the directories above
 * each program (root's, or sticky like /tmp above a file that exists), or
 * someone could swap the program after the check. An untrusted hook stays
 * in the set, marked `refused`, so callers can show it and fail or skip
 * it; it never runs. Its After=/Before= are not used for ordering, so an
 * untrusted file can neither reorder trusted hooks nor make a cycle.
 *
 * Over 500 lines on purpose: reading a hook and judging its trust are one
 * pass over the same file descriptors and stat results (the checks run on
 * what was opened, not on a path that could change between check and read).
 */
import { createHash } from 'node:crypto';
import {
  closeSync, constants as C, fstatSync, lstatSync, openSync, promises as fsp, readSync, readlinkSync, statSync, type Dirent, type Stats,
} from 'node:fs';
import * as nodePath from 'node:path';
import { expandVariables } from '../model/command-line.js';
import { PreStageError } from '../model/errors.js';
import { environmentRecord, LIMITS, parseHookFile, type ParsedHookFile } from '../model/hook-file.js';
import { HOOK_FILE_SUFFIX, isValidHookName } from '../model/hook-name.js';
import { nullLogger, type Logger } from '../model/logger.js';
import { programInRoot, stepRoot } from './new-root.js';
import { orderHooks } from './plan.js';
import type { HookDefinition, HookOrigin, HookSet, Phase, ResolvedHook } from '../model/types.js';

/** Admin hooks; highest precedence. */
export const ETC_HOOK_DIR = '/etc/bootc/pre-stage.d';
/** Runtime hooks (lost at reboot). */
export const RUN_HOOK_DIR = '/run/bootc/pre-stage.d';
/** Hooks shipped by the image, inside the deployment. */
export const DEPLOYMENT_HOOK_DIR = '/usr/lib/bootc/pre-stage.d';

/** Files read at once while discovering; bounds open file descriptors. */
const READ_CONCURRENCY = 32;

interface HookDirectory {
  /** Absolute path on this host. */
  dir: string;
  origin: HookOrigin;
  /** The root the directory's own symlinks are resolved in. */
  root: string;
  /** `dir` relative to `root`. */
  relative: string;
}

/**
 * The hook directories, highest precedence first: `<root>/etc/...`,
 * `<root>/run/...`, then `<deployment>/usr/lib/...` when a deployment is
 * given. `deployment` is an absolute host path, not under `root`.
 */
export function hookDirectories(root: string, deployment: string | null): { dir: string; origin: HookOrigin }[] {
  return directories(root, deployment).map(({ dir, origin }) => ({ dir, origin }));
}

function directories(root: string, deployment: string | null): HookDirectory[] {
  const r = nodePath.resolve(root);
  const out: HookDirectory[] = [
    { dir: nodePath.join(r, ETC_HOOK_DIR), origin: 'etc', root: r, relative: ETC_HOOK_DIR },
    { dir: nodePath.join(r, RUN_HOOK_DIR), origin: 'run', root: r, relative: RUN_HOOK_DIR },
  ];
  if (deployment !== null && deployment !== '') {
    const d = nodePath.resolve(deployment);
    out.push({ dir: nodePath.join(d, DEPLOYMENT_HOOK_DIR), origin: 'deployment', root: d, relative: DEPLOYMENT_HOOK_DIR });
  }
  return out;
}

export interface DiscoverOptions {
  /** Where /etc and /run are (like `systemctl --root`); '/' normally. */
  root: string;
  /** Absolute path of the deployment whose hooks to add; null or '' for host hooks only. */
  deployment: string | null;
  /** Owner that hook files, their directories and programs must have; default 0. */
  trustedUid?: number;
  logger?: Logger;
}

/** One directory entry that may take part in the set. */
interface Candidate {
  name: string;
  /** `<dir>/<name>.hook` as listed: what messages and `source` show. */
  source: string;
  /** From the directory listing; null when the filesystem did not say. */
  isLink: boolean | null;
  dir: HookDirectory;
  dirStat: Stats;
}

type Entry =
  | { kind: 'hook'; cand: Candidate; bytes: Buffer; fileStat: Stats; filePath: string }
  | { kind: 'mask'; cand: Candidate; untrusted: string | null };

/**
 * Discover the effective hooks for `deployment` (see the module comment).
 * Throws PreStageError('InvalidHook') for a file that cannot be read or
 * parsed (naming file and line), a program that is not absolute after
 * expansion, a hook directory that is not a directory, and an ordering
 * cycle. When several files are bad, the first by name is reported.
 */
export async function discoverHooks(opts: DiscoverOptions): Promise<HookSet> {
  const trustedUid = opts.trustedUid ?? 0;
  const log = opts.logger ?? nullLogger;
  const deployment = opts.deployment ?? '';

  // Precedence: the first directory that has NAME.hook wins; lower ones are
  // only used when the winner is an untrusted mask (ignored, see below).
  const byName = new Map<string, Candidate[]>();
  for (const dir of directories(opts.root, opts.deployment)) {
    for (const cand of await listDirectory(dir, log)) {
      let l = byName.get(cand.name);
      if (!l) byName.set(cand.name, (l = []));
      l.push(cand);
    }
  }

  const names = [...byName.keys()].sort();
  const programStats = new Map<string, Stats | null>();
  const results = await mapLimit(names, READ_CONCURRENCY, async (name) => {
    try {
      return { ok: true as const, value: await resolveName(name, byName.get(name)!, trustedUid, deployment, programStats, log) };
    } catch (e) {
      return { ok: false as const, error: e };
    }
  });
  const failures = results.filter((r) => !r.ok);
  if (failures.length > 0) {
    const first = failures[0]!.error;
    if (first instanceof PreStageError && failures.length > 1) {
      throw new PreStageError(first.code, `${first.message} (and ${failures.length - 1} more bad hook files)`);
    }
    throw first;
  }

  const hooks: ResolvedHook[] = [];
  const masked: { name: string; source: string }[] = [];
  for (const r of results) {
    if (!r.ok) continue;
    if (r.value.hook) hooks.push(r.value.hook);
    if (r.value.masked) masked.push(r.value.masked);
  }

  const ordered = orderHooks(hooks.map((h) => ({
    name: h.name,
    source: h.source,
    after: h.refused === null ? h.definition.after : [],
    before: h.refused === null ? h.definition.before : [],
    hook: h,
  }))).map((o) => o.hook);

  return { hooks: ordered, masked, fingerprint: fingerprintOf(ordered, masked) };
}

/**
 * sha256 over the ordered (name, source, digest, trusted) list and the
 * masked (name, source) list; JSON keeps the encoding unambiguous.
 */
export function fingerprintOf(hooks: readonly ResolvedHook[], masked: readonly { name: string; source: string }[]): string {
  const data = JSON.stringify({
    v: 1,
    hooks: hooks.map((h) => [h.name, h.source, h.digest, h.refused === null]),
    masked: masked.map((m) => [m.name, m.source]),
  });
  return createHash('sha256').update(data).digest('hex');
}

async function listDirectory(dir: HookDirectory, log: Logger): Promise<Candidate[]> {
  let real: string;
  let dirStat: Stats;
  let entries: Dirent[];
  try {
    real = await resolveInRoot(dir.root, dir.relative);
    dirStat = await fsp.stat(real);
    if (!dirStat.isDirectory()) {
      throw new PreStageError('InvalidHook', `hook directory ${dir.dir} is not a directory`);
    }
    entries = await fsp.readdir(real, { withFileTypes: true });
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return [];
    if (errnoOf(e) === 'ENOTDIR') {
      throw new PreStageError('InvalidHook', `hook directory ${dir.dir} is not a directory`);
    }
    if (e instanceof PreStageError) throw e;
    throw new PreStageError('InvalidHook', `cannot read hook directory ${dir.dir}: ${(e as Error).message}`);
  }
  const out: Candidate[] = [];
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const ent of entries) {
    const file = ent.name;
    // Hidden files are editor backups and our own temporary files.
    if (file.startsWith('.')) continue;
    const name = file.endsWith(HOOK_FILE_SUFFIX) ? file.slice(0, -HOOK_FILE_SUFFIX.length) : null;
    if (name === null || !isValidHookName(name)) {
      log.warn(
        `ignoring ${nodePath.join(dir.dir, file)}: hook files are named NAME.hook, ` +
        'NAME being 1-64 of A-Z a-z 0-9 _ . @ - starting with a letter or digit',
        { path: nodePath.join(dir.dir, file) });
      continue;
    }
    const known = ent.isFile() || ent.isSymbolicLink() || ent.isDirectory() || ent.isFIFO()
      || ent.isCharacterDevice() || ent.isBlockDevice() || ent.isSocket();
    out.push({ name, source: nodePath.join(dir.dir, file), isLink: known ? ent.isSymbolicLink() : null, dir, dirStat });
  }
  return out;
}

/** The effective hook or mask for one name. */
async function resolveName(
  name: string, cands: Candidate[], trustedUid: number, deployment: string,
  programStats: Map<string, Stats | null>, log: Logger,
): Promise<{ hook?: ResolvedHook; masked?: { name: string; source: string } }> {
  const ignoredMasks: string[] = [];
  for (const cand of cands) {
    const entry = await readEntry(cand, trustedUid);
    if (entry.kind === 'mask') {
      if (entry.untrusted === null) return { masked: { name, source: cand.source } };
      // Honouring a mask anyone could have written would let them switch
      // off a hook such as a compatibility check; fall through instead.
      const msg = `ignoring mask ${cand.source} of hook '${name}': ${entry.untrusted}`;
      log.warn(msg, { hook: name });
      ignoredMasks.push(msg);
      continue;
    }
    const hook = await buildHook(entry, trustedUid, deployment, programStats, log);
    hook.warnings.unshift(...ignoredMasks);
    return { hook };
  }
  return {};
}

/**
 * Read one candidate. Synchronous I/O: a hook file is a small local file,
 * and the five thread-pool round trips per file (lstat, open, fstat, read,
 * close) cost the event loop more than the system calls themselves (about
 * a fifth of a millisecond per hook, on every StartPreStage).
 */
async function readEntry(cand: Candidate, trustedUid: number): Promise<Entry> {
  const rel = nodePath.posix.join(cand.dir.relative, `${cand.name}${HOOK_FILE_SUFFIX}`);
  const dirProblem = untrusted(cand.dirStat, trustedUid, `directory ${cand.dir.dir}`);
  let filePath = cand.source;
  let isLink = false;
  let fd: number;
  try {
    // Saves an lstat per file; a race with a replaced entry is caught by O_NOFOLLOW.
    isLink = cand.isLink ?? lstatSync(cand.source).isSymbolicLink();
    if (isLink && readlinkSync(cand.source) === '/dev/null') {
      // /dev/null is world-writable by nature: only the listing directory counts.
      return { kind: 'mask', cand, untrusted: dirProblem };
    }
    // A link in a deployment means a path in that deployment, not on this host.
    if (isLink) filePath = await resolveInRoot(cand.dir.root, rel);
    // O_NONBLOCK: a FIFO planted here must not hang discovery.
    fd = openSync(filePath, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (e) {
    throw new PreStageError('InvalidHook', `cannot read hook file ${cand.source}: ${describeErrno(e, isLink)}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isCharacterDevice() && (await isDevNull(st))) {
      return { kind: 'mask', cand, untrusted: dirProblem };
    }
    if (!st.isFile()) {
      throw new PreStageError('InvalidHook', `hook file ${cand.source} is not a regular file`);
    }
    if (st.size > LIMITS.fileBytes) {
      throw new PreStageError('InvalidHook', `${cand.source}: file is ${st.size} bytes; the limit is ${LIMITS.fileBytes}`);
    }
    const bytes = readAtMost(fd, st.size, LIMITS.fileBytes + 1);
    if (bytes.length > LIMITS.fileBytes) {
      throw new PreStageError('InvalidHook', `${cand.source}: file is more than ${LIMITS.fileBytes} bytes`);
    }
    if (bytes.length === 0) {
      const fileProblem = untrusted(st, trustedUid, `file ${filePath}`);
      return { kind: 'mask', cand, untrusted: dirProblem ?? fileProblem };
    }
    return { kind: 'hook', cand, bytes, fileStat: st, filePath };
  } catch (e) {
    if (e instanceof PreStageError) throw e;
    throw new PreStageError('InvalidHook', `cannot read hook file ${cand.source}: ${describeErrno(e, isLink)}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * Hook files as parsed, by path, with the digest of the bytes parsed: an
 * unchanged file is not parsed again on every StartPreStage and ListHooks
 * (a fifth of discovery's time for 200 hooks). Keyed by content, so a
 * changed file is always parsed anew; what is kept is frozen, since every
 * caller shares it. A file that fails to parse is not kept.
 */
const parsedFiles = new Map<string, { digest: string; parsed: ParsedHookFile }>();
const PARSED_FILES_MAX = 4096;

function parseCached(bytes: Buffer, source: string): { parsed: ParsedHookFile; digest: string } {
  const digest = createHash('sha256').update(bytes).digest('hex');
  const hit = parsedFiles.get(source);
  if (hit !== undefined && hit.digest === digest) return { parsed: hit.parsed, digest };
  const parsed = parseHookFile(bytes, source);
  deepFreeze(parsed);
  if (parsedFiles.size >= PARSED_FILES_MAX) parsedFiles.delete(parsedFiles.keys().next().value!);
  parsedFiles.set(source, { digest, parsed });
  return { parsed, digest };
}

function deepFreeze(v: unknown): void {
  if (typeof v !== 'object' || v === null || Object.isFrozen(v)) return;
  for (const x of Object.values(v)) deepFreeze(x);
  Object.freeze(v);
}

async function buildHook(
  entry: Extract<Entry, { kind: 'hook' }>, trustedUid: number, deployment: string,
  programStats: Map<string, Stats | null>, log: Logger,
): Promise<ResolvedHook> {
  const { cand } = entry;
  const { parsed: { definition, warnings, lines }, digest } = parseCached(entry.bytes, cand.source);

  const problems: string[] = [];
  const fileProblem = untrusted(entry.fileStat, trustedUid, `hook file ${entry.filePath}`);
  if (fileProblem) problems.push(fileProblem);
  const dirProblem = untrusted(cand.dirStat, trustedUid, `directory ${cand.dir.dir}`);
  if (dirProblem) problems.push(dirProblem);
  if (entry.filePath !== cand.source) {
    // Whoever can write the link target's directory can replace the target.
    const targetDir = nodePath.dirname(entry.filePath);
    const st = await fsp.stat(targetDir).catch(() => null);
    const problem = st && untrusted(st, trustedUid, `directory ${targetDir}`);
    if (problem) problems.push(problem);
  }
  const roots: Partial<Record<Phase, string>> = {};
  for (const { key, phase, program, root } of programsOf(cand.name, cand.source, definition, deployment, cand.dir.origin)) {
    roots[phase] = root ?? definition.rootDirectory!;
    if (root === null) continue;
    if (root !== '/') {
      // The root itself: InvalidHook, as a malformed value would be.
      const where = definition.rootDirectory !== undefined
        ? `${cand.source}:${lines.RootDirectory ?? 0}: RootDirectory=${definition.rootDirectory}`
        : `${cand.source}: the ${phase} step's root, the deployment`;
      const rp = rootDirectoryProblem(root, trustedUid);
      if (rp) throw new PreStageError('InvalidHook', `${where} (${root}) ${rp}`);
      const problem = programInRootProblem(program, root, trustedUid, `${key}= program`);
      if (problem) problems.push(problem);
      continue;
    }
    // A missing program is not refused here: the step fails when it runs.
    const st = cachedStat(programStats, program);
    const problem = st && untrusted(st, trustedUid, `${key}= program ${program}`);
    if (problem) problems.push(problem);
    const what = `${key}= program ${program}`;
    const pathProblem = untrustedAncestors(program, st !== null, trustedUid, what, programStats);
    if (pathProblem) problems.push(pathProblem);
  }
  const refused = problems.length > 0 ? `not trusted: ${[...new Set(problems)].join('; ')}` : null;
  for (const w of warnings) log.warn(w, { hook: cand.name });
  if (refused) log.warn(`refusing hook '${cand.name}' (${cand.source}): ${refused}`, { hook: cand.name });

  return {
    name: cand.name, definition, source: cand.source, origin: cand.dir.origin,
    digest, refused, warnings: [...warnings], roots,
  };
}

/**
 * The program of each step after expanding `${VAR}` as the runner will (the
 * hook's Environment= plus the BOOTC_PRESTAGE_* values known now; others
 * expand to ''). Throws InvalidHook naming `source` when one is not
 * absolute. The hook store calls it (deployment '') before writing a hook,
 * so a registered hook can never make discovery fail.
 */
export function programsOf(
  name: string, source: string, def: HookDefinition, deployment: string, origin: HookOrigin = 'etc',
): { key: string; phase: Phase; program: string; root: string | null }[] {
  const out: { key: string; phase: Phase; program: string; root: string | null }[] = [];
  const steps: [string, Phase, string[] | null][] = [
    ['Prepare', 'prepare', def.prepare], ['Commit', 'commit', def.commit], ['Abort', 'abort', def.abort],
  ];
  for (const [key, phase, argv] of steps) {
    if (argv === null) continue;
    const env = {
      ...environmentRecord(def.environment),
      BOOTC_PRESTAGE_DEPLOYMENT: deployment,
      BOOTC_PRESTAGE_HOOK: name,
      BOOTC_PRESTAGE_PHASE: phase,
    };
    const program = expandVariables(argv[0]!, env);
    if (!program.startsWith('/')) {
      throw new PreStageError('InvalidHook',
        `${source}: ${key}= program '${argv[0]}' expands to '${program}', which is not an absolute path`);
    }
    // A root that needs a deployment not given (ListHooks of host hooks) stays unchecked: null.
    const root = stepRoot(def.rootDirectory, origin === 'deployment', phase, env, expandVariables);
    // Unknown only while listing without a deployment, and only when it names the deployment.
    if (root === null && (deployment !== '' || !def.rootDirectory!.includes('${BOOTC_PRESTAGE_DEPLOYMENT}'))) {
      throw new PreStageError('InvalidHook',
        `${source}: RootDirectory=${def.rootDirectory} expands to '${expandVariables(def.rootDirectory!, env)}', which is not an absolute path`);
    }
    out.push({ key, phase, program: nodePath.normalize(program), root });
  }
  return out;
}

/**
 * Why `root` cannot be a step's root directory, or null: it must exist, be
 * a directory (links resolved on the host: the root is a host path), be
 * owned by the trusted uid (or root) and not be writable by group or
 * others, and so must every directory above it (ancestorProblem).
 */
export function rootDirectoryProblem(root: string, trustedUid: number): string | null {
  let st: Stats;
  try {
    st = statSync(root);
  } catch (e) {
    const code = errnoOf(e);
    return code === 'ENOENT' ? 'does not exist' : `cannot be used: ${code ?? (e as Error).message}`;
  }
  if (!st.isDirectory()) return 'is not a directory';
  const own = untrusted(st, st.uid === 0 ? 0 : trustedUid, 'it');
  if (own) return `is not trusted: ${own}`;
  const dirs = ancestorsOf(nodePath.resolve(root));
  const above = ancestorProblem(dirs, dirs.map(statOrNull), true, trustedUid, 'it');
  return above ? `is not trusted: ${above}` : null;
}

/**
 * Why the program a step names cannot run in `root`, or null: the path is
 * taken inside the root (new-root.ts programInRoot), its links are resolved
 * within the root, never on the host (resolveInRootSync), and the file and
 * every directory between it and the root must pass the trust checks of a
 * host program. A program missing from the root is refused: nothing else
 * could run in its place.
 */
export function programInRootProblem(program: string, root: string, trustedUid: number, what = 'program'): string | null {
  const inside = programInRoot(program, root);
  let resolved: string;
  try {
    resolved = resolveInRootSync(root, inside);
  } catch (e) {
    return `${what} ${inside} in ${root}: ${errnoOf(e) === 'ELOOP' ? 'too many levels of symbolic links' : (e as Error).message}`;
  }
  const label = `${what} ${inside} in ${root}`;
  const st = statOrNull(resolved);
  if (st === null) return `${label} does not exist`;
  if (!st.isFile()) return `${label} is not a regular file`;
  const own = untrusted(st, trustedUid, label);
  if (own) return own;
  // The directories from the file up to (not including) the root: the root
  // and its ancestors were checked by rootDirectoryProblem.
  const base = nodePath.resolve(root);
  const dirs: string[] = [];
  for (let d = nodePath.dirname(resolved); d.startsWith(`${base}/`); d = nodePath.dirname(d)) dirs.push(d);
  return ancestorProblem(dirs, dirs.map(statOrNull), true, trustedUid, label);
}

/** resolveInRoot, synchronously (also a step's trust check right before it runs). */
export function resolveInRootSync(root: string, rel: string): string {
  const split = (p: string) => p.split('/').filter((c) => c !== '' && c !== '.');
  let pending = split(rel);
  const done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '..') {
      done.pop();
      continue;
    }
    const p = nodePath.join(root, ...done, c);
    let st: Stats;
    try {
      st = lstatSync(p);
    } catch {
      return nodePath.join(root, ...done, c, ...pending);
    }
    if (!st.isSymbolicLink()) {
      done.push(c);
      continue;
    }
    if (++links > 40) {
      const err = new Error(`too many levels of symbolic links resolving ${rel} in ${root}`) as NodeJS.ErrnoException;
      err.code = 'ELOOP';
      throw err;
    }
    const target = readlinkSync(p);
    if (target.startsWith('/')) done.length = 0;
    pending = [...split(target), ...pending];
  }
  return nodePath.join(root, ...done);
}

/** The directories above `file`, nearest first, through '/'. */
function ancestorsOf(file: string): string[] {
  const dirs: string[] = [];
  let dir = file;
  do {
    dir = nodePath.dirname(dir);
    dirs.push(dir);
  } while (dir !== '/');
  return dirs;
}

/**
 * Why the directories above a file would let someone other than the
 * trusted uid replace it (or create it, when it does not exist yet) after
 * this check and before the step runs, or null. Every existing ancestor
 * must be owned by root or the trusted uid and not writable by group or
 * others, as sshd's StrictModes requires of the path to authorized_keys; a
 * sticky directory (like /tmp) is accepted above an entry that exists,
 * since only that entry's owner may rename or remove it. `dirs` are the
 * ancestors nearest first (ancestorsOf), `stats[i]` the stat of dirs[i]
 * (null: missing), `exists` whether the file itself exists.
 */
function ancestorProblem(
  dirs: string[], stats: (Stats | null)[], exists: boolean, trustedUid: number, what: string,
): string | null {
  let childExists = exists;
  for (let i = 0; i < dirs.length; i++) {
    const st = stats[i]!;
    if (st === null) {
      childExists = false;
      continue;
    }
    // Directories owned by root are fine whoever the trusted uid is.
    const problem = untrusted(st, st.uid === 0 ? 0 : trustedUid, `directory ${dirs[i]}`);
    const stickyAboveExisting = (st.mode & 0o1000) !== 0 && childExists;
    if (problem && !(stickyAboveExisting && (st.uid === 0 || st.uid === trustedUid))) return `${what}: ${problem}`;
    childExists = true;
  }
  return null;
}

/** ancestorProblem for discovery, the stats shared through `stats` between a scan's programs. */
function untrustedAncestors(
  file: string, exists: boolean, trustedUid: number, what: string, stats: Map<string, Stats | null>,
): string | null {
  const dirs = ancestorsOf(file);
  return ancestorProblem(dirs, dirs.map((dir) => cachedStat(stats, dir)), exists, trustedUid, what);
}

/**
 * stat(2) of `file` once per scan (null if it cannot be), synchronously:
 * through the thread pool each cost two thread wake-ups, about 40 µs of a
 * 200-hook scan's 90 µs per hook here (docs/platform-notes.md, "What a
 * step's system calls cost here").
 */
function cachedStat(stats: Map<string, Stats | null>, file: string): Stats | null {
  let st = stats.get(file);
  if (st === undefined) {
    st = statOrNull(file);
    stats.set(file, st);
  }
  return st;
}

function statOrNull(file: string): Stats | null {
  try {
    return statSync(file);
  } catch {
    return null;
  }
}

/**
 * Why `program` may not run now, or null: discovery's checks of the
 * program (owner, mode, the directories above it), made again right before
 * a step runs, since a commit or abort may come long after the prepare
 * whose discovery checked. Synchronous: a handful of stat(2) calls on the
 * path the step is about to exec cost less than as many trips through the
 * thread pool (a tenth of the daemon's CPU time per trivial step when they
 * were async).
 */
export function programTrustProblem(program: string, trustedUid: number): string | null {
  const file = nodePath.normalize(program);
  const what = `program ${file}`;
  const st = statOrNull(file);
  const problem = st && untrusted(st, trustedUid, what);
  if (problem) return problem;
  const dirs = ancestorsOf(file);
  return ancestorProblem(dirs, dirs.map(statOrNull), st !== null, trustedUid, what);
}

/** Why `st` is not trusted, or null. */
function untrusted(st: Stats, trustedUid: number, what: string): string | null {
  if (st.uid !== trustedUid) return `${what} is owned by uid ${st.uid}, not ${trustedUid}`;
  const w = st.mode & 0o022;
  if (w !== 0) {
    const by = w === 0o022 ? 'group and others' : w === 0o020 ? 'group' : 'others';
    return `${what} is writable by ${by} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  }
  return null;
}

let devNullRdev: Promise<number | null> | null = null;
async function isDevNull(st: Stats): Promise<boolean> {
  devNullRdev ??= fsp.stat('/dev/null').then((s) => s.rdev, () => null);
  return st.rdev === (await devNullRdev);
}

/**
 * Resolve `rel` (an absolute path inside `root`) following symlinks as if
 * `root` were `/` (like openat2's RESOLVE_IN_ROOT): absolute link targets
 * and `..` never leave `root`. A missing component ends resolution early;
 * opening the result then fails with ENOENT.
 */
export async function resolveInRoot(root: string, rel: string): Promise<string> {
  // One resolver for both callers: a component costs one lstat (a link one
  // readlink more), local calls not worth a thread-pool round trip each.
  return resolveInRootSync(root, rel);
}

/**
 * Read to EOF, but at most `max` bytes. `sizeHint` (from fstat) sizes the
 * buffer; a file that grows meanwhile is still read, up to `max`.
 */
function readAtMost(fd: number, sizeHint: number, max: number): Buffer {
  let buf = Buffer.allocUnsafe(Math.min(Math.max(sizeHint + 1, 256), max));
  let n = 0;
  for (;;) {
    if (n === buf.length) {
      if (n >= max) break;
      const bigger = Buffer.allocUnsafe(Math.min(buf.length * 2, max));
      buf.copy(bigger, 0, 0, n);
      buf = bigger;
    }
    const want = buf.length - n;
    const bytesRead = readSync(fd, buf, n, want, null);
    n += bytesRead;
    // A short read of a regular file is its end; saves a read per file.
    if (bytesRead < want) break;
  }
  return buf.subarray(0, n);
}

/** Run `f` over `items` with at most `limit` at once; results in input order. */
async function mapLimit<X, Y>(items: readonly X[], limit: number, f: (x: X) => Promise<Y>): Promise<Y[]> {
  const out = new Array<Y>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

function describeErrno(e: unknown, isLink: boolean): string {
  const code = errnoOf(e);
  if (code === 'ENOENT') return isLink ? 'it is a symbolic link to a missing file' : 'it disappeared while being read';
  if (code === 'ELOOP') return 'too many levels of symbolic links';
  return e instanceof Error ? e.message : String(e);
}
