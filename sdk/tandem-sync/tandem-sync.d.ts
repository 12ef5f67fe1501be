// tandem-sync.d.ts: the TypeScript types of tandem-sync.js (the module beside this
// file), for an Activity or page built with TypeScript (Vite's starter). Kept by
// hand next to the module: what a change there adds or renames, change here too.

/** A room member as the server shows it (SYNC_PROTOCOL.md `presence.*`). */
export interface Member {
  session: string;
  id: string;
  name: string;
  avatar?: string;
  role: 'host' | 'moderator' | 'viewer' | string;
  status: 'active' | 'idle' | 'buffering' | 'away' | string;
  connected: boolean;
}

/** The room's playback state (`playback.state`). */
export interface PlaybackState {
  seq: number;
  media: { id: string; url?: string; title?: string; [k: string]: unknown } | null;
  paused: boolean;
  /** Seconds into the media at server time `at`. */
  position: number;
  /** Server time (ms since the epoch). */
  at: number;
  rate: number;
  host?: string;
  waiting?: boolean;
  [k: string]: unknown;
}

export interface Fatal {
  code: string;
  message: string;
  status?: number;
  closeCode?: number;
}

/** What the page shows of its member (sent in `hello`; identity comes from the token). */
export interface Presence {
  name?: string;
  avatar?: string;
}

/** The events an adapter's `on` takes: HTMLMediaElement's names. */
export type AdapterEvent = 'play' | 'pause' | 'seeking' | 'seeked' | 'ratechange' | 'timeupdate' | 'canplay' | 'waiting';
export const ADAPTER_EVENTS: AdapterEvent[];

/**
 * What the SDK needs from a player. Times are seconds. `on` returns a function
 * that removes the listener.
 */
export interface PlayerAdapter {
  getTime(): number;
  seek(t: number): void;
  play(): unknown;
  pause(): void;
  isPaused(): boolean;
  /** Without it the SDK corrects drift by seeking only. */
  setRate?(rate: number): void;
  getRate?(): number;
  getDuration?(): number;
  /** False while seeking or without enough data (the SDK then waits before `ready`). */
  isReady?(): boolean;
  on?(event: AdapterEvent, listener: (ev?: unknown) => void): (() => void) | void;
}

export interface AttachOptions {
  /** false: correct by seeking only. */
  canRate?: boolean;
  /** The player's own controls become room commands (play, pause, seeks over 1 s). */
  forward?: boolean;
}

/** The Discord option: an Activity's sign-in steps. */
export interface DiscordOption {
  /** The Activity instance (`DiscordSDK.instanceId`): the room is `discord:{instanceId}`. */
  instanceId: string;
  /** Resolves to an OAuth2 authorization code (`discordSdk.commands.authorize(...)`). */
  authorize: () => Promise<string>;
  /** Called with Discord's access token (`discordSdk.commands.authenticate({access_token})`). */
  authenticate?: (accessToken: string) => Promise<unknown>;
}

export interface DiscordUser {
  id: string;
  username: string;
  global_name: string | null;
  avatar: string | null;
}

export interface DiscordSession {
  /** Discord's access token (for `authenticate`); never log it. */
  accessToken: string;
  user: DiscordUser;
  /** The tandem room token for `room`. */
  sessionToken: string;
  /** `discord:{instanceId}`. */
  room: string;
  expiresAt: string;
  /** The user as room presence: Discord display name and CDN avatar URL. */
  presence: { name: string; avatar?: string };
}

export interface TandemSyncOptions {
  /** `ws(s)://host/v1/rooms/{room}/ws`; or `base` and `room`. */
  url?: string;
  /** '' (this origin), '/.proxy' (Discord Activity) or 'https://tandem.example.com'. */
  base?: string;
  room?: string;
  token: string;
  user?: Presence;
  /** Where the resume data survives a reload (default sessionStorage; null: none). */
  storage?: Storage | null;
}

export interface JoinOptions {
  /** Default '/.proxy' with `discord`, else ''. */
  base?: string;
  room?: string;
  token?: string;
  user?: Presence;
  storage?: Storage | null;
  discord?: DiscordOption;
  fetch?: typeof fetch;
}

export interface TandemSyncEventMap {
  welcome: CustomEvent<any>;
  resumed: CustomEvent<any>;
  state: CustomEvent<PlaybackState>;
  presence: CustomEvent<{ members: Member[]; change?: unknown }>;
  connection: CustomEvent<{ connected: boolean; code?: number; reason?: string; fatal?: Fatal }>;
  fatal: CustomEvent<Fatal>;
  clock: CustomEvent<{ offset: number; rtt: number }>;
  chat: CustomEvent<any>;
  reaction: CustomEvent<any>;
  moderation: CustomEvent<any>;
  host: CustomEvent<{ host: string }>;
  settings: CustomEvent<any>;
  hint: CustomEvent<any>;
  error: CustomEvent<{ code: string; message: string; [k: string]: unknown }>;
  message: CustomEvent<any>;
}

export class TandemSync extends EventTarget {
  constructor(opts: TandemSyncOptions);
  /** Signs in (the Discord flow with `discord`) and connects. */
  static join(opts: JoinOptions): Promise<TandemSync>;
  readonly url: string;
  token: string;
  user: Presence;
  /** Local clock − server clock estimate (ms). */
  offset: number;
  rtt: number | null;
  session: string | null;
  you: { id: string; name: string; avatar?: string; role: string } | null;
  room: { id: string; host: string; control: 'host' | 'everyone'; [k: string]: unknown } | null;
  members: Map<string, Member>;
  playback: PlaybackState | null;
  connected: boolean;
  fatal: Fatal | null;
  /** Set by `join` with `discord`. */
  discord?: DiscordSession;
  debug?: boolean;

