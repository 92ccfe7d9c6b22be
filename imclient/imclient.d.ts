// Types for imclient.js. See README.md beside this file.

/** WebSocket close codes used by imserver. */
export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  POLICY: 1008;
  TOO_BIG: 1009;
  FORCED_OFFLINE: 4001;
  MOVED: 4002;
  SLOW_CONSUMER: 4003;
  NO_PONG: 4004;
}>;

/**
 * Where a client stands in a stream with history. `epoch` is 1-32 characters
 * of `A-Za-z0-9_-` and changes when the broker lost the stream; `offset`
 * counts the stream's messages (0 = before the first one).
 */
export interface Position {
  epoch: string;
  offset: number;
}

/**
 * A private message (imhelper SendMessage). `to` is set only on the copy echoed to the sender's other sockets.
 * `epoch`/`offset`: its position in the personal stream (the sender's own for an echo copy), when that stream has history.
 */
export interface MessageFrame<T = unknown> {
  type: 'message';
  id: string;
  from: string;
  to?: string[];
  ts: number;
  data: T;
  epoch?: string;
  offset?: number;
}

/** A channel (room) message (imhelper SendChanMessage). `epoch`/`offset`: its position in the channel's stream, when it has history. */
export interface ChannelFrame<T = unknown> {
  type: 'channel';
  id: string;
  from: string;
  channel: string;
  ts: number;
  data: T;
  epoch?: string;
  offset?: number;
}

/** One stream of a `recovered` frame. */
export interface RecoveredStream extends Position {
  /** "" = the personal stream, otherwise the channel name. */
  channel: string;
  /**
   * true: whatever was missed was replayed before this frame. false: messages were
   * missed that cannot be replayed; reload this stream's state from your API.
   */
  recovered: boolean;
}

/**
 * The first frame of every socket ("you are live", `first: true`), and later
 * ones without `first` when the node finds a gap it cannot fill. Lists only
 * streams with history and a known position; `epoch`/`offset` are where the
 * client now stands.
 */
export interface RecoveredFrame {
  type: 'recovered';
  first?: boolean;
  streams: RecoveredStream[];
}

/** A message to every online client (imhelper SendBroadcastMessage). */
export interface BroadcastFrame<T = unknown> {
  type: 'broadcast';
  id: string;
  ts: number;
  data: T;
}

/** Whether the message `id` reached receiver `to` (imhelper WithReceipt). */
export interface ReceiptFrame {
  type: 'receipt';
  id: string;
  to: string;
  status: 'delivered' | 'offline';
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'waiting' | 'kicked' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  /** Failed attempts since the last stable connection. */
  attempt?: number;
  /** 'waiting': milliseconds until the next attempt. */
  delay?: number;
  /** Close code of the socket that ended, if one did. */
  code?: number;
  reason?: string;
  /** 'waiting' or 'closed' after getURL failed. */
  error?: unknown;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
}

export interface IMClientEventMap {
  state: StateEvent;
  /**
   * A socket opened. Streams without history lose what was sent while disconnected:
   * reload what they show (for streams with history, wait for `recovered`).
   */
  open: Record<string, never>;
  close: CloseEvent;
  /** getURL failed (the client retries) or a frame was not JSON. */
  error: { error: unknown };
  message: MessageFrame;
  channel: ChannelFrame;
  broadcast: BroadcastFrame;
  receipt: ReceiptFrame;
  /** The client keeps the streams' positions before handlers run. */
  recovered: RecoveredFrame;
}

export interface IMClientOptions {
  /** Returns a fresh one-time ws URL from the business API. Throw an error with `final: true` to stop for good. */
  getURL: () => Promise<string>;
  /** First backoff step in ms. Default 500. */
  minDelay?: number;
  /** Backoff cap in ms. Default 15000. */
  maxDelay?: number;
  /** A socket open this long resets the backoff, in ms. Default 5000. */
  stableAfter?: number;
  /** WebSocket constructor. Default globalThis.WebSocket. */
  WebSocket?: typeof WebSocket;
  /** Random source in [0, 1) for the jitter. Default Math.random. */
  random?: () => number;
}

export declare class IMClient {
  constructor(options: IMClientOptions);
  readonly state: ConnectionState;
  /** A snapshot of the last position per stream: "" = personal, other keys are channel names. */
  readonly positions: Record<string, Position>;
  /** Seeds a stream's position ("" = personal); the next connect resumes from it. Throws TypeError on a malformed one. */
  setPosition(channel: string, position: Position): void;
  /** Forgets a stream's position ("" = personal), e.g. after leaving a channel. */
  forgetChannel(channel: string): void;
  on<K extends keyof IMClientEventMap>(type: K, handler: (event: IMClientEventMap[K]) => void): () => void;
  start(): void;
  reconnectNow(): void;
  close(): void;
}
