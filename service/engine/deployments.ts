/**
 * The sysroot: where deployments live, which paths are deployments, and which
 * one is booted. Mirrors libostree's rules:
 *   <sysroot>/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>
 * and the booted deployment is the one whose device and inode equal those of
 * the booted root ("/", or --booted-root in tests).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { invalidDeployment } from '../model/errors.js';

export const MAX_PATH_LENGTH = 4096;
const DEPLOY_NAME_RE = /^([0-9a-f]{64})\.(\d{1,9})$/;
const STATEROOT_RE = /^[A-Za-z0-9_.-]{1,255}$/;

/** A validated deployment. `path` is canonical (all links resolved). */
export interface Deployment {
  path: string;
  stateroot: string;
  checksum: string;
  serial: number;
  /** Stable, filesystem-safe key: `<stateroot>-<checksum>.<serial>`. */
  key: string;
  exists: boolean;
}

export class Sysroot {
  readonly path: string;
  readonly bootedRoot: string;

  constructor(sysrootPath: string, bootedRoot: string) {
    this.path = path.resolve(sysrootPath);
    this.bootedRoot = path.resolve(bootedRoot);
  }

  /** `<sysroot>/ostree/deploy` resolved through links (or lexically if absent). */
  private async deployBase(): Promise<string> {
    const base = path.join(this.path, 'ostree', 'deploy');
    try {
      return await fsp.realpath(base);
    } catch {
      return base;
    }
  }

  /**
   * Validate a deployment path from a caller. With `mustExist` (start,
   * commit, list hooks) it must be an existing directory; without it (abort
   * of a discarded deployment) it must only be shaped like one, inside the
   * sysroot. Every failure is InvalidDeployment with a message naming why.
   */
  async resolve(input: string, opts: { mustExist: boolean }): Promise<Deployment> {
    if (typeof input !== 'string' || input.length === 0) {
      throw invalidDeployment('the deployment path is empty');
    }
    if (input.length > MAX_PATH_LENGTH) {
      throw invalidDeployment(`the deployment path is longer than ${MAX_PATH_LENGTH} bytes`);
    }
    if (input.includes('\0')) {
      throw invalidDeployment('the deployment path contains a NUL byte');
    }
    if (!path.isAbsolute(input)) {
      throw invalidDeployment(`'${input}' is not an absolute path`);
    }
    const base = await this.deployBase();
    let real: string;
    let exists = true;
    try {
      real = await fsp.realpath(input);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw invalidDeployment(`'${input}': too many levels of symbolic links`);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') {
        throw invalidDeployment(`'${input}' cannot be resolved: ${(e as Error).message}`);
      }
      if (opts.mustExist) throw invalidDeployment(`'${input}' does not exist`);
      exists = false;
      // A discarded deployment: resolve what still exists of its parent.
      const parent = path.dirname(path.resolve(input));
      let realParent: string;
      try {
        realParent = await fsp.realpath(parent);
      } catch {
        realParent = parent;
      }
      real = path.join(realParent, path.basename(input));
    }
    const rel = path.relative(base, real);
    const parts = rel.split(path.sep);
    if (rel.startsWith('..') || path.isAbsolute(rel) || parts.length !== 3 || parts[1] !== 'deploy') {
      throw invalidDeployment(
        `'${input}' is not a deployment of sysroot ${this.path} ` +
        `(expected ${path.join(this.path, 'ostree/deploy/<stateroot>/deploy/<checksum>.<serial>')})`);
    }
    const [stateroot, , name] = parts as [string, string, string];
    const m = DEPLOY_NAME_RE.exec(name);
    if (!STATEROOT_RE.test(stateroot) || !m) {
      throw invalidDeployment(`'${input}' is not named like a deployment (<checksum>.<serial>)`);
    }
    if (exists) {
      const st = await fsp.stat(real);
      if (!st.isDirectory()) throw invalidDeployment(`'${input}' is not a directory`);
    }
    return {
      path: real, stateroot, checksum: m[1]!, serial: Number(m[2]),
      key: `${stateroot}-${name}`, exists,
    };
  }

  /** Every existing deployment directory, canonical paths. */
  async list(): Promise<string[]> {
    const base = await this.deployBase();
    const out: string[] = [];
    let roots: string[];
    try {
      roots = await fsp.readdir(base);
    } catch {
      return out;
    }
    for (const sr of roots) {
      const dir = path.join(base, sr, 'deploy');
      let names: string[];
      try {
        names = await fsp.readdir(dir);
      } catch {
        continue;
      }
      for (const n of names) {
        if (!DEPLOY_NAME_RE.test(n)) continue;
        try {
          if ((await fsp.stat(path.join(dir, n))).isDirectory()) out.push(path.join(dir, n));
        } catch { /* vanished */ }
      }
    }
    return out.sort();
  }

  /** The booted deployment (device and inode equal to the booted root's), or null. */
  async booted(): Promise<string | null> {
    let root;
    try {
      root = await fsp.stat(this.bootedRoot);
    } catch {
      return null;
    }
    for (const d of await this.list()) {
      try {
        const st = await fsp.stat(d);
        if (st.dev === root.dev && st.ino === root.ino) return d;
      } catch { /* vanished */ }
    }
    return null;
  }

  async exists(deploymentPath: string): Promise<boolean> {
    try {
      return (await fsp.stat(deploymentPath)).isDirectory();
    } catch {
      return false;
    }
  }
}
