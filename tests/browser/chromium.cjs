// How the browser tests start Debian's chromium (headless, through playwright-core): the
// executable (RINGTRAIN_CHROMIUM, default /usr/bin/chromium; never a downloaded one) and its
// flags. As /work/.library/env/machines/rust.md: no sandbox as root, and no background traffic
// (this machine's network is closed; the page must not need it anyway).
'use strict';

const executablePath = process.env.RINGTRAIN_CHROMIUM || '/usr/bin/chromium';

const args = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

module.exports = { executablePath, args };
