// Opens a running coordinator's dashboard in Debian's chromium (headless, playwright-core) and
// waits until the workers table marks a straggler; then records that row and takes
// dashboard-straggler.png. tests/tests/straggler.rs asserts on the record.
//
//   NODE_PATH=<browser-tools>/node_modules node tests/browser/straggler.cjs
//
// Environment:
//   DASHBOARD_URL        the page, e.g. http://127.0.0.1:9100/
//   DASHBOARD_OUT        folder for straggler.json and dashboard-straggler.png
//   DASHBOARD_TIMEOUT_S  give up after this long (default 60)
//   RINGTRAIN_CHROMIUM   the browser (default /usr/bin/chromium); never a downloaded one
//
// Exit 0 when a straggler row was seen, 1 otherwise (the record is written either way).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const url = process.env.DASHBOARD_URL;
const out = process.env.DASHBOARD_OUT;
const timeoutMs = 1000 * Number(process.env.DASHBOARD_TIMEOUT_S || '60');
const browserFlags = require('./chromium.cjs');
const record = { url, rows: null, console_errors: [], error: null };

(async () => {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: browserFlags.executablePath,
      headless: true,
      args: browserFlags.args,
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
    page.on('console', (m) => { if (m.type() === 'error') record.console_errors.push(m.text()); });
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForSelector('#workers tbody tr.straggler', { timeout: timeoutMs });
    // Let the status stream settle so the screenshot shows the whole table.
    await page.waitForTimeout(500);
    record.rows = await page.$$eval('#workers tbody tr', (trs) => trs.map((tr) => ({
      worker_id: tr.dataset.workerId || null,
      straggler: tr.classList.contains('straggler'),
      cells: Array.from(tr.cells).map((td) => td.textContent),
    })));
    await page.screenshot({ path: path.join(out, 'dashboard-straggler.png'), fullPage: true });
  } catch (e) {
    record.error = String(e && e.stack || e);
  } finally {
    if (browser) await browser.close().catch(() => {});
    fs.writeFileSync(path.join(out, 'straggler.json'), JSON.stringify(record, null, 2) + os.EOL);
    process.exit(record.error ? 1 : 0);
  }
})();
