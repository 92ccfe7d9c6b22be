// Browser test of the chat page in headless Chromium. e2e_test.go starts
// Redis, imserver processes and the web API, then runs this script with:
//   SCENARIO      "chat" (TestBrowserEndToEnd) or "node-kill" (TestBrowserNodeKill)
//   BASE_URL      the web API and page
//   CONTROL_URL   chat: POST /restart-node restarts the imserver process;
//                 node-kill: POST /kill-node?addr=<host:port> kills that node with SIGKILL
//   CHROMIUM      the browser binary (Debian package chromium)
// chat only:
//   ADMIN_TOKEN   the kick endpoint's token
//   SCREENSHOT    where to save a screenshot of the chat page
// node-kill only:
//   NODE_ADDRS    the two nodes' host:port, comma-separated
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run this through go test (webapi-example/e2e_test.go)`);
  return v;
};
const SCENARIO = env('SCENARIO');
const BASE_URL = env('BASE_URL');
const CONTROL_URL = env('CONTROL_URL');

const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const pageErrors = [];
// What each page's sockets did, as the browser saw it: the URL of every
// socket and the recovered frames each got.
const sockets = new WeakMap();

// newPage opens a page in a browser context of its own (its own cookies).
// Console errors fail the test, except the ones a chat page causes on
// purpose: WebSocket errors while the node restarts and failed requests the
// page answers with a notice (a private message to an unknown nickname).
// strict keeps those too, for a page that must log nothing at all.
async function newPage(name, { strict = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 720 } });
  // Chromium logs CSP refusals itself; the event also catches the ones it
  // reports only to the page.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'}`),
    );
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const seen = { urls: [], recovered: [] };
  sockets.set(page, seen);
  page.on('websocket', (ws) => {
    seen.urls.push(ws.url());
    ws.on('framereceived', ({ payload }) => {
      if (typeof payload !== 'string' || !payload.includes('"recovered"')) return;
      const frame = JSON.parse(payload);
      if (frame.type === 'recovered') seen.recovered.push({ url: ws.url(), frame });
    });
  });
  page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && (strict || !/Failed to load resource|WebSocket connection/.test(msg.text()))) {
      pageErrors.push(`${name} console: ${msg.text()}`);
    }
  });
  page.on('response', (res) => {
    // A room's members are for its members: the page must ask only for rooms its user is in.
    const refused = strict ? res.status() >= 400 : res.status() === 403 && new URL(res.url()).pathname.endsWith('/members');
    if (refused) pageErrors.push(`${name}: ${res.status()} from ${res.request().method()} ${res.url()}`);
  });
  return page;
}

const roomCount = (page, room, text) => page.waitForSelector(`#rooms li[data-room=${room}] .count:text-is("${text}")`);

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
const lives = (page) => page.evaluate(() => Number(document.body.dataset.live || 0));

// shows waits until the open conversation of a page shows exactly these
// texts, in this order, and says what it showed if it never does.
async function shows(page, name, want, timeout = 15000) {
  try {
    await page.waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll('#message-list .msg .text')].map((e) => e.textContent);
        return got.length === want.length && got.every((t, i) => t === want[i]);
      },
      want,
      { timeout },
    );
  } catch (err) {
    const got = await page.$$eval('#message-list .msg .text', (els) => els.map((e) => e.textContent));
    const count = new Map();
    for (const t of got) count.set(t, (count.get(t) ?? 0) + 1);
    const twice = [...count].filter(([, n]) => n > 1).map(([t, n]) => `${t} x${n}`);
    const missing = want.filter((t) => !count.has(t));
    throw new Error(
      `${name} shows ${got.length} messages, want ${want.length}; missing [${missing.join(', ')}], ` +
        `more than once [${twice.join(', ')}]; shown: [${got.join(', ')}] (${err.message.split('\n')[0]})`,
    );
  }
}

const scenarios = { chat, 'node-kill': nodeKill };
if (!scenarios[SCENARIO]) throw new Error(`unknown SCENARIO ${SCENARIO}`);
try {
  await scenarios[SCENARIO]();
  if (pageErrors.length) throw new Error('errors in the pages:\n' + pageErrors.join('\n'));
  step('all passed');
} catch (err) {
  // A wait that timed out often has its cause in a page's console.
  if (pageErrors.length) console.error('errors in the pages so far:\n' + pageErrors.join('\n'));
  throw err;
} finally {
  await browser.close();
}

