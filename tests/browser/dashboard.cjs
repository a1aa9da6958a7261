// Drives Debian's chromium (headless, through playwright-core) against a running coordinator's
// dashboard and records what the page showed; tests/tests/dashboard.rs asserts on the record.
//
//   NODE_PATH=<browser-tools>/node_modules node tests/browser/dashboard.cjs
//
// Environment:
//   DASHBOARD_URL      the page, e.g. http://127.0.0.1:9100/
//   DASHBOARD_OUT      folder for browser.json, dashboard-running.png and dashboard.png
//   DASHBOARD_WORKERS  rows the workers table must reach
//   DASHBOARD_TIMEOUT_S  give up after this long (default 150)
//   RINGTRAIN_CHROMIUM the browser (default /usr/bin/chromium); never a downloaded one
//
// What it does: opens the page; samples it every 250 ms (connection state, status, progress,
// worker rows, epoch rows, each chart's data-points) until the stream says the run ended;
// takes dashboard-running.png once the run is running with every worker and a chart has data;
// then reloads the page and records the chart points before and after (a reloaded page must
// draw the whole history); at the end takes dashboard.png. It records every request, console
// error and page error. Exit 0 when the run's end was seen, 1 otherwise (the record is written
// either way).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const url = process.env.DASHBOARD_URL;
const out = process.env.DASHBOARD_OUT;
const workers = Number(process.env.DASHBOARD_WORKERS || '1');
const timeoutMs = 1000 * Number(process.env.DASHBOARD_TIMEOUT_S || '150');
const browserFlags = require('./chromium.cjs');

const record = {
  url,
  samples: [],
  requests: [],
  failed_requests: [],
  console_errors: [],
  page_errors: [],
  reload: null,
  screenshots: [],
  ended: false,
  error: null,
};

function sample() {
  const progress = document.getElementById('progress');
  const banner = document.getElementById('banner');
  return {
    conn: document.body.dataset.conn || null,
    status: document.body.dataset.status || null,
    step: Number(progress.dataset.step),
    total: Number(progress.dataset.total),
    workers: [...document.querySelectorAll('#workers tbody tr[data-worker-id]')].map((tr) => ({
      id: tr.dataset.workerId,
      cells: [...tr.cells].map((td) => td.textContent),
    })),
    epochs: document.querySelectorAll('#epochs tbody tr[data-epoch]').length,
    points: Object.fromEntries(
      [...document.querySelectorAll('canvas[data-points]')].map((c) => [c.id, Number(c.dataset.points)]),
    ),
    banner: banner.hidden ? null : banner.textContent,
  };
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ringtrain-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: browserFlags.executablePath,
    headless: true,
    args: browserFlags.args,
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
  });
  const started = Date.now();
  const left = () => timeoutMs - (Date.now() - started);
  try {
    context.on('request', (r) => record.requests.push(r.url()));
    context.on('requestfailed', (r) => {
      // An event stream cut by a reload or the page's own close is not a failure of the page.
      const f = r.failure();
      if (!(f && /ERR_ABORTED/.test(f.errorText))) record.failed_requests.push(`${r.url()}: ${f && f.errorText}`);
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error') record.console_errors.push(m.text());
    });
    page.on('pageerror', (e) => record.page_errors.push(String(e)));
    await page.goto(url, { waitUntil: 'load', timeout: 20000 });
    const t0 = Date.now();
    const shoot = async (name) => {
      const file = path.join(out, name);
      await page.screenshot({ path: file, fullPage: true });
      record.screenshots.push(file);
    };
    let running = false;
    while (left() > 0) {
      const s = await page.evaluate(sample);
      s.t_ms = Date.now() - t0;
      record.samples.push(s);
      if (
        !running &&
        s.status === 'running' &&
        s.workers.length >= workers &&
        s.points['chart-loss'] > 0
      ) {
        running = true;
        await shoot('dashboard-running.png');
        // A reload mid-run draws the whole run again from /history.
        const before = s.points;
        await page.reload({ waitUntil: 'load', timeout: 20000 });
        // Generous: on a loaded 2-core machine the reload and /history can take seconds.
        await page.waitForFunction(
          (n) => Number(document.getElementById('chart-loss').dataset.points) >= n,
          before['chart-loss'],
          { timeout: 30000 },
        );
        const after = await page.evaluate(sample);
        record.reload = { before, after: after.points };
      }
      if (s.conn === 'ended') {
        record.ended = true;
        break;
      }
      await page.waitForTimeout(250);
    }
    // Let the final frame settle (the last history fetch after the end event).
    await page.waitForTimeout(500);
    record.samples.push({ ...(await page.evaluate(sample)), t_ms: Date.now() - t0 });
    await shoot('dashboard.png');
    if (!record.ended) record.error = `the page did not show the run's end within ${timeoutMs / 1000} s`;
  } catch (e) {
    record.error = String(e && e.stack ? e.stack : e);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  fs.writeFileSync(path.join(out, 'browser.json'), JSON.stringify(record, null, 1));
  const last = record.samples[record.samples.length - 1] || {};
  console.log(
    `dashboard: ${record.samples.length} samples, ended=${record.ended}, last status ${last.status}, ` +
      `${record.requests.length} requests, ${record.console_errors.length} console errors` +
      (record.error ? `; error: ${record.error}` : ''),
  );
  process.exit(record.ended && !record.error ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
