/// <reference lib="dom" />
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/index.js';
import { Holds } from './helpers/hold.js';
import { gatewayCall } from './helpers/http.js';
import { killAll, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

/**
 * The dashboard in a real browser: Debian's chromium, headless, driven by puppeteer-core. The page
 * is opened before any node exists; everything after that must arrive over its live feed.
 * UPDATE_SCREENSHOTS=1 writes the screenshot to docs/dashboard.png (docs/OPERATIONS.md's); otherwise it goes
 * to a temporary folder, so that a test run leaves the checkout as it was.
 */

const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'admin-token-for-the-browser-test';
const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));
const DOCS_SCREENSHOT = fileURLToPath(new URL('../docs/dashboard.png', import.meta.url));
const WAIT = 15_000;

/**
 * Clicks the element `selector` names once it is there, finding and clicking it in one step in the
 * page: the table is redrawn as the relay reports, and page.click's separate steps (find, scroll,
 * move the mouse) can land on a row already replaced ("Node is detached from document").
 */
async function clickNow(page: Page, selector: string): Promise<void> {
  await page.waitForSelector(selector, { timeout: WAIT });
  await page.$eval(selector, (el) => (el as HTMLElement).click());
}

// Skipped on a developer's machine without chromium; in CI (.ci/run installs it) a missing browser fails.
describe.skipIf(!existsSync(CHROMIUM) && process.env.CI !== 'true')('dashboard in a headless browser', () => {
  let relay: RunningRelay;
  let adminPort: number;
  let browser: Browser;
  let page: Page;
  let profile: string;
  let client: Client | undefined;
  const nodes: Record<string, Proc> = {};

  beforeAll(async () => {
    relay = await startRelay(['--admin-listen', '127.0.0.1:0', '--admin-token', ADMIN, '--relay-name', 'relay-eu-1']);
    adminPort = (await relay.proc.waitForMsg('admin listening')).port as number;
    profile = mkdtempSync(join(tmpdir(), 'tunnel-dashboard-chromium-'));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // No network beyond loopback here: background services would only flood refused connections.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        `--user-data-dir=${profile}`,
      ],
      defaultViewport: { width: 1440, height: 900 },
    });
    page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
  });

  afterAll(async () => {
    await client?.close();
    await browser?.close().catch(() => browser.process()?.kill('SIGKILL'));
    if (profile) rmSync(profile, { recursive: true, force: true });
    await killAll();
  });

  /** The text of a cell, '' when the row is not there. */
  const cellText = (row: string, col: string) => page.evaluate((r, c) => document.querySelector(`${r} [data-col="${c}"]`)?.textContent ?? '', row, col);

  it('shows the relay, then a node that connects after the page loaded, without a reload', async () => {
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    const res = await page.goto(`http://127.0.0.1:${adminPort}/dashboard`, { waitUntil: 'domcontentloaded' });
    expect(res?.status()).toBe(200);
    await page.waitForSelector('#feed-state[data-state="live"]');
    expect(await page.$eval('#relay-name', (el) => el.textContent)).toBe('relay-eu-1');
    expect(await page.$eval('#fact-cluster', (el) => el.textContent)).toBe('standalone');
    expect(await page.$eval('#nodes-empty', (el) => (el as HTMLElement).hidden)).toBe(false);
    expect(await page.$eval('#actions-state', (el) => el.textContent)).toContain('admin token');
    // Whenever the node table changes, the relay's Nodes figure must already agree with it.
    await page.evaluate(() => {
      const seen: Array<[number, string]> = [];
      (window as unknown as { seen: typeof seen }).seen = seen;
      new MutationObserver(() => seen.push([document.querySelectorAll('#nodes tbody tr').length, document.getElementById('fact-nodes')!.textContent!])).observe(
        document.querySelector('#nodes tbody')!,
        { childList: true },
      );
    });

    nodes.office1 = await startNode(relay.addr, ['--name', 'office-1', '--label', 'region=eu', '--label', 'site=paris']);
    await page.waitForSelector('tr[data-node="office-1"][data-state="online"]');
    const row = await page.$eval('tr[data-node="office-1"]', (tr) => ({
      header: tr.querySelector('th[scope="row"]')?.textContent,
      cells: [...tr.querySelectorAll('td')].map((td) => td.textContent),
    }));
    expect(row.header).toBe('office-1');
    expect(row.cells.join(' ')).toContain('region=eu');
    expect(row.cells.join(' ')).toContain('Arith Divide, Multiply');
    expect(row.cells.join(' ')).toMatch(/127\.0\.0\.1:\d+/);
    expect(row.cells.join(' ')).toContain('relay-eu-1');
    await page.waitForFunction(() => [...document.querySelectorAll('#events li[data-kind="node-join"]')].some((li) => li.textContent!.includes('office-1')));

    nodes.office2 = await startNode(relay.addr, ['--name', 'office-2', '--label', 'region=eu', '--label', 'site=lyon']);
    nodes.slow = await startNode(relay.addr, ['--name', 'batch-1', '--services', SLOW, '--label', 'region=us']);
    await page.waitForSelector('tr[data-node="office-2"]');
    await page.waitForSelector('tr[data-node="batch-1"]');
    const seen = await page.evaluate(() => (window as unknown as { seen: Array<[number, string]> }).seen);
    expect(seen.map(([rows]) => rows)).toContain(3);
    expect(seen.filter(([rows, figure]) => String(rows) !== figure)).toEqual([]);
    expect(await page.$eval('#fact-nodes', (el) => el.textContent)).toBe('3');
    expect(errors).toEqual([]);
  });

  it('moves the counters as calls go through, and shows errors by code', async () => {
    client = await connect(relay.addr);
    for (let round = 0; round < 3; round++) {
      await Promise.all(Array.from({ length: 20 }, (_, i) => client!.call('Arith.Multiply', i, 3)));
      await new Promise((r) => setTimeout(r, 300));
    }
    await page.waitForFunction(() => Number(document.querySelector('tr[data-service="Arith"] [data-col="calls"]')?.textContent) >= 60);
    const served = await page.evaluate(() =>
      ['office-1', 'office-2'].map((n) => Number(document.querySelector(`tr[data-node="${n}"] [data-col="served"]`)?.textContent)),
    );
    expect(served[0]! + served[1]!).toBeGreaterThanOrEqual(60);
    expect(await cellText('tr[data-service="Arith"]', 'p50')).toMatch(/ms$/);
    await page.waitForSelector('tr[data-session]');
    expect(await page.$eval('#callers tbody tr', (tr) => tr.textContent)).toContain('websocket');

    expect(await page.$eval('#codes-empty', (el) => (el as HTMLElement).hidden)).toBe(false);
    const failing = await gatewayCall(relay.port, 'Arith.Divide', [1, 0]);
    expect(failing.status).toBe(500);
    const unknown = await gatewayCall(relay.port, 'Arith.Power', [2, 8]);
    expect(unknown.status).toBe(404);
    await page.waitForSelector('tr[data-code="APP_ERROR"]');
    await page.waitForSelector('tr[data-code="NO_METHOD"]');
    await page.waitForFunction(() => Number(document.querySelector('tr[data-service="Arith"] [data-col="errors"]')?.textContent) >= 1);
    // Each code says which method it came from.
    expect(await cellText('tr[data-code="APP_ERROR"]', 'methods')).toBe('Arith.Divide 1');
    expect(await cellText('tr[data-code="NO_METHOD"]', 'methods')).toBe('(unknown) 1');
    expect(await page.$eval('#codes-empty', (el) => (el as HTMLElement).hidden)).toBe(true);
  });

  it('says at once that a wrong admin token is wrong, and keeps the actions disabled', async () => {
    await page.type('#admin-token', 'not-the-admin-token');
    await page.click('#admin-form button[type="submit"]');
    await page.waitForSelector('#actions-state[data-ok="false"]');
    expect(await page.$eval('#actions-state', (el) => el.textContent)).toContain('wrong');
    expect(await page.$eval('#admin-form', (el) => (el as HTMLElement).hidden)).toBe(false);
    expect(await page.$eval('tr[data-node="batch-1"] button[data-action="drain"]', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
  });

  it('drains a node from its button: it finishes its call, stays connected and out of rotation until undrained', async () => {
    await page.type('#admin-token', ADMIN);
    await page.click('#admin-form button[type="submit"]');
    await page.waitForSelector('tr[data-node="batch-1"] button[data-action="drain"]:not([disabled])');
    expect(await page.$eval('#actions-state', (el) => el.textContent)).toContain('enabled');

    // The call runs until the test has seen the node drained with it in flight (Slow.Hold), not for a
    // duration the browser's steps may outlast on a busy machine.
    const holds = await Holds.open();
    const running = gatewayCall(relay.port, 'Slow.Hold', [holds.port], '?node=batch-1&timeout=120000');
    await holds.waitHeld(1, WAIT);
    await page.waitForFunction(() => document.querySelector('tr[data-node="batch-1"] [data-col="inflight"]')?.textContent === '1');
    const from = relay.proc.logs.length;
    await clickNow(page, 'tr[data-node="batch-1"] button[data-action="drain"]');
    await page.waitForSelector('tr[data-node="batch-1"][data-state="drained"]');
    await page.waitForFunction(() => document.querySelector('#action-result')?.textContent?.includes('drain-node batch-1: done'));
    const line = await relay.proc.waitForLog((l) => l.msg === 'dashboard action', WAIT, 'the action log line', from);
    expect(line).toMatchObject({ action: 'drain-node', target: 'batch-1', by: 'admin' });
    expect(await page.$eval('#fact-drained', (el) => el.textContent)).toBe('batch-1');
    // The call in flight finishes normally once let go; the node stays, and takes no new call.
    expect((await gatewayCall(relay.port, 'Slow.Echo', [1])).status).not.toBe(200);
    expect(holds.held).toBe(1);
    holds.release();
    expect(await running).toMatchObject({ status: 200, json: { result: 'released' } });
    await holds.close();
    expect((await gatewayCall(relay.port, 'Slow.Echo', [1])).status).not.toBe(200);
    expect(await page.$eval('tr[data-node="batch-1"]', (tr) => (tr as HTMLElement).dataset.state)).toBe('drained');

    await clickNow(page, 'tr[data-node="batch-1"] button[data-action="undrain"]');
    await page.waitForSelector('tr[data-node="batch-1"][data-state="online"]');
    expect(await gatewayCall(relay.port, 'Slow.Echo', [1])).toMatchObject({ status: 200, json: { result: 1 } });
    await page.waitForFunction(() =>
      [...document.querySelectorAll('#events li[data-kind="action"]')].some((li) => li.textContent!.includes('drain-node batch-1 by admin')),
    );
    await page.waitForFunction(() =>
      [...document.querySelectorAll('#events li[data-kind="action"]')].some((li) => li.textContent!.includes('undrain-node batch-1 by admin')),
    );
  });

  it('disconnects a node and a caller from their buttons, once confirmed', async () => {
    // Dismissed: nothing is sent.
    const asked = new Promise<string>((resolve) =>
      page.once('dialog', (d) => {
        resolve(d.message());
        void d.dismiss();
      }),
    );
    await clickNow(page, 'tr[data-node="office-2"] button[data-action="disconnect"]');
    expect(await asked).toContain('Disconnect node office-2?');
    expect(await page.$eval('#action-result', (el) => el.textContent)).not.toContain('disconnect-node office-2');
    expect(await page.$eval('tr[data-node="office-2"]', (tr) => (tr as HTMLElement).dataset.state)).toBe('online');

    page.on('dialog', (d) => void d.accept());
    await clickNow(page, 'tr[data-node="office-2"] button[data-action="disconnect"]');
    await page.waitForFunction(() => [...document.querySelectorAll('#events li[data-kind="node-leave"]')].some((li) => li.textContent!.includes('office-2')));
    // It reconnects by itself, one reconnect more.
    await page.waitForFunction(() => document.querySelector('tr[data-node="office-2"] [data-col="reconnects"]')?.textContent === '1');

    const session = await page.$eval('#callers tbody tr', (tr) => (tr as HTMLElement).dataset.session!);
    const closed = new Promise<void>((resolve) => client!.once('close', () => resolve()));
    // Clicked inside the page: the table re-renders as the feed moves, and a click by coordinates can
    // land on a row that has just been replaced.
    await clickNow(page, `tr[data-session="${session}"] button[data-action="disconnect"]`);
    await Promise.race([
      closed,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`caller ${session} was not disconnected within ${WAIT} ms`)), WAIT)),
    ]);
    await page.waitForFunction((s) => !document.querySelector(`tr[data-session="${s}"]`), {}, session);
    client = undefined;
  });

  it('shows a node whose process stops as leaving', async () => {
    const temp = await startNode(relay.addr, ['--name', 'kiosk-7']);
    await page.waitForSelector('tr[data-node="kiosk-7"][data-state="online"]');
    temp.kill();
    await page.waitForSelector('tr[data-node="kiosk-7"][data-state="leaving"]');
  });

  it('saves a screenshot with a few nodes and some traffic', async () => {
    // A few seconds of mixed traffic, so that the charts have a shape.
    const caller = await connect(relay.addr);
    try {
      for (let round = 0; round < 8; round++) {
        await Promise.all([
          ...Array.from({ length: 10 + round * 4 }, (_, i) => caller.call('Arith.Multiply', i, 2)),
          ...Array.from({ length: 4 }, (_, i) => caller.call('KV.Set', `k${i}`, round)),
          ...(round % 3 === 0 ? [caller.call('Arith.Divide', 1, 0).catch(() => undefined)] : []),
        ]);
        await new Promise((r) => setTimeout(r, 400));
      }
      await page.waitForFunction(() => Number(document.querySelector('tr[data-service="KV"] [data-col="calls"]')?.textContent) >= 32);
      const target = process.env.UPDATE_SCREENSHOTS === '1' ? DOCS_SCREENSHOT : join(profile, 'dashboard.png');
      await page.screenshot({ path: target as `${string}.png`, fullPage: true });
      const png = readFileSync(target);
      expect(png.subarray(1, 4).toString()).toBe('PNG');
      expect(png.length).toBeGreaterThan(20_000);
    } finally {
      await caller.close();
    }
  });
});
