// The chat connection of the mini-program, as plain CommonJS so Node can test it.
//
// One SocketTask at a time: wx.connectSocket with the token in the Authorization header and the
// chat.v1 subprotocol; an app-level ping every heartbeat (mini-programs cannot send WebSocket pings);
// reconnect with exponential backoff and full jitter; on every (re)connect, rejoin each room with
// `since` = the last seq seen and resume each DM thread the same way; a queue of unsent messages, resent
// with their client_msg_id until acked (the gateway stores a resend once). Groups are joined and
// resumed like rooms; the conversation list, reads and group changes are requests answered by id.

'use strict';

const QUEUE_KEY = 'liaotian.outbox';
// Errors after which a message is dropped from the queue: resending would get the same answer.
const FINAL_ERRORS = new Set(['content_rejected', 'content_held', 'too_large', 'invalid_id', 'bad_request', 'not_joined']);

function newClientMsgId() {
  const rand = Math.random().toString(36).slice(2, 10);
  return `m-${Date.now().toString(36)}-${rand}`;
}

class ChatClient {
  /**
   * @param {object} opts
   * @param {object} opts.wx
   * @param {import('./auth').AuthClient} opts.auth
   * @param {string} opts.url the gateway, e.g. wss://chat.example.com/ws
   * @param {number} [opts.heartbeatMs] app ping interval (25 s)
   * @param {number} [opts.backoffBaseMs] first reconnect delay bound (500 ms)
   * @param {number} [opts.backoffMaxMs] largest reconnect delay bound (30 s)
   * @param {() => number} [opts.random]
   */
  constructor({ wx, auth, url, heartbeatMs = 25000, backoffBaseMs = 500, backoffMaxMs = 30000, random = Math.random }) {
    Object.assign(this, { wx, auth, url, heartbeatMs, backoffBaseMs, backoffMaxMs, random });
    this.rooms = new Map(); // room -> last seq seen (0: none yet)
    this.groups = new Map(); // group -> last seq seen (0: none yet)
    this.requests = new Map(); // frame id -> {resolve, reject}
    this.requestN = 0;
    this.dms = new Map(); // partner -> last seq seen
    this.seen = new Map(); // conversation key -> Set of recent seqs, for dedupe
    this.outbox = this.loadOutbox(); // [{frame, resolve, reject}] in send order
    this.listeners = new Map();
    this.task = null;
    this.open = false;
    this.stopped = true;
    this.attempt = 0;
    this.failedBeforeOpen = 0;
    this.connects = 0;
    this.pingTimer = null;
    this.retryTimer = null;
    this.pingN = 0;
    this.user = null;
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
    return this;
  }

