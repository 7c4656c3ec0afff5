// The chat page: one room (`?room=`, the lobby by default), group (`?group=`) or thread (`?with=`);
// sends through the app's ChatClient (queued until acked) and marks what it shows read.

'use strict';

Page({
  data: { title: '', messages: [], draft: '', pending: 0, status: 'connecting' },

  onLoad(query = {}) {
    const { chat } = getApp();
    this.chat = chat;
    if (query.group) this.target = { group: query.group };
    else if (query.with) this.target = { to: query.with };
    else this.target = { room: query.room || 'lobby' };
    const mine = (m) =>
      (this.target.room && m.room === this.target.room) ||
      (this.target.group && m.group === this.target.group) ||
      (this.target.to && !m.room && !m.group && (m.from === this.target.to || m.to === this.target.to));
    this.handlers = {
      message: (m) => {
        if (!mine(m)) return;
        this.setData({ messages: this.data.messages.concat([{ seq: m.seq, from: m.from, text: m.text }]) });
        this.markRead(m.seq);
      },
      event: (e) => {
        if (!mine(e)) return;
        const text = `${e.by} ${e.kind} ${(e.users || []).join(', ')}`;
        this.setData({ messages: this.data.messages.concat([{ seq: e.seq, from: '·', text }]) });
      },
      joined: (j) => {
        if (this.target.group && j.group === this.target.group) this.markRead(j.last_seq);
      },
      open: () => this.setData({ status: 'online' }),
      close: () => this.setData({ status: 'reconnecting' }),
    };
    for (const [event, fn] of Object.entries(this.handlers)) chat.on(event, fn);
    this.setData({ title: this.target.room || this.target.group || this.target.to });
    if (this.target.room) chat.join(this.target.room);
    if (this.target.group) chat.joinGroup(this.target.group);
  },

  markRead(seq) {
    if (!seq || this.target.room) return;
    const target = this.target.group ? { group: this.target.group } : { with: this.target.to };
    this.chat.read(target, seq).catch(() => {});
  },

  onInput(e) {
    this.setData({ draft: e.detail.value });
  },

  onSend() {
    const text = this.data.draft.trim();
    if (!text) return;
    this.setData({ draft: '', pending: this.chat.pending.length + 1 });
    this.chat
      .send(this.target, text)
      .catch((e) => wx.showToast({ title: e.code === 'content_rejected' ? '内容不合规' : '发送失败', icon: 'none' }))
      .finally(() => this.setData({ pending: this.chat.pending.length }));
  },
});
