// The dashboard, end to end: one real server and one browser, walked through the flows an operator follows.
// Steps build on each other (the admin created first logs in later, the script made here is run there), so
// they run in order; each step checks the browser stayed clean.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { after, afterEach, before, describe, it } from 'node:test';
import { openBrowser, screenshots, startServer } from './harness.js';

const ADMIN = { email: 'admin@example.com', password: 'correct horse battery' };

const STREAMING = `import time

for i in range(1, 4):
    print(f"line {i}", flush=True)
    time.sleep(1.5)
print("done")
`;
const FAILING = `import sys

print("about to fail", file=sys.stderr)
sys.exit(3)
`;
const READS_PAYLOAD = `import json, os

print("ref", json.load(open(os.environ["AUTOMA_TRIGGER_PAYLOAD"]))["ref"])
`;
const LONG = `import time

print("started", flush=True)
time.sleep(600)
`;

/** A webhook receiver the server posts notices to; it keeps each request's signature header and exact body. */
async function startReceiver() {
  const received = [];
  const http = createServer((request, response) => {
    const parts = [];
    request.on('data', (part) => parts.push(part));
    request.on('end', () => {
      received.push({ signature: request.headers['x-automa-signature'], body: Buffer.concat(parts) });
      response.writeHead(200).end();
    });
  });
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${http.address().port}/hook`,
    received,
    close: () => new Promise((resolve) => http.close(resolve)),
  };
}

describe('dashboard', () => {
  let server;
  let browser;
  let page;
  let receiver;
  let signingSecret;

  before(async () => {
    receiver = await startReceiver();
    server = await startServer();
    browser = await openBrowser(server.url);
    page = browser.page;
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
    if (receiver) await receiver.close();
  });

  afterEach(() => {
    assert.deepEqual(browser.problems(), [], 'the browser saw errors');
  });

  const go = async (hash) => {
    await page.goto(`${server.url}/#${hash}`);
  };
  const heading = (text) => page.getByRole('heading', { level: 1, name: text });

  async function createScript(name, content) {
    await go('/scripts/new');
    // A hash change re-renders asynchronously: wait for the form, not the page being left.
    await heading('New script').waitFor();
    await page.getByLabel('Name', { exact: true }).fill(name);
    await page.getByLabel('Python source').fill(content);
    await page.getByRole('button', { name: 'Create script' }).click();
    await heading(name).waitFor();
    return Number(new URL(page.url()).hash.split('/').pop());
  }

  /** Signs in over the API as the admin; returns `call(method, path, body)`, which asserts a 2xx answer. */
  async function signedInApi() {
    const login = await fetch(`${server.url}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ username: ADMIN.email, password: ADMIN.password }),
    });
    assert.equal(login.status, 200);
    const { access_token: token } = await login.json();
    return async (method, path, body) => {
      const response = await fetch(`${server.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      assert.ok(response.ok, `${method} ${path} answered ${response.status}`);
      return response.status === 204 ? null : response.json();
    };
  }

  async function runScriptNow() {
    await page.getByRole('button', { name: 'Run now' }).first().click();
    await page.waitForURL(/#\/runs\/\d+$/);
  }

  it('creates the first admin on a fresh server', async () => {
    await page.goto(server.url);
    await heading('Create the first admin').waitFor();
    await screenshots(page, '01-setup');
    await page.getByLabel('E-mail').fill(ADMIN.email);
    await page.getByLabel('Password', { exact: true }).fill(ADMIN.password);
    await page.getByLabel('Repeat password').fill(ADMIN.password);
    await page.getByRole('button', { name: 'Create admin and log in' }).click();
    await heading('Overview').waitFor();
    await page.locator('#whoami').getByText(ADMIN.email).waitFor();
  });

  it('logs out and back in, showing a wrong password', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await heading('Log in').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    await screenshots(page, '02-login');
    await page.getByLabel('E-mail').fill(ADMIN.email);
    await page.getByLabel('Password').fill('not the password');
    browser.expectError(401, /^\/token$/);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').getByText('wrong e-mail or password').waitFor();
    await page.getByLabel('Password').fill(ADMIN.password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await heading('Overview').waitFor();
    await page.locator('section[aria-labelledby="p-counts"] .tiles').waitFor();
    // The database's size comes from /ready, e.g. "1.2 MiB".
    await page.locator('.tile', { hasText: 'Database (sqlite)' }).locator('.tile-value', { hasText: /^\d+(\.\d+)? (B|KiB|MiB|GiB)$/ }).waitFor();
    await screenshots(page, '03-overview');
  });

  it('shows a syntax error inline at its line, then creates the script', async () => {
    await go('/scripts/new');
    await page.getByLabel('Name', { exact: true }).fill('stream');
    await page.getByLabel('Python source').fill('import sys\n\ndef broken(:\n    pass\n');
    browser.expectError(422, /^\/scripts$/);
    await page.getByRole('button', { name: 'Create script' }).click();
    const message = page.locator('.editor-error');
    await message.getByText(/line 3/).waitFor();
    assert.equal(await page.locator('.gutter .error-line').textContent(), '3');
    await screenshots(page, '04-script-syntax-error');
    await page.getByLabel('Python source').fill(STREAMING);
    assert.equal(await page.locator('.gutter .error-line').count(), 0);
    await page.getByRole('button', { name: 'Create script' }).click();
    await heading('stream').waitFor();
  });

  it('saves a second version and diffs it against the first', async () => {
    await page.getByLabel('Python source').fill(STREAMING.replace('print("done")', 'print("all done")'));
    await page.getByRole('button', { name: 'Save new version' }).click();
    await page.getByText('Saved as version 2.').waitFor();
    await page.locator('.diff-line.add').getByText('print("all done")').waitFor();
    await page.locator('.diff-line.del').getByText('print("done")').waitFor();
    await screenshots(page, '05-script-versions');
    await go('/scripts');
    await page.getByRole('link', { name: 'stream' }).waitFor();
    await screenshots(page, '06-scripts');
  });

  it('creates a task', async () => {
    await go('/tasks/new');
    await heading('New task').waitFor();
    await heading('New task').waitFor();
    await page.getByLabel('Name', { exact: true }).fill('nightly-stream');
    await page.getByLabel('Script', { exact: true }).selectOption({ label: 'stream' });
    await page.getByLabel('Arguments').fill('--verbose');
    await page.getByRole('button', { name: 'Create task' }).click();
    await heading('nightly-stream').waitFor();
    await screenshots(page, '07-task');
  });

  it('edits the schedule and previews the next fires in its time zone', async () => {
    await page.getByLabel('Cron', { exact: true }).check();
    await page.getByLabel('Time zone', { exact: true }).fill('Europe/Berlin');
    await page.getByLabel('Cron expression').fill('61 * * * *');
    browser.expectError(422, /^\/schedule\/preview$/);
    await page.locator('#schedule-preview .preview-error').waitFor();
    await page.locator('[data-field="schedule.cron"] .field-error:not([hidden])').waitFor();
    await page.getByLabel('Cron expression').fill('30 9 * * 1-5');
    const fires = page.locator('#schedule-preview .fires li');
    await fires.nth(4).waitFor();
    assert.equal(await fires.count(), 5);
    for (const text of await fires.allTextContents()) assert.match(text, /09:30:00 CES?T$/);
    await screenshots(page, '08-schedule-preview');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText('Task saved.').waitFor();
    await page.locator('.meta').getByText('Next fire').waitFor();
    await go('/tasks');
    await page.getByRole('cell', { name: /30 9 \* \* 1-5/ }).waitFor();
    await screenshots(page, '09-tasks');
  });

  it('shows a task created, paused and deleted through the API live on the tasks page, without reloading', async () => {
    const call = await signedInApi();
    await page.locator('#live[data-state="on"]').waitFor();
    await page.evaluate(() => { window.notReloaded = true; });
    const { items: [script] } = await call('GET', '/scripts?name=stream');
    const task = await call('POST', '/tasks', { name: 'made-elsewhere', script_id: script.id });
    const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'made-elsewhere' }) });
    await row.locator('.badge', { hasText: 'enabled' }).waitFor();
    await call('POST', `/tasks/${task.id}/pause`);
    await row.locator('.badge', { hasText: 'disabled' }).waitFor();
    await call('DELETE', `/tasks/${task.id}`);
    await row.waitFor({ state: 'detached' });
    assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was not reloaded');
  });

  it('runs the task and shows its output live, line by line', async () => {
    await page.getByRole('link', { name: 'nightly-stream' }).click();
    await heading('nightly-stream').waitFor();
    await runScriptNow();
    const log = page.locator('pre.log');
    await log.getByText('line 1').waitFor();
    assert.doesNotMatch(await log.textContent(), /line 3/, 'the output arrived all at once, not live');
    await page.locator('.badge.status-running').first().waitFor();
    await log.getByText('line 3').waitFor();
    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: 30000 });
    await log.getByText('all done').waitFor();
    await screenshots(page, '10-run-succeeded');
  });

  it('creates a hook, shows its URL once, and the hook starts the task with its payload', async () => {
    await createScript('reader', READS_PAYLOAD);
    await go('/tasks/new');
    await heading('New task').waitFor();
    await page.getByLabel('Name', { exact: true }).fill('on-push');
    await page.getByLabel('Script', { exact: true }).selectOption({ label: 'reader' });
    await page.getByRole('button', { name: 'Create task' }).click();
    await heading('on-push').waitFor();
    const hookForm = page.getByRole('form', { name: 'New hook' });
    await hookForm.getByLabel('Name').fill('ci');
    await hookForm.getByRole('button', { name: 'Create hook' }).click();
    const url = await page.getByLabel('New hook URL').inputValue();
    assert.match(url, new RegExp(`^${server.url}/hooks/atmh_[A-Za-z0-9_-]{43}$`));
    await page.locator('tr[data-hook="ci"]').waitFor();
    assert.doesNotMatch(await page.locator('section[aria-labelledby="task-hooks"] table').textContent(), new RegExp(url.split('/').pop()));
    await screenshots(page, '10a-task-hooks');

    // A task that runs after on-push succeeds, set in the form.
    await createScript('follower', 'print("followed")\n');
    await go('/tasks/new');
    await heading('New task').waitFor();
    await page.getByLabel('Name', { exact: true }).fill('after-push');
    await page.getByLabel('Script', { exact: true }).selectOption({ label: 'follower' });
    await page.getByRole('button', { name: 'Add a task to run after' }).click();
    await page.getByLabel('Run after task').selectOption({ label: 'on-push' });
    assert.equal(await page.getByLabel('when it succeeded').isChecked(), true);
    await page.getByRole('button', { name: 'Create task' }).click();
    await heading('after-push').waitFor();
    assert.equal(await page.getByLabel('Run after task').locator('option:checked').textContent(), 'on-push');

    const called = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"ref": "refs/heads/main"}' });
    assert.equal(called.status, 202);
    const { run_id: runId } = await called.json();
    await go(`/runs/${runId}`);
    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: 30000 });
    await page.locator('.trigger').getByText('hook (hook ci)').waitFor();
    await page.locator('pre.log').getByText('ref refs/heads/main').waitFor();
    await screenshots(page, '10b-run-by-hook');

    await go('/tasks');
    await page.getByRole('link', { name: 'after-push' }).click();
    await heading('after-push').waitFor();
    await page.locator('section[aria-labelledby="task-runs"] tbody tr').first().getByRole('link').click();
    await page.locator('.trigger').getByRole('link', { name: `#${runId}` }).waitFor();
    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: 30000 });
    await page.locator('pre.log').getByText('followed').waitFor();

    await go('/tasks');
    await page.getByRole('link', { name: 'on-push' }).click();
    await heading('on-push').waitFor();
    await page.locator('tr[data-hook="ci"]').getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke hook' }).click();
    await page.locator('tr[data-hook="ci"]').getByText('revoked').waitFor();
    const refused = await fetch(url, { method: 'POST' });
    assert.equal(refused.status, 404);
  });

  it("shows a failed run's error", async () => {
    await createScript('fails', FAILING);
    await runScriptNow();
    await page.locator('h1 .badge.status-failed').waitFor({ timeout: 30000 });
    await page.locator('.run-error').getByText('exited with code 3').waitFor();
    await page.locator('pre.log .stderr').getByText('about to fail').waitFor();
    await screenshots(page, '11-run-failed');
  });

  it('cancels a long run after asking', async () => {
    await createScript('sleeper', LONG);
    await runScriptNow();
    await page.locator('pre.log').getByText('started').waitFor({ timeout: 30000 });
    await page.getByRole('button', { name: 'Cancel run' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByText(/Cancel run #\d+\?/).waitFor();
    await screenshots(page, '12-cancel-confirm');
    await dialog.getByRole('button', { name: 'Cancel run' }).click();
    await page.locator('h1 .badge.status-cancelled').waitFor({ timeout: 30000 });
  });

  it('adds a default webhook channel, shows its secret once and sends a signed test', async () => {
    await go('/notifications');
    await heading('Notifications').waitFor();
    await page.getByLabel('Name', { exact: true }).fill('ops');
    await page.getByLabel('URL').fill(receiver.url);
    await page.getByLabel(/Default channel/).check();
    await page.getByRole('button', { name: 'Create channel' }).click();
    signingSecret = await page.getByLabel('Signing secret').inputValue();
    assert.match(signingSecret, /^[0-9a-f]{64}$/);
    const row = page.locator('tr[data-channel="ops"]');
    await row.waitFor();
    await screenshots(page, '20-notification-channels');
    await row.getByRole('button', { name: 'Send test' }).click();
    await row.locator('.test-outcome').getByText('Delivered (200)').waitFor();
    const test = receiver.received.find((r) => JSON.parse(r.body).event === 'test');
    assert.ok(test, 'the receiver got the test notice');
    assert.equal(test.signature, `sha256=${createHmac('sha256', signingSecret).update(test.body).digest('hex')}`);
    await page.reload();
    await row.waitFor();
    assert.equal(await page.getByLabel('Signing secret').count(), 0, 'the secret is shown once');
  });

  it("notifies the default channel of a task's failure and shows the delivery on the run page", async () => {
    await go('/tasks/new');
    await heading('New task').waitFor();
    await heading('New task').waitFor();
    await page.getByLabel('Name', { exact: true }).fill('fails-nightly');
    await page.getByLabel('Script', { exact: true }).selectOption({ label: 'fails' });
    await page.getByRole('button', { name: 'Create task' }).click();
    await heading('fails-nightly').waitFor();
    await runScriptNow();
    await page.locator('h1 .badge.status-failed').waitFor({ timeout: 30000 });
    const delivery = page.locator('.deliveries tbody tr').filter({ hasText: 'ops' });
    await delivery.locator('.badge', { hasText: 'delivered' }).waitFor({ timeout: 30000 });
    await delivery.getByText('failed', { exact: true }).waitFor();
    await screenshots(page, '21-run-notifications');
    const notice = receiver.received.map((r) => ({ ...r, json: JSON.parse(r.body) })).find((r) => r.json.event === 'failed');
    assert.equal(notice.json.run.task_name, 'fails-nightly');
    assert.equal(notice.json.run.exit_code, 3);
    assert.equal(notice.signature, `sha256=${createHmac('sha256', signingSecret).update(notice.body).digest('hex')}`);
  });

  it('lists runs with filters', async () => {
    await go('/runs');
    await heading('Runs').waitFor();
    await page.locator('tr[data-status="failed"]').first().waitFor();
    await page.getByLabel('Status').selectOption('failed');
    await page.waitForFunction(() => [...document.querySelectorAll('tbody tr')].every((row) => row.dataset.status === 'failed'));
    await page.getByLabel('Status').selectOption('');
    await page.locator('tr[data-status="succeeded"]').first().waitFor();
    await screenshots(page, '13-runs');
    await go('/');
    await page.locator('section[aria-labelledby="p-recent"] .run-list li').first().waitFor();
    await screenshots(page, '14-overview-with-runs');
  });

  it('shows agents with their sandbox capabilities', async () => {
    await go('/agents');
    await heading('Agents').waitFor();
    await page.locator('.agent-card, .state.empty').first().waitFor();
    await screenshots(page, '15-agents');
  });

  it('enrolls a remote agent with its token in the environment, not on the command line', async () => {
    await go('/agents');
    await heading('Agents').waitFor();
    await page.getByText('Enroll a remote agent').click();
    await page.getByLabel('Name', { exact: true }).fill('remote-1');
    await page.getByRole('button', { name: 'Enroll agent' }).click();
    const command = (await page.locator('.secret-once pre').textContent()).trim();
    assert.match(command, /^AUTOMA_TOKEN=atma_\S+ automa agent --server http:\/\/127\.0\.0\.1:\d+$/);
    assert.doesNotMatch(command, /--token/);
  });

  it('verifies the audit log', async () => {
    await go('/audit');
    await heading('Audit log').waitFor();
    await page.getByRole('cell', { name: 'script.create' }).first().waitFor();
    await page.getByRole('button', { name: 'Verify chain' }).click();
    await page.locator('.banner.ok').getByText('Chain intact.').waitFor();
    await page.locator('.banner.ok', { hasText: 'All are keyed with the server key.' }).waitFor();
    await page.getByLabel('Action').fill('task.update');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await page.getByRole('cell', { name: 'task.update' }).first().waitFor();
    await page.waitForFunction(() => [...document.querySelectorAll('tbody td code')].every((c) => c.textContent === 'task.update'));
    await screenshots(page, '16-audit');
  });

  it('manages users and shows a new API token once', async () => {
    await go('/users');
    await page.getByText('Add a user').click();
    await page.getByLabel('E-mail').fill('viewer@example.com');
    await page.getByLabel('Initial password').fill('viewer password');
    await page.getByRole('button', { name: 'Create user' }).click();
    await page.getByRole('cell', { name: 'viewer@example.com' }).waitFor();
    await screenshots(page, '17-users');
    await go('/tokens');
    await page.getByLabel('Name').fill('ci');
    await page.getByRole('button', { name: 'Create token' }).click();
    const token = await page.getByLabel('New API token').inputValue();
    assert.match(token, /^atm_/);
    await page.getByRole('cell', { name: 'ci', exact: true }).waitFor();
    await screenshots(page, '18-tokens');
    await go('/export');
    await heading('Export').waitFor();
    const download = page.waitForEvent('download');
    await page.getByRole('button', { name: 'Download JSON export' }).click();
    const file = await download;
    assert.match(file.suggestedFilename(), /^automa-export-.*\.json$/);
    await screenshots(page, '19-export');
  });

  it('pages the run history: Older walks back by cursor, Newer returns, and a filter starts over', async () => {
    const call = await signedInApi();
    // More runs than two pages of 50 hold, so the middle page has both neighbours. Only the runs this test
    // starts (trigger `api`) are paged: a schedule firing meanwhile, or runs other tests add, cannot shift them.
    const before = await call('GET', '/runs?trigger=api&limit=1&count=true');
    const wanted = 101 - before.total;
    for (let i = 0; i < wanted; i += 1) await call('POST', '/execute', { content: `print(${i})` });
    // Finished first, so that live updates do not reshuffle what a status filter shows.
    let all;
    for (;;) {
      all = await call('GET', '/runs?trigger=api&limit=200');
      if (all.items.every((run) => !['queued', 'running'].includes(run.status))) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(all.items.length >= 101, `${all.items.length} runs`);
    const ids = all.items.map((run) => String(run.id));

    await go('/runs?trigger=api');
    await heading('Runs').waitFor();
    const rows = page.locator('tbody tr[data-run]');
    const shown = () => rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.run));
    const pager = page.locator('.pager');
    const older = pager.getByRole('button', { name: 'Older' });
    const newer = pager.getByRole('button', { name: 'Newer' });
    const showing = (first, last) => page.waitForFunction(([a, b]) => {
      const trs = [...document.querySelectorAll('tbody tr[data-run]')];
      return trs.length > 0 && trs[0].dataset.run === a && trs[trs.length - 1].dataset.run === b;
    }, [first, last]);

    await showing(ids[0], ids[49]);
    await pager.getByText(new RegExp(`^1–50 of ${ids.length}$`)).waitFor();
    assert.equal(await newer.isDisabled(), true, 'the newest page has nothing newer');
    await older.click();
    await showing(ids[50], ids[99]);
    assert.deepEqual(await shown(), ids.slice(50, 100));
    await pager.getByText(new RegExp(`^51–100 of ${ids.length}$`)).waitFor();
    await older.click();
    await showing(ids[100], ids[ids.length - 1]);
    assert.equal(await older.isDisabled(), true, 'the oldest page has nothing older');
    await screenshots(page, '20-runs-oldest-page');
    await newer.click();
    await showing(ids[50], ids[99]);
    await newer.click();
    await showing(ids[0], ids[49]);
    assert.equal(await newer.isDisabled(), true);

    // A filter starts from the newest matching run again, on the first page.
    await older.click();
    await showing(ids[50], ids[99]);
    const succeeded = await call('GET', '/runs?trigger=api&status=succeeded&limit=50&count=true');
    await page.getByLabel('Status').selectOption('succeeded');
    await showing(String(succeeded.items[0].id), String(succeeded.items[succeeded.items.length - 1].id));
    await pager.getByText(new RegExp(`^1–${succeeded.items.length} of ${succeeded.total}$`)).waitFor();
    assert.equal(await newer.isDisabled(), true);
  });

  it('logs out', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await heading('Log in').waitFor();
    await page.getByText('You are logged out.').waitFor();
    await go('/runs');
    await heading('Log in').waitFor();
  });
});
