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

const FRAME_TYPES = new Set(['message', 'channel', 'broadcast', 'receipt']);

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
      ws = new this.#WebSocket(url);
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
    if (frame && FRAME_TYPES.has(frame.type)) this.#emit(frame.type, frame);
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
