// Unit tests of imclient.js's connection logic with a fake WebSocket
// (node --test; imclient_test.go runs them under go test). The browser test
// of webapi-example covers it against real nodes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IMClient, CloseCodes } from '../imclient.js';

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.closedWith = null;
    FakeSocket.all.push(this);
    setTimeout(() => this.onopen?.(), 0);
  }
  push(frame) {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }
  serverClose(code, reason = '') {
    this.onclose?.({ code, reason, wasClean: true });
  }
  close(code) {
    this.closedWith = code;
  }
}

function setup(extra = {}) {
  FakeSocket.all = [];
  let n = 0;
  const states = [];
  const client = new IMClient({
    getURL: async () => `ws://node/ws?token=${++n}`,
    WebSocket: FakeSocket,
    minDelay: 20,
    maxDelay: 100,
    random: () => 0.5,
    ...extra,
  });
  client.on('state', (s) => states.push(s));
  return { client, states, urls: () => n };
}

const until = async (what, cond, ms = 2000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 2));
  }
};

test('emits typed events for each frame type and ignores the rest', async () => {
  const { client } = setup();
  const got = [];
  for (const type of ['message', 'channel', 'broadcast', 'receipt']) client.on(type, (f) => got.push(f.type));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.start();
  await until('open', () => client.state === 'open');
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, 'ws://node/ws?token=1');
  ws.push({ type: 'message', id: '1', from: 'a', ts: 1, data: {} });
  ws.push({ type: 'channel', id: '2', from: 'a', channel: 'c', ts: 1, data: {} });
  ws.push({ type: 'broadcast', id: '3', ts: 1, data: {} });
  ws.push({ type: 'receipt', id: '1', to: 'b', status: 'delivered' });
  ws.push({ type: 'future-kind' });
  ws.push('not json');
  assert.deepEqual(got, ['message', 'channel', 'broadcast', 'receipt']);
  assert.equal(errors.length, 1);
  client.close();
});

test('forced offline (4001) is final', async () => {
  const { client, urls } = setup();
  client.start();
  await until('open', () => client.state === 'open');
  FakeSocket.all[0].serverClose(CloseCodes.FORCED_OFFLINE, 'kicked');
  assert.equal(client.state, 'kicked');
  await new Promise((r) => setTimeout(r, 100)); // longer than any backoff step here
  assert.equal(urls(), 1);
  assert.equal(FakeSocket.all.length, 1);
});

for (const code of [CloseCodes.MOVED, CloseCodes.GOING_AWAY]) {
  test(`close ${code} reconnects at once with a fresh URL`, async () => {
    const { client, states } = setup({ minDelay: 60_000 });
    client.start();
    await until('open', () => client.state === 'open');
    FakeSocket.all[0].serverClose(code);
    const waiting = states.at(-1);
    assert.equal(waiting.state, 'waiting');
    assert.ok(waiting.delay <= 250, `delay ${waiting.delay}`);
    assert.equal(waiting.attempt, 0);
    await until('second socket open', () => FakeSocket.all.length === 2 && client.state === 'open');
    assert.equal(FakeSocket.all[1].url, 'ws://node/ws?token=2');
    client.close();
  });
}

test('other closes back off exponentially with jitter, capped', async () => {
  const { client, states } = setup();
  client.start();
  for (let i = 0; i < 4; i++) {
    await until('open', () => client.state === 'open' && FakeSocket.all.length === i + 1);
    FakeSocket.all[i].serverClose(1006);
  }
  // random 0.5 puts each wait at 3/4 of its cap: 20, 40, 80, then 100 (maxDelay).
  const delays = states.filter((s) => s.state === 'waiting').map((s) => s.delay);
  assert.deepEqual(delays, [15, 30, 60, 75]);
  client.close();
});

test('a failing getURL is retried; a final error stops', async () => {
  let calls = 0;
  const { client } = setup({
    getURL: async () => {
      calls++;
      if (calls === 1) throw new Error('503');
      const err = new Error('signed out');
      err.final = true;
      throw err;
    },
  });
  client.start();
  await until('closed', () => client.state === 'closed');
  assert.equal(calls, 2);
  assert.equal(FakeSocket.all.length, 0);
});

test('close() stops for good and closes the socket', async () => {
  const { client, urls } = setup();
  client.start();
  await until('open', () => client.state === 'open');
  client.close();
  assert.equal(client.state, 'closed');
  assert.equal(FakeSocket.all[0].closedWith, CloseCodes.NORMAL);
  FakeSocket.all[0].serverClose(1006); // a late close event changes nothing
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(urls(), 1);
  assert.equal(client.state, 'closed');
});
