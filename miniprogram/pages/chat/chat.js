// The chat view of one conversation: a thread (`?with=`), a group (`?group=`) or an open room (`?room=`,
// the lobby by default). It shows the newest history page, then the live messages the SDK hands on
// (already in order and without duplicates), merged by `seq`; own messages carry the state the SDK's
// outbox reports (pending, failed, sent), and a failed one can be retried. What it shows of a group or
// thread is marked read.

'use strict';

const { convKey } = require('liaotian-client');
const { askForNotifications } = require('../../notify');

/** Messages per history page. */
const PAGE = 30;
/** Reads of the newest page while it lacks what is known to be stored, and the first pause (doubling). */
const HISTORY_TRIES = 6;
const HISTORY_RETRY_MS = 200;

function eventText(e) {
  const users = (e.users || []).join(', ');
  switch (e.kind) {
    case 'created':
      return `${e.by} 创建了群「${e.name}」`;
    case 'renamed':
      return `${e.by} 把群名改为「${e.name}」`;
    case 'role':
      return `${e.by} 把 ${users} 设为 ${e.role}`;
    default:
      return `${e.by} ${e.kind} ${users}`;
  }
}

Page({
  data: { title: '', status: '', items: [], draft: '', more: false, isGroup: false },

  onLoad(query = {}) {
    const client = getApp().client;
    this.client = client;
    if (query.group) this.conv = { group: query.group };
    else if (query.with) this.conv = { with: query.with };
    else this.conv = { room: query.room || 'lobby' };
    this.key = convKey(this.conv);
    this.bySeq = new Map(); // seq -> shown message or event
    this.own = new Map(); // client_msg_id -> {text, state, error, seq}, in send order
    this.readSeq = 0;
    this.loaded = false;
    const title = this.conv.room || this.conv.group || this.conv.with;
    this.setData({ title, isGroup: !!this.conv.group, status: client.state });
    wx.setNavigationBarTitle({ title });
    for (const m of client.pending()) if (convKey(m.conversation) === this.key) this.own.set(m.client_msg_id, m);
    this.off = [
      client.on('message', (m, conv) => this.onFrame(m, conv)),
      client.on('event', (e, conv) => this.onFrame(e, conv)),
      client.on('outbox', (m) => this.onOutbox(m)),
      client.on('open', () => this.load()),
      client.on('state', (s) => this.setData({ status: s })),
      client.on('removed', (r) => {
        if (this.conv.group && r.group === this.conv.group) wx.showToast({ title: '你已不在群里', icon: 'none' });
      }),
    ];
    // Rooms and groups are joined now and after every reconnect; threads need no join.
    if (!this.conv.with) {
      this.joining = this.client.join(this.conv);
      this.joining.catch((e) => wx.showToast({ title: `进不去 ${e.code}`, icon: 'none' }));
    }
    this.load();
    this.render();
  },

  onUnload() {
    for (const off of this.off) off();
    if (!this.conv.with) this.client.leave(this.conv).catch(() => {});
  },

  /**
   * The newest history page, once (again on the next `open` if it could not be read). The history store
   * trails the stream by the persister's backlog, so a page may lack the newest items the join reported
   * (`last_seq`) or the SDK has already handed on (`lastSeen`); it is read again, a few times, until it has
   * them.
   */
  async load() {
    if (this.loaded || this.loading || this.client.state !== 'open') return;
    this.loading = true;
    try {
      const joined = this.joining ? await this.joining : null;
      const last = Math.max((joined && joined.last_seq) || 0, this.client.lastSeen(this.conv) || 0);
      for (let tries = 1; ; tries += 1) {
        const page = await this.client.history(this.conv, { limit: PAGE });
        for (const m of page.messages) this.add(m);
        if (!this.loaded) this.setData({ more: page.more });
        this.loaded = true;
        this.render();
        this.markRead();
        if (this.newest() >= last || tries >= HISTORY_TRIES) break;
        await new Promise((r) => setTimeout(r, HISTORY_RETRY_MS * 2 ** (tries - 1)));
      }
    } catch (e) {
      // Offline, or not a member: the next `open` tries again.
    } finally {
      this.loading = false;
    }
  },

  /** An older page, before the first one shown. */
  onMore() {
    const first = Math.min(...this.bySeq.keys());
    if (!Number.isFinite(first)) return;
    this.client
      .history(this.conv, { before: first, limit: PAGE })
      .then((page) => {
        for (const m of page.messages) this.add(m);
        this.setData({ more: page.more });
        this.render();
      })
      .catch(() => wx.showToast({ title: '加载失败', icon: 'none' }));
  },

  onFrame(f, conv) {
    if (convKey(conv) !== this.key) return;
    this.add(f);
    this.render();
    this.markRead();
  },

  onOutbox(m) {
    if (convKey(m.conversation) !== this.key) return;
    const prev = this.own.get(m.client_msg_id);
    if (m.state === 'discarded') {
      this.own.delete(m.client_msg_id);
      this.render();
      return;
    }
    this.own.set(m.client_msg_id, { ...m, seq: m.ack ? m.ack.seq : prev && prev.seq });
    this.render();
  },

  add(f) {
    if (typeof f.seq !== 'number') return;
    this.bySeq.set(f.seq, f);
  },

  /** Server items by `seq`, then own messages not stored yet (pending, failed) in the order sent. */
  render() {
    const me = this.client.user;
    const ownBySeq = new Map();
    for (const o of this.own.values()) if (o.seq) ownBySeq.set(o.seq, o);
    const stored = new Map(this.bySeq);
    // An acked message may be shown before its own `message` frame arrives.
    for (const [seq, o] of ownBySeq) if (!stored.has(seq)) stored.set(seq, { seq, from: me, text: o.text, client_msg_id: o.client_msg_id });
    const items = [...stored.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((f) =>
        f.type === 'event'
          ? { key: `s${f.seq}`, seq: f.seq, system: true, text: eventText(f) }
          : { key: `s${f.seq}`, seq: f.seq, from: f.from, text: f.text, mine: f.from === me, state: f.from === me ? 'sent' : '' },
      );
    for (const o of this.own.values()) {
      if (o.seq) continue;
      items.push({ key: `c${o.client_msg_id}`, id: o.client_msg_id, from: me, text: o.text, mine: true, state: o.state, error: o.error ? o.error.code : '' });
    }
    this.setData({ items });
  },

  /** Groups and threads keep a read position (rooms have none): move it to the newest item shown. */
  markRead() {
    if (this.conv.room) return;
    const newest = this.newest();
    if (newest <= this.readSeq || this.client.state !== 'open') return;
    this.readSeq = newest;
    this.client.read(this.conv, newest).catch(() => {
      this.readSeq = 0; // Try again with the next message or `open`.
    });
  },

  newest() {
    let n = 0;
    for (const seq of this.bySeq.keys()) if (seq > n) n = seq;
    return n;
  },

  onInput(e) {
    this.setData({ draft: e.detail.value });
  },

  onSend() {
    const text = this.data.draft.trim();
    if (!text) return;
    // Within the tap, as WeChat requires: ask to be told of replies while away.
    this.notifyAsked = askForNotifications(wx, getApp());
    this.setData({ draft: '' });
    try {
      // The outbox keeps it, resent with its client_msg_id until acked; `outbox` events show its state.
      this.client.send(this.conv, text);
    } catch (e) {
      wx.showToast({ title: `发送失败 ${e.code || ''}`, icon: 'none' });
    }
  },

  onRetry(e) {
    this.client.retry(e.currentTarget.dataset.id);
  },

  onGroup() {
    wx.navigateTo({ url: `/pages/group/group?group=${this.conv.group}` });
  },
});
