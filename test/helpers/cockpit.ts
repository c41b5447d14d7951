/**
 * Cockpit for tests: the real cockpit-ws serving the built page folder
 * (dist/cockpit/bootc-prestage, what the package installs as
 * /usr/share/cockpit/bootc-prestage; `npm run build` makes it) without a login, its bridge on
 * the test's private bus, and headless Debian Chromium driven by
 * playwright-core to look at it. Nothing is installed into /usr/share and
 * nothing leaves localhost.
 *
 * How the page is found: cockpit-ws --local-session spawns cockpit-bridge
 * with cockpit-ws's own environment, and the bridge reads packages from
 * $XDG_DATA_HOME/cockpit/<name>/ (and $XDG_DATA_DIRS/cockpit/, for base1's
 * cockpit.js). The helper points XDG_DATA_HOME at a temporary directory
 * holding a link to the built folder, so the page under test is the files
 * the package installs, and DBUS_SYSTEM_BUS_ADDRESS at the test bus.
 *
 * Invariant: every process started here (cockpit-ws, its bridges, Chromium
 * and its helpers) is gone after the teardown, found by a marker in its
 * environment, and dies with the test worker if teardown never runs
 * (setpriv --pdeathsig, as processes.ts does).
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import {
  exitedWithin, killPids, lineCollector, processesMentioning, spawnTied, terminate,
} from './processes.js';
import { makeTmpDir, removeDir, REPO_ROOT, tmpDir } from './tmp.js';

/**
 * The page folder as the package installs it (/usr/share/cockpit/bootc-prestage),
 * built from packaging/cockpit/bootc-prestage by `npm run build`
 * (packaging/cockpit/build-page.mjs).
 */
export const COCKPIT_PAGE_DIR = path.join(REPO_ROOT, 'dist', 'cockpit', 'bootc-prestage');
/** The Cockpit package name: the folder's name. */
export const COCKPIT_PACKAGE = 'bootc-prestage';
/** Debian's Chromium launcher (it execs /usr/lib/chromium/chromium). */
export const CHROMIUM = '/usr/bin/chromium';
/** Where distributions put cockpit-ws: Debian, then Fedora. */
const COCKPIT_WS_PATHS = ['/usr/lib/cockpit/cockpit-ws', '/usr/libexec/cockpit-ws'];
const COCKPIT_BRIDGE_PATHS = ['/usr/bin/cockpit-bridge'];
/**
 * Flags for a quiet, local-only browser: no GPU, no background
 * downloads, updates, sync or first-run pages. playwright-core adds the
 * profile (--user-data-dir) and --no-sandbox (we run as root) itself.
 */
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
  '--disable-default-apps', '--disable-domain-reliability', '--no-pings',
];

/** The installed cockpit-ws, or null. */
export function findCockpitWs(): string | null {
  return COCKPIT_WS_PATHS.find((p) => existsSync(p)) ?? null;
}

/**
 * Why the Cockpit tests cannot run here (a missing system package), or
 * null when they can. .ci/run installs cockpit-ws, cockpit-bridge and
 * chromium, so in CI this is null.
 */
