/**
 * The Cockpit page (built from packaging/cockpit/bootc-prestage into
 * dist/cockpit/bootc-prestage, the folder the package installs) in a real
 * browser: cockpit-ws and cockpit-bridge on the test's private bus (shipped
 * policy), the real daemon with a real ostree sysroot, headless Chromium
 * through playwright-core. The page must show a prepare phase live
 * (progress, status text, output lines), the final state, a failure with
 * its error, work read-only for a viewer who is not root, say when the
 * service is missing, follow Cockpit's light and dark themes, be listed in
 * Cockpit's navigation, and keep up with a transaction of 200 hooks.
 *
 * Skipped only when cockpit-ws, cockpit-bridge or chromium is not
 * installed (.ci/run installs them).
 *
 * BOOTC_PRESTAGE_TEST_SCREENSHOTS=1 keeps the screenshots in
 * test/integration/screenshots (=DIR: in DIR).
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Page } from 'playwright-core';
import {
  cockpitTestsUnavailable, launchBrowser, openPage, screenshotDir, startCockpit,
  type TestBrowser, type TestPage,
} from '../helpers/cockpit.js';
import { deploymentsOf, withDaemon, type DaemonContext } from '../helpers/daemon.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, unwrapVariants } from '../helpers/dbus-client.js';
import { hookFile } from './cli-harness.js';

const NOBODY = 65534;

/**
 * A prepare step that reports slowly (five steps, 0.3 s apart), then waits
 * for a gate file so the test can look at a running transaction for as
 * long as it needs, then finishes.
 */
function gatedHook(gate: string): string {
  return hookFile({
    prepare: [
      'for p in 10 20 30 40 50; do',
      '  echo PROGRESS=$p >&3; echo "STATUS=copying part $p of 100" >&3; echo "slow line $p"; sleep 0.3',
      'done',
      'echo "STATUS=waiting for the gate" >&3',
      `while [ ! -e ${gate} ]; do sleep 0.05; done`,
      'echo PROGRESS=100 >&3; echo "STATUS=all parts copied" >&3; echo "slow done"',
    ].join('\n'),
    abort: 'echo slow abort ran',
  });
}

const AFTER_HOOK = hookFile({ prepare: 'echo "after ran"; echo STATUS=quick >&3', after: 'slow' });

async function startPrepare(ctx: DaemonContext, deployment: string): Promise<string> {
  const [tx] = await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', [deployment, {}]);
  return String(tx);
}

interface HookRow { name: string; result: string; percent: number; status: string; }

interface PageView {
  title: string;
  state: string | null;
  phase: string;
  currentHook: string;
  progress: number;
  progressText: string;
  hooks: HookRow[];
  log: string[];
  errorShown: boolean;
  errorName: string;
  errorMessage: string;
  problem: string;
  daemon: string | null;
  history: { path: string; state: string; error: string; cells: string[] }[];
}

/*
 * The functions given to page.evaluate run in the page. The tests are
 * type-checked as Node code, without the DOM library, so these functions
 * see the page through the few structural types below (types only: nothing
 * outside a function's own body reaches the page).
 */
interface DomNode {
  textContent: string | null;
  hidden?: boolean;
  getAttribute(name: string): string | null;
  removeAttribute(name: string): void;
  click(): void;
  querySelector(selector: string): DomNode | null;
  querySelectorAll(selector: string): Iterable<DomNode> & ArrayLike<DomNode>;
}
interface PageGlobals {
  document: DomNode & { body: DomNode };
  MutationObserver: new (cb: () => void) => { observe(node: DomNode, options: Record<string, boolean>): void };
  seenProgress: number[];
  seenStatus: string[];
}

