// The chat page. Every user action is a call to the business API; the
// WebSocket (through IMClient) only brings frames in. "imclient" is the
// client package (imclient/ in the repository), mapped to the copy this
// service serves by the import map in index.html.
import { IMClient } from 'imclient';

const $ = (sel) => document.querySelector(sel);
const RECALL_WINDOW_MS = 2 * 60 * 1000;
const PAGE = 30;
const ROOM_CHANNEL = 'room.'; // a room's broker channel is "room.<name>" (store.go)

const app = {
  me: null, // {id, nick}
  client: null,
  rooms: [], // from /api/rooms
  online: new Map(), // user id -> nick
  members: [], // of the open room: {id, nick, online}
  convs: new Map(), // key -> conversation
  active: null, // key of the open conversation
};

// A conversation is a room ("room:<name>") or a private chat with one person
// ("dm:<lower-case nick>"). items maps message id (the msgId of the room's or
// the conversation's history) -> message: a message pushed, replayed and
// loaded from the API is still one item. recalled keeps the ids of a room's
// recalled messages, so that a history page read before the recall does
// not bring one back.
function conv(key, kind, name) {
  if (!app.convs.has(key)) {
    app.convs.set(key, { key, kind, name, items: new Map(), recalled: new Set(), more: false, loaded: false, unread: 0 });
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
  let me;
  try {
    me = await api('GET', '/api/me');
  } catch (err) {
    $('#signin-error').textContent = err.message;
    showSignIn();
    return;
  }
  if (!me.signedIn) {
    showSignIn();
    return;
  }
  app.me = { id: me.id, nick: me.nick };
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
      // The positions this attempt resumes from (the client appends them
      // to the URL): a stream without one cannot have been replayed.
      resumedFrom = client.positions;
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
  // Presence and room counts come in broadcasts, which have no history:
  // what was sent while the socket was down is lost, so reload them on
  // every open. Messages come in streams with history; the recovered frame
  // says which of them need a reload (onRecovered).
  // data-connects counts the sockets opened, data-live the sockets that
  // got their first recovered frame, for tests and curious people.
  let opens = 0;
  let lives = 0;
  client.on('open', () => {
    document.body.dataset.connects = String(++opens);
    refreshLists();
  });
  client.on('recovered', (f) => {
    if (f.first) document.body.dataset.live = String(++lives);
    onRecovered(f);
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

// A kicked page is offline for certain (every socket of the user was
// closed) and hears no presence broadcasts any more, not even its own: it
// marks itself offline.
function showKicked() {
  $('#kicked').hidden = false;
  setComposerEnabled(false);
  setPresence(app.me.id, app.me.nick, false);
}

async function refresh() {
  try {
    await Promise.all([loadRooms(), loadOnline(), loadConversations()]);
    const c = app.convs.get(app.active);
    if (c) await Promise.all([loadLatest(c), c.kind === 'room' ? loadMembers(c.name) : null]);
  } catch (err) {
    notice(err.message);
  }
}

// refreshLists reloads what has no history: the room list and its counts,
// who is online, the list of private conversations and the open room's
// members.
async function refreshLists() {
  try {
    const c = app.convs.get(app.active);
    await Promise.all([loadRooms(), loadOnline(), loadConversations(), c?.kind === 'room' ? loadMembers(c.name) : null]);
  } catch (err) {
    notice(err.message);
  }
}

// ---- recovery ----

// The positions the current socket resumed from (set in getURL).
let resumedFrom = {};

// onRecovered reloads the conversations whose stream may have missed
// messages. On a socket's first recovered frame that is every stream that
// was not replayed: one listed with recovered:false, one not listed (no
// history, so at most once), and one the page had no position for before
// this socket (the first socket of the page, or a room joined since whose
// first message has not come yet), where the replay started at the URL's
// issue rather than where the page stood. A later recovered frame (a gap
// found mid-connection) names the streams to reload by recovered:false.
function onRecovered(f) {
  const streams = new Map((f.streams ?? []).map((s) => [s.channel, s]));
  const missed = (channel) => {
    const s = streams.get(channel);
    if (!f.first) return s !== undefined && !s.recovered;
    return !s?.recovered || !(channel in resumedFrom);
  };
  const reloads = [];
  if (missed('')) reloads.push(loadConversations(), ...[...app.convs.values()].filter((c) => c.kind === 'dm' && c.loaded).map(loadLatest));
  for (const c of app.convs.values()) {
    if (c.kind === 'room' && (c.loaded || app.active === c.key) && missed(ROOM_CHANNEL + c.name)) reloads.push(loadLatest(c));
  }
  Promise.all(reloads).catch((err) => notice(err.message));
}

// ---- frames ----

function onChannelFrame(f) {
  const d = f.data;
  const room = d.room;
  if (!room) return;
  if (d.kind === 'chat') {
    addRoomMessage(roomConv(room), d);
  } else if (d.kind === 'recall') {
    forget(roomConv(room), d.msgId);
    render();
  } else if (d.kind === 'member') {
    // The counts come in a broadcast (onBroadcast); the room list is
    // reloaded only when this user joined in another tab.
    if (d.id === app.me.id) loadRooms().catch(() => {});
    // The node may still deliver this user's own leave (LeaveChan reaches it
    // after the announcement): it is no member any more, so no members to ask.
    const leftHere = d.id === app.me.id && !d.joined;
    if (app.active === 'room:' + room && !leftHere) loadMembers(room).catch(() => {});
  }
}

function onMessageFrame(f) {
  const d = f.data;
  if (d?.kind !== 'dm') return;
  const mine = f.from === app.me.id; // the echo of our own message from another tab
  const c = dmConv(mine ? d.toNick : d.nick);
  const id = d.msgId ?? f.id;
  if (c.items.has(id)) return;
  c.items.set(id, {
    ...directItem(d, mine ? 'sent' : d.offline ? 'sent while you were offline' : ''),
    id,
    brokerId: f.id,
  });
  bump(c);
}

// directItem is a private message as the page shows it; status is what is
// known of its delivery.
function directItem(m, status) {
  return { id: m.msgId, nick: m.nick, text: m.text, ts: m.ts, mine: m.from === app.me.id, status };
}

// A history page says only whether the receiver was offline when it was sent.
function historyStatus(m) {
  if (!m.offline) return '';
  return m.from === app.me.id ? `sent while ${m.toNick} was offline` : 'sent while you were offline';
}

// Receipts name the broker's message id, which the page keeps on the items
// it sent or saw pushed.
function onReceipt(r) {
  for (const c of app.convs.values()) {
    if (c.kind !== 'dm') continue;
    for (const item of c.items.values()) {
      if (item.brokerId === r.id) {
        item.status = r.status === 'delivered' ? 'delivered' : 'not delivered (went offline)';
        render();
        return;
      }
    }
  }
}

// Broadcasts carry presence and room counts. The counts come in the frame,
// so a change costs the service one broadcast and the pages no request:
// reloading the room list on each event would cost one request per open
// page per change, polling one per page per interval even when idle.
function onBroadcast(f) {
  const d = f.data;
  if (d?.kind === 'presence') setPresence(d.id, d.nick, d.online);
  if (d?.kind === 'presence' || d?.kind === 'rooms') applyRoomCounts(d.rooms ?? []);
  if (d?.kind === 'rooms') for (const room of d.deleted ?? []) removeRoom(room);
}

// removeRoom drops a room the service deleted (its last member left).
function removeRoom(room) {
  app.rooms = app.rooms.filter((r) => r.name !== room);
  closeRoom(room);
  render();
}

// forget removes a recalled message for good.
function forget(c, id) {
  c.items.delete(id);
  c.recalled.add(id);
}

// closeRoom forgets a room's messages and closes it if it is open. The
// room's stream position goes too: a room joined again starts afresh.
function closeRoom(room) {
  app.convs.delete('room:' + room);
  app.client?.forgetChannel(ROOM_CHANNEL + room);
  if (app.active === 'room:' + room) {
    app.active = null;
    app.members = [];
    renderMembers();
  }
}

function setPresence(id, nick, online) {
  if (online) app.online.set(id, nick);
  else app.online.delete(id);
  renderOnline();
  const m = app.members.find((m) => m.id === id);
  if (m) {
    m.online = online;
    renderMembers();
  }
}

// applyRoomCounts updates the room list from the service's counts; a room
// this page has not seen yet (just created) is added.
function applyRoomCounts(counts) {
  for (const { name, members, online } of counts) {
    const r = app.rooms.find((r) => r.name === name);
    if (r) Object.assign(r, { members, online });
    else app.rooms.push({ name, members, online, joined: false });
  }
  app.rooms.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  renderRooms();
}

const roomItem = (m) => ({ id: m.msgId, from: m.from, nick: m.nick, text: m.text, ts: m.ts, mine: m.from === app.me.id });

function addRoomMessage(c, m) {
  if (c.items.has(m.msgId) || c.recalled.has(m.msgId)) return;
  c.items.set(m.msgId, roomItem(m));
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
  app.members = members;
  renderMembers();
}

// loadConversations lists the private conversations kept by the service,
// so that a new session (another browser, a reload) shows them too. Their
// messages load when one is opened.
async function loadConversations() {
  const { conversations } = await api('GET', '/api/dms');
  for (const { nick } of conversations) dmConv(nick);
  renderDMs();
}

const dmHistoryPath = (nick) => `/api/dms/${encodeURIComponent(nick)}/messages`;

// addDirectPage merges a page of a private conversation's history. Items
// already shown keep their status: a live receipt knows more than history.
function addDirectPage(c, res) {
  for (const m of res.messages) {
    if (!c.items.has(m.msgId)) c.items.set(m.msgId, directItem(m, historyStatus(m)));
  }
  if (!c.loaded) c.more = res.more; // later pages are older ones: loadOlder sets it
  c.loaded = true;
}

// loadLatest fetches the newest page and reconciles it with what is shown:
// messages recalled while the socket was down disappear. Only items shown
// before the request can be judged so: one pushed while it was under way
// may be newer than the page.
async function loadLatest(c) {
  if (c.kind === 'dm') {
    addDirectPage(c, await api('GET', `${dmHistoryPath(c.name)}?limit=${PAGE}`));
    render({ toBottom: true });
    return;
  }
  const shown = [...c.items.keys()];
  const res = await api('GET', `/api/rooms/${c.name}/messages?limit=${PAGE}`);
  const ids = new Set(res.messages.map((m) => m.msgId));
  const oldest = res.messages[0]?.msgId ?? '';
  for (const id of shown) {
    if (id >= oldest && !ids.has(id)) c.items.delete(id);
  }
  for (const m of res.messages) if (!c.recalled.has(m.msgId)) c.items.set(m.msgId, roomItem(m));
  if (!c.loaded) c.more = res.more;
  c.loaded = true;
  render({ toBottom: true });
}

let loadingOlder = false;
async function loadOlder() {
  const c = app.convs.get(app.active);
  if (!c || !c.more || loadingOlder) return;
  loadingOlder = true;
  try {
    const oldest = [...c.items.keys()].sort()[0];
    const path = c.kind === 'room' ? `/api/rooms/${c.name}/messages` : dmHistoryPath(c.name);
    const res = await api('GET', `${path}?limit=${PAGE}&before=${oldest}`);
    if (c.kind === 'dm') addDirectPage(c, res);
    else for (const m of res.messages) if (!c.recalled.has(m.msgId)) c.items.set(m.msgId, roomItem(m));
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

// openConv shows a conversation and loads its newest messages (and a
// room's members), unless the caller just loaded them.
async function openConv(c, { loaded = false } = {}) {
  app.active = c.key;
  c.unread = 0;
  notice('');
  app.members = [];
  renderMembers();
  render({ toBottom: true });
  setComposerEnabled(app.client.state !== 'kicked');
  try {
    await Promise.all([loaded ? null : loadLatest(c), c.kind === 'room' ? loadMembers(c.name) : null]);
  } catch (err) {
    notice(err.message);
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
    closeRoom(c.name);
    await loadRooms();
    render();
  } catch (err) {
    notice(err.message);
  }
});

// A conversation is added only for a nickname the service knows: loading
// its history first both checks the name and gets the user's spelling of it.
$('#dm-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const nick = form.nick.value.trim();
  if (!nick) return;
  let res;
  try {
    res = await api('GET', `${dmHistoryPath(nick)}?limit=${PAGE}`);
  } catch (err) {
    notice(err.message);
    return;
  }
  form.nick.value = '';
  const c = dmConv(res.with.nick);
  addDirectPage(c, res);
  await openConv(c, { loaded: true });
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
      const status = res.status === 'stored' ? `kept until ${c.name} signs in` : 'sent';
      // The echo to this user's sockets may have come first.
      const item = c.items.get(res.message.msgId);
      if (item) item.brokerId = res.id;
      else c.items.set(res.message.msgId, { ...directItem(res.message, status), brokerId: res.id });
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
    forget(c, id);
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

function renderMembers() {
  $('#members').replaceChildren(
    ...app.members.map((m) =>
      el('li', { class: 'person', 'data-nick': m.nick, 'data-id': m.id }, [
        el('span', { class: m.online ? 'dot on' : 'dot' }),
        el('span', {}, [m.nick + (m.id === app.me.id ? ' (you)' : '')]),
      ]),
    ),
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
  $('#older').hidden = !c?.more;
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
