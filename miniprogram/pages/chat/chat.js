// The chat page: shows one room, sends through the app's ChatClient (queued until acked).

'use strict';

const ROOM = 'lobby';

Page({
  data: { room: ROOM, messages: [], draft: '', pending: 0, status: 'connecting' },

  onLoad() {
    const { chat } = getApp();
    this.chat = chat;
    this.handlers = {
      message: (m) => {
        if (m.room !== ROOM) return;
        this.setData({ messages: this.data.messages.concat([{ seq: m.seq, from: m.from, text: m.text }]) });
      },
      open: () => this.setData({ status: 'online' }),
      close: () => this.setData({ status: 'reconnecting' }),
    };
    for (const [event, fn] of Object.entries(this.handlers)) chat.on(event, fn);
    chat.join(ROOM);
  },

  onInput(e) {
    this.setData({ draft: e.detail.value });
  },

  onSend() {
    const text = this.data.draft.trim();
    if (!text) return;
    this.setData({ draft: '', pending: this.chat.pending.length + 1 });
    this.chat
      .send({ room: ROOM }, text)
      .catch((e) => wx.showToast({ title: e.code === 'content_rejected' ? '内容不合规' : '发送失败', icon: 'none' }))
      .finally(() => this.setData({ pending: this.chat.pending.length }));
  },
});
