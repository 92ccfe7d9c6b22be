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

// ---- positions, de-dup and resume (history streams) ----

// posParams returns the pos parameters of a socket's URL, decoded.
const posParams = (ws) => new URL(ws.url).searchParams.getAll('pos');

// connected starts a client and returns its first, open socket.
async function connected(extra) {
  const ctx = setup(extra);
  ctx.client.start();
  await until('open', () => ctx.client.state === 'open');
  return { ...ctx, ws: FakeSocket.all[0] };
}

// reconnect closes socket i as a network drop would and returns the next
// open socket.
async function reconnect(client, i) {
  FakeSocket.all[i].serverClose(1006);
  await until('reconnected', () => FakeSocket.all.length === i + 2 && client.state === 'open');
  return FakeSocket.all[i + 1];
}

const msg = (id, epoch, offset, extra = {}) => ({ type: 'message', id, from: 'a', ts: 1, data: {}, epoch, offset, ...extra });
const chan = (id, channel, epoch, offset) => ({ type: 'channel', id, from: 'a', channel, ts: 1, data: {}, epoch, offset });

test('keeps the last position of each stream from message and channel frames', async () => {
  const { client, ws } = await connected();
  assert.deepEqual(client.positions, {});
  ws.push(msg('1', 'Ep', 3));
  ws.push(chan('2', 'room1', 'Qw', 4));
  ws.push(chan('3', 'room1', 'Qw', 5));
  // An echo copy (with "to") is in this client's own personal stream.
  ws.push(msg('4', 'Ep', 4, { to: ['b'] }));
  // Frames without history, broadcasts and receipts change nothing.
  ws.push({ type: 'message', id: '5', from: 'a', ts: 1, data: {} });
  ws.push({ type: 'channel', id: '6', from: 'a', channel: 'room2', ts: 1, data: {} });
  ws.push({ type: 'broadcast', id: '7', ts: 1, data: {}, epoch: 'Zz', offset: 9 });
  ws.push({ type: 'receipt', id: '1', to: 'b', status: 'delivered' });
  assert.deepEqual(client.positions, { '': { epoch: 'Ep', offset: 4 }, room1: { epoch: 'Qw', offset: 5 } });
  // The getter returns a copy.
  client.positions[''].offset = 99;
  assert.equal(client.positions[''].offset, 4);
  client.close();
});

test('drops a frame at or below the kept offset of the same epoch, takes a new epoch', async () => {
  const { client, ws } = await connected();
  const got = [];
  client.on('message', (f) => got.push('m' + f.id));
  client.on('channel', (f) => got.push('c' + f.id));
  ws.push(msg('1', 'Ep', 5));
  ws.push(msg('2', 'Ep', 5)); // the same offset again
  ws.push(msg('3', 'Ep', 4)); // older
  ws.push(msg('4', 'Ep', 6));
  ws.push(chan('5', 'room1', 'Ep', 2)); // another stream: its own offsets
  ws.push(chan('6', 'room1', 'Ep', 2));
  ws.push(msg('7', 'New', 1)); // the epoch changed: offsets start again
  ws.push(msg('8', 'New', 1));
  // Frames without a position are never dropped.
  ws.push({ type: 'message', id: '9', from: 'a', ts: 1, data: {} });
  ws.push({ type: 'message', id: '9', from: 'a', ts: 1, data: {} });
  assert.deepEqual(got, ['m1', 'm4', 'c5', 'm7', 'm9', 'm9']);
  assert.deepEqual(client.positions, { '': { epoch: 'New', offset: 1 }, room1: { epoch: 'Ep', offset: 2 } });
  client.close();
});

test('every reconnect appends pos parameters for the kept positions', async () => {
  const { client, ws } = await connected();
  assert.equal(ws.url, 'ws://node/ws?token=1'); // nothing known yet
  ws.push(msg('1', 'Ep', 17));
  ws.push(chan('2', 'room1', 'Qw', 4));
  const weird = 'a.b&c=d/é?#';
  ws.push(chan('3', weird, 'Xy_-9', 0));
  const ws2 = await reconnect(client, 0);
  assert.ok(ws2.url.startsWith('ws://node/ws?token=2&pos='), ws2.url);
  // Everything after the second dot is the channel name, URL-encoded.
  assert.deepEqual(posParams(ws2), ['Ep.17', 'Qw.4.room1', `Xy_-9.0.${weird}`]);
  assert.equal(new URL(ws2.url).searchParams.get('token'), '2');
  // The next socket carries what the current one brought.
  ws2.push(chan('4', 'room1', 'Qw', 5));
  const ws3 = await reconnect(client, 1);
  assert.deepEqual(posParams(ws3), ['Ep.17', `Xy_-9.0.${weird}`, 'Qw.5.room1']);
  client.close();
});

test('moves and drains resume too, and a URL without a query gets one', async () => {
  const { client, ws } = await connected({ getURL: async () => 'ws://node/ws' });
  ws.push(msg('1', 'Ep', 2));
  ws.serverClose(CloseCodes.MOVED);
  await until('moved', () => FakeSocket.all.length === 2 && client.state === 'open');
  assert.equal(FakeSocket.all[1].url, 'ws://node/ws?pos=Ep.2');
  client.close();
});

