// The conversation list (会话列表): the user's threads and groups from client.conversations(), newest first,
// with unread badges (99+ past 99). It refreshes while shown whenever a message, a group event or a read
// on another device may have changed it. A tap opens the conversation; the form below starts a thread or
// creates a group.
//
// The list is kept by the persisters and trails the stream by their backlog, so a refresh that does not
// show the newest message seen yet is made again a little later, a bounded number of times.

'use strict';

/** A burst of messages costs one refresh this long after it, not one per message. */
const REFRESH_DELAY_MS = 300;
/** Refreshes made again while the list lags behind the newest message seen, each after twice the pause. */
const LAG_TRIES = 5;

/** What a badge shows: nothing, the count, or 99+ as WeChat does. */
function badge(unread) {
  if (!unread) return '';
  return unread > 99 ? '99+' : String(unread);
}

function preview(last) {
  if (!last) return '';
  if (last.type === 'event') return `[${last.kind}]`;
  return last.text || '';
}

Page({
  data: { items: [], status: '', peer: '', groupName: '', groupMembers: '' },

  onLoad() {
    this.client = getApp().client;
    this.visible = false;
    this.loading = false;
    this.again = false;
    this.timer = null;
    this.latest = 0; // the newest seq seen in a group or thread (open rooms are in no list)
    this.lagTries = 0;
    const changed = (f, conv) => {
      if (conv && conv.room) return;
      if (typeof f.seq === 'number' && f.seq > this.latest) this.latest = f.seq;
      this.later();
    };
    this.off = [
      this.client.on('message', changed),
      this.client.on('event', changed),
      this.client.on('read_state', () => this.later()),
      this.client.on('open', () => this.refresh()),
      // Put in a group elsewhere: the list shows it.
      this.client.on('group', () => this.refresh()),
      this.client.on('state', (s) => this.setData({ status: s === 'open' ? '' : s })),
    ];
  },

  onShow() {
    this.visible = true;
    this.refresh();
  },

  onHide() {
    this.visible = false;
  },

  onUnload() {
    clearTimeout(this.timer);
    for (const off of this.off) off();
  },

  /** Groups not open in a chat view send this page nothing live: pulling down reads the list again. */
  onPullDownRefresh() {
    this.refresh();
    wx.stopPullDownRefresh();
  },

  later(delay = REFRESH_DELAY_MS) {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refresh();
    }, delay);
  },

  /** One request at a time; changes during it ask for one more. */
  refresh() {
    if (!this.visible || this.client.state !== 'open') return;
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    this.client
      .conversations({ limit: 50 })
      .then(({ items }) => {
        this.setData({ items: items.map(row) });
        const top = items.reduce((n, i) => Math.max(n, i.activity || 0), 0);
        if (top < this.latest && this.lagTries < LAG_TRIES) {
          this.lagTries += 1;
          this.later(REFRESH_DELAY_MS * 2 ** this.lagTries);
        } else {
          this.lagTries = 0;
        }
      })
      .catch(() => {}) // Offline: the next `open` refreshes.
      .finally(() => {
        this.loading = false;
        if (this.again) {
          this.again = false;
          this.refresh();
        }
      });
  },

  onOpen(e) {
    wx.navigateTo({ url: e.currentTarget.dataset.url });
  },

  onPeerInput(e) {
    this.setData({ peer: e.detail.value });
  },

  onStartThread() {
    const peer = this.data.peer.trim();
    if (!peer) return;
    this.setData({ peer: '' });
    wx.navigateTo({ url: `/pages/chat/chat?with=${encodeURIComponent(peer)}` });
  },

  onGroupNameInput(e) {
    this.setData({ groupName: e.detail.value });
  },

  onGroupMembersInput(e) {
    this.setData({ groupMembers: e.detail.value });
  },

  onCreateGroup() {
    const name = this.data.groupName.trim();
    if (!name) return;
    const members = this.data.groupMembers.split(/[\s,，]+/).filter(Boolean);
    this.client
      .createGroup({ name, members })
      .then((g) => {
        this.setData({ groupName: '', groupMembers: '' });
        wx.navigateTo({ url: `/pages/chat/chat?group=${g.group}` });
      })
      .catch((e) => wx.showToast({ title: `建群失败 ${e.code || ''}`, icon: 'none' }));
  },
});

function row(i) {
  return {
    key: i.group ? `group:${i.group}` : `with:${i.with}`,
    title: i.group ? `${i.name} (${i.members})` : i.with,
    preview: preview(i.last),
    badge: badge(i.unread),
    url: i.group ? `/pages/chat/chat?group=${i.group}` : `/pages/chat/chat?with=${i.with}`,
  };
}
