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

/** A private message (imhelper SendMessage). `to` is set only on the copy echoed to the sender's other sockets. */
export interface MessageFrame<T = unknown> {
  type: 'message';
  id: string;
  from: string;
  to?: string[];
  ts: number;
  data: T;
}

/** A channel (room) message (imhelper SendChanMessage). */
export interface ChannelFrame<T = unknown> {
  type: 'channel';
  id: string;
  from: string;
  channel: string;
  ts: number;
  data: T;
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
  /** A socket opened. Frames sent while disconnected are lost: reload what you show. */
  open: Record<string, never>;
  close: CloseEvent;
  /** getURL failed (the client retries) or a frame was not JSON. */
  error: { error: unknown };
  message: MessageFrame;
  channel: ChannelFrame;
  broadcast: BroadcastFrame;
  receipt: ReceiptFrame;
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
  on<K extends keyof IMClientEventMap>(type: K, handler: (event: IMClientEventMap[K]) => void): () => void;
  start(): void;
  reconnectNow(): void;
  close(): void;
}
