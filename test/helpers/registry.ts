/**
 * A real container registry for tests: Debian's `docker-registry` (the CNCF
 * distribution registry) serving plain HTTP on 127.0.0.1 at a free port,
 * with its storage in a temporary directory, and images built offline with
 * `podman build` FROM scratch (per-call podman storage, vfs: no mounts) and
 * pushed with skopeo.
 *
 * The registry's access log (one line per request, Apache combined format,
 * on its stdout) is parsed, so a test can count the requests and bytes the
 * registry served: `requests(since)` after a `mark()`.
 *
 * Only the process this helper started is ever stopped (by its pid).
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { spawnTied, terminate } from './processes.js';
import { makeTmpDir, removeDir } from './tmp.js';

const exec = promisify(execFile);

/** One request the registry answered, from its access log. */
export interface RegistryRequest {
  method: string;
  /** The request path, e.g. /v2/app/blobs/sha256:... */
  path: string;
  status: number;
  /** Response body bytes. */
  bytes: number;
}

/** What an image pushed to the registry is made of. */
export interface PushedImage {
  /** The reference to bind: 127.0.0.1:PORT/REPO:TAG */
  ref: string;
  /** sha256 digest of the manifest the registry serves. */
  digest: string;
  /** Digests of the config and layer blobs. */
  blobs: string[];
  /** Bytes of those blobs, as the manifest states them. */
  blobBytes: number;
  /** Bytes of the manifest. */
  manifestBytes: number;
}

export interface Registry {
  /** 127.0.0.1:PORT */
  host: string;
  /** Index into the request list, for `requests(since)`. */
  mark(): number;
  /** Requests answered since `since` (default: all), in log order. */
  requests(since?: number): RegistryRequest[];
  /**
   * Build an image FROM scratch holding /name (the reference) and, when
   * sizeKiB > 0, /data of that many random KiB, and push it as REPO:TAG.
   */
  build(repoTag: string, opts?: { sizeKiB?: number }): Promise<PushedImage>;
  /** The access log and error lines, for assertion messages. */
  log(): string;
  stop(): Promise<void>;
}

async function run(cmd: string, args: string[]): Promise<string> {
  try {
    return (await exec(cmd, args, { maxBuffer: 64 * 1024 * 1024 })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${err.stderr ?? ''}`);
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function ping(host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(`http://${host}/v2/`, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(2000, () => { req.destroy(); resolve(false); });
  });
}

// 127.0.0.1 - - [01/Dec/2026:22:08:46 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo/1.9.3"
const ACCESS = /^\S+ \S+ \S+ \[[^\]]*\] "(\w+) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-)/;

/** Start a registry; it stops when `stop()` is called (or the test worker dies). */
export async function startRegistry(): Promise<Registry> {
  const dir = await makeTmpDir({ prefix: 'registry-' });
  const lines: string[] = [];
  let child: ChildProcess | undefined;
  let host = '';
  for (let attempt = 0; attempt < 5 && !child; attempt += 1) {
    const port = await freePort();
    host = `127.0.0.1:${port}`;
    const config = path.join(dir, 'config.yml');
    await fsp.writeFile(config, [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: false',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${path.join(dir, 'data')}`,
      'http:',
      `  addr: ${host}`,
      '',
    ].join('\n'));
    const c = spawnTied('docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    const onData = (chunk: Buffer) => {
      const parts = (partial + chunk.toString('utf8')).split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts);
    };
    c.stdout!.on('data', onData);
    c.stderr!.on('data', onData);
    const deadline = Date.now() + 20_000;
    let up = false;
    while (Date.now() < deadline && c.exitCode === null) {
      if (await ping(host)) { up = true; break; }
      await new Promise((r) => setTimeout(r, 100));
    }
    if (up) child = c;
    else await terminate(c, { graceMs: 1000 });
  }
  if (!child) {
    await removeDir(dir);
    throw new Error(`docker-registry did not start:\n${lines.join('\n')}`);
  }
  const started = child;
  let built = 0;

  const requests = (since = 0): RegistryRequest[] => lines.slice(since).flatMap((l) => {
    const m = ACCESS.exec(l);
    return m ? [{ method: m[1]!, path: m[2]!, status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) }] : [];
  });

  return {
    host,
    mark: () => lines.length,
    requests,
    log: () => lines.join('\n'),
    async build(repoTag, opts = {}) {
      built += 1;
      const work = path.join(dir, `build-${built}`);
      const ctx = path.join(work, 'context');
      await fsp.mkdir(ctx, { recursive: true });
      const ref = `${host}/${repoTag}`;
      await fsp.writeFile(path.join(ctx, 'name'), `${ref}\n`);
      const files = ['name'];
      if ((opts.sizeKiB ?? 0) > 0) {
        const { randomBytes } = await import('node:crypto');
        await fsp.writeFile(path.join(ctx, 'data'), randomBytes((opts.sizeKiB ?? 0) * 1024));
        files.push('data');
      }
      await fsp.writeFile(path.join(ctx, 'Containerfile'), `FROM scratch\n${files.map((f) => `COPY ${f} /${f}\n`).join('')}`);
      const storage = ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'run'), '--storage-driver', 'vfs'];
      await run('podman', [...storage, 'build', '-q', '--network', 'none', '-t', `localhost/build:${built}`, ctx]);
      await run('skopeo', ['copy', '-q', '--dest-tls-verify=false',
        `containers-storage:[vfs@${path.join(work, 'root')}+${path.join(work, 'run')}]localhost/build:${built}`, `docker://${ref}`]);
      await removeDir(work);
      const manifest = (await exec('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { encoding: 'buffer' })).stdout;
      const parsed = JSON.parse(manifest.toString('utf8')) as { config: { digest: string; size: number }; layers: { digest: string; size: number }[] };
      const parts = [parsed.config, ...parsed.layers];
      return {
        ref,
        digest: `sha256:${createHash('sha256').update(manifest).digest('hex')}`,
        blobs: parts.map((p) => p.digest),
        blobBytes: parts.reduce((s, p) => s + p.size, 0),
        manifestBytes: manifest.length,
      };
    },
    async stop() {
      await terminate(started, { graceMs: 3000 });
      await removeDir(dir);
    },
  };
}
