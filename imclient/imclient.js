// imclient.js: a dependency-free client for imbroker nodes (ES module).
//
// The broker is push-only: the socket only receives frames. Everything the
// user does goes to the business API, which also hands out the one-time
// WebSocket URL; so the client asks for a fresh URL before every (re)connect.
// See README.md beside this file and docs/client.md in the repository.

/** WebSocket close codes used by imserver (internal/wire/close.go). */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // node draining: reconnect at once
  POLICY: 1008,
  TOO_BIG: 1009,
  FORCED_OFFLINE: 4001, // kicked: final, never reconnect by ourselves
  MOVED: 4002, // the client's owner node changed: reconnect at once
  SLOW_CONSUMER: 4003,
  NO_PONG: 4004,
});

const FRAME_TYPES = new Set(['message', 'channel', 'broadcast', 'receipt', 'recovered']);

// A (re)connect URL carries at most one personal and this many channel
// positions: the node refuses more.
const MAX_CHANNEL_POSITIONS = 64;

const EPOCH = /^[A-Za-z0-9_-]{1,32}$/;
// Channel names follow the broker's clientId rules: 1-128 bytes of UTF-8
// without whitespace or control characters.
const BAD_CHANNEL_CHAR = /[\s\p{Cc}]/u;
const utf8 = new TextEncoder();

const validPosition = (p) =>
  p !== null &&
  typeof p === 'object' &&
  typeof p.epoch === 'string' &&
  EPOCH.test(p.epoch) &&
  Number.isSafeInteger(p.offset) &&
  p.offset >= 0;

const validChannel = (ch) =>
  typeof ch === 'string' &&
  (ch === '' || (!BAD_CHANNEL_CHAR.test(ch) && utf8.encode(ch).length <= 128));

export class IMClient {
  #getURL;
  #WebSocket;
  #minDelay;
  #maxDelay;
  #stableAfter;
  #random;
  #listeners = new Map();
  #state = 'idle';
  #ws = null;
  #attempt = 0;
  #timer = null;
  #stableTimer = null;
  #generation = 0; // invalidates callbacks of an abandoned connect
  // Where the client stands in each stream with history: "" is the personal
  // stream, other keys are channel names. Map order is the order of the
  // last update, oldest first, so that the URL keeps the busiest channels
  // when there are more than MAX_CHANNEL_POSITIONS.
  #positions = new Map();

  /**
   * @param {object} options
   * @param {() => Promise<string>} options.getURL asks the business API for a fresh ws URL.
   *   Throw an error with `final: true` (e.g. the user is signed out) to stop for good.
   * @param {number} [options.minDelay=500] first backoff step in ms
   * @param {number} [options.maxDelay=15000] backoff cap in ms
   * @param {number} [options.stableAfter=5000] a socket open this long resets the backoff
   * @param {typeof WebSocket} [options.WebSocket] constructor to use (default: the global one)
   */
  constructor(options) {
    if (!options || typeof options.getURL !== 'function') {
      throw new TypeError('IMClient needs a getURL function');
    }
    this.#getURL = options.getURL;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#minDelay = options.minDelay ?? 500;
    this.#maxDelay = options.maxDelay ?? 15000;
    this.#stableAfter = options.stableAfter ?? 5000;
    this.#random = options.random ?? Math.random;
  }

  /** 'idle' | 'connecting' | 'open' | 'waiting' | 'kicked' | 'closed' */
  get state() {
    return this.#state;
  }