  serverNow(): number;
  localNow(): number;
  /** Expected media position (s) at server time `at` (default now). */
  position(at?: number): number;
  isHost(): boolean;
  connect(): this;
  close(): void;
  send(msg: object): boolean;

  play(position?: number): boolean;
  pause(position?: number): boolean;
  seek(position: number): boolean;
  setRate(rate: number): boolean;
  load(media: { id: string; url?: string; title?: string; [k: string]: unknown }, position?: number): boolean;
  transferHost(to: string): boolean;
  settings(s: { control?: 'host' | 'everyone'; slow_mode_ms?: number }): boolean;
  sendChat(text: string, media_time?: number): string;
  history(before: string, limit?: number): boolean;
  react(emoji: string, media_time?: number): boolean;
  deleteChat(id: string): boolean;
  mute(user: string, seconds: number): boolean;
  kick(user: string, reason?: string): boolean;
  ban(user: string, reason?: string): boolean;
  setHidden(hidden: boolean): boolean;
  report(state: 'playing' | 'paused' | 'buffering' | 'ready', position: number): boolean;

  /** An HTMLMediaElement, or any PlayerAdapter. */
  attach(player: HTMLMediaElement | PlayerAdapter, opts?: AttachOptions): VideoAdapter;
  attachPlayer(adapter: PlayerAdapter, opts?: AttachOptions): VideoAdapter;
  attachKaltura(player: KalturaPlayerLike, opts?: AttachOptions & { EventType?: Record<string, string> }): VideoAdapter;
  /** @deprecated use attachPlayer: a player with getTime/seek/play/pause/isPaused. */
  attachSeekOnly(player: PlayerAdapter, opts?: AttachOptions): VideoAdapter;

  addEventListener<K extends keyof TandemSyncEventMap>(type: K, listener: (ev: TandemSyncEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** Keeps a player on the room's state (rate nudges under 1.5 s, seeks beyond). */
export class VideoAdapter {
  constructor(sync: TandemSync, player: PlayerAdapter, opts?: AttachOptions);
  readonly player: PlayerAdapter;
  /** Last measured player − room position (s, + ahead). */
  drift: number;
  apply(fresh: boolean): void;
  report(): void;
  detach(): void;
}

export class MediaElementPlayer implements PlayerAdapter {
  constructor(el: HTMLMediaElement);
  readonly el: HTMLMediaElement;
  getTime(): number;
  seek(t: number): void;
  play(): Promise<void>;
  pause(): void;
  isPaused(): boolean;
  setRate(rate: number): void;
  getRate(): number;
  getDuration(): number;
  isReady(): boolean;
  on(event: AdapterEvent, listener: (ev?: unknown) => void): () => void;
}

/** The part of a Kaltura Player v7 (`KalturaPlayer.setup(config)`) the adapter uses. */
export interface KalturaPlayerLike {
  play(): unknown;
  pause(): void;
  currentTime: number;
  playbackRate: number;
  readonly paused: boolean;
  readonly seeking?: boolean;
  readonly duration: number;
  addEventListener(type: string, listener: (ev: unknown) => void): void;
  removeEventListener(type: string, listener: (ev: unknown) => void): void;
  loadMedia(info: { entryId: string; [k: string]: unknown }): Promise<unknown>;
  Event?: { Core?: Record<string, string> };
}

export class KalturaPlayerAdapter implements PlayerAdapter {
  /** `opts.EventType`: default `KalturaPlayer.core.EventType`. */
  constructor(player: KalturaPlayerLike, opts?: { EventType?: Record<string, string> });
  readonly player: KalturaPlayerLike;
  getTime(): number;
  seek(t: number): void;
  play(): unknown;
  pause(): void;
  isPaused(): boolean;
  setRate(rate: number): void;
  getRate(): number;
  getDuration(): number;
  isReady(): boolean;
  on(event: AdapterEvent, listener: (ev?: unknown) => void): () => void;
  loadMedia(entryId: string): Promise<unknown>;
}

export const DISCORD_PROXY: '/.proxy';
export function roomSocketUrl(base: string, room: string, loc?: Location): string;
export function discordName(user: DiscordUser): string;
export function discordAvatarUrl(user: DiscordUser): string | undefined;
/** The Activity's sign-in: authorize → `POST {base}/v1/discord/token` → authenticate. */
export function discordSignIn(opts: DiscordOption & { base?: string; fetch?: typeof fetch }): Promise<DiscordSession>;
/** The Discord option from an `@discord/embedded-app-sdk` `DiscordSDK` instance. */
export function fromDiscordSdk(
  discordSdk: {
    instanceId: string;
    clientId?: string;
    ready(): Promise<void>;
    commands: {
      authorize(args: { client_id: string; response_type: 'code'; state: string; prompt: 'none'; scope: string[] }): Promise<{ code: string }>;
      authenticate(args: { access_token: string }): Promise<unknown>;
    };
  },
  opts?: { clientId?: string; scope?: string[]; prompt?: 'none' },
): DiscordOption;
export function fatalClose(closeCode: number, lastError: { code?: string; message?: string } | null): { code: string; message: string } | null;

export class TandemError extends Error {
  status: number;
  code: string;
  field?: string;
}