/** What the page shows, read from its DOM. */
async function view(page: Page): Promise<PageView> {
  return page.evaluate(() => {
    const { document } = globalThis as unknown as PageGlobals;
    const q = (sel: string) => document.querySelector(sel);
    const text = (sel: string) => q(sel)?.textContent ?? '';
    return {
      title: text('#tx-title'),
      state: q('#tx-state')?.getAttribute('data-state') ?? null,
      phase: text('#tx-phase'),
      currentHook: text('#tx-current-hook'),
      progress: Number(q('#tx-progress [role=progressbar]')?.getAttribute('aria-valuenow')),
      progressText: text('#tx-progress .pf-v6-c-progress__measure'),
      hooks: Array.from(document.querySelectorAll('#hooks tbody tr')).map((tr) => ({
        name: tr.querySelector('.hook-name')?.textContent ?? '',
        result: tr.getAttribute('data-result') ?? '',
        percent: Number(tr.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')),
        status: tr.querySelector('.hook-status')?.textContent ?? '',
      })),
      log: Array.from(document.querySelectorAll('#log .log-line')).map((l) => l.textContent ?? ''),
      errorShown: q('#tx-error') !== null,
      errorName: text('#tx-error-name'),
      errorMessage: text('#tx-error-message'),
      problem: Array.from(document.querySelectorAll('#problem .problem-text')).map((p) => p.textContent ?? '').join('\n'),
      daemon: q('#daemon')?.getAttribute('data-state') ?? null,
      history: Array.from(document.querySelectorAll('#history tbody tr')).map((tr) => ({
        path: tr.getAttribute('data-path') ?? '',
        state: tr.getAttribute('data-state') ?? '',
        error: tr.querySelector('.history-error')?.textContent ?? '',
        cells: Array.from(tr.querySelectorAll('td')).map((td) => td.textContent ?? ''),
      })),
    };
  });
}

/**
 * Record, inside the page, every value the overall progress bar and each
 * hook's status cell take, as the DOM changes: proof of live updates that
 * does not depend on when the test happens to look.
 */
async function recordChanges(page: Page): Promise<void> {
  await page.evaluate(() => {
    const w = globalThis as unknown as PageGlobals;
    w.seenProgress = [];
    w.seenStatus = [];
    const note = () => {
      const v = Number(w.document.querySelector('#tx-progress [role=progressbar]')?.getAttribute('aria-valuenow'));
      if (w.seenProgress[w.seenProgress.length - 1] !== v) w.seenProgress.push(v);
      for (const s of w.document.querySelectorAll('#hooks .hook-status')) {
        const st = s.textContent ?? '';
        if (st && !w.seenStatus.includes(st)) w.seenStatus.push(st);
      }
    };
    new w.MutationObserver(note).observe(w.document.body, {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  });
}

async function recorded(page: Page): Promise<{ seenProgress: number[]; seenStatus: string[] }> {
  return page.evaluate(() => {
    const w = globalThis as unknown as PageGlobals;
    return { seenProgress: w.seenProgress, seenStatus: w.seenStatus };
  });
}

/** Wait until the page's view satisfies `pred`; on timeout, fail with what it showed. */
async function waitForView(page: Page, what: string, pred: (v: PageView) => boolean, timeoutMs = 20_000): Promise<PageView> {
  const deadline = Date.now() + timeoutMs;
  let last: PageView | null = null;
  for (;;) {
    last = await view(page);
    if (pred(last)) return last;
    if (Date.now() > deadline) throw new Error(`the page did not show ${what} within ${timeoutMs} ms; it showed:\n${JSON.stringify(last, null, 2)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function screenshot(t: ExecutionContext<unknown>, page: Page, name: string): Promise<void> {
  const file = path.join(await screenshotDir(t), `cockpit-${name}.png`);
  // PatternFly's page scrolls inside its main container, which a full-page
  // screenshot does not expand: the viewport is made as tall as the content.
  const size = page.viewportSize() ?? { width: 1280, height: 1000 };
  const height = await page.evaluate(() => {
    const d = (globalThis as unknown as { document: { querySelectorAll(s: string): ArrayLike<{ scrollHeight: number; getBoundingClientRect(): { top: number } }> } }).document;
    // Whatever scrolls: the content's height is the largest scrollHeight below its top.
    return Math.max(0, ...Array.from(d.querySelectorAll('.pf-v6-c-page, .pf-v6-c-page *'))
      .map((e) => Math.ceil(e.getBoundingClientRect().top + e.scrollHeight + 24)));
  });
  await page.setViewportSize({ width: size.width, height: Math.min(Math.max(size.height, height), 8000) });
  await page.screenshot({ path: file, fullPage: true });
  await page.setViewportSize(size);
  const png = await fsp.readFile(file);
  t.is(png.subarray(1, 4).toString('latin1'), 'PNG', `${file} is a PNG`);
  t.log(`screenshot: ${file}`);
}

interface Theme { dark: boolean; page: string; card: string; text: string; pageFont: string; }

/**
 * The theme class and computed colours. With `expectDark`, read once the
 * class says so (events reach the page asynchronously), for at most 5 s;
 * the test's assertion then says what it was.
 */
async function theme(page: Page, expectDark?: boolean): Promise<Theme> {
  const read = () => page.evaluate(() => {
    type Css = { backgroundColor: string; color: string; fontFamily: string };
    const w = globalThis as unknown as {
      document: { documentElement: { classList: { contains(c: string): boolean } }; querySelector(s: string): unknown };
      getComputedStyle(e: unknown): Css;
    };
    const css = (sel: string) => w.getComputedStyle(w.document.querySelector(sel));
    return {
      dark: w.document.documentElement.classList.contains('pf-v6-theme-dark'),
      page: css('.pf-v6-c-page').backgroundColor,
      card: css('#transaction').backgroundColor,
      text: css('#tx-title').color,
      pageFont: css('#tx-title').fontFamily,
    };
  });
  const deadline = Date.now() + 5000;
  let last = await read();
  while (expectDark !== undefined && last.dark !== expectDark && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    last = await read();
  }
  return last;
}

/** Relative luminance of a CSS rgb()/rgba() colour (WCAG). */
function luminance(color: string): number {
  const m = /rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)/.exec(color);
  if (!m) throw new Error(`not an rgb() colour: ${color}`);
  const [r, g, b] = [m[1], m[2], m[3]].map((c) => {
    const v = Number(c) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
}

function noErrors(t: ExecutionContext<unknown>, b: TestPage): void {
  t.deepEqual(b.errors, [], 'no uncaught exception or console error (CSP violations included)');
  t.deepEqual(b.blockedRequests, [], 'no request left localhost');
}

/** One Chromium for the file (launching it costs seconds); each test has its own page. */
let browserLaunch: Promise<TestBrowser> | null = null;
function sharedBrowser(): Promise<TestBrowser> {
  browserLaunch ??= launchBrowser();
  return browserLaunch;
}

const unavailable = cockpitTestsUnavailable();
if (unavailable) {
  test.skip(`cockpit page tests skipped: ${unavailable}`, () => undefined);
} else {
  test.after.always('close the browser', async () => {
    if (browserLaunch) await (await browserLaunch.catch(() => null))?.close();
  });

  test.serial('cockpit page - follows a prepare phase live: progress, hook status, output, then prepared', async (t) => {
    const gateDir = await fsp.mkdtemp('/tmp/prestage-gate-');
    t.teardown(() => fsp.rm(gateDir, { recursive: true, force: true }));
    const gate = path.join(gateDir, 'open');
    const ctx = await withDaemon(t, {
      sysroot: { deployments: 2 },
      etcHooks: { 'slow.hook': gatedHook(gate), 'after.hook': AFTER_HOOK },
    });
    const [staged] = deploymentsOf(ctx);
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;

    await page.goto(cockpit.pageUrl());
    const idle = await waitForView(page, 'the idle daemon', (v) => v.daemon === 'idle');
    t.is(idle.title, 'No transaction yet');
    t.deepEqual(idle.history, []);
    await recordChanges(page);

    const txPath = await startPrepare(ctx, staged!);

    // The hook is parked at the gate: everything it reported so far is on the page.
    const running = await waitForView(page, 'the hook waiting at the gate',
      (v) => v.hooks.some((h) => h.name === 'slow' && h.status === 'waiting for the gate'));
    t.is(running.state, 'preparing');
    t.is(running.daemon, 'busy');
    t.is(running.currentHook, 'slow');
    t.true(running.progress > 0 && running.progress < 100, `overall progress ${running.progress} is intermediate`);
    t.is(running.progressText, `${running.progress}%`);
    t.deepEqual(running.hooks.map((h) => [h.name, h.result]), [['slow', 'running'], ['after', 'pending']]);
    t.is(running.hooks[0]!.percent, 50);
    t.false(running.errorShown);
    const outputLines = running.log.filter((l) => l.startsWith('slow: slow line'));
    t.deepEqual(outputLines, [10, 20, 30, 40, 50].map((p) => `slow: slow line ${p}`));
    t.deepEqual(running.history.map((h) => [h.path, h.state]), [[txPath, 'preparing']]);

    // Live, not a jump to the end: the bar and the status went through
    // several intermediate values while the hook ran.
    const seen = await recorded(page);
    const intermediate = [...new Set(seen.seenProgress.filter((p) => p > 0 && p < 100))];
    t.true(intermediate.length >= 2, `intermediate progress values seen: ${JSON.stringify(seen.seenProgress)}`);
    t.true(seen.seenStatus.filter((s) => /^copying part \d+ of 100$/.test(s)).length >= 2,
      `status texts seen: ${JSON.stringify(seen.seenStatus)}`);

    // The page shows what the bus says.
    const props = await ctx.client.getAllProperties(SERVICE, txPath, TRANSACTION_IFACE);
    t.is(props['State'], 'preparing');
    t.is(props['CurrentHook'], 'slow');
    t.is(props['Progress'], running.progress);
    await screenshot(t, page, 'running');

    await fsp.writeFile(gate, '');
    const done = await waitForView(page, 'prepared', (v) => v.state === 'prepared' && v.daemon === 'idle');
    t.is(done.progress, 100);
    t.is(done.progressText, '100%');
    t.is(done.phase, 'Prepare');
    t.deepEqual(done.hooks, [
      { name: 'slow', result: 'success', percent: 100, status: 'all parts copied' },
      { name: 'after', result: 'success', percent: 100, status: 'quick' },
    ]);
    t.true(done.log.includes('slow: slow done'), done.log.join('\n'));
    t.true(done.log.includes('after: after ran'), done.log.join('\n'));
    t.true(done.log.indexOf('slow: slow done') < done.log.indexOf('after: after ran'));
    t.true(done.log.some((l) => /Phase finished: Prepared/.test(l)), done.log.join('\n'));
    t.false(done.errorShown);
    t.is(done.problem, '');
    t.is(done.history.length, 1);
    t.like(done.history[0], { path: txPath, state: 'prepared', error: '' });
    await screenshot(t, page, 'prepared');
    noErrors(t, tab);
  });

  test.serial('cockpit page - opened after a failure: state, error and history from properties; the full log on demand', async (t) => {
    const ctx = await withDaemon(t, {
      sysroot: { deployments: 2 },
      etcHooks: {
        'check.hook': hookFile({ prepare: 'echo "checking the image"; echo PROGRESS=30 >&3; echo STATUS=checking >&3; exit 3' }),
      },
    });
    const [staged] = deploymentsOf(ctx);
    const finished = await ctx.client.collectSignals({ interface: MANAGER_IFACE, member: 'TransactionFinished' });
    const txPath = await startPrepare(ctx, staged!);
    await finished.waitFor((s) => s.body[0] === txPath);

    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;
    await page.goto(cockpit.pageUrl());
    const failed = await waitForView(page, 'the failed transaction', (v) => v.state === 'failed');
    t.true(failed.errorShown);
    t.is(failed.errorName, 'org.containers.bootc.PreStage.Error.HookFailed');
    const props = await ctx.client.getAllProperties(SERVICE, txPath, TRANSACTION_IFACE);
    t.is(failed.errorMessage, String(props['ErrorMessage']));
    t.regex(failed.errorMessage, /check/);
    // The row holds what the Hooks property holds (the daemon puts the
    // failure's reason in the status text).
    t.deepEqual(failed.hooks.map((h) => [h.name, h.result, h.percent, h.status]), props['Hooks']);
    t.is(failed.hooks[0]?.result, 'failed');
    t.is(failed.history.length, 1);
    t.like(failed.history[0], { path: txPath, state: 'failed' });
    t.regex(failed.history[0]!.error, /^HookFailed: /);
    // Output lines are signals: a late page has none until it asks GetLog.
    t.false(failed.log.some((l) => l.includes('checking the image')));

    await page.click('#full-log');
    const full = await waitForView(page, 'the full log', (v) => v.log.some((l) => l.includes('checking the image')));
    t.is(full.problem, '');
    await screenshot(t, page, 'failed');
    noErrors(t, tab);
  });

  test.serial('cockpit page - Cancel stops a running prepare and the page shows it cancelled', async (t) => {
    const gateDir = await fsp.mkdtemp('/tmp/prestage-gate-');
    t.teardown(() => fsp.rm(gateDir, { recursive: true, force: true }));
    const ctx = await withDaemon(t, {
      sysroot: { deployments: 2 },
      etcHooks: { 'slow.hook': gatedHook(path.join(gateDir, 'never')) },
    });
    const [staged] = deploymentsOf(ctx);
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;
    await page.goto(cockpit.pageUrl());
    await waitForView(page, 'the idle daemon', (v) => v.daemon === 'idle');
    await startPrepare(ctx, staged!);
    await waitForView(page, 'the running hook', (v) => v.state === 'preparing' && v.hooks[0]?.result === 'running');
    await page.click('#cancel');
    // The rollback's output comes as Message signals and the final state as
    // a property notification: cockpit-bridge hands the page the two by
    // different paths, so the state may show a render before the last lines.
    // Both must show.
    const cancelled = await waitForView(page, 'cancelled, with the rollback\'s output',
      (v) => v.state === 'cancelled' && v.log.includes('slow: slow abort ran'));
    t.is(cancelled.errorName, 'org.containers.bootc.PreStage.Error.Cancelled');
    t.is(cancelled.hooks[0]?.result, 'cancelled');
    t.true(cancelled.log.includes('slow: slow abort ran'), cancelled.log.join('\n'));
    t.true(await page.locator('#cancel').isHidden());
    await screenshot(t, page, 'cancelled');
    noErrors(t, tab);
  });

  test.serial('cockpit page - a viewer who is not root sees the progress; Cancel and the full log are disabled, and refused by the daemon', async (t) => {
    const gateDir = await fsp.mkdtemp('/tmp/prestage-gate-');
    await fsp.chmod(gateDir, 0o755);
    t.teardown(() => fsp.rm(gateDir, { recursive: true, force: true }));
    const gate = path.join(gateDir, 'open');
    const ctx = await withDaemon(t, {
      sysroot: { deployments: 2 },
      etcHooks: { 'slow.hook': gatedHook(gate) },
    });
    const [staged] = deploymentsOf(ctx);
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address, uid: NOBODY, gid: NOBODY });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;
    await page.goto(cockpit.pageUrl());
    await waitForView(page, 'the idle daemon', (v) => v.daemon === 'idle');
    const txPath = await startPrepare(ctx, staged!);
    const running = await waitForView(page, 'the hook waiting at the gate',
      (v) => v.hooks[0]?.status === 'waiting for the gate');
    t.is(running.state, 'preparing');
    t.true(running.progress > 0 && running.progress < 100);
    t.true(running.log.includes('slow: slow line 50'), running.log.join('\n'));

    // Cockpit says this session has no administrative access: the actions
    // that are root only are disabled, and say why.
    t.true(await page.locator('#cancel').isVisible());
    t.true(await page.locator('#cancel').isDisabled());
    t.regex(await page.locator('#cancel').getAttribute('title') ?? '', /administrative access/);
    t.true(await page.locator('#full-log').isDisabled());
    // The daemon stays the judge: were the buttons enabled (a Cockpit that
    // wrongly said this session has administrative access), the refusals
    // would be shown, short. A second tab of the same session where
    // cockpit.permission says yes: the one thing not real here.
    const second = await openPage(t, await sharedBrowser());
    await second.page.route('**/base1/cockpit.js', async (route) => {
      const original = await route.fetch();
      await route.fulfill({
        response: original,
        body: `${await original.text()}\n;cockpit.permission = function () {
          return { allowed: true, addEventListener() {}, removeEventListener() {}, close() {} };
        };\n`,
      });
    });
    await second.page.goto(cockpit.pageUrl());
    await waitForView(second.page, 'the running transaction', (v) => v.state === 'preparing');
    t.true(await second.page.locator('#cancel').isEnabled());
    await second.page.click('#cancel');
    await waitForView(second.page, 'the refused Cancel', (v) => v.problem !== '');
    await second.page.click('#full-log');
    const refused = await waitForView(second.page, 'the refused GetLog', (v) => /Cannot read the full log/.test(v.problem));
    t.is(refused.problem, [
      'Cannot cancel: not permitted: this needs administrative access',
      'Cannot read the full log: not permitted: this needs administrative access',
    ].join('\n'));
    await screenshot(t, second.page, 'refused');
    await second.page.click('#problem [data-problem=cancel] .dismiss');
    const dismissed = await waitForView(second.page, 'one problem dismissed', (v) => !v.problem.includes('Cannot cancel'));
    t.is(dismissed.problem, 'Cannot read the full log: not permitted: this needs administrative access');
    noErrors(t, second);
    await second.page.close();
    // Nothing was cancelled.
    t.is(await ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State'), 'preparing');

    await fsp.writeFile(gate, '');
    const done = await waitForView(page, 'prepared', (v) => v.state === 'prepared');
    t.is(done.progress, 100);
    t.true(done.log.includes('slow: slow done'));
    await screenshot(t, page, 'viewer');
    noErrors(t, tab);
  });

  test.serial('cockpit page - says when the service is missing, and connects once it appears', async (t) => {
    const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
    // The test bus has no activation file: without the daemon, the name
    // can be neither found nor started.
    await ctx.daemon.stop();
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;
    await page.goto(cockpit.pageUrl());
    const missing = await waitForView(page, 'the missing service', (v) => v.daemon === 'unavailable');
    t.regex(missing.problem, /org\.containers\.bootc\.PreStage is not on the system bus and cannot be started/);
    // Not only an alert: the card says so in place of a transaction.
    t.true(await page.locator('#service-missing').isVisible());
    t.regex(await page.locator('#service-missing').textContent() ?? '', /bootc-prestaged is not available/);
    await screenshot(t, page, 'missing-service');
    await ctx.restart();
    // The page tries again every 10 s.
    const back = await waitForView(page, 'the daemon back', (v) => v.daemon === 'idle', 30_000);
    t.false(await page.locator('#service-missing').isVisible());
    t.is(back.problem, '');
    noErrors(t, tab);
  });

  test.serial('cockpit page - is listed in Cockpit\'s navigation under Tools, with search keywords', async (t) => {
    const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    // What the shell builds its navigation and search from: every package's manifest, from the bridge.
    const res = await fetch(`${cockpit.origin}/cockpit/@localhost/manifests.json`);
    t.is(res.status, 200);
    const manifests = await res.json() as Record<string, { tools?: Record<string, { label?: string; keywords?: { matches: string[] }[] }> }>;
    const entry = manifests['bootc-prestage']?.tools?.['index'];
    t.is(entry?.label, 'OS pre-stage');
    const keywords = (entry?.keywords ?? []).flatMap((k) => k.matches);
    for (const k of ['bootc', 'upgrade', 'hooks']) t.true(keywords.includes(k), `keyword ${k} in ${JSON.stringify(keywords)}`);
  });

  test.serial('cockpit page - follows Cockpit\'s light and dark themes: the shell\'s switcher, the stored style, the system preference', async (t) => {
    const ctx = await withDaemon(t, {
      sysroot: { deployments: 2 },
      etcHooks: {
        'check.hook': hookFile({ prepare: 'echo "checked"; echo PROGRESS=100 >&3; echo STATUS=compatible >&3' }),
        'after.hook': AFTER_HOOK,
      },
    });
    const [staged] = (ctx.sysroot as { deployments: string[] }).deployments;
    const finished = await ctx.client.collectSignals({ interface: MANAGER_IFACE, member: 'TransactionFinished' });
    const txPath = await startPrepare(ctx, staged!);
    await finished.waitFor((s) => s.body[0] === txPath);
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const browser = await sharedBrowser();

    const tab = await openPage(t, browser);
    const { page } = tab;
    await page.emulateMedia({ colorScheme: 'light' });
    await page.goto(cockpit.pageUrl());
    await waitForView(page, 'the prepared transaction', (v) => v.state === 'prepared' && v.daemon === 'idle');
    const light = await theme(page, false);
    t.false(light.dark, 'no stored style, a light system: light');
    t.regex(light.pageFont, /^"Red Hat (Display|Text)"/, 'PatternFly\'s fonts');
    await screenshot(t, page, 'light');

    // The shell's style switcher tells each page with an event.
    await page.evaluate(() => {
      const w = globalThis as unknown as { dispatchEvent(e: unknown): void; CustomEvent: new (n: string, o: unknown) => unknown };
      w.dispatchEvent(new w.CustomEvent('cockpit-style', { detail: { style: 'dark' } }));
    });
    const dark = await theme(page, true);
    t.true(dark.dark, 'cockpit-style dark: the html element has pf-v6-theme-dark');
    t.not(dark.page, light.page, `the page background differs: ${light.page} / ${dark.page}`);
    t.not(dark.card, light.card, `the card background differs: ${light.card} / ${dark.card}`);
    t.not(dark.text, light.text, `the text colour differs: ${light.text} / ${dark.text}`);
    t.true(luminance(dark.card) < luminance(light.card), `dark card ${dark.card} is darker than light ${light.card}`);
    t.true(luminance(dark.text) > luminance(dark.card), `dark theme: light text ${dark.text} on ${dark.card}`);
    await screenshot(t, page, 'dark');

    // The style the shell stored: a page opened later is dark before it first renders.
    await page.evaluate(() => (globalThis as unknown as { localStorage: { setItem(k: string, v: string): void } })
      .localStorage.setItem('shell:style', 'dark'));
    const later = await openPage(t, browser);
    await later.page.emulateMedia({ colorScheme: 'light' });
    await later.page.addInitScript(() => {
      const w = globalThis as unknown as { darkAtLoad?: boolean; document: { addEventListener(n: string, f: () => void): void; documentElement: { classList: { contains(c: string): boolean } } } };
      w.document.addEventListener('DOMContentLoaded', () => {
        w.darkAtLoad = w.document.documentElement.classList.contains('pf-v6-theme-dark');
      });
    });
    await later.page.goto(cockpit.pageUrl());
    await waitForView(later.page, 'the prepared transaction', (v) => v.state === 'prepared');
    t.true(await later.page.evaluate(() => (globalThis as unknown as { darkAtLoad?: boolean }).darkAtLoad), 'dark at DOMContentLoaded');
    t.deepEqual(await theme(later.page, true), dark);

    // Another window of the origin changes the stored style: 'storage' events.
    await page.evaluate(() => (globalThis as unknown as { localStorage: { setItem(k: string, v: string): void } })
      .localStorage.setItem('shell:style', 'auto'));
    t.false((await theme(later.page, false)).dark, 'auto with a light system: light');
    // 'auto' follows the system's preference, live.
    await later.page.emulateMedia({ colorScheme: 'dark' });
    t.true((await theme(later.page, true)).dark, 'auto with a dark system: dark');
    await later.page.emulateMedia({ colorScheme: 'light' });
    t.false((await theme(later.page, false)).dark, 'auto with a light system again: light');
    noErrors(t, tab);
    noErrors(t, later);
  });

  test.serial('cockpit page - a transaction of 200 hooks: the page keeps up (latency from a property change to the page measured)', async (t) => {
    t.timeout(240_000);
    const HOOKS = 200;
    const names = Array.from({ length: HOOKS }, (_, i) => `h${String(i).padStart(3, '0')}`);
    const etcHooks: Record<string, string> = {};
    for (const n of names) {
      etcHooks[`${n}.hook`] = hookFile({
        prepare: `echo PROGRESS=50 >&3; echo "STATUS=${n} half way" >&3; echo "${n} output"; echo PROGRESS=100 >&3; echo "STATUS=${n} done" >&3`,
      });
    }
    const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks });
    const [staged] = (ctx.sysroot as { deployments: string[] }).deployments;
    const cockpit = await startCockpit(t, { busAddress: ctx.bus.address });
    const tab = await openPage(t, await sharedBrowser());
    const { page } = tab;
    await page.goto(cockpit.pageUrl());
    await waitForView(page, 'the idle daemon', (v) => v.daemon === 'idle');

    // In the page: when each overall progress value and each hook's result
    // first shows (Date.now(), the same clock as the test's), and the long
    // tasks (main thread busy > 50 ms, when the page could not react).
    await page.evaluate(() => {
      type El = { getAttribute(n: string): string | null; matches?(s: string): boolean; querySelectorAll?(s: string): ArrayLike<El> };
      const w = globalThis as unknown as {
        seenProgressAt: [number, number][]; seenResultAt: Record<string, number>; longTasks: number[];
        document: { body: unknown; querySelector(s: string): El | null; querySelectorAll(s: string): ArrayLike<El> };
        MutationObserver: new (cb: (records: { type: string; target: El; addedNodes: ArrayLike<El> }[]) => void) => { observe(n: unknown, o: unknown): void };
        PerformanceObserver: new (cb: (list: { getEntries(): { duration: number }[] }) => void) => { observe(o: unknown): void };
      };
      w.seenProgressAt = [];
      w.seenResultAt = {};
      w.longTasks = [];
      const noteRow = (tr: El, now: number) => {
        const name = tr.getAttribute('data-hook');
        if (name && tr.getAttribute('data-result') === 'success' && !(name in w.seenResultAt)) w.seenResultAt[name] = now;
      };
      new w.MutationObserver((records) => {
        const now = Date.now();
        const bar = w.document.querySelector('#tx-progress [role=progressbar]');
        const v = Number(bar?.getAttribute('aria-valuenow'));
        const last = w.seenProgressAt[w.seenProgressAt.length - 1];
        if (bar && (!last || last[1] !== v)) w.seenProgressAt.push([now, v]);
        for (const r of records) {
          if (r.type === 'attributes' && r.target.matches?.('tr[data-hook]')) noteRow(r.target, now);
          for (const n of Array.from(r.addedNodes ?? [])) {
            if (n.matches?.('tr[data-hook]')) noteRow(n, now);
            for (const tr of Array.from(n.querySelectorAll?.('tr[data-hook]') ?? [])) noteRow(tr, now);
          }
        }
      }).observe(w.document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-result', 'aria-valuenow'] });
      new w.PerformanceObserver((list) => { for (const e of list.getEntries()) w.longTasks.push(e.duration); })
        .observe({ type: 'longtask', buffered: false });
    });

    // On the bus: when each Progress value and each hook's success is announced (PropertiesChanged).
    const busProgressAt: [number, number][] = [];
    const busResultAt: Record<string, number> = {};
    const rec = await ctx.client.collectSignals({ interface: 'org.freedesktop.DBus.Properties', member: 'PropertiesChanged' });
    t.teardown(() => rec.stop());
    const onMessage = (msg: { type: number; member?: string; path?: string; body: unknown[] }) => {
      if (msg.member !== 'PropertiesChanged' || !msg.path?.startsWith(`${MANAGER_PATH}/Transaction/`)) return;
      const now = Date.now();
      const [iface, changed] = msg.body.map(unwrapVariants) as [string, Record<string, unknown>];
      if (iface !== TRANSACTION_IFACE) return;
      if (typeof changed['Progress'] === 'number') busProgressAt.push([now, changed['Progress']]);
      for (const h of (changed['Hooks'] as [string, string, number, string][] | undefined) ?? []) {
        if (h[1] === 'success' && !(h[0] in busResultAt)) busResultAt[h[0]] = now;
      }
    };
    ctx.client.bus.on('message', onMessage);
    t.teardown(() => { ctx.client.bus.off('message', onMessage); });

    // The renderer's own accounting: main-thread CPU time and time in tasks,
    // which, unlike the latencies, hardly depend on how loaded the machine is.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
    const before = await metrics();
    const startedAt = Date.now();
    const txPath = await startPrepare(ctx, staged!);
    // Waited for with a cheap look (not view(), which reads all 200 rows): the
    // test's own reading must not slow down the page it measures.
    await page.waitForSelector('#transaction[data-state=prepared]', { timeout: 180_000 });
    const wallMs = Date.now() - startedAt;
    const after = await metrics();
    const spent = (name: string) => Math.round(((after[name] ?? NaN) - (before[name] ?? NaN)) * 1000);
    const done = await waitForView(page, 'all 200 hooks done', (v) => v.state === 'prepared' && v.daemon === 'idle');
    t.is(done.hooks.length, HOOKS);
    t.deepEqual(done.hooks.map((h) => h.name), names);
    t.true(done.hooks.every((h) => h.result === 'success' && h.percent === 100 && h.status === `${h.name} done`),
      JSON.stringify(done.hooks.filter((h) => h.result !== 'success').slice(0, 5)));
    t.is(done.progress, 100);
    // Output lines are capped per second on the bus (README.md); the events are not.
    t.true(done.log.some((l) => / output$/.test(l)), done.log.slice(-5).join('\n'));
    t.true(done.log.some((l) => /Phase finished: Prepared/.test(l)), done.log.slice(-5).join('\n'));
    t.deepEqual(done.history.map((h) => [h.path, h.state]), [[txPath, 'prepared']]);

    const seen = await page.evaluate(() => {
      const w = globalThis as unknown as { seenProgressAt: [number, number][]; seenResultAt: Record<string, number>; longTasks: number[] };
      return { progress: w.seenProgressAt, results: w.seenResultAt, longTasks: w.longTasks };
    });
    // Progress: each value the bus announced, until the page showed it or a later one.
    const progressLatency = busProgressAt.map(([at, p]) => {
      const shown = seen.progress.find(([pageAt, v]) => v >= p && pageAt >= at - 1);
      return shown ? shown[0] - at : null;
    });
    // Each hook's success, from the bus to its row.
    const resultLatency = names.map((n) => (busResultAt[n] !== undefined && seen.results[n] !== undefined
      ? seen.results[n]! - busResultAt[n]! : null));
    t.true(progressLatency.every((l) => l !== null), 'the page showed every announced progress value');
    t.is(resultLatency.filter((l) => l !== null).length, HOOKS, 'the page showed every hook\'s success');
    const stats = (xs: (number | null)[]) => {
      const v = xs.filter((x): x is number => x !== null).sort((a, b) => a - b);
      return { n: v.length, median: v[Math.floor(v.length / 2)] ?? NaN, p95: v[Math.floor(v.length * 0.95)] ?? NaN, max: v[v.length - 1] ?? NaN };
    };
    const p = stats(progressLatency);
    const r = stats(resultLatency);
    const longest = Math.max(0, ...seen.longTasks);
    t.log(`200 hooks in ${wallMs} ms; ${busProgressAt.length} Progress changes and ${HOOKS} hook results on the bus; `
      + `load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} on ${os.cpus().length} CPUs`);
    t.log(`property change -> page, Progress: median ${p.median} ms, p95 ${p.p95} ms, max ${p.max} ms (n=${p.n})`);
    t.log(`property change -> page, hook result: median ${r.median} ms, p95 ${r.p95} ms, max ${r.max} ms (n=${r.n})`);
    t.log(`long tasks in the page (main thread busy > 50 ms): ${seen.longTasks.length}, longest ${Math.round(longest)} ms`);
    t.log(`the page's main thread over the ${wallMs} ms: ${spent('ThreadTime')} ms CPU; in tasks ${spent('TaskDuration')} ms, `
      + `of which script ${spent('ScriptDuration')} ms, layout ${spent('LayoutDuration')} ms, style ${spent('RecalcStyleDuration')} ms`);
    await screenshot(t, page, 'many-hooks');
    noErrors(t, tab);
  });
}
