// What every browser test needs: a real `automa serve` on a free port with its own data, Debian's Chromium
// driven by playwright-core, and guards that fail the test on a console error, on an unexpected error answer,
// and on any request to a host other than the server.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SCREENSHOTS = path.join(here, 'screenshots');
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

/**
 * Starts `automa serve` on 127.0.0.1:0 with a fresh SQLite database and `settings` (more `AUTOMA_*` variables);
 * resolves once it prints its address. `dir` is its data directory.
 */
export async function startServer(settings = {}) {
  const binary = process.env.AUTOMA_BIN;
  if (!binary) throw new Error('AUTOMA_BIN must name the automa binary (tests/browser/run.sh sets it)');
  const dir = mkdtempSync(path.join(tmpdir(), 'automa-browser-'));
  const env = { ...process.env, AUTOMA_DATA_DIR: dir, AUTOMA_DATABASE_URL: `sqlite://${dir}/automa.db`, AUTOMA_BIND: '127.0.0.1:0', ...settings };
  delete env.AUTOMA_BIN;
  const child = spawn(binary, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  createInterface({ input: child.stderr }).on('line', (line) => log.push(line));
  const url = await new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`automa serve exited with ${code}:\n${log.join('\n')}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const found = /open (http:\/\/[^/\s]+)\//.exec(line);
      if (found) resolve(found[1]);
    });
  });
  return {
    url,
    dir,
    log,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Opens Chromium with a fresh profile and one page, and watches it. `expectError(status, pattern)` declares an
 * error answer a step provokes on purpose (a wrong password, a syntax error); `problems()` lists everything
 * else that went wrong: console errors, page errors, unexpected 4xx/5xx answers, requests to other hosts.
 */
export async function openBrowser(serverUrl) {
  const profile = mkdtempSync(path.join(tmpdir(), 'automa-chromium-'));
  mkdirSync(SCREENSHOTS, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: DESKTOP,
    acceptDownloads: true,
  });
  const origin = new URL(serverUrl).origin;
  const problems = [];
  const expected = [];
  const failedAnswers = [];
  await context.route('**/*', (route) => {
    const target = route.request().url();
    if (target.startsWith('data:') || target.startsWith('blob:') || new URL(target).origin === origin) return route.continue();
    problems.push(`request to another host: ${target}`);
    return route.abort('blockedbyclient');
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    // Chromium reports every error answer on the console; those are checked against `expectError` instead.
    if (/^Failed to load resource: the server responded with a status of \d+/.test(message.text())) return;
    problems.push(`console error: ${message.text()}`);
  });
  page.on('response', (response) => {
    if (response.status() < 400) return;
    const { pathname } = new URL(response.url());
    const index = expected.findIndex((e) => e.status === response.status() && e.pattern.test(pathname));
    if (index >= 0) expected.splice(index, 1);
    else failedAnswers.push(`${response.request().method()} ${pathname} answered ${response.status()}`);
  });
  return {
    context,
    page,
    expectError(status, pattern) {
      expected.push({ status, pattern });
    },
    /** What went wrong since the last call; each problem is reported once, to the step that caused it. */
    problems() {
      return [...problems.splice(0), ...failedAnswers.splice(0)];
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Saves full-page screenshots of the current page at desktop and phone widths. */
export async function screenshots(page, name) {
  for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(size);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-${label}.png`), fullPage: true, animations: 'disabled' });
  }
  await page.setViewportSize(DESKTOP);
}