export function cockpitTestsUnavailable(): string | null {
  const missing: string[] = [];
  if (!findCockpitWs()) missing.push(`cockpit-ws (${COCKPIT_WS_PATHS.join(' or ')}; Debian package cockpit-ws)`);
  if (!COCKPIT_BRIDGE_PATHS.some((p) => existsSync(p))) missing.push('cockpit-bridge (Debian package cockpit-bridge)');
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (Debian package chromium)`);
  return missing.length > 0 ? `not installed: ${missing.join(', ')}` : null;
}

/** A port on 127.0.0.1 that was free a moment ago. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** GET a URL on localhost; resolves with the status, or null when nothing answers. */
function httpStatus(url: string, timeoutMs = 2000): Promise<number | null> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? null);
    });
    req.on('timeout', () => { req.destroy(); resolve(null); });
    req.on('error', () => resolve(null));
  });
}

export interface StartCockpitOptions {
  /** The test bus (unix:path=...): the bridge's system bus. */
  busAddress: string;
  /**
   * Run cockpit-ws (and so the bridge: a local session runs as
   * cockpit-ws's user) as this uid/gid, e.g. 65534 for a viewer without
   * administrative access. Default: the test's own (root).
   */
  uid?: number;
  gid?: number;
  /** How long to wait for the page to be served (default 20 s). */
  timeoutMs?: number;
}

export interface TestCockpit {
  /** http://127.0.0.1:PORT */
  origin: string;
  port: number;
  /** URL of a file of the page, as the Cockpit shell would frame it. */
  pageUrl(file?: string): string;
  process: ChildProcess;
  /** cockpit-ws's stdout and stderr lines. */
  logs(): string[];
  /** Stop cockpit-ws and every bridge it started (the teardown does this too). */
  stop(): Promise<void>;
}

/**
 * Start cockpit-ws on a free localhost port, serving the repository's page
 * to anyone who connects (a local session: no login), with the bridge on
 * `busAddress` as its system bus. Resolves once the page's manifest is
 * served through a bridge, which proves the package was found. Stopped in
 * the test's teardown.
 */
export async function startCockpit(t: ExecutionContext<unknown>, opts: StartCockpitOptions): Promise<TestCockpit> {
  const ws = findCockpitWs();
  if (!ws) throw new Error(cockpitTestsUnavailable() ?? 'cockpit-ws not found');
  if (!existsSync(path.join(COCKPIT_PAGE_DIR, 'bootc-prestage.js'))) {
    throw new Error(`${COCKPIT_PAGE_DIR} has no built page: run \`npm run build\` first`);
  }
  // 0755 and everything in it world-readable: a bridge running as 65534
  // must read the package links and have a HOME.
  const dir = await tmpDir(t, { prefix: 'cockpit-', mode: 0o755 });
  const dataHome = path.join(dir, 'data');
  const home = path.join(dir, 'home');
  const configDir = path.join(dir, 'config');
  await fsp.mkdir(path.join(dataHome, 'cockpit'), { recursive: true, mode: 0o755 });
  await fsp.mkdir(configDir, { mode: 0o755 });
  await fsp.mkdir(home, { mode: 0o755 });
  if (opts.uid !== undefined) await fsp.chown(home, opts.uid, opts.gid ?? opts.uid);
  await fsp.symlink(COCKPIT_PAGE_DIR, path.join(dataHome, 'cockpit', COCKPIT_PACKAGE));

  // A clean environment: only what cockpit-ws and the bridge need, so no
  // session bus, display or user configuration of the machine leaks in.
  // DIR in it marks every process for the teardown's sweep.
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    LANG: 'C.UTF-8',
    HOME: home,
    XDG_DATA_HOME: dataHome,
    XDG_DATA_DIRS: '/usr/local/share:/usr/share',
    // No /etc/cockpit/cockpit.conf of the machine (origins, banners, ...).
    XDG_CONFIG_DIRS: configDir,
    DBUS_SYSTEM_BUS_ADDRESS: opts.busAddress,
    // The bridge would otherwise look for a user session bus.
    DBUS_SESSION_BUS_ADDRESS: opts.busAddress,
    BOOTC_PRESTAGE_TEST_COCKPIT: dir,
  };

  let stopped = false;
  let current: { child: ChildProcess; lines: { out: string[]; err: string[] } } | null = null;
  const sweep = async () => {
    await killPids((await processesMentioning(dir)).map((p) => p.pid));
  };
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (current) await terminate(current.child, { signal: 'SIGTERM', graceMs: 5000 });
    // The bridges get EOF when cockpit-ws goes; any that lingers is killed.
    await sweep();
  };
  t.teardown(stop);

  const timeoutMs = opts.timeoutMs ?? 20_000;
  const deadline = Date.now() + timeoutMs;
  // The free port can be taken between the probe and cockpit-ws's bind:
  // then cockpit-ws exits at once, and another port is tried.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const origin = `http://127.0.0.1:${port}`;
    const child = spawnTied(ws, ['--local-session=cockpit-bridge', '--no-tls', '-a', '127.0.0.1', '-p', String(port)], {
      env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'],
      ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.gid ?? opts.uid } : {}),
    });
    const out = lineCollector(child.stdout);
    const err = lineCollector(child.stderr);
    current = { child, lines: { out: out.lines, err: err.lines } };
    const describe = () => `cockpit-ws on ${origin}\n--- stdout ---\n${out.lines.join('\n')}\n--- stderr ---\n${err.lines.join('\n')}`;
    const manifest = `${origin}/cockpit/@localhost/${COCKPIT_PACKAGE}/manifest.json`;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      const status = await httpStatus(manifest);
      if (status === 200) {
        return {
          origin,
          port,
          pageUrl: (file = 'index.html') => `${origin}/cockpit/@localhost/${COCKPIT_PACKAGE}/${file}`,
          process: child,
          logs: () => [...out.lines, ...err.lines],
          stop,
        };
      }
      if (status !== null && status !== 404 && status !== 503) {
        throw new Error(`GET ${manifest} answered ${status}\n${describe()}`);
      }
      if (Date.now() > deadline) throw new Error(`cockpit-ws did not serve ${manifest} within ${timeoutMs} ms\n${describe()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await exitedWithin(child, 1000);
    if (attempt >= 3 || Date.now() > deadline) {
      throw new Error(`cockpit-ws exited (${child.exitCode ?? child.signalCode}) before serving the page\n${describe()}`);
    }
  }
}

export interface TestBrowser {
  context: BrowserContext;
  /** Close the browser and kill anything of it left; idempotent. */
  close(): Promise<void>;
}

/**
 * Launch headless Debian Chromium with a fresh profile (removed on close).
 * Starting Chromium costs seconds on a loaded machine, so a test file
 * shares one and gives each test its own page (`openPage`); each test's
 * cockpit-ws has its own port, hence its own origin and storage. The caller
 * closes it (`test.after.always`); if the worker dies first, Chromium dies
 * with it.
 */
export async function launchBrowser(): Promise<TestBrowser> {
  const dir = await makeTmpDir({ prefix: 'chromium-' });
  const profile = path.join(dir, 'profile');
  // A launcher that ties Chromium to this worker (pdeathsig survives the
  // exec chain: setpriv -> /usr/bin/chromium (sh) -> /usr/lib/chromium/chromium).
  const launcher = path.join(dir, 'chromium');
  await fsp.writeFile(launcher, `#!/bin/sh\nexec setpriv --pdeathsig SIGKILL -- ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  await fsp.chmod(launcher, 0o755);

  let context: BrowserContext | null = null;
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      if (context) {
        await Promise.race([
          context.close().catch(() => undefined),
          new Promise((r) => setTimeout(r, 10_000)),
        ]);
      }
      // Chromium's zygote, renderers and utilities carry DIR in their
      // environment: whatever close() left is killed here.
      await killPids((await processesMentioning(dir)).map((p) => p.pid));
      await removeDir(dir);
    })();
    return closing;
  };
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: launcher,
      headless: true,
      args: CHROMIUM_FLAGS,
      env: {
        PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: dir,
        LANG: 'C.UTF-8',
        BOOTC_PRESTAGE_TEST_BROWSER: dir,
      },
      viewport: { width: 1280, height: 1000 },
      locale: 'en-US',
      timezoneId: 'UTC',
      timeout: 60_000,
    });
    // Tests run through tsx, whose esbuild keeps function names by wrapping
    // them in __name(...); functions passed to page.evaluate carry those
    // calls into the page, where __name does not exist. The page itself
    // never uses the name.
    await context.addInitScript('globalThis.__name = globalThis.__name || ((fn) => fn);');
  } catch (e) {
    await close();
    throw e;
  }
  return { context, close };
}

