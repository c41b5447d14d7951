/**
 * The Cockpit page (packaging/cockpit/bootc-prestage) in a real browser:
 * cockpit-ws and cockpit-bridge on the test's private bus (shipped policy),
 * the real daemon with a real ostree sysroot, headless Chromium through
 * playwright-core. The page must show a prepare phase live (progress,
 * status text, output lines), the final state, a failure with its error,
 * and work read-only for a viewer who is not root.
 *
 * Skipped only when cockpit-ws, cockpit-bridge or chromium is not
 * installed (.ci/run installs them).
 *
 * BOOTC_PRESTAGE_TEST_SCREENSHOTS=DIR keeps the screenshots in DIR.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Page } from 'playwright-core';
import {
  cockpitTestsUnavailable, launchBrowser, openPage, screenshotDir, startCockpit,
  type TestBrowser, type TestPage,
} from '../helpers/cockpit.js';
import { deploymentsOf, withDaemon, type DaemonContext } from '../helpers/daemon.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE } from '../helpers/dbus-client.js';
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
    const alert = q('#tx-error');
    const problem = q('#problem');
    return {
      title: text('#tx-title'),
      state: q('#tx-state')?.getAttribute('data-state') ?? null,
      phase: text('#tx-phase'),
      currentHook: text('#tx-current-hook'),
      progress: Number(q('#tx-progress')?.getAttribute('aria-valuenow')),
      progressText: text('#tx-progress-text'),
      hooks: Array.from(document.querySelectorAll('#hooks tbody tr')).map((tr) => ({
        name: tr.querySelector('.hook-name')?.textContent ?? '',
        result: tr.getAttribute('data-result') ?? '',
        percent: Number(tr.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')),
        status: tr.querySelector('.hook-status')?.textContent ?? '',
      })),
      log: Array.from(document.querySelectorAll('#log .log-line')).map((l) => l.textContent ?? ''),
      errorShown: alert !== null && !alert.hidden,
      errorName: text('#tx-error-name'),
      errorMessage: text('#tx-error-message'),
      problem: problem && !problem.hidden
        ? Array.from(problem.querySelectorAll('.problem > span')).map((p) => p.textContent ?? '').join('\n')
        : '',
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
      const v = Number(w.document.querySelector('#tx-progress')?.getAttribute('aria-valuenow'));
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
  await page.screenshot({ path: file, fullPage: true });
  const png = await fsp.readFile(file);
  t.is(png.subarray(1, 4).toString('latin1'), 'PNG', `${file} is a PNG`);
  t.log(`screenshot: ${file}`);
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
    t.is(running.progressText, `${running.progress} %`);
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
    t.is(done.progressText, '100 %');
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
    const cancelled = await waitForView(page, 'cancelled', (v) => v.state === 'cancelled');
    t.is(cancelled.errorName, 'org.containers.bootc.PreStage.Error.Cancelled');
    t.is(cancelled.hooks[0]?.result, 'cancelled');
    t.true(cancelled.log.includes('slow: slow abort ran'), cancelled.log.join('\n'));
    t.true(await page.locator('#cancel').isHidden());
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
    // The daemon stays the judge: were the buttons enabled (a permission
    // that changed under the page), the refusals would be shown, short.
    // (Enabled and clicked in one step: the page's next render disables them again.)
    const forceClick = (selector: string) => page.evaluate((sel) => {
      const button = (globalThis as unknown as PageGlobals).document.querySelector(sel)!;
      button.removeAttribute('disabled');
      button.click();
    }, selector);
    await forceClick('#cancel');
    await waitForView(page, 'the refused Cancel', (v) => v.problem !== '');
    await forceClick('#full-log');
    const refused = await waitForView(page, 'the refused GetLog', (v) => /Cannot read the full log/.test(v.problem));
    t.is(refused.problem, [
      'Cannot cancel: not permitted: this needs administrative access',
      'Cannot read the full log: not permitted: this needs administrative access',
    ].join('\n'));
    await page.click('#problem [data-problem=cancel] .dismiss');
    const dismissed = await waitForView(page, 'one problem dismissed', (v) => !v.problem.includes('Cannot cancel'));
    t.is(dismissed.problem, 'Cannot read the full log: not permitted: this needs administrative access');
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
    await ctx.restart();
    // The page tries again every 10 s.
    const back = await waitForView(page, 'the daemon back', (v) => v.daemon === 'idle', 30_000);
    t.is(back.problem, '');
    noErrors(t, tab);
  });
}
