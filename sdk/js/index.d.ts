// Types of liaotian-client. The wire frames are those of docs/protocol.md (chat.v1); fields the SDK
// does not read are passed through as they came.

export type Conversation = { room: string } | { group: string } | { with: string };

export interface MessageFrame {
  type: 'message';
  room?: string;
  group?: string;
  to?: string;
  from: string;
  text: string;
  seq: number;
  prev_seq: number;
  ts: number;
  client_msg_id: string;
  [field: string]: unknown;
}

export interface EventFrame {
  type: 'event';
  group: string;
  kind: 'created' | 'added' | 'removed' | 'quit' | 'role' | 'renamed';
  users: string[];
  by: string;
  name?: string;
  role?: string;
  owner?: string;
  seq: number;
  prev_seq: number;
  ts: number;
}

export interface Ack {
  type: 'ack';
  client_msg_id: string;
  seq: number;
  ts: number;
}

export type OutboxState = 'pending' | 'sent' | 'failed' | 'discarded';

export interface OutboxEntry {
  client_msg_id: string;
  conversation: Conversation;
  text: string;
  state: OutboxState;
  error: { code: string; message: string } | null;
  ack: Ack | null;
  attempts: number;
  /** After a retry past the duplicate window: the id this message was first sent with. */
  replaces?: string;
}

export interface Outgoing {
  client_msg_id: string;
  readonly state: OutboxState;
  /** Resolves with the ack; rejects with a ChatError (`code`: the server's, or `outbox_full`, `expired`, `unavailable`, `other_user`). */
  acked: Promise<Ack>;
}

export interface HistoryPage {
  messages: Array<MessageFrame | EventFrame>;
  more: boolean;
}

export interface ConversationItem {
  group?: string;
  with?: string;
  name?: string;
  last: MessageFrame | EventFrame;
  activity: number;
  read_seq: number;
  unread: number;
  members?: number;
}

export interface Group {
  group: string;
  name: string;
  owner?: string;
  members: Array<{ user: string; role: 'owner' | 'admin' | 'member' }>;
  member_count: number;
}

export interface Storage {
  get(key: string): any;
  set(key: string, value: any): void;
  remove(key: string): void;
}