async function chat() {
  const ADMIN_TOKEN = env('ADMIN_TOKEN');
  const SCREENSHOT = env('SCREENSHOT');
  step('a signed-out visit logs nothing, imports the client through the import map, has an icon');
  const visitor = await newPage('visitor', { strict: true });
  await visitor.goto(BASE_URL);
  // The sign-in form shows once app.js ran, and app.js imports "imclient"
  // by name: the import map (allowed by its CSP hash) resolved it.
  await visitor.waitForSelector('#signin-form', { state: 'visible' });
  await visitor.waitForLoadState('networkidle');
  for (const path of [await visitor.$eval('link[rel=icon]', (l) => l.getAttribute('href')), '/favicon.ico']) {
    const icon = await visitor.request.get(new URL(path, BASE_URL).href);
    if (icon.status() !== 200 || !icon.headers()['content-type'].startsWith('image/svg+xml')) {
      throw new Error(`icon ${path}: ${icon.status()} ${icon.headers()['content-type']}`);
    }
  }
  if (pageErrors.length) throw new Error('errors on a signed-out page load:\n' + pageErrors.join('\n'));
  await visitor.context().close();

  const alice = await newPage('alice');
  const bob = await newPage('bob');

  step('two users sign in; a room alice joins shows her on the page of bob, who did not join it');
  await signIn(alice, 'alice');
  await signIn(bob, 'bob');
  await roomCount(bob, 'lobby', '0/0');
  await alice.click('#rooms li[data-room=lobby] button.join');
  await alice.waitForSelector('#conv-title:text-is("# lobby")');
  await roomCount(bob, 'lobby', '1/1'); // online/members
  await bob.click('#rooms li[data-room=lobby] button.join');
  await bob.waitForSelector('#conv-title:text-is("# lobby")');
  await roomCount(alice, 'lobby', '2/2');
  await alice.waitForSelector('#online li[data-nick=bob]');

  step('they exchange messages in the room');
  await say(alice, 'hello from alice');
  await seeMessage(bob, 'hello from alice');
  await say(bob, 'hi alice, bob here');
  await seeMessage(alice, 'hi alice, bob here');

  step('a private message to an unknown nickname opens nothing and says why');
  await alice.fill('#dm-form input[name=nick]', 'nobody');
  await alice.click('#dm-form button');
  await alice.waitForSelector('#notice:text-is("nobody has signed in as nobody")');
  if (await alice.$('#dms li')) throw new Error('a conversation with "nobody" was added');
  if ((await alice.textContent('#conv-title')) !== '# lobby') throw new Error('the open conversation changed');

  step('a private message to an offline user arrives after sign-in');
  await bob.click('#signout');
  await bob.waitForSelector('#signin-form');
  await alice.waitForSelector('#online li[data-nick=bob]', { state: 'detached' });
  await roomCount(alice, 'lobby', '1/2'); // bob's presence moved the online count
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

  step('private messages are still there after a reload');
  await alice.reload();
  await alice.waitForSelector('#conn[data-state=open]');
  await alice.click('#dms li[data-nick=bob] button');
  await seeMessage(alice, 'got it, thanks');
  await alice.waitForSelector(
    '#message-list .msg.mine:has(.text:text-is("psst, read this when you are back")) .status:text-is("sent while bob was offline")',
  );

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
  await roomCount(bob, 'random', '1/1');
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

  step('a room disappears from every page when its last member leaves');
  await alice.fill('#room-form input[name=room]', 'short-lived');
  await alice.click('#room-form button');
  await alice.waitForSelector('#conv-title:text-is("# short-lived")');
  await roomCount(bob, 'short-lived', '1/1');
  await alice.click('#leave');
  for (const page of [alice, bob]) await page.waitForSelector('#rooms li[data-room=short-lived]', { state: 'detached' });

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
  // Both Members panes show bob offline, his own too, which no presence
  // broadcast reaches any more.
  for (const page of [alice, bob]) await page.waitForSelector('#members li[data-nick=bob] .dot:not(.on)');
  await bob.waitForSelector('#online li[data-nick=bob]', { state: 'detached' });
  await roomCount(alice, 'lobby', '1/2');
  // Absence can only be watched for a while: the client would reconnect
  // within its first backoff step (at most 0.5 s) if it were going to.
  await bob.waitForTimeout(1500);
  if ((await connects(bob)) !== bobConnects) throw new Error('the kicked page reconnected');
  if ((await bob.getAttribute('#conn', 'data-state')) !== 'kicked') throw new Error('the kicked page left the kicked state');
}