test('the URL carries at most 1 personal and 64 channel positions, the most recent', async () => {
  const { client } = setup();
  client.setPosition('', { epoch: 'P', offset: 1 });
  for (let i = 0; i < 70; i++) client.setPosition(`ch${i}`, { epoch: 'E', offset: i });
  client.start();
  await until('open', () => client.state === 'open');
  const ws = FakeSocket.all[0];
  let pos = posParams(ws);
  assert.equal(pos.length, 65);
  assert.equal(pos[0], 'P.1');
  assert.deepEqual(pos.slice(1), Array.from({ length: 64 }, (_, k) => `E.${k + 6}.ch${k + 6}`));
  // A frame on an old channel makes it recent: it is back, ch6 is out.
  ws.push(chan('1', 'ch0', 'E', 100));
  const ws2 = await reconnect(client, 0);
  pos = posParams(ws2);
  assert.equal(pos.length, 65);
  assert.equal(pos.at(-1), 'E.100.ch0');
  assert.ok(!pos.includes('E.6.ch6'), 'ch6 should have been left out');
  assert.equal(Object.keys(client.positions).length, 71); // all are still kept
  client.close();
});

test('recovered frames are emitted and their positions kept, recovered or not', async () => {
  const { client, ws } = await connected();
  const events = [];
  client.on('recovered', (f) => events.push(f));
  const got = [];
  client.on('channel', (f) => got.push(f.id));
  ws.push(chan('1', 'room1', 'Old', 9));
  ws.push(chan('2', 'room2', 'R2', 3));
  const frame = {
    type: 'recovered',
    first: true,
    streams: [
      { channel: '', epoch: 'E', offset: 17, recovered: true },
      { channel: 'room1', epoch: 'E2', offset: 4, recovered: false }, // new epoch, lower offset
      { channel: 'bad', epoch: 'no spaces', offset: 1, recovered: true }, // invalid: ignored
    ],
  };
  ws.push(frame);
  assert.equal(events.length, 1);
  assert.deepEqual(events[0], frame);
  assert.deepEqual(client.positions, {
    room2: { epoch: 'R2', offset: 3 },
    '': { epoch: 'E', offset: 17 },
    room1: { epoch: 'E2', offset: 4 },
  });
  // Later frames of a stream are de-duplicated against the recovered position.
  ws.push(chan('3', 'room1', 'E2', 4));
  ws.push(chan('4', 'room1', 'E2', 5));
  assert.deepEqual(got, ['1', '2', '4']);
  // A recovered frame mid-connection (no "first") means the same.
  ws.push({ type: 'recovered', streams: [{ channel: 'room2', epoch: 'R3', offset: 0, recovered: false }] });
  assert.equal(events.length, 2);
  assert.equal(events[1].first, undefined);
  assert.deepEqual(client.positions.room2, { epoch: 'R3', offset: 0 });
  const ws2 = await reconnect(client, 0);
  assert.deepEqual(posParams(ws2), ['E.17', 'E2.5.room1', 'R3.0.room2']);
  client.close();
});

test('setPosition seeds the first connect, forgetChannel drops a stream, bad input throws', async () => {
  const { client } = setup();
  client.setPosition('', { epoch: 'Xk3fQ2ab', offset: 17 });
  client.setPosition('room1', { epoch: 'Qw', offset: 4 });
  client.setPosition('room2', { epoch: 'Qw', offset: 0 });
  client.forgetChannel('room2');
  for (const [ch, p] of [
    ['room 1', { epoch: 'E', offset: 1 }], // whitespace in a channel name
    ['x'.repeat(129), { epoch: 'E', offset: 1 }],
    [undefined, { epoch: 'E', offset: 1 }],
    ['room1', { epoch: '', offset: 1 }],
    ['room1', { epoch: 'x'.repeat(33), offset: 1 }],
    ['room1', { epoch: 'a.b', offset: 1 }],
    ['room1', { epoch: 'E', offset: -1 }],
    ['room1', { epoch: 'E', offset: 1.5 }],
    ['room1', { epoch: 'E', offset: '1' }],
    ['room1', null],
  ]) {
    assert.throws(() => client.setPosition(ch, p), TypeError, `${JSON.stringify(ch)} ${JSON.stringify(p)}`);
  }
  assert.deepEqual(client.positions, { '': { epoch: 'Xk3fQ2ab', offset: 17 }, room1: { epoch: 'Qw', offset: 4 } });
  client.start();
  await until('open', () => client.state === 'open');
  assert.deepEqual(posParams(FakeSocket.all[0]), ['Xk3fQ2ab.17', 'Qw.4.room1']);
  client.forgetChannel('');
  const ws2 = await reconnect(client, 0);
  assert.deepEqual(posParams(ws2), ['Qw.4.room1']);
  client.close();
});

test('a frame with a malformed position is delivered but not kept', async () => {
  const { client, ws } = await connected();
  const got = [];
  client.on('message', (f) => got.push(f.id));
  ws.push(msg('1', 'E', 3));
  ws.push(msg('2', 'bad epoch', 1));
  ws.push(msg('3', 'E', -2));
  assert.deepEqual(got, ['1', '2', '3']);
  assert.deepEqual(client.positions, { '': { epoch: 'E', offset: 3 } });
  client.close();
});