export interface TestPage {
  page: Page;
  /** Uncaught exceptions in the page, and console errors (CSP violations among them). */
  errors: string[];
  /** Requests the page tried to send anywhere but 127.0.0.1 (all refused). */
  blockedRequests: string[];
}

/**
 * A new page in `browser`, every request to anywhere but 127.0.0.1 refused
 * and recorded, errors recorded. Closed in the test's teardown.
 */
export async function openPage(t: ExecutionContext<unknown>, browser: TestBrowser): Promise<TestPage> {
  const page = await browser.context.newPage();
  t.teardown(() => page.close().catch(() => undefined));
  const errors: string[] = [];
  const blockedRequests: string[] = [];
  await page.route('**/*', async (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === '127.0.0.1') {
      await route.continue();
    } else {
      blockedRequests.push(url.href);
      await route.abort('blockedbyclient');
    }
  });
  page.on('pageerror', (e) => errors.push(`uncaught: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(20_000);
  return { page, errors, blockedRequests };
}

/** Where screenshots are kept when asked for with BOOTC_PRESTAGE_TEST_SCREENSHOTS=1 (git ignores the PNGs). */
export const SCREENSHOTS_DIR = path.join(REPO_ROOT, 'test', 'integration', 'screenshots');

/**
 * Where a test writes its screenshots: with BOOTC_PRESTAGE_TEST_SCREENSHOTS=1,
 * test/integration/screenshots; with =DIR, DIR (kept, for a person to look
 * at; paths are logged); unset, a temporary directory removed in teardown.
 */
export async function screenshotDir(t: ExecutionContext<unknown>): Promise<string> {
  const keep = process.env['BOOTC_PRESTAGE_TEST_SCREENSHOTS'];
  if (keep) {
    const dir = keep === '1' ? SCREENSHOTS_DIR : path.resolve(keep);
    await fsp.mkdir(dir, { recursive: true });
    return dir;
  }
  return tmpDir(t, { prefix: 'screenshots-' });
}