// nodeKill: two nodes, alice and bob in the lobby with their sockets on
// different nodes. Bob's page sends room messages and private messages to
// alice through the web API, as fast as the API answers, while the node
// holding alice's socket is killed with SIGKILL. Alice's page reconnects to
// the survivor, resuming from its positions; every message must show
// exactly once, in order, on both pages, with nothing reloaded.
async function nodeKill() {
  const nodeAddrs = env('NODE_ADDRS').split(',');
  const sock = (page) => sockets.get(page);
  const nodeOf = (page) => new URL(sock(page).urls.at(-1)).host;

  step('alice signs in, and a user whose socket is on the other node');
  const alice = await newPage('alice');
  await signIn(alice, 'alice');
  const victim = nodeOf(alice);
  const survivor = nodeAddrs.find((a) => a !== victim);
  if (!nodeAddrs.includes(victim) || !survivor) throw new Error(`alice is on ${victim}, nodes are ${nodeAddrs}`);
  // Owners are spread by a hash of the user id, which is random: each new
  // user is on the other node with probability 1/2.
  let bob, bobNick;
  for (let i = 0; i < 16 && !bob; i++) {
    const nick = i === 0 ? 'bob' : `bob${i}`;
    const page = await newPage(nick);
    await signIn(page, nick);
    if (nodeOf(page) === survivor) [bob, bobNick] = [page, nick];
    else await page.context().close();
  }
  if (!bob) throw new Error(`16 new users in a row got ${victim}, the node of alice`);
  step(`alice is on ${victim}, ${bobNick} on ${survivor}`);

  for (const page of [alice, bob]) {
    await page.click('#rooms li[data-room=lobby] button.join');
    await page.waitForSelector('#conv-title:text-is("# lobby")');
  }
  await roomCount(alice, 'lobby', '2/2');
  await say(alice, 'before the crash');
  await seeMessage(bob, 'before the crash');

  step(`${bobNick} sends room and private messages through the API, without pause`);
  await bob.evaluate((to) => {
    const burst = (window.burst = { sent: 0, dms: 0, stop: false, error: null });
    const post = async (path, body) => {
      const res = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${await res.text()}`);
    };
    burst.done = (async () => {
      try {
        while (!burst.stop) {
          const i = burst.sent + 1;
          await post('/api/rooms/lobby/messages', { text: `burst ${i}` });
          if (i % 3 === 0) {
            await post('/api/messages', { to, text: `dm ${i}` });
            burst.dms = i;
          }
          burst.sent = i;
        }
      } catch (err) {
        burst.error = String(err);
      }
    })();
  }, 'alice');
  const burst = () => bob.evaluate(() => ({ sent: window.burst.sent, error: window.burst.error }));
  const sentAtLeast = (n) => bob.waitForFunction((n) => window.burst.sent >= n || window.burst.error, n);
  await sentAtLeast(10);

  step(`kill -9 the node of alice (${victim}) while the messages go on`);
  const [aliceConnects, aliceLives, bobConnects] = [await connects(alice), await lives(alice), await connects(bob)];
  await control(`/kill-node?addr=${encodeURIComponent(victim)}`);
  const killedAt = (await burst()).sent;
  try {
    await alice.waitForFunction((n) => Number(document.body.dataset.live) > n, aliceLives, { timeout: 30000 });
  } catch (err) {
    throw new Error(
      `alice's page got no recovered frame on a new socket: ${await connects(alice) - aliceConnects} socket(s) opened since the kill, ` +
        `state ${await alice.getAttribute('#conn', 'data-state')}, sockets ${JSON.stringify(sock(alice).urls)}, ` +
        `recovered frames ${JSON.stringify(sock(alice).recovered)} (${err.message.split('\n')[0]})`,
    );
  }
  const reconnectedAt = (await burst()).sent;
  step(`alice is live again on ${nodeOf(alice)} after ${await connects(alice) - aliceConnects} socket(s); messages ${killedAt}-${reconnectedAt} were sent meanwhile`);
  if (nodeOf(alice) !== survivor) throw new Error(`alice reconnected to ${nodeOf(alice)}, not to the survivor ${survivor}`);
  await sentAtLeast(reconnectedAt + 10);
  await bob.evaluate(async () => {
    window.burst.stop = true;
    await window.burst.done;
  });
  const { sent, error } = await burst();
  if (error) throw new Error(`${bobNick}'s page failed to send: ${error}`);
  await say(alice, 'after the crash');
  step(`${sent} room messages sent; every one shows once, in order, on both pages`);
  const bursts = Array.from({ length: sent }, (_, i) => `burst ${i + 1}`);
  const want = ['before the crash', ...bursts, 'after the crash'];
  for (const [page, name] of [[alice, 'alice'], [bob, bobNick]]) await shows(page, `${name}'s lobby`, want);

  // The reconnect resumed from the page's positions, and the node replayed
  // both streams: nothing had to be reloaded.
  const resumed = sock(alice).recovered.filter((r) => r.frame.first).at(-1);
  const pos = new URL(resumed.url).searchParams.getAll('pos');
  if (!pos.some((p) => /^[A-Za-z0-9_-]+\.\d+$/.test(p)) || !pos.some((p) => p.endsWith('.room.lobby'))) {
    throw new Error(`the reconnect URL carries pos ${JSON.stringify(pos)}, want the personal and the room.lobby positions`);
  }
  for (const channel of ['', 'room.lobby']) {
    const st = resumed.frame.streams.find((s) => s.channel === channel);
    if (!st?.recovered) throw new Error(`stream "${channel}" was not recovered: ${JSON.stringify(resumed.frame)}`);
  }
  if ((await connects(bob)) !== bobConnects) throw new Error(`${bobNick}'s page on the survivor reconnected too`);

  step('the private messages: pushed once each to alice, once each on both sides');
  const dms = bursts.filter((_, i) => (i + 1) % 3 === 0).map((t) => t.replace('burst', 'dm'));
  await alice.waitForSelector(`#dms li[data-nick=${bobNick}] .badge:text-is("${dms.length}")`);
  await alice.click(`#dms li[data-nick=${bobNick}] button`);
  await shows(alice, `alice's conversation with ${bobNick}`, dms);
  await bob.click('#dms li[data-nick=alice] button');
  await shows(bob, `${bobNick}'s conversation with alice`, dms);

  step('the killed node comes back and alice moves to it; her connect waits while the room history is lost');
  for (const page of [alice, bob]) await page.click('#rooms li[data-room=lobby] button.open');
  for (const [page, name] of [[alice, 'alice'], [bob, bobNick]]) await shows(page, `${name}'s lobby`, want);
  // Alice's page asks for its URLs in vain until released: her socket
  // stays down for as long as the test needs.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  const asked = []; // each held request, done once passed on
  await alice.route('**/api/connect', (route) => {
    asked.push(held.then(() => route.continue()));
  });
  const livesBefore = await lives(alice);
  await control(`/start-node?addr=${encodeURIComponent(victim)}`);
  // The owner of alice is her first node again: the survivor moves her (4002).
  try {
    await alice.waitForFunction(() => document.querySelector('#conn').dataset.state === 'connecting', null, { timeout: 30000 });
  } catch (err) {
    throw new Error(`alice's page was not moved off ${survivor} after ${victim} came back: sockets ${JSON.stringify(sock(alice).urls)} (${err.message.split('\n')[0]})`);
  }
  const gap = Array.from({ length: 8 }, (_, i) => `gap ${i + 1}`);
  await postAll(bob, gap.slice(0, 5));
  // The room's stream and its meta are gone, as after a Redis that restarted
  // empty: the stream starts again in a new epoch, and what alice missed
  // before cannot be replayed.
  await control('/drop-history?channel=room.lobby');
  await postAll(bob, gap.slice(5));
  if (asked.length === 0) throw new Error("alice's page did not ask for a URL while its socket was down");
  release();
  await Promise.all(asked);
  await alice.unroute('**/api/connect');
  await alice.waitForFunction((n) => Number(document.body.dataset.live) > n, livesBefore, { timeout: 30000 });
  const again = sock(alice).recovered.filter((r) => r.frame.first).at(-1);
  const lobby = again.frame.streams.find((st) => st.channel === 'room.lobby');
  if (!lobby || lobby.recovered !== false) throw new Error(`room.lobby should not be recoverable: ${JSON.stringify(again.frame)}`);
  step('the stream was not recovered: the page reloaded the room, and shows every message once');
  const all = [...want, ...gap];
  for (const [page, name] of [[alice, 'alice'], [bob, bobNick]]) await shows(page, `${name}'s lobby`, all);
  await say(alice, 'in the new epoch');
  await seeMessage(bob, 'in the new epoch');
  for (const [page, name] of [[alice, 'alice'], [bob, bobNick]]) await shows(page, `${name}'s lobby`, [...all, 'in the new epoch']);
}

async function control(path) {
  const res = await fetch(CONTROL_URL + path, { method: 'POST' });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
}

// postAll sends room messages to the lobby from a page, one after another,
// through the API as the page's composer does.
function postAll(page, texts) {
  return page.evaluate(async (texts) => {
    for (const text of texts) {
      const res = await fetch('/api/rooms/lobby/messages', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ text }),
      });
      if (!res.ok) throw new Error(`posting ${text}: ${res.status} ${await res.text()}`);
    }
  }, texts);
}
