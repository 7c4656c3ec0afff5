//! Messages sent but not yet acked. Each keeps its `client_msg_id` for life, so every resend (after
//! `unavailable`, after `rate_limited` once the hinted delay has passed, after a reconnect, after an
//! ack that never came) is stored at most once by the gateway. A message ends `sent` (acked) or
//! `failed` (refused, or past a bound); the app sees each change.

import { ChatError } from './errors.js';

/** Answers that a resend would only repeat: the message fails at once. */
export const FINAL_ERRORS = new Set([
  'bad_request',
  'content_rejected',
  'content_held',
  'too_large',
  'invalid_id',
  'not_joined',
  'forbidden',
  'unknown_type',
]);

export const OUTBOX_DEFAULTS = {
  /** Messages pending at once; one more fails with `outbox_full`. */
  maxPending: 200,
  /** A message pending longer fails with `expired`. Below the gateway's 10-minute duplicate window,
   *  so that no resend can be stored a second time. */
  maxAgeMs: 9 * 60 * 1000,
  /** Resends after `unavailable` or a missing ack on an open socket (not those after a reconnect or
   *  `rate_limited`); one more fails the message. */
  maxAttempts: 8,
  /** An open socket that answers nothing this long gets the frame again. */
  ackTimeoutMs: 15000,
  /** Wait after `rate_limited` when the error names no `retry_after_ms`. */
  rateLimitedMs: 1000,
  /** Wait after `not_joined` in a room or group the client is joining again. */
  rejoinWaitMs: 2500,
};

const STORE_KEY = 'liaotian.outbox';

export function newClientMsgId(random = Math.random, now = Date.now) {
  return `m${now().toString(36)}${Math.floor(random() * 2 ** 40).toString(36)}`;
}

export class Outbox {
  /**
   * @param {object} o
   * @param {(frame: object) => boolean} o.write puts a frame on the open socket; false when none is open
   * @param {(entry: object) => void} o.changed called on every state change
   * @param {(conv: object) => boolean} [o.wanted] whether the client means to be in `conv` (a room or
   *   group it joined): then `not_joined` is a join not answered yet, and the message waits for it
   * @param {object} [o.storage]
   * @param {object} [o.limits]
   * @param {() => number} [o.now]
   * @param {() => number} [o.random]
   */
  constructor({ write, changed, wanted = () => false, storage, limits = {}, now = Date.now, random = Math.random }) {
    Object.assign(this, { write, changed, wanted, storage, now, random });
    this.limits = { ...OUTBOX_DEFAULTS, ...limits };
    this.entries = new Map(); // client_msg_id -> entry, in send order
    for (const saved of (storage && storage.get(STORE_KEY)) || []) {
      this._add(saved.frame, saved.conv, saved.firstAt).user = saved.user || null;
    }
  }

  /** The connection's user is known (`welcome`): messages a restart brought back from another
   *  user's session fail (`other_user`) and are dropped, and this process's own become `user`'s. */
  owner(user) {
    for (const e of [...this.entries.values()]) {
      if (e.user && e.user !== user && e.state === 'pending') {
        this._fail(e, 'other_user', `queued by ${e.user}, not ${user}`);
        this.entries.delete(e.id);
      } else if (!e.user) e.user = user;
    }
    this._save();
  }

  /** Pending and failed messages, oldest first. */
  list() {
    return [...this.entries.values()].map(view);
  }

  /** Queues `frame` (a `send` with `client_msg_id`) and writes it if a socket is open. */
  submit(frame, conv) {
    if ([...this.entries.values()].filter((e) => e.state === 'pending').length >= this.limits.maxPending) {
      const e = this._entry(frame, conv, this.now());
      this._fail(e, 'outbox_full', 'too many messages waiting to be sent');
      return e;
    }
    const e = this._add(frame, conv, this.now());
    this._save();
    this.changed(view(e));
    this._try(e);
    return e;
  }

  /** Writes every pending message again: the socket (re)opened. */
  resendAll() {
    for (const e of this.entries.values()) {
      if (e.state !== 'pending') continue;
      clearTimeout(e.timer);
      e.timer = null;
      this._try(e);
    }
  }

  /** The socket closed: nothing is in flight any more; a reconnect resends. */
  paused() {
    for (const e of this.entries.values()) {
      clearTimeout(e.timer);
      e.timer = null;
    }
  }

  /** An `ack`; returns whether it was one of ours. */
  acked(ack) {
    const e = this.entries.get(ack.client_msg_id);
    if (!e || e.state === 'sent') return false;
    clearTimeout(e.timer);
    e.state = 'sent';
    e.ack = ack;
    this.entries.delete(e.id);
    this._save();
    this.changed(view(e));
    e.resolve(ack);
    return true;
  }

