// The chat page. Every user action is a call to the business API; the
// WebSocket (through IMClient) only brings frames in.
import { IMClient } from '/imclient.js';

const $ = (sel) => document.querySelector(sel);
const RECALL_WINDOW_MS = 2 * 60 * 1000;
const PAGE = 30;

const app = {
  me: null, // {id, nick}
  client: null,
  rooms: [], // from /api/rooms
  online: new Map(), // user id -> nick
  convs: new Map(), // key -> conversation
  active: null, // key of the open conversation
};

// A conversation is a room ("room:<name>") or a private chat with one person
// ("dm:<lower-case nick>"). items maps message id -> message.
function conv(key, kind, name) {
  if (!app.convs.has(key)) {
    app.convs.set(key, { key, kind, name, items: new Map(), more: false, loaded: false, unread: 0 });
  }
  return app.convs.get(key);
}
const roomConv = (room) => conv('room:' + room, 'room', room);
const dmConv = (nick) => conv('dm:' + nick.toLowerCase(), 'dm', nick);

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.error ?? `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.code = data?.code;
    throw err;
  }
  return data;
}

function notice(text) {
  $('#notice').textContent = text ?? '';
}

// ---- sign-in ----

async function boot() {
  try {
    app.me = await api('GET', '/api/me');
  } catch (err) {
    if (err.status !== 401) notice(err.message);
    showSignIn();
    return;
  }
  startChat();
}

function showSignIn() {
  $('#signin').hidden = false;
  $('#chat').hidden = true;
  $('#signin-form input').focus();
}

$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const nick = ev.target.nick.value.trim();
  try {
    app.me = await api('POST', '/api/signin', { nick });
  } catch (err) {
    $('#signin-error').textContent = err.message;
    return;
  }
  $('#signin').hidden = true;
  startChat();
});

$('#signout').addEventListener('click', async () => {
  app.client?.close();
  await api('POST', '/api/signout').catch(() => {});
  location.reload();
});

$('#reload').addEventListener('click', () => location.reload());

// ---- connection ----

const STATE_TEXT = {
  idle: 'offline',
  connecting: 'connecting…',
  open: 'connected',
  waiting: 'reconnecting…',
  kicked: 'kicked',
  closed: 'signed out',
};

function startChat() {
  $('#chat').hidden = false;
  $('#me').textContent = app.me.nick;
  $('#signout').hidden = false;
  const client = new IMClient({
    // A fresh one-time URL for every attempt; a 401 means the session is
    // gone, and retrying cannot help.
    getURL: async () => {
      try {
        return (await api('POST', '/api/connect')).url;
      } catch (err) {
        err.final = err.status === 401;
        throw err;
      }
    },
  });
  app.client = client;
  client.on('state', (s) => {
    const badge = $('#conn');
    badge.dataset.state = s.state;
    badge.textContent =
      s.state === 'waiting' ? `reconnecting in ${Math.ceil(s.delay / 1000)}s` : STATE_TEXT[s.state];
    if (s.state === 'kicked') showKicked();
    if (s.state === 'closed' && s.error) showSignIn();
  });
  // Frames sent while the socket was down are lost: reload what is shown.
  // data-connects counts the sockets opened, for tests and curious people.
  let opens = 0;
  client.on('open', () => {
    document.body.dataset.connects = String(++opens);
    refresh();
  });
  client.on('channel', onChannelFrame);
  client.on('message', onMessageFrame);
  client.on('receipt', onReceipt);
  client.on('broadcast', onBroadcast);
  window.addEventListener('online', () => client.reconnectNow());
  client.start();
  refresh();
  setInterval(render, 30 * 1000); // hides recall buttons that expired
}

function showKicked() {
  $('#kicked').hidden = false;
  setComposerEnabled(false);
}

async function refresh() {
  try {
    await Promise.all([loadRooms(), loadOnline()]);
    const c = app.convs.get(app.active);
    if (c?.kind === 'room') await Promise.all([loadLatest(c), loadMembers(c.name)]);
  } catch (err) {
    notice(err.message);
  }
}

// ---- frames ----

function onChannelFrame(f) {
  const d = f.data;
  const room = d.room;
  if (!room) return;
  if (d.kind === 'chat') {
    addRoomMessage(roomConv(room), d);
  } else if (d.kind === 'recall') {
    roomConv(room).items.delete(d.msgId);
    render();
  } else if (d.kind === 'member') {
    loadRooms().catch(() => {});
    if (app.active === 'room:' + room) loadMembers(room).catch(() => {});
  }
}

function onMessageFrame(f) {
  const d = f.data;
  if (d?.kind !== 'dm') return;
  const mine = f.from === app.me.id; // the echo of our own message from another tab
  const c = dmConv(mine ? d.toNick : d.nick);
  if (c.items.has(f.id)) return;
  c.items.set(f.id, {
    id: f.id, nick: d.nick, text: d.text, ts: d.ts, mine,
    status: mine ? 'sent' : d.offline ? 'sent while you were offline' : '',
  });
  bump(c);
}

function onReceipt(r) {
  for (const c of app.convs.values()) {
    const item = c.kind === 'dm' && c.items.get(r.id);
    if (item) {
      item.status = r.status === 'delivered' ? 'delivered' : 'not delivered (went offline)';
      render();
      return;
    }
  }
}

function onBroadcast(f) {
  const d = f.data;
  if (d?.kind !== 'presence') return;
  if (d.online) app.online.set(d.id, d.nick);
  else app.online.delete(d.id);
  renderOnline();
  reloadCountsSoon();
}

// Presence changes move the rooms' online counts and the member dots. A
// burst of changes (a node restarting) causes one reload, not one each.
let countsTimer = null;
function reloadCountsSoon() {
  clearTimeout(countsTimer);
  countsTimer = setTimeout(() => {
    loadRooms().catch(() => {});
    const c = app.convs.get(app.active);
    if (c?.kind === 'room') loadMembers(c.name).catch(() => {});
  }, 300);
}

function addRoomMessage(c, m) {
  if (c.items.has(m.msgId)) return;
  c.items.set(m.msgId, { id: m.msgId, from: m.from, nick: m.nick, text: m.text, ts: m.ts, mine: m.from === app.me.id });
  bump(c);
}

// bump re-renders, or counts an unread message in a conversation not open.
function bump(c) {
  if (app.active !== c.key) c.unread++;
  render();
}

// ---- loading ----

async function loadRooms() {
  app.rooms = (await api('GET', '/api/rooms')).rooms;
  renderRooms();
}

async function loadOnline() {
  const { users } = await api('GET', '/api/online');
  app.online = new Map(users.map((u) => [u.id, u.nick]));
  renderOnline();
}

async function loadMembers(room) {
  const { members } = await api('GET', `/api/rooms/${room}/members`);
  if (app.active !== 'room:' + room) return;
  const ul = $('#members');
  ul.replaceChildren(
    ...members.map((m) => {
      const li = el('li', { class: 'person', 'data-nick': m.nick }, [
        el('span', { class: m.online ? 'dot on' : 'dot' }),
        el('span', {}, [m.nick + (m.id === app.me.id ? ' (you)' : '')]),
      ]);
      return li;
    }),
  );
}

// loadLatest fetches the newest page and reconciles it with what is shown:
// messages recalled while the socket was down disappear.
async function loadLatest(c) {
  const res = await api('GET', `/api/rooms/${c.name}/messages?limit=${PAGE}`);
  const ids = new Set(res.messages.map((m) => m.msgId));
  const oldest = res.messages[0]?.msgId ?? '';
  for (const id of [...c.items.keys()]) {
    if (id >= oldest && !ids.has(id)) c.items.delete(id);
  }
  for (const m of res.messages) {
    c.items.set(m.msgId, { id: m.msgId, from: m.from, nick: m.nick, text: m.text, ts: m.ts, mine: m.from === app.me.id });
  }
  if (!c.loaded) c.more = res.more;
  c.loaded = true;
  render({ toBottom: true });
}

let loadingOlder = false;
async function loadOlder() {
  const c = app.convs.get(app.active);
  if (!c || c.kind !== 'room' || !c.more || loadingOlder) return;
  loadingOlder = true;
  try {
    const oldest = [...c.items.keys()].sort()[0];
    const res = await api('GET', `/api/rooms/${c.name}/messages?limit=${PAGE}&before=${oldest}`);
    for (const m of res.messages) {
      c.items.set(m.msgId, { id: m.msgId, from: m.from, nick: m.nick, text: m.text, ts: m.ts, mine: m.from === app.me.id });
    }
    c.more = res.more;
    const box = $('#messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    render();
    box.scrollTop = box.scrollHeight - fromBottom; // keep the reader's place
  } catch (err) {
    notice(err.message);
  } finally {
    loadingOlder = false;
  }
}

$('#messages').addEventListener('scroll', () => {
  if ($('#messages').scrollTop < 40) loadOlder();
});
$('#older').addEventListener('click', loadOlder);

// ---- actions ----

async function openConv(c) {
  app.active = c.key;
  c.unread = 0;
  notice('');
  $('#members').replaceChildren();
  render({ toBottom: true });
  setComposerEnabled(app.client.state !== 'kicked');
  if (c.kind === 'room') {
    try {
      await Promise.all([loadLatest(c), loadMembers(c.name)]);
    } catch (err) {
      notice(err.message);
    }
  }
  $('#composer textarea').focus();
}

async function joinRoom(room) {
  try {
    await api('POST', `/api/rooms/${room}/join`);
    await loadRooms();
    await openConv(roomConv(room));
  } catch (err) {
    notice(err.message);
  }
}

$('#room-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const room = ev.target.room.value.trim().toLowerCase();
  if (room) joinRoom(room).then(() => (ev.target.room.value = ''));
});

$('#leave').addEventListener('click', async () => {
  const c = app.convs.get(app.active);
  if (c?.kind !== 'room') return;
  try {
    await api('POST', `/api/rooms/${c.name}/leave`);
    app.convs.delete(c.key);
    app.active = null;
    $('#members').replaceChildren();
    await loadRooms();
    render();
  } catch (err) {
    notice(err.message);
  }
});

$('#dm-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const nick = ev.target.nick.value.trim();
  if (!nick) return;
  if (nick.toLowerCase() === app.me.nick.toLowerCase()) {
    notice('You cannot message yourself.');
    return;
  }
  ev.target.nick.value = '';
  openConv(dmConv(nick));
});

$('#composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
});
$('#composer textarea').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});

async function send() {
  const c = app.convs.get(app.active);
  const box = $('#composer textarea');
  const text = box.value.trim();
  if (!c || !text) return;
  try {
    if (c.kind === 'room') {
      addRoomMessage(c, await api('POST', `/api/rooms/${c.name}/messages`, { text }));
    } else {
      const res = await api('POST', '/api/messages', { to: c.name, text });
      const id = res.id ?? 'kept-' + res.message.ts + '-' + Math.random().toString(36).slice(2);
      if (!c.items.has(id)) {
        const status = res.status === 'stored' ? `kept until ${c.name} signs in` : 'sent';
        c.items.set(id, { id, nick: app.me.nick, text, ts: res.message.ts, mine: true, status });
      }
    }
    box.value = '';
    notice('');
    render({ toBottom: true });
  } catch (err) {
    notice(err.message);
  }
}

async function recall(c, id) {
  try {
    await api('DELETE', `/api/rooms/${c.name}/messages/${id}`);
    c.items.delete(id);
    render();
  } catch (err) {
    notice(err.message);
  }
}

$('#kick-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  try {
    const res = await api('POST', '/api/admin/kick', { nick: f.nick.value.trim() }, { Authorization: 'Bearer ' + f.token.value });
    $('#kick-result').textContent = `${res.kicked.nick} ${res.wasOnline ? 'was kicked' : 'was not online'}`;
  } catch (err) {
    $('#kick-result').textContent = err.message;
  }
});

function setComposerEnabled(on) {
  for (const e of $('#composer').elements) e.disabled = !on || !app.active;
}

// ---- rendering ----

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

function badge(n) {
  return n > 0 ? [el('span', { class: 'badge' }, [String(n)])] : [];
}

function renderRooms() {
  $('#rooms').replaceChildren(
    ...app.rooms.map((r) => {
      const c = app.convs.get('room:' + r.name);
      const li = el('li', { class: 'room' + (app.active === 'room:' + r.name ? ' active' : ''), 'data-room': r.name }, [
        el('button', { class: 'open', type: 'button' }, ['# ' + r.name, ...badge(c?.unread ?? 0)]),
        el('span', { class: 'count' }, [`${r.online}/${r.members}`]),
      ]);
      li.title = `${r.online} online, ${r.members} members`;
      const open = li.querySelector('.open');
      if (r.joined) {
        open.addEventListener('click', () => openConv(roomConv(r.name)));
      } else {
        open.disabled = true;
        const join = el('button', { class: 'join', type: 'button' }, ['Join']);
        join.addEventListener('click', () => joinRoom(r.name));
        li.append(join);
      }
      return li;
    }),
  );
}

function renderDMs() {
  const dms = [...app.convs.values()].filter((c) => c.kind === 'dm');
  $('#dms').replaceChildren(
    ...dms.map((c) => {
      const b = el('button', { class: 'open', type: 'button' }, ['@ ' + c.name, ...badge(c.unread)]);
      b.addEventListener('click', () => openConv(c));
      return el('li', { class: 'dm' + (app.active === c.key ? ' active' : ''), 'data-nick': c.name }, [b]);
    }),
  );
}

function renderOnline() {
  const people = [...app.online.entries()].sort((a, b) => a[1].localeCompare(b[1]));
  $('#online-count').textContent = String(people.length);
  $('#online').replaceChildren(
    ...people.map(([id, nick]) => {
      const li = el('li', { class: 'person', 'data-nick': nick }, [el('span', { class: 'dot on' })]);
      if (id === app.me.id) {
        li.append(el('span', {}, [nick + ' (you)']));
      } else {
        const b = el('button', { class: 'link', type: 'button', title: 'Send a private message' }, [nick]);
        b.addEventListener('click', () => openConv(dmConv(nick)));
        li.append(b);
      }
      return li;
    }),
  );
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function render({ toBottom = false } = {}) {
  renderRooms();
  renderDMs();
  const c = app.convs.get(app.active);
  $('#conv-title').textContent = !c ? 'Pick a room or a person' : c.kind === 'room' ? '# ' + c.name : '@ ' + c.name;
  $('#leave').hidden = c?.kind !== 'room';
  $('#older').hidden = !(c?.kind === 'room' && c.more);
  setComposerEnabled(app.client?.state !== 'kicked');
  const box = $('#messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const items = c ? [...c.items.values()].sort((a, b) => a.ts - b.ts || (a.id < b.id ? -1 : 1)) : [];
  const now = Date.now();
  $('#message-list').replaceChildren(
    ...items.map((m) => {
      const li = el('li', { class: 'msg' + (m.mine ? ' mine' : ''), 'data-id': m.id }, [
        el('div', { class: 'meta' }, [
          el('span', { class: 'nick' }, [m.nick]),
          el('time', { datetime: new Date(m.ts).toISOString() }, [timeFmt.format(m.ts)]),
        ]),
        el('div', { class: 'text' }, [m.text]),
      ]);
      if (m.status) li.append(el('div', { class: 'status' }, [m.status]));
      if (c.kind === 'room' && m.mine && now - m.ts < RECALL_WINDOW_MS) {
        const b = el('button', { class: 'recall link', type: 'button' }, ['Recall']);
        b.addEventListener('click', () => recall(c, m.id));
        li.append(b);
      }
      return li;
    }),
  );
  if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
}

boot();
