#!/usr/bin/env node
// A headless Chromium that tandem's Rust tests drive over stdin/stdout, one JSON
// object per line, so the test decides the timing (open a viewer 10 s later, poll
// getStats until a condition holds) while the browser stays a real WebRTC peer.
//
// Commands (stdin):   {"id": 1, "cmd": "open",  "name": "pub", "url": "http://…"}
//                     {"id": 2, "cmd": "eval",  "name": "pub", "expr": "window.tandem.stats()"}
//                     {"id": 3, "cmd": "screenshot", "name": "pub", "path": "/tmp/pub.png"}
//                     {"id": 3, "cmd": "close", "name": "pub"}
//                     {"id": 4, "cmd": "quit"}
// Answers (stdout):   {"id": 1, "ok": true, "value": …} or {"id": 1, "ok": false, "error": "…"}
// First line:         {"ready": true, "version": "<chromium version>"}
// Page console output goes to stderr, prefixed with the page's name.
//
// Chromium is Debian's (/usr/bin/chromium, or $TANDEM_CHROMIUM); playwright-core
// never downloads a browser. Closing stdin or SIGTERM closes the browser.

'use strict';

const readline = require('readline');
const { chromium } = require('playwright-core');

const executablePath = process.env.TANDEM_CHROMIUM || '/usr/bin/chromium';

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream=fps=30',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
  // A name that is not localhost, for pages that must see an insecure context
  // (plain HTTP, not loopback): http://insecure.tandem.test:PORT/ is the test server.
  '--host-resolver-rules=MAP insecure.tandem.test 127.0.0.1',
  // Every page is a peer the test watches: never throttle one for being "in the background".
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  // playwright gives chromium a fresh, empty --user-data-dir of its own and removes it at close.
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ARGS,
    ignoreDefaultArgs: ['--mute-audio'],
  });
  const pages = new Map();
  let closing = false;

  async function shutdown(code) {
    if (closing) return;
    closing = true;
    try {
      await browser.close();
    } catch (_) {
      /* already gone */
    }
    process.exit(code);
  }
  process.on('SIGTERM', () => shutdown(0));
  process.on('SIGINT', () => shutdown(0));
  browser.on('disconnected', () => {
    if (!closing) {
      process.stderr.write('[browser] chromium disconnected\n');
      process.exit(3);
    }
  });

  async function handle(msg) {
    switch (msg.cmd) {
      case 'open': {
        if (pages.has(msg.name)) throw new Error(`page ${msg.name} already open`);
        // One context per page: separate storage, like separate people.
        const context = await browser.newContext();
        // A script that runs before the page's own (a test's stand-in for the
        // network between the page and the server, e.g. a relay).
        if (msg.init) await context.addInitScript(msg.init);
        const page = await context.newPage();
        page.on('console', (m) => process.stderr.write(`[${msg.name}] ${m.type()}: ${m.text()}\n`));
        page.on('pageerror', (e) => process.stderr.write(`[${msg.name}] pageerror: ${e}\n`));
        pages.set(msg.name, { context, page });
        const resp = await page.goto(msg.url, { waitUntil: 'load', timeout: msg.timeoutMs || 30000 });
        return { status: resp ? resp.status() : null };
      }
      case 'eval': {
        const p = pages.get(msg.name);
        if (!p) throw new Error(`no page ${msg.name}`);
        // The expression may return a promise; its result must be JSON-serialisable.
        return await p.page.evaluate(`(async () => (${msg.expr}))()`);
      }
      case 'screenshot': {
        const p = pages.get(msg.name);
        if (!p) throw new Error(`no page ${msg.name}`);
        await p.page.screenshot({ path: msg.path, fullPage: true });
        return msg.path;
      }
      case 'close': {
        const p = pages.get(msg.name);
        if (!p) throw new Error(`no page ${msg.name}`);
        pages.delete(msg.name);
        // Let the page say goodbye (DELETE) before it goes.
        await p.page.close({ runBeforeUnload: true }).catch(() => {});
        await p.context.close().catch(() => {});
        return true;
      }
      case 'quit':
        setImmediate(() => shutdown(0));
        return true;
      default:
        throw new Error(`unknown command ${msg.cmd}`);
    }
  }

  send({ ready: true, version: browser.version() });
  const rl = readline.createInterface({ input: process.stdin });
  // Commands run one after another, in the order they arrive.
  let queue = Promise.resolve();
  rl.on('line', (line) => {
    queue = queue.then(() => run(line));
  });
  async function run(line) {
    if (!line.trim()) return;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      send({ id: null, ok: false, error: `bad JSON: ${e.message}` });
      return;
    }
    try {
      const value = await handle(msg);
      send({ id: msg.id, ok: true, value: value === undefined ? null : value });
    } catch (e) {
      send({ id: msg.id, ok: false, error: String((e && e.message) || e) });
    }
  }
  rl.on('close', () => {
    queue.then(() => shutdown(0));
  });
}

main().catch((e) => {
  process.stderr.write(`[browser] ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