  /** An `error` answering a `send` (its `id` is the `client_msg_id`); returns whether it was ours. */
  refused(err) {
    const e = this.entries.get(err.id);
    if (!e || e.state !== 'pending') return false;
    clearTimeout(e.timer);
    e.timer = null;
    if (err.code === 'rate_limited') {
      this._later(e, typeof err.retry_after_ms === 'number' ? err.retry_after_ms : this.limits.rateLimitedMs, false);
    } else if (err.code === 'unavailable' || err.code === 'internal') {
      this._later(e, this._backoff(e), true);
    } else if (err.code === 'not_joined' && this.wanted(e.conv)) {
      // The join went out before it, but was refused for now (`unavailable`) and is being sent again.
      this._later(e, this.limits.rejoinWaitMs, true);
    } else {
      this._fail(e, err.code, err.message);
    }
    return true;
  }

  /**
   * Sends a failed message again; returns the new `acked` promise, or null when `id` is not a
   * failed message. Within the duplicate window it keeps its `client_msg_id`, so a first attempt
   * that was stored after all is not stored twice. Past the window the same id would not protect
   * it, so it goes as a new message with a new id (the `outbox` event names both): if the first
   * attempt was stored unacked, the conversation then holds both.
   */
  retry(id) {
    const e = this.entries.get(id);
    if (!e || e.state !== 'failed') return null;
    if (this.now() - e.firstAt > this.limits.maxAgeMs) {
      const fresh = newClientMsgId(this.random, this.now);
      this.entries.delete(id);
      e.replaces = id;
      e.id = fresh;
      e.frame = { ...e.frame, id: fresh, client_msg_id: fresh };
      e.firstAt = this.now();
      this.entries.set(fresh, e);
    }
    Object.assign(e, { state: 'pending', error: null, attempts: 0, resends: 0 });
    e.promise = new Promise((res, rej) => Object.assign(e, { resolve: res, reject: rej }));
    e.promise.catch(() => {});
    this._save();
    this.changed(view(e));
    this._try(e);
    return e.promise;
  }

  /** Drops a failed message from the list; the app hears it as state `discarded`. */
  discard(id) {
    const e = this.entries.get(id);
    if (!e || e.state === 'pending') return false;
    this.entries.delete(id);
    this._save();
    e.state = 'discarded';
    this.changed(view(e));
    return true;
  }

  _entry(frame, conv, firstAt) {
    const e = { id: frame.client_msg_id, frame, conv, text: frame.text, state: 'pending', attempts: 0, resends: 0, firstAt, error: null, timer: null, user: null };
    e.promise = new Promise((res, rej) => Object.assign(e, { resolve: res, reject: rej }));
    e.promise.catch(() => {}); // The app may ignore it; the state change still reaches `changed`.
    return e;
  }

  _add(frame, conv, firstAt) {
    const e = this._entry(frame, conv, firstAt);
    this.entries.set(e.id, e);
    return e;
  }

  _try(e) {
    if (e.state !== 'pending') return;
    if (this.now() - e.firstAt > this.limits.maxAgeMs) {
      this._fail(e, 'expired', 'not acked within the resend window');
      return;
    }
    if (!this.write(e.frame)) return; // Offline: the next socket resends it.
    e.attempts += 1;
    e.timer = setTimeout(() => {
      e.timer = null;
      this._later(e, 0, true);
    }, this.limits.ackTimeoutMs);
  }

  _later(e, ms, counts) {
    if (counts && e.resends >= this.limits.maxAttempts) {
      this._fail(e, 'unavailable', `not acked after ${e.attempts} attempts`);
      return;
    }
    if (counts) e.resends += 1;
    e.timer = setTimeout(() => {
      e.timer = null;
      this._try(e);
    }, ms);
  }

  /** Full jitter: up to min(10 s, 500 ms × 2^resends). */
  _backoff(e) {
    return Math.floor(this.random() * Math.min(10000, 500 * 2 ** e.resends));
  }

  _fail(e, code, message) {
    clearTimeout(e.timer);
    e.state = 'failed';
    e.error = { code, message: message || code };
    if (this.entries.has(e.id)) this._save();
    this.changed(view(e));
    e.reject(new ChatError(code, e.error.message));
  }

  _save() {
    if (!this.storage) return;
    const pending = [...this.entries.values()].filter((e) => e.state === 'pending');
    this.storage.set(STORE_KEY, pending.map((e) => ({ frame: e.frame, conv: e.conv, firstAt: e.firstAt, user: e.user })));
  }
}

function view(e) {
  const v = { client_msg_id: e.id, conversation: e.conv, text: e.text, state: e.state, error: e.error, ack: e.ack || null, attempts: e.attempts };
  if (e.replaces) v.replaces = e.replaces;
  return v;
}
