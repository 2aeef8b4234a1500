// Scripts with dependencies on the dashboard, against a real server that locks with a real uv offline, from
// wheels this test builds itself (tests/fixtures/make_wheel.py), and runs through its embedded agent in the
// default sandbox. Without uv (AUTOMA_TEST_UV, set by scripts/test) the suite is skipped with a notice, unless
// AUTOMA_REQUIRE_UV=1 makes that a failure.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, describe, it, test } from 'node:test';
import { openBrowser, screenshots, startServer } from './harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const uv = process.env.AUTOMA_TEST_UV || '';
const ADMIN = { email: 'admin@example.com', password: 'correct horse battery' };
const VIEWER = { email: 'viewer@example.com', password: 'viewer password' };

const withPackages = (dependencies) => `# /// script
# requires-python = ">=3.8"
# dependencies = [${dependencies.map((d) => JSON.stringify(d)).join(', ')}]
# ///
import sys
import time

import demo_pkg

print(demo_pkg.VALUE, flush=True)
if "wait" in sys.argv[1:]:
    time.sleep(600)
`;

/** Writes a wheel into `dir` and returns its hash as the lock writes it, `sha256:<hex>`. */
function makeWheel(dir, name, version) {
  const wheel = execFileSync('/usr/bin/python3', [path.join(here, '../fixtures/make_wheel.py'), dir, name, version], { encoding: 'utf8' }).trim();
  return `sha256:${createHash('sha256').update(readFileSync(wheel)).digest('hex')}`;
}

/**
 * Holds the agent's environment cache lock (`<data dir>/environments/.lock`, taken by every build) until
 * `release()`, so a build waits at a point the test chooses instead of racing the page.
 */
