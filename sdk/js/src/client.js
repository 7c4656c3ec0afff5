//! The connection to a liaotian gateway and everything that keeps its guarantees for the app: one
//! socket at a time, reconnect with capped jittered backoff, resume of every joined room and group
//! and every known thread from the highest `seq` seen, the outbox, per-conversation order with gap
//! fill, the heartbeat, and the app's lifecycle (hidden, shown, network back). Requests (history,
//! conversations, groups, presence) are promises answered by frame id.

import { Emitter } from './emitter.js';
import { convKey, convOf, target, convFromKey } from './conv.js';
import { Order } from './order.js';
import { Outbox, newClientMsgId } from './outbox.js';
import { Pacer } from './pacer.js';
import { ChatError } from './errors.js';

const SEEN_KEY = 'liaotian.seen';
const USER_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Users one connection may watch (the gateway's limit). */
const MAX_WATCHED = 200;
/** The gateway passes on one `typing` per connection every 3 s and drops the others. */
export const TYPING_INTERVAL_MS = 3000;

export const CLIENT_DEFAULTS = {
  /** App `ping` interval until `welcome` names the server's (mini-programs cannot send WebSocket pings). */
  heartbeatMs: 25000,
  /** A socket silent for this many heartbeats is taken for dead and replaced. */
  deadAfterBeats: 2.5,
  /** A socket asked to close that has not reported it yet holds the next one back this long at most;
   *  past it the next one opens rather than the client staying offline. */
  closeWaitMs: 3000,
  /** A socket that has not brought `welcome` this long after it was made is given up and replaced. */
  welcomeTimeoutMs: 15000,
  /** Pause before a join or resume refused `unavailable` is sent again (or the error's
   *  `retry_after_ms` for `rate_limited`). */
  rejoinMs: 2000,
  /** Reconnect delays: full jitter up to min(max, base × 2^attempt). */
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  /** A request unanswered this long is rejected with `timeout`. */
  requestTimeoutMs: 15000,
  /** After `hide()`, the socket is closed this much later (WeChat suspends a hidden mini-program's JS
   *  about 5 s after it goes to the background). */
  hideGraceMs: 3000,
  /** Conversations whose position is kept in storage, the most recently active first. */
  maxStoredPositions: 200,
  /** Threads resumed after a reconnect, the most recently active first; others resume when next used. */
  maxResumedThreads: 50,
};


/**
 * States: `idle` (not started), `connecting`, `open` (welcome received), `waiting` (a reconnect is
 * scheduled), `suspended` (hidden), `stopped`.
 */
export class Client extends Emitter {
  /**
   * @param {object} o
   * @param {string|string[]} o.url the gateway's WebSocket, e.g. wss://chat.example.com/ws, or
   *   several gateways': a connection lost without being asked tries the next one
   * @param {object} o.transport webTransport() or wxTransport(wx)
   * @param {import('./auth.js').Auth} o.auth
   * @param {object} [o.storage] keeps positions and the outbox across restarts
   */
  constructor({ url, transport, auth, storage = null, options = {}, outbox = {}, pacer = {}, fill = {}, now = Date.now, random = Math.random }) {
    super();
    Object.assign(this, { transport, auth, storage, now, random });
    this.urls = Array.isArray(url) ? url.slice() : [url];
    this.urlIndex = 0;
    this.opts = { ...CLIENT_DEFAULTS, ...options };
    this.fillLimits = fill;
    this.state = 'idle';
    this.user = null;
    this.sock = null;
    this.closing = null; // A socket asked to close whose close has not been reported yet.
    this.attempt = 0;
    this.failedBeforeOpen = 0;
    this.connecting = false;
    this.timers = { retry: null, beat: null, hide: null, save: null, welcome: null };
    this.heartbeatMs = this.opts.heartbeatMs;
    this.typingAt = -Infinity;
    this.lastFrameAt = 0;
    this.requests = new Map();
    this.requestN = 0;
    this.orders = new Map(); // conversation key -> Order
    this.joined = new Map(); // room or group key -> {waiters}
    this.watching = new Set();
    const saved = storage && storage.get(SEEN_KEY);
    this.savedUser = (saved && saved.user) || null;
    this.savedSeen = new Map(Object.entries((saved && saved.seen) || {}));
    this.pacer = new Pacer({ write: (text) => this.sock && this.sock.send(text), limits: pacer, now });
    this.outbox = new Outbox({
      write: (frame) => this._write(frame),
      changed: (m) => this.emit('outbox', m),
      wanted: (conv) => !conv.with && this.joined.has(convKey(conv)),
      storage,
      limits: outbox,
      now,
      random,
    });
  }

  // --- lifecycle ---

  /** Connects, and keeps connecting until `stop()`. */
  start() {
    if (this.state === 'open' || this.state === 'connecting') return;
    this._connect();
  }

  /** Closes on purpose; no reconnect until `start()`. Pending messages stay in the outbox. */
  stop() {
    this._cancelTimers();
    this._setState('stopped');
    this._closeSocket(1000, 'stopped');
    this.outbox.paused();
    this._flushSeen();
  }

  /** The app went to the background: close the socket after the grace, unless shown first. */
  hide() {
    clearTimeout(this.timers.hide);
    if (this.state === 'idle' || this.state === 'stopped') return;
    this._flushSeen();
    this.timers.hide = setTimeout(() => {
      this.timers.hide = null;
      if (this.state === 'stopped') return;
      clearTimeout(this.timers.retry);
      this._setState('suspended');
      this._closeSocket(1000, 'background');
    }, this.opts.hideGraceMs);
  }

  /** Back in the foreground: keep the socket if it is still there, else reconnect and resume now. */
  show() {
    clearTimeout(this.timers.hide);
    this.timers.hide = null;
    if (this.state === 'suspended' || this.state === 'waiting') {
      this.attempt = 0;
      this._connect();
    }
  }

  /** The network came back (or went): a scheduled reconnect happens now instead of after its delay. */
  networkChanged(isConnected) {
    if (isConnected && this.state === 'waiting') {
      this.attempt = 0;
      this._connect();
    }
  }

  // --- conversations ---

  /** Joins a room or group, now and after every reconnect (with `since`); resolves with `joined`. */
  join(conv) {
    const key = convKey(conv);
    if (conv.with) return Promise.reject(new TypeError('threads need no join'));
    let j = this.joined.get(key);
    if (!j) this.joined.set(key, (j = { waiters: [] }));
    const p = new Promise((resolve, reject) => j.waiters.push({ resolve, reject }));
    p.catch(() => {});
    this._order(key);
    if (this.state === 'open') this._sendJoin(key);
    return p;
  }

  /** Leaves a room or group (the membership of a group stays; see `quitGroup`). */
  async leave(conv) {
    const key = convKey(conv);
    this._forget(key, new ChatError('left', `left ${key}`));
    if (this.state === 'open') await this._request({ type: 'leave', ...target(conv) }).catch((e) => {
      if (e.code !== 'not_joined') throw e;
    });
  }

  /**
   * Sends a text; returns `{client_msg_id, state, acked}` at once, `acked` resolving with the `ack`.
   * The message stays in the outbox, resent with its id, until acked or failed (`outbox` events).
   */
  send(conv, text, extra = {}) {
    const key = convKey(conv);
    if (!conv.with && !this.joined.has(key)) {
      throw new ChatError('not_joined', `join ${key} before sending to it`);
    }
    if (conv.with) this._order(key);
    const id = newClientMsgId(this.random, this.now);
    const frame = { ...extra, type: 'send', id, ...target(conv, true), text, client_msg_id: id };
    const e = this.outbox.submit(frame, conv);
    return { client_msg_id: e.id, get state() { return e.state; }, acked: e.promise };
  }

  /** Messages not yet acked, and failed ones, oldest first. */
  pending() {
    return this.outbox.list();
  }

  /** Sends a failed message again with its id; the new `acked` promise, or null. */
  retry(clientMsgId) {
    return this.outbox.retry(clientMsgId);
  }

  discard(clientMsgId) {
    return this.outbox.discard(clientMsgId);
  }

  /** The highest `seq` handed to the app in `conv`, or null. */
  lastSeen(conv) {
    const o = this.orders.get(convKey(conv));
    return o ? o.seen : this._saved(convKey(conv));
  }

  /** A page of stored messages and events; `{messages, more}` (see docs/protocol.md `history`). */
  history(conv, { before, after, limit } = {}) {
    const f = { type: 'history', ...target(conv) };
    if (before !== undefined) f.before = before;
    if (after !== undefined) f.after = after;
    if (limit !== undefined) f.limit = limit;
    return this._request(f);
  }

  conversations({ limit, before } = {}) {
    const f = { type: 'conversations' };
    if (limit !== undefined) f.limit = limit;
    if (before !== undefined) f.before = before;
    return this._request(f);
  }

  /** Marks a group or thread read up to `seq`; resolves with `{read_seq, unread}`. */
  read(conv, seq) {
    return this._request({ type: 'read', ...target(conv), seq });
  }

  hideConversation(conv) {
    return this._request({ type: 'conversation_hide', ...target(conv) });
  }

  createGroup({ group, name, members = [] }) {
    const f = { type: 'group_create', name, members };
    if (group) f.group = group;
    return this._request(f);
  }

  addMembers(group, users) {
    return this._request({ type: 'group_add', group, users });
  }

  removeMembers(group, users) {
    return this._request({ type: 'group_remove', group, users });
  }

  quitGroup(group) {
    return this._request({ type: 'group_quit', group }).then((g) => {
      this._forget(convKey({ group }), new ChatError('left', `quit group ${group}`));
      return g;
    });
  }

  setRole(group, user, role) {
    return this._request({ type: 'group_role', group, user, role });
  }

  renameGroup(group, name) {
    return this._request({ type: 'group_rename', group, name });
  }

  groupInfo(group) {
    return this._request({ type: 'group_info', group });
  }

  groupReceipts(group, seq) {
    return this._request({ type: 'group_receipts', group, seq });
  }

  /**
   * Tells the other user of a thread, or the other members of a small group, that this user is
   * typing. Call it on every keystroke: a frame goes out at most every 3 s (the gateway would drop
   * the others). Returns whether one went out. Nothing is stored.
   */
  typing(conv) {
    if (conv.room) throw new TypeError('typing is for groups and threads');
    if (this.state !== 'open' || this.now() - this.typingAt < TYPING_INTERVAL_MS) return false;
    this.typingAt = this.now();
    return this._write({ type: 'typing', ...target(conv) });
  }

  /** Follows users' presence, now and after every reconnect; `presence` events follow. */
  watch(users) {
    // Checked here: the gateway refuses a whole watch for one bad id or past 200 users, and every
    // reconnect watches the whole set again in one frame.
    const bad = users.find((u) => !USER_ID.test(u));
    if (bad !== undefined) return Promise.reject(new ChatError('invalid_id', `not a user id: ${bad}`));
    const fresh = [...new Set(users)].filter((u) => !this.watching.has(u));
    if (this.watching.size + fresh.length > MAX_WATCHED) {
      return Promise.reject(new ChatError('bad_request', `at most ${MAX_WATCHED} users are watched`));
    }
    for (const u of fresh) this.watching.add(u);
    if (this.state !== 'open' || !fresh.length) return Promise.resolve({ watching: this.watching.size });
    return this._request({ type: 'watch', users: fresh });
  }

  unwatch(users) {
    for (const u of users) this.watching.delete(u);
    if (this.state !== 'open') return Promise.resolve({ watching: this.watching.size });
    return this._request({ type: 'unwatch', users });
  }

  /** The presence of a room, a group or some users, once: `presence_state`. */
  presence(q) {
    return this._request({ type: 'presence_query', ...(q.users ? { users: q.users } : target(q)) });
  }

  // --- the socket ---

  async _connect() {
    if (this.sock) return; // One socket at a time.
    if (this.connecting) {
      // A token is on its way (a slow wx.login, say): the socket follows it, whatever was asked meanwhile.
      this._setState('connecting');
      return;
    }
    if (this.closing) {
      // The old socket still counts (WeChat allows 5, and closing ones count): wait for its close.
      this.closing.then = () => this._connect();
      this._setState('connecting');
      return;
    }
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this._setState('connecting');
    this.connecting = true;
    let token;
    try {
      // The first socket of an outage that failed before opening may have been refused for its token:
      // get a fresh one, once (refreshing on every attempt would churn tokens while a gateway is down).
      if (this.failedBeforeOpen === 1) this.auth.invalidate();
      token = await this.auth.accessToken();
    } catch (e) {
      this.connecting = false;
      this.emit('error', e);
      if (this.state === 'connecting') this._scheduleReconnect();
      return;
    }
    this.connecting = false;
    if (this.state !== 'connecting') return; // Stopped or hidden while the token came.
    let sock;
    try {
      sock = this.transport.connect({ url: this.urls[this.urlIndex], token });
    } catch (e) {
      // A bad URL, say: nothing to close, and trying again may not help, but staying dead is worse.
      this.emit('error', e);
      this._scheduleReconnect();
      return;
    }
    this.sock = sock;
    let opened = false;
    clearTimeout(this.timers.welcome);
    this.timers.welcome = setTimeout(() => {
      this.timers.welcome = null;
      if (this.sock === sock && this.state === 'connecting') this._closeSocket(4000, 'no welcome', false);
    }, this.opts.welcomeTimeoutMs);
    sock.onopen = () => {
      opened = true;
      this.failedBeforeOpen = 0;
      this.lastFrameAt = this.now();
    };
    sock.onmessage = (text) => {
      if (this.sock !== sock) return;
      this.lastFrameAt = this.now();
      let f;
      try {
        f = JSON.parse(text);
      } catch (e) {
        return;
      }
      if (f && typeof f.type === 'string') this._frame(f);
    };
    sock.onclose = (ev) => {
      if (this.closing && this.closing.sock === sock) this._closed();
      if (this.sock !== sock) return;
      if (!opened) this.failedBeforeOpen += 1;
      this._lost(ev);
    };
  }

  _closeSocket(code, reason, onPurpose = true) {
    const sock = this.sock;
    if (!sock) return;
    clearTimeout(this.closing && this.closing.timer);
    this.closing = { sock, then: null, timer: setTimeout(() => this._closed(), this.opts.closeWaitMs) };
    this._lost({ code, reason }, onPurpose);
    sock.close(code === 4000 ? 1000 : code, reason);
  }

  /** The socket asked to close has closed (or the wait for it ran out): the next may open. */
  _closed() {
    const c = this.closing;
    if (!c) return;
    clearTimeout(c.timer);
    this.closing = null;
    if (c.then && (this.state === 'connecting' || this.state === 'waiting')) c.then();
  }

  /** The socket is gone (closed by either side, or replaced). */
  _lost(ev, onPurpose = false) {
    this.sock = null;
    clearInterval(this.timers.beat);
    this.timers.beat = null;
    this.pacer.reset();
    this.outbox.paused();
    for (const o of this.orders.values()) o.reset();
    for (const [id, r] of this.requests) {
      clearTimeout(r.timer);
      r.reject(new ChatError('offline', 'the connection closed before the answer'));
      this.requests.delete(id);
    }
    this.emit('close', ev);
    if (onPurpose) return;
    // Gateways are stateless: after a loss, the next one of those given (a dead gateway's clients
    // move to a live one, and resume there).
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    if (ev.code === 4001) {
      // Logged out or revoked: the token is dead, and so is reconnecting with it.
      this.auth.clear();
      this._setState('stopped');
      this.emit('logged_out', ev);
      return;
    }
    if (this.state === 'open' || this.state === 'connecting') this._scheduleReconnect();
  }

  _scheduleReconnect() {
    clearTimeout(this.timers.retry);
    const bound = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** this.attempt);
    const delay = Math.floor(this.random() * bound);
    this.attempt += 1;
    this._setState('waiting');
    this.emit('reconnecting', { attempt: this.attempt, delay });
    this.timers.retry = setTimeout(() => {
      this.timers.retry = null;
      this._connect();
    }, delay);
  }

  _write(frame) {
    if (this.state !== 'open' || !this.sock) return false;
    return this.pacer.send(JSON.stringify(frame));
  }

  /** Sends `frame` with an id and resolves with its answer. Joins and resumes have no timeout: the
   *  gateway answers them in order, possibly behind a long queue of frames, and a dead socket is
   *  found by the heartbeat, which rejects them `offline`. */
  _request(frame) {
    if (this.state !== 'open') return Promise.reject(new ChatError('offline', 'not connected'));
    this.requestN += 1;
    const id = `r${this.requestN}`;
    const ordered = frame.type === 'join' || frame.type === 'resume';
    return new Promise((resolve, reject) => {
      const timer = ordered
        ? null
        : setTimeout(() => {
            this.requests.delete(id);
            reject(new ChatError('timeout', `no answer to ${frame.type}`));
          }, this.opts.requestTimeoutMs);
      this.requests.set(id, { resolve, reject, timer, frame });
      if (!this._write({ ...frame, id })) {
        clearTimeout(timer);
        this.requests.delete(id);
        reject(new ChatError('offline', 'not connected'));
      }
    });
  }

  _heartbeat() {
    clearInterval(this.timers.beat);
    this.timers.beat = setInterval(() => {
      if (this.now() - this.lastFrameAt > this.heartbeatMs * this.opts.deadAfterBeats) {
        // Nothing came back, not even a pong: the socket is dead without having said so.
        this._closeSocket(4000, 'no answer to pings', false);
        return;
      }
      this._write({ type: 'ping' });
    }, this.heartbeatMs);
  }

  // --- frames ---

  _frame(f) {
    const req = f.id && this.requests.get(f.id);
    if (req && f.type !== 'message' && f.type !== 'event') {
      this.requests.delete(f.id);
      clearTimeout(req.timer);
      // A join's or resume's answer moves the order now, before any frame behind it is read.
      if (f.type === 'joined' || f.type === 'resumed') {
        const conv = f.with ? { with: f.with } : f.group ? { group: f.group } : { room: f.room };
        this._order(convKey(conv)).joined({ ...f, since: req.frame.since });
      }
      if (f.type === 'error') req.reject(new ChatError(f.code, f.message, f));
      else req.resolve(f);
    }
    switch (f.type) {
      case 'welcome':
        return this._welcome(f);
      case 'message':
      case 'event':
        return this._order(convKey(convOf(f, this.user))).push(f);
      case 'joined':
      case 'resumed':
        return this._joined(f);
      case 'ack':
        this.outbox.acked(f);
        return undefined;
      case 'error':
        if (!this.outbox.refused(f) && !req) this.emit('server_error', f);
        return undefined;
      case 'removed':
        this._forget(convKey({ group: f.group }), new ChatError('forbidden', `removed from group ${f.group}`, f));
        this.emit('removed', f);
        return undefined;
      case 'read_state':
      case 'receipt':
      case 'presence':
        this.emit(f.type, f);
        return undefined;
      case 'typing':
        this.emit('typing', f, f.group ? { group: f.group } : { with: f.with });
        return undefined;
      case 'group':
        // Without an id: this user was put in a group (created with them, or added), on any device.
        if (!req) this.emit('group', f);
        return undefined;
      default:
        return undefined;
    }
  }

  _welcome(f) {
    clearTimeout(this.timers.welcome);
    this.timers.welcome = null;
    if (this.savedUser && this.savedUser !== f.user) {
      // Another user's positions must not decide what this one is shown.
      this.savedSeen.clear();
      for (const o of this.orders.values()) o.seen = null;
    }
    this.user = f.user;
    this.savedUser = f.user;
    this.outbox.owner(f.user);
    this.attempt = 0;
    this.typingAt = -Infinity; // A new connection: the gateway's interval starts again.
    if (f.heartbeat_ms) this.heartbeatMs = Math.min(this.opts.heartbeatMs, f.heartbeat_ms);
    this._setState('open');
    this._heartbeat();
    // Threads known from storage resume too, not only those used since this process started.
    for (const key of this.savedSeen.keys()) if (key.startsWith('with:')) this._order(key);
    // Joins first: the gateway answers them in order, so the resends behind them find the groups joined.
    for (const key of this.joined.keys()) this._sendJoin(key);
    const threads = [...this.orders.values()]
      .filter((o) => o.key.startsWith('with:') && o.seen !== null)
      .sort((a, b) => b.seen - a.seen)
      .slice(0, this.opts.maxResumedThreads);
    for (const o of threads) this._sendResume(o);
    if (this.watching.size) this._request({ type: 'watch', users: [...this.watching].slice(0, 200) }).catch(() => {});
    this.outbox.resendAll();
    this.emit('open', f);
  }

  _sendJoin(key) {
    const o = this._order(key);
    const f = { type: 'join', ...convFromKey(key) };
    if (o.seen !== null) f.since = o.seen;
    this._request(f).then(
      (j) => {
        const w = this.joined.get(key);
        if (w) for (const x of w.waiters.splice(0)) x.resolve(j);
      },
      (e) => {
        if (e.code === 'offline') return; // The next socket joins again.
        if (this._again(e, () => this.joined.has(key) && this._sendJoin(key))) return;
        this._forget(key, e);
        if (e.code === 'forbidden' && key.startsWith('group:')) this.emit('removed', { group: key.slice(6), code: e.code });
        else this.emit('server_error', e.frame || { code: e.code, message: e.message });
      },
    );
  }

  _sendResume(o) {
    const partner = o.key.slice(5);
    this._request({ type: 'resume', with: partner, since: o.seen }).catch((e) => {
      if (e.code === 'offline') return;
      if (!this._again(e, () => this._sendResume(o))) this.emit('server_error', e.frame || { code: e.code, message: e.message });
    });
  }

  /** A join or resume refused for now (`unavailable`, `rate_limited`) is sent again on the same
   *  socket after a pause; returns whether it will be. */
  _again(e, fn) {
    if (e.code !== 'unavailable' && e.code !== 'rate_limited') return false;
    const sock = this.sock;
    const f = e.frame || {};
    const ms = e.code === 'rate_limited' && typeof f.retry_after_ms === 'number' ? f.retry_after_ms : this.opts.rejoinMs;
    setTimeout(() => {
      if (this.sock === sock && this.state === 'open') fn();
    }, ms);
    return true;
  }

  /** `key` is no longer joined: waiting `join()` promises reject with `err`. */
  _forget(key, err) {
    const w = this.joined.get(key);
    this.joined.delete(key);
    if (w) for (const x of w.waiters.splice(0)) x.reject(err);
  }

  _joined(f) {
    this.emit(f.type, f);
  }

  /** The order of `key`, made on first use with the position kept in storage, if any. */
  _order(key) {
    let o = this.orders.get(key);
    if (o) return o;
    const conv = convFromKey(key);
    o = new Order({
      key,
      seen: this._saved(key),
      limits: this.fillLimits,
      fetch: (after, before) => this.history(conv, { after, before, limit: 100 }),
      surface: (frame) => {
        this._dirty();
        this.emit(frame.type === 'event' ? 'event' : 'message', frame, conv);
      },
      gap: (g) => this.emit('gap', { conversation: conv, ...g }),
      // Too much held during a fill: the stream, not the lagging store, replays from `seen`.
      resync: () => {
        if (this.state !== 'open') return;
        if (key.startsWith('with:')) this._sendResume(o);
        else if (this.joined.has(key)) this._sendJoin(key);
      },
    });
    this.orders.set(key, o);
    return o;
  }

  _saved(key) {
    const v = this.savedSeen.get(key);
    return typeof v === 'number' ? v : null;
  }

  _dirty() {
    if (!this.storage || this.timers.save) return;
    this.timers.save = setTimeout(() => this._flushSeen(), 250);
  }

  _flushSeen() {
    clearTimeout(this.timers.save);
    this.timers.save = null;
    if (!this.storage) return;
    for (const o of this.orders.values()) if (o.seen !== null) this.savedSeen.set(o.key, o.seen);
    const seen = Object.fromEntries(
      [...this.savedSeen.entries()].sort((a, b) => b[1] - a[1]).slice(0, this.opts.maxStoredPositions),
    );
    this.storage.set(SEEN_KEY, { user: this.savedUser, seen });
  }

  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  _cancelTimers() {
    clearTimeout(this.timers.retry);
    clearTimeout(this.timers.hide);
    clearInterval(this.timers.beat);
    clearTimeout(this.timers.welcome);
    this.timers.retry = this.timers.hide = this.timers.beat = this.timers.welcome = null;
  }
}