export interface Socket {
  send(text: string): void;
  close(code?: number, reason?: string): void;
  onopen: (() => void) | null;
  onmessage: ((text: string) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
}

export interface Transport {
  connect(o: { url: string; token: string; protocols?: string[] }): Socket;
  request(o: { url: string; method?: string; body?: unknown; headers?: Record<string, string> }): Promise<{ status: number; body: any }>;
  wxLogin?(): Promise<string>;
}

export const PROTOCOL: 'chat.v1';
export function webTransport(o?: { WebSocket?: any; fetch?: typeof fetch; headers?: boolean }): Transport;
export function wxTransport(wx: any): Transport;
export function memoryStorage(): Storage;
export function wxStorage(wx: any): Storage;
export function webStorage(store: { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void }): Storage;
export function convKey(conv: Conversation): string;
export function convOf(frame: MessageFrame | EventFrame, me: string): Conversation;
export function attachWx(client: Client, wx: any): () => void;

export class AuthError extends Error {
  status: number;
  code: string;
  reason?: string;
}

export const EXPIRY_MARGIN_MS: number;

export class Auth {
  constructor(o: {
    transport: Transport;
    authUrl?: string;
    login?: 'wechat' | { dev_user: string };
    tokenProvider?: (o: { reason: 'login' | 'refresh' }) => Promise<string>;
    storage?: Storage;
    now?: () => number;
  });
  readonly user: string | null;
  accessToken(): Promise<string>;
  invalidate(): void;
  clear(): void;
  refresh(): Promise<unknown>;
  login(): Promise<unknown>;
  logout(): Promise<void>;
  request(o: { url: string; method?: string; body?: unknown; headers?: Record<string, string> }): Promise<{ status: number; body: any }>;
}

export class ChatError extends Error {
  code: string;
  frame?: unknown;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'waiting' | 'suspended' | 'stopped';

export const CLIENT_DEFAULTS: {
  heartbeatMs: number;
  deadAfterBeats: number;
  closeWaitMs: number;
  welcomeTimeoutMs: number;
  rejoinMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  requestTimeoutMs: number;
  hideGraceMs: number;
  maxStoredPositions: number;
  maxResumedThreads: number;
};
export const OUTBOX_DEFAULTS: { maxPending: number; maxAgeMs: number; maxAttempts: number; ackTimeoutMs: number; rateLimitedMs: number; rejoinWaitMs: number };
export const FILL_DEFAULTS: { maxPages: number; attempts: number; retryMs: number; maxHeld: number };
export const PACER_DEFAULTS: { ratePerSec: number; burst: number; maxQueued: number };
export const FINAL_ERRORS: Set<string>;
export const TYPING_INTERVAL_MS: number;

export interface ClientEvents {
  state: (s: ClientState) => void;
  open: (welcome: { user: string; conn: string; heartbeat_ms: number; server_time: number }) => void;
  close: (ev: { code: number; reason: string }) => void;
  reconnecting: (r: { attempt: number; delay: number }) => void;
  logged_out: (ev: { code: number; reason: string }) => void;
  message: (m: MessageFrame, conv: Conversation) => void;
  event: (e: EventFrame, conv: Conversation) => void;
  joined: (j: { room?: string; group?: string; last_seq: number; recovered?: boolean; read_seq?: number; unread?: number; online: string[]; online_count: number }) => void;
  resumed: (r: { with: string; last_seq: number; recovered: boolean; read_seq?: number; unread?: number }) => void;
  gap: (g: { conversation: Conversation; after: number; before: number }) => void;
  outbox: (m: OutboxEntry) => void;
  removed: (r: { group: string; code?: string }) => void;
  /** This user was put in a group (created with them, or added), by a change made elsewhere. */
  group: (g: Group) => void;
  read_state: (r: { group?: string; with?: string; read_seq: number; unread: number }) => void;
  receipt: (r: { group?: string; with?: string; user?: string; read_seq: number }) => void;
  presence: (p: { user: string; online: boolean; last_seen?: number; room?: string; group?: string }) => void;
  /** The other user of a thread, or another member of a small group, is typing. */
  typing: (t: { group?: string; with?: string; user: string }, conv: { group: string } | { with: string }) => void;
  server_error: (e: { code: string; message: string; id?: string }) => void;
  error: (e: Error) => void;
}

export class Client {
  constructor(o: {
    /** A gateway, or several: a connection lost without being asked tries the next one. */
    url: string | string[];
    transport: Transport;
    auth: Auth;
    storage?: Storage | null;
    options?: Partial<typeof CLIENT_DEFAULTS>;
    outbox?: Partial<typeof OUTBOX_DEFAULTS>;
    pacer?: Partial<typeof PACER_DEFAULTS>;
    fill?: Partial<typeof FILL_DEFAULTS>;
    now?: () => number;
    random?: () => number;
  });
  readonly state: ClientState;
  readonly user: string | null;
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): () => void;
  off<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): void;

  start(): void;
  stop(): void;
  hide(): void;
  show(): void;
  networkChanged(isConnected: boolean): void;

  join(conv: { room: string } | { group: string }): Promise<unknown>;
  leave(conv: { room: string } | { group: string }): Promise<void>;
  send(conv: Conversation, text: string, extra?: Record<string, unknown>): Outgoing;
  pending(): OutboxEntry[];
  /** Within the duplicate window with the same id; past it, under a new one (see README). */
  retry(clientMsgId: string): Promise<Ack> | null;
  discard(clientMsgId: string): boolean;
  lastSeen(conv: Conversation): number | null;
  history(conv: Conversation, o?: { before?: number; after?: number; limit?: number }): Promise<HistoryPage>;

  conversations(o?: { limit?: number; before?: number }): Promise<{ items: ConversationItem[]; more: boolean }>;
  read(conv: { group: string } | { with: string }, seq: number): Promise<{ read_seq: number; unread: number }>;
  hideConversation(conv: { group: string } | { with: string }): Promise<unknown>;

  createGroup(o: { group?: string; name: string; members?: string[] }): Promise<Group>;
  addMembers(group: string, users: string[]): Promise<Group>;
  removeMembers(group: string, users: string[]): Promise<Group>;
  quitGroup(group: string): Promise<Group>;
  setRole(group: string, user: string, role: 'owner' | 'admin' | 'member'): Promise<Group>;
  renameGroup(group: string, name: string): Promise<Group>;
  groupInfo(group: string): Promise<Group>;
  groupReceipts(group: string, seq: number): Promise<{ users: string[]; count: number; seq: number }>;

  /** At most one frame every TYPING_INTERVAL_MS; returns whether one went out. */
  typing(conv: { group: string } | { with: string }): boolean;
  watch(users: string[]): Promise<unknown>;
  unwatch(users: string[]): Promise<unknown>;
  presence(q: { room: string } | { group: string } | { users: string[] }): Promise<{ users: Array<{ user: string; online: boolean; last_seen?: number }> }>;
}