async function holdBuildLock(dataDir) {
  const environments = path.join(dataDir, 'environments');
  mkdirSync(environments, { recursive: true });
  const holder = spawn('flock', [path.join(environments, '.lock'), 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => holder.once('exit', resolve));
  await new Promise((resolve, reject) => {
    holder.once('error', reject);
    createInterface({ input: holder.stdout }).once('line', resolve);
  });
  return {
    async release() {
      holder.stdin.end();
      await exited;
    },
  };
}

if (!uv && process.env.AUTOMA_REQUIRE_UV === '1') {
  test('uv is available', () => assert.fail('AUTOMA_REQUIRE_UV=1 but AUTOMA_TEST_UV is not set'));
} else if (!uv) {
  console.log('NOTICE: AUTOMA_TEST_UV is not set: skipping the dashboard tests of scripts with dependencies');
}

describe('dashboard: scripts with dependencies', { skip: uv ? false : 'no uv (AUTOMA_TEST_UV)' }, () => {
  let wheels;
  let server;
  let browser;
  let page;
  let token;
  const hashes = {};

  const call = async (method, route, body, expected) => {
    const response = await fetch(`${server.url}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = response.status === 204 ? null : await response.json();
    if (expected) assert.equal(response.status, expected, `${method} ${route}: ${JSON.stringify(json)}`);
    else assert.ok(response.ok, `${method} ${route} answered ${response.status}: ${JSON.stringify(json)}`);
    return json;
  };
  const go = (hash) => page.goto(`${server.url}/#${hash}`);
  const heading = (text) => page.getByRole('heading', { level: 1, name: text });

  async function logIn({ email, password }) {
    await page.goto(server.url);
    await heading('Log in').waitFor();
    await page.getByLabel('E-mail').fill(email);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await heading('Overview').waitFor();
  }

  before(async () => {
    wheels = mkdtempSync(path.join(tmpdir(), 'automa-wheels-'));
    // The build runs as a sandbox slot's user, which must be able to read the wheels.
    chmodSync(wheels, 0o755);
    hashes['1.0.0'] = makeWheel(wheels, 'demo-pkg', '1.0.0');
    server = await startServer({ AUTOMA_UV: uv, AUTOMA_PACKAGE_FIND_LINKS: wheels, AUTOMA_PACKAGE_OFFLINE: 'true' });
    const first = await fetch(`${server.url}/users`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ADMIN),
    });
    assert.equal(first.status, 201, 'the first user is created as admin');
    const login = await fetch(`${server.url}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ username: ADMIN.email, password: ADMIN.password }),
    });
    token = (await login.json()).access_token;
    await call('POST', '/users', { ...VIEWER, role: 'viewer' }, 201);
    browser = await openBrowser(server.url);
    page = browser.page;
    await logIn(ADMIN);
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
    if (wheels) rmSync(wheels, { recursive: true, force: true });
  });

  afterEach(() => {
    assert.deepEqual(browser.problems(), [], 'the browser saw errors');
  });

  let scriptId;
  const panel = () => page.locator('section.dependencies');

  it("shows a PEP 723 script's requirements and locked package, saved through the API", async () => {
    const script = await call('POST', '/scripts', { name: 'with-packages', content: withPackages(['demo-pkg>=1']) }, 201);
    scriptId = script.id;
    await go(`/scripts/${scriptId}`);
    await heading('with-packages').waitFor();
    await panel().getByRole('heading', { name: 'Dependencies' }).waitFor();
    assert.equal(await panel().locator('dd code').first().textContent(), '>=3.8');
    assert.deepEqual(await panel().locator('.requirements li').allTextContents(), ['demo-pkg>=1']);
    const row = panel().locator('tr[data-package="demo-pkg"]');
    assert.deepEqual(await row.locator('td').allTextContents(), ['demo-pkg', '1.0.0', '—', hashes['1.0.0'].slice(7, 19)]);
    assert.equal(await row.locator('.hash').getAttribute('title'), hashes['1.0.0'], 'the full hash is on hover');
    await screenshots(page, '30-script-dependencies');
  });

  it('updates the lock into a new version, shows the lock diff, then reports an unchanged lock', async () => {
    hashes['1.1.0'] = makeWheel(wheels, 'demo-pkg', '1.1.0');
    await panel().getByRole('button', { name: 'Update lock' }).click();
    await page.getByText('Lock updated: saved as version 2.').waitFor();
    await page.locator('.meta').getByText('Version 2').waitFor();
    const row = panel().locator('tr[data-package="demo-pkg"]');
    assert.equal(await row.locator('td').nth(1).textContent(), '1.1.0');
    assert.equal(await row.locator('.hash').getAttribute('title'), hashes['1.1.0']);
    const lockChanges = page.getByRole('list', { name: 'Lock changes' });
    assert.deepEqual(await lockChanges.locator('li').allTextContents(), ['~demo-pkg 1.0.0 → 1.1.0']);
    assert.equal(await page.getByRole('list', { name: 'Dependency changes' }).count(), 0);
    await page.getByText('The source is the same in v1 and v2.').waitFor();
    await screenshots(page, '31-script-lock-diff');

    await panel().getByRole('button', { name: 'Update lock' }).click();
    await panel().locator('.lock-outcome:not(.error)').getByText('The lock is up to date: version 2 is unchanged.').waitFor();
  });

  it('diffs added requirements and packages between versions, with the source', async () => {
    makeWheel(wheels, 'extra-pkg', '0.1.0');
    await call('PUT', `/scripts/${scriptId}`, { content: withPackages(['demo-pkg>=1', 'extra-pkg']) });
    await page.reload();
    await page.locator('.meta').getByText('Version 3').waitFor();
    assert.deepEqual(await page.getByRole('list', { name: 'Dependency changes' }).locator('li').allTextContents(), ['+requirement extra-pkg added']);
    assert.deepEqual(await page.getByRole('list', { name: 'Lock changes' }).locator('li').allTextContents(), ['+extra-pkg 0.1.0 added']);
    await page.locator('.diff-line.add').getByText('# dependencies = ["demo-pkg>=1", "extra-pkg"]').waitFor();
    await page.getByLabel('From', { exact: true }).selectOption('1');
    assert.deepEqual(await page.getByRole('list', { name: 'Lock changes' }).locator('li').allTextContents(),
      ['+extra-pkg 0.1.0 added', '~demo-pkg 1.0.0 → 1.1.0']);
  });

  it("shows the 409's detail when the script lost its dependencies in between", async () => {
    await call('PUT', `/scripts/${scriptId}`, { content: 'print("no packages")\n' });
    browser.expectError(409, /^\/scripts\/\d+\/lock$/);
    await panel().getByRole('button', { name: 'Update lock' }).click();
    await panel().locator('.lock-outcome.error').getByText('the script has no dependencies to lock').waitFor();
    await page.reload();
    await page.locator('.meta').getByText('Version 4').waitFor();
    await panel().getByText(/^No dependencies/).waitFor();
    assert.equal(await panel().getByRole('button', { name: 'Update lock' }).count(), 0);
    assert.deepEqual(await page.getByRole('list', { name: 'Dependency changes' }).locator('li').allTextContents(),
      ['−requirement demo-pkg>=1 removed', '−requirement extra-pkg removed', '~requires-python >=3.8 → any']);
  });

  it('shows "Preparing environment" live while the agent builds it, then how long it took', async () => {
    const script = await call('POST', '/scripts', { name: 'imports-package', content: withPackages(['demo-pkg>=1']) }, 201);
    scriptId = script.id;
    const buildLock = await holdBuildLock(server.dir);
    let run;
    try {
      run = await call('POST', '/execute', { script_id: script.id, args: ['wait'] }, 202);
      await go(`/runs/${run.id}`);
      const banner = page.locator('.run-preparing');
      await banner.getByText('Preparing environment…').waitFor({ timeout: 30000 });
      await page.locator('.environment').getByText('preparing…').waitFor();
      await page.locator('h1 .badge.status-running').waitFor();
      await screenshots(page, '32-run-preparing-environment');
    } finally {
      await buildLock.release();
    }
    await page.locator('pre.log .stdout').getByText('demo-pkg 1.1.0').waitFor({ timeout: 60000 });
    await page.locator('pre.log .system').getByText(/environment ready \(\d+ ms, built\)/).waitFor();
    assert.equal(await page.locator('.run-preparing').count(), 0, 'the banner goes once the environment is ready');
    assert.match(await page.locator('.environment').textContent(), /^built in \d+(\.\d+)? (ms|s)$/);
    assert.equal((await call('GET', `/runs/${run.id}`)).status, 'running', 'the ready state came live, not from the finished run');
    await screenshots(page, '33-run-environment-ready');
    await call('POST', `/runs/${run.id}/cancel`);
    await page.locator('h1 .badge.status-cancelled').waitFor({ timeout: 30000 });
  });

  it('shows a cached environment on the next run, from the run record', async () => {
    await go(`/scripts/${scriptId}`);
    await heading('imports-package').waitFor();
    await page.getByRole('button', { name: 'Run now' }).click();
    await page.waitForURL(/#\/runs\/\d+$/);
    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: 60000 });
    await page.locator('pre.log .system').getByText('environment ready (0 ms, cached)').waitFor();
    const runId = Number(new URL(page.url()).hash.split('/').pop());
    assert.equal((await call('GET', `/runs/${runId}`)).environment_ms, 0);
    assert.equal(await page.locator('.environment').textContent(), 'cached');
  });

  it('shows a viewer the dependencies without an update-lock button', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await logIn(VIEWER);
    await go(`/scripts/${scriptId}`);
    await heading('imports-package').waitFor();
    await panel().locator('tr[data-package="demo-pkg"]').waitFor();
    assert.equal(await panel().getByRole('button', { name: 'Update lock' }).count(), 0);
    assert.equal(await page.getByRole('button', { name: 'Run now' }).count(), 0);
  });
});