  /**
   * The last position per stream, as a fresh object on each read:
   * `{"": {epoch, offset}, "room1": {epoch, offset}, …}` ("" = the personal
   * stream). Changing it changes nothing in the client.
   */
  get positions() {
    return Object.fromEntries([...this.#positions].map(([ch, p]) => [ch, { epoch: p.epoch, offset: p.offset }]));
  }

  /**
   * Seeds the position of a stream ("" = personal), e.g. from positions the
   * page saved before a reload. The next connect resumes from it.
   * @param {string} channel
   * @param {{epoch: string, offset: number}} position
   */
  setPosition(channel, position) {
    if (!validChannel(channel)) throw new TypeError(`not a channel name: ${JSON.stringify(channel)}`);
    if (!validPosition(position)) {
      throw new TypeError('a position is {epoch: 1-32 characters of A-Za-z0-9_-, offset: a non-negative integer}');
    }
    this.#keep(channel, position.epoch, position.offset);
  }

  /** Forgets the position of a stream ("" = personal), e.g. after leaving a channel. */
  forgetChannel(channel) {
    this.#positions.delete(channel);
  }

  /** Subscribes to an event; returns a function that unsubscribes. */
  on(type, handler) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(handler);
    return () => this.#listeners.get(type)?.delete(handler);
  }

  /** Starts connecting. Calling it again while running does nothing. */
  start() {
    if (this.#state === 'idle') this.#connect();
  }

  /** Skips the current backoff wait, e.g. when the network comes back. */
  reconnectNow() {
    if (this.#state !== 'waiting') return;
    clearTimeout(this.#timer);
    this.#connect();
  }

  /** Closes the socket for good; the client does not reconnect. */
  close() {
    this.#stop('closed', { code: CloseCodes.NORMAL, reason: 'closed by the application' });
  }

  async #connect() {
    const generation = ++this.#generation;
    this.#setState('connecting', { attempt: this.#attempt });
    let url;
    try {
      url = await this.#getURL();
    } catch (error) {
      if (generation !== this.#generation) return;
      if (error && error.final) {
        this.#stop('closed', { error });
        return;
      }
      this.#emit('error', { error });
      this.#retry({ error });
      return;
    }
    if (generation !== this.#generation) return;

    let ws;
    try {
      ws = new this.#WebSocket(this.#withPositions(url));
    } catch (error) {
      this.#emit('error', { error });
      this.#retry({ error });
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#stableTimer = setTimeout(() => (this.#attempt = 0), this.#stableAfter);
      this.#setState('open', {});
      this.#emit('open', {});
    };
    ws.onmessage = (ev) => {
      if (this.#ws === ws) this.#dispatch(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      clearTimeout(this.#stableTimer);
      const info = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
      this.#emit('close', info);
      if (ev.code === CloseCodes.FORCED_OFFLINE) {
        this.#stop('kicked', info);
      } else if (ev.code === CloseCodes.MOVED || ev.code === CloseCodes.GOING_AWAY) {
        this.#retry({ ...info, now: true });
      } else {
        this.#retry(info);
      }
    };
  }

  #dispatch(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      this.#emit('error', { error });
      return;
    }
    // Unknown frame types are ignored so that newer brokers stay compatible.
    if (!frame || !FRAME_TYPES.has(frame.type)) return;
    if (frame.type === 'recovered') {
      // Each listed stream's position is where the client now stands,
      // whether its gap was replayed or not (recovered:false).
      for (const st of Array.isArray(frame.streams) ? frame.streams : []) {
        if (st && validChannel(st.channel) && validPosition(st)) this.#keep(st.channel, st.epoch, st.offset);
      }
    } else if ((frame.type === 'message' || frame.type === 'channel') && frame.epoch !== undefined) {
      // Echo copies (a message with "to") carry the position in the
      // sender's personal stream, which is this client's own.
      const key = frame.type === 'message' ? '' : frame.channel;
      if (validChannel(key) && validPosition(frame)) {
        const kept = this.#positions.get(key);
        if (kept && kept.epoch === frame.epoch && frame.offset <= kept.offset) return; // seen already
        this.#keep(key, frame.epoch, frame.offset);
      }
    }
    this.#emit(frame.type, frame);
  }

  #keep(channel, epoch, offset) {
    this.#positions.delete(channel); // re-inserted last: the most recent
    this.#positions.set(channel, { epoch, offset });
  }

  // withPositions appends one pos parameter per stream with a position:
  // pos=<epoch>.<offset> for the personal stream, pos=<epoch>.<offset>.<channel>
  // for channels, at most MAX_CHANNEL_POSITIONS of them, the most recently
  // updated ones.
  #withPositions(url) {
    const params = [];
    const personal = this.#positions.get('');
    if (personal) params.push(`${personal.epoch}.${personal.offset}`);
    const channels = [...this.#positions].filter(([ch]) => ch !== '').slice(-MAX_CHANNEL_POSITIONS);
    for (const [ch, p] of channels) params.push(`${p.epoch}.${p.offset}.${ch}`);
    if (params.length === 0) return url;
    const hash = url.indexOf('#');
    const [base, fragment] = hash < 0 ? [url, ''] : [url.slice(0, hash), url.slice(hash)];
    const query = params.map((p) => 'pos=' + encodeURIComponent(p)).join('&');
    return base + (base.includes('?') ? (base.endsWith('?') || base.endsWith('&') ? '' : '&') : '?') + query + fragment;
  }

  // retry waits and connects again with a fresh URL. "now" still waits a
  // random quarter second, so that the clients of a draining node do not all
  // arrive in the same instant; otherwise the wait is exponential with
  // jitter: a random value in [cap/2, cap], cap = min(maxDelay, minDelay·2^attempt).
  #retry(info) {
    let delay;
    if (info.now) {
      delay = this.#random() * 250;
    } else {
      const cap = Math.min(this.#maxDelay, this.#minDelay * 2 ** this.#attempt);
      delay = cap / 2 + (this.#random() * cap) / 2;
      this.#attempt++;
    }
    this.#setState('waiting', { ...info, attempt: this.#attempt, delay });
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  #stop(state, info) {
    if (this.#state === 'kicked' || this.#state === 'closed') return;
    this.#generation++;
    clearTimeout(this.#timer);
    clearTimeout(this.#stableTimer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(CloseCodes.NORMAL);
    this.#setState(state, info);
  }

  #setState(state, info) {
    this.#state = state;
    this.#emit('state', { state, ...info });
  }

  #emit(type, detail) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A failing handler must not break the connection logic.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}