  emit(event, ...args) {
    for (const fn of this.listeners.get(event) || []) fn(...args);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Closes on purpose (for example in App.onHide); no reconnect until start(). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    if (this.task) this.task.close({ code: 1000, reason: 'background' });
    this.task = null;
    this.open = false;
  }

  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, 0);
    this.sendJoin(room);
  }

  joinGroup(group) {
    if (!this.groups.has(group)) this.groups.set(group, 0);
    this.sendJoin(group, 'group');
  }

  /** Sends `frame` now and resolves with the reply that carries its id (rejects on `error`). */
  request(frame) {
    this.requestN += 1;
    const id = `q-${this.requestN}`;
    return new Promise((resolve, reject) => {
      if (!this.raw({ ...frame, id })) {
        reject(Object.assign(new Error('not connected'), { code: 'offline' }));
        return;
      }
      this.requests.set(id, { resolve, reject });
    });
  }

  /** A page of the conversation list: {items, more}. */
  conversations(limit = 50, before) {
    const frame = { type: 'conversations', limit };
    if (before) frame.before = before;
    return this.request(frame);
  }

  /** Marks `target` ({group} or {with}) read up to `seq`; resolves with {read_seq, unread}. */
  read(target, seq) {
    return this.request({ type: 'read', ...target, seq });
  }

  createGroup(name, members) {
    return this.request({ type: 'group_create', name, members });
  }

  /** Queues a message; resolves with its ack. `target` is {room}, {group} or {to}. */
  send(target, text) {
    if (target.to && !this.dms.has(target.to)) this.dms.set(target.to, 0);
    const frame = { type: 'send', ...target, text, client_msg_id: newClientMsgId() };
    frame.id = frame.client_msg_id;
    return new Promise((resolve, reject) => {
      this.outbox.push({ frame, resolve, reject });
      this.saveOutbox();
      if (this.open) this.raw(frame);
    });
  }

  get pending() {
    return this.outbox.map((e) => e.frame);
  }

  // --- connection ---

  async connect() {
    if (this.stopped) return;
    let token;
    try {
      // A socket that failed before opening may have been refused for its token: refresh it first.
      if (this.failedBeforeOpen > 0) await this.auth.refreshOrLogin();
      token = await this.auth.accessToken();
    } catch (e) {
      this.emit('error', e);
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    this.connects += 1;
    const task = this.wx.connectSocket({
      url: this.url,
      header: { Authorization: `Bearer ${token}` },
      protocols: ['chat.v1'],
    });
    this.task = task;
    let opened = false;
    task.onOpen(() => {
      if (this.task !== task) return;
      opened = true;
      this.open = true;
      this.failedBeforeOpen = 0;
    });
    task.onMessage((res) => {
      if (this.task !== task) return;
      let frame;
      try {
        frame = JSON.parse(res.data);
      } catch (e) {
        return;
      }
      this.handle(frame);
    });
    let ended = false;
    const end = (res) => {
      if (ended || this.task !== task) return;
      ended = true;
      this.task = null;
      this.open = false;
      this.stopHeartbeat();
      if (!opened) this.failedBeforeOpen += 1;
      this.emit('close', res || {});
      if (res && res.code === 4001) {
        // Logged out elsewhere: forget the tokens; the next connect logs in again.
        this.auth.tokens = null;
      }
      this.scheduleReconnect();
    };
    task.onClose(end);
    task.onError((err) => end({ code: 1006, reason: (err && err.errMsg) || 'error' }));
  }

  scheduleReconnect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    // Full jitter: a random delay up to min(max, base * 2^attempt), so returning clients spread out.
    const bound = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.attempt);
    const delay = Math.floor(this.random() * bound);
    this.attempt += 1;
    this.emit('reconnecting', { attempt: this.attempt, delay });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.pingTimer = setInterval(() => {
      this.pingN += 1;
      this.raw({ type: 'ping', id: `ping-${this.pingN}` });
    }, this.heartbeatMs);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  raw(frame) {
    if (!this.task || !this.open) return false;
    this.task.send({ data: JSON.stringify(frame) });
    return true;
  }

  sendJoin(id, kind = 'room') {
    const since = (kind === 'group' ? this.groups : this.rooms).get(id) || 0;
    const frame = { type: 'join', id: `join-${kind}-${id}`, [kind]: id };
    if (since > 0) frame.since = since;
    this.raw(frame);
  }

  // --- frames ---

  handle(f) {
    const req = f.id && this.requests.get(f.id);
    if (req) {
      this.requests.delete(f.id);
      if (f.type === 'error') req.reject(Object.assign(new Error(f.message || f.code), { code: f.code }));
      else req.resolve(f);
    }
    switch (f.type) {
      case 'welcome':
        this.user = f.user;
        this.attempt = 0;
        if (f.heartbeat_ms && f.heartbeat_ms < this.heartbeatMs) this.heartbeatMs = f.heartbeat_ms;
        this.startHeartbeat();
        for (const room of this.rooms.keys()) this.sendJoin(room);
        for (const group of this.groups.keys()) this.sendJoin(group, 'group');
        for (const [partner, since] of this.dms) {
          if (since > 0) this.raw({ type: 'resume', id: `resume-${partner}`, with: partner, since });
        }
        for (const e of this.outbox) this.raw(e.frame);
        this.emit('open', f);
        break;
      case 'joined':
        if (f.group) {
          if (!this.groups.get(f.group)) this.groups.set(f.group, f.last_seq || 0);
        } else if (!this.rooms.get(f.room)) this.rooms.set(f.room, f.last_seq || 0);
        this.emit('joined', f);
        break;
      case 'message':
      case 'event':
        this.onChatMessage(f);
        break;
      case 'removed':
        this.groups.delete(f.group);
        this.emit('removed', f);
        break;
      case 'ack':
        this.settle(f.client_msg_id || f.id, (e) => e.resolve(f));
        break;
      case 'error':
        if (f.id && FINAL_ERRORS.has(f.code)) {
          this.settle(f.id, (e) => e.reject(Object.assign(new Error(f.message || f.code), { code: f.code })));
        }
        // unavailable / rate_limited: the message stays queued and is resent on the next connect.
        this.emit('server-error', f);
        break;
      default:
        this.emit(f.type, f);
    }
  }

  onChatMessage(m) {
    let key;
    let map;
    let id;
    if (m.room) {
      key = `room:${m.room}`;
      map = this.rooms;
      id = m.room;
    } else if (m.group) {
      key = `group:${m.group}`;
      map = this.groups;
      id = m.group;
    } else {
      const partner = m.from === this.user ? m.to : m.from;
      key = `dm:${partner}`;
      map = this.dms;
      id = partner;
    }
    let seen = this.seen.get(key);
    if (!seen) this.seen.set(key, (seen = new Set()));
    if (seen.has(m.seq)) return; // A resumed message we already had.
    seen.add(m.seq);
    if (seen.size > 1000) seen.delete(seen.values().next().value);
    if (map !== this.dms && !map.has(id)) return; // Left the room or group.
    map.set(id, Math.max(map.get(id) || 0, m.seq));
    this.emit(m.type === 'event' ? 'event' : 'message', m);
  }

  settle(cmid, fn) {
    const i = this.outbox.findIndex((e) => e.frame.client_msg_id === cmid);
    if (i < 0) return;
    const [e] = this.outbox.splice(i, 1);
    this.saveOutbox();
    if (e.resolve) fn(e);
  }

  // The queue survives a cold start: frames only (their promises die with the process).
  loadOutbox() {
    const saved = this.wx.getStorageSync(QUEUE_KEY);
    return Array.isArray(saved) ? saved.map((frame) => ({ frame, resolve: null, reject: null })) : [];
  }

  saveOutbox() {
    this.wx.setStorageSync(QUEUE_KEY, this.outbox.map((e) => e.frame));
  }
}

module.exports = { ChatClient, newClientMsgId, QUEUE_KEY };
