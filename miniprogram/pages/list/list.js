// The conversation list (会话列表): threads and groups, newest first, with unread badges; a tap opens
// the conversation in the chat page.

'use strict';

Page({
  data: { items: [] },

  onShow() {
    const { chat } = getApp();
    this.chat = chat;
    this.refresh();
    if (!this.handlers) {
      const refresh = () => this.refresh();
      this.handlers = { message: refresh, event: refresh, read_state: refresh, open: refresh };
      for (const [event, fn] of Object.entries(this.handlers)) chat.on(event, fn);
    }
  },

  refresh() {
    this.chat
      .conversations()
      .then(({ items }) =>
        this.setData({
          items: items.map((i) => ({
            key: i.group ? `group:${i.group}` : `with:${i.with}`,
            title: i.group ? `${i.name} (${i.members})` : i.with,
            preview: i.last && i.last.type === 'message' ? i.last.text : '',
            badge: i.unread > 99 ? '99+' : i.unread > 0 ? String(i.unread) : '',
            url: i.group ? `/pages/chat/chat?group=${i.group}` : `/pages/chat/chat?with=${i.with}`,
          })),
        }),
      )
      .catch(() => {});
  },

  onOpen(e) {
    wx.navigateTo({ url: e.currentTarget.dataset.url });
  },
});
