// Browser test of the chat page in headless Chromium. e2e_test.go starts
// Redis, an imserver process and the web API, then runs this script with:
//   BASE_URL      the web API and page
//   CONTROL_URL   POST /restart-node restarts the imserver process
//   ADMIN_TOKEN   the kick endpoint's token
//   CHROMIUM      the browser binary (Debian package chromium)
//   SCREENSHOT    where to save a screenshot of the chat page
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run this through go test (webapi-example/e2e_test.go)`);
  return v;
};
const BASE_URL = env('BASE_URL');
const CONTROL_URL = env('CONTROL_URL');
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const SCREENSHOT = env('SCREENSHOT');

const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const pageErrors = [];

async function newPage(name) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      pageErrors.push(`${name} console: ${msg.text()}`);
    }
  });
  return page;
}

async function signIn(page, nick) {
  await page.goto(BASE_URL);
  await page.fill('#signin-form input[name=nick]', nick);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#conn[data-state=open]');
}

async function say(page, text) {
  await page.fill('#composer textarea', text);
  await page.press('#composer textarea', 'Enter');
  await page.waitForSelector(`#message-list .msg.mine .text:text-is("${text}")`);
}

const seeMessage = (page, text) => page.waitForSelector(`#message-list .msg .text:text-is("${text}")`);
const connects = (page) => page.evaluate(() => Number(document.body.dataset.connects || 0));

try {
  const alice = await newPage('alice');
  const bob = await newPage('bob');

  step('two users sign in and join the lobby');
  await signIn(alice, 'alice');
  await signIn(bob, 'bob');
  for (const page of [alice, bob]) {
    await page.click('#rooms li[data-room=lobby] button.join');
    await page.waitForSelector('#conv-title:text-is("# lobby")');
  }
  await alice.waitForSelector('#online li[data-nick=bob]');

  step('they exchange messages in the room');
  await say(alice, 'hello from alice');
  await seeMessage(bob, 'hello from alice');
  await say(bob, 'hi alice, bob here');
  await seeMessage(alice, 'hi alice, bob here');

  step('a private message to an offline user arrives after sign-in');
  await bob.click('#signout');
  await bob.waitForSelector('#signin-form');
  await alice.waitForSelector('#online li[data-nick=bob]', { state: 'detached' });
  await alice.fill('#dm-form input[name=nick]', 'bob');
  await alice.click('#dm-form button');
  await alice.waitForSelector('#conv-title:text-is("@ bob")');
  await say(alice, 'psst, read this when you are back');
  await alice.waitForSelector('#message-list .msg.mine .status:has-text("kept until bob signs in")');
  await signIn(bob, 'bob');
  await bob.click('#dms li[data-nick=alice] button');
  await seeMessage(bob, 'psst, read this when you are back');
  await bob.waitForSelector('#message-list .msg .status:has-text("sent while you were offline")');

  step('a live private message gets a delivery receipt');
  await bob.fill('#composer textarea', 'got it, thanks');
  await bob.press('#composer textarea', 'Enter');
  await bob.waitForSelector('#message-list .msg.mine .status:text-is("delivered")');
  await alice.click('#dms li[data-nick=bob] button');
  await seeMessage(alice, 'got it, thanks');

  step('recall removes the message on the other page');
  await alice.click('#rooms li[data-room=lobby] button.open');
  await bob.click('#rooms li[data-room=lobby] button.open');
  await seeMessage(bob, 'hello from alice'); // history after signing in again
  await say(alice, 'oops, wrong window');
  await seeMessage(bob, 'oops, wrong window');
  await alice.click('#message-list .msg.mine:has(.text:text-is("oops, wrong window")) button.recall');
  await bob.waitForSelector('#message-list .msg .text:text-is("oops, wrong window")', { state: 'detached' });
  await alice.waitForSelector('#message-list .msg .text:text-is("oops, wrong window")', { state: 'detached' });

  step('room history scrolls back in pages');
  await alice.click('#rooms li[data-room=random] button.join');
  await alice.waitForSelector('#conv-title:text-is("# random")');
  await alice.evaluate(async () => {
    for (let i = 1; i <= 40; i++) {
      const res = await fetch('/api/rooms/random/messages', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ text: `history ${i}` }),
      });
      if (!res.ok) throw new Error('posting history failed: ' + res.status);
    }
  });
  await bob.click('#rooms li[data-room=random] button.join'); // joins after the fact: only history shows them
  await seeMessage(bob, 'history 40');
  await bob.waitForSelector('#older', { state: 'visible' });
  if (await bob.$('#message-list .msg .text:text-is("history 10")')) throw new Error('the first page is not the newest');
  await bob.$eval('#messages', (box) => box.scrollTo(0, 0));
  await seeMessage(bob, 'history 1');
  await bob.waitForSelector('#older', { state: 'hidden' });
  await alice.click('#rooms li[data-room=lobby] button.open');
  await bob.click('#rooms li[data-room=lobby] button.open');

  step('restarting the imserver node: both pages reconnect by themselves');
  const before = [await connects(alice), await connects(bob)];
  const res = await fetch(CONTROL_URL + '/restart-node', { method: 'POST' });
  if (!res.ok) throw new Error('restart failed: ' + (await res.text()));
  for (const [i, page] of [alice, bob].entries()) {
    await page.waitForFunction((n) => Number(document.body.dataset.connects) > n, before[i]);
    await page.waitForSelector('#conn[data-state=open]');
  }
  step('and keep chatting');
  await say(bob, 'still here after the restart');
  await seeMessage(alice, 'still here after the restart');
  await say(alice, 'me too');
  await seeMessage(bob, 'me too');
  await alice.waitForSelector('#online li[data-nick=bob]');
  await alice.waitForSelector('#rooms li[data-room=lobby] .count:text-is("2/2")'); // online/members

  await alice.screenshot({ path: SCREENSHOT });

  step('kicking a user shows the kicked state and no reconnect');
  const bobConnects = await connects(bob);
  await alice.click('.admin summary');
  await alice.fill('#kick-form input[name=token]', ADMIN_TOKEN);
  await alice.fill('#kick-form input[name=nick]', 'bob');
  await alice.click('#kick-form button');
  await alice.waitForSelector('#kick-result:text-is("bob was kicked")');
  await bob.waitForSelector('#kicked', { state: 'visible' });
  await bob.waitForSelector('#conn[data-state=kicked]');
  await alice.waitForSelector('#online li[data-nick=bob]', { state: 'detached' });
  // Absence can only be watched for a while: the client would reconnect
  // within its first backoff step (at most 0.5 s) if it were going to.
  await bob.waitForTimeout(1500);
  if ((await connects(bob)) !== bobConnects) throw new Error('the kicked page reconnected');
  if ((await bob.getAttribute('#conn', 'data-state')) !== 'kicked') throw new Error('the kicked page left the kicked state');

  if (pageErrors.length) throw new Error('errors in the pages:\n' + pageErrors.join('\n'));
  step('all passed');
} finally {
  await browser.close();
}
