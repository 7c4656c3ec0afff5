// The group view (`?group=`): the group's name, owner and members with their roles from
// client.groupInfo, and, for the owner and admins, a form that adds members.

'use strict';

Page({
  data: { group: '', name: '', owner: '', members: [], count: 0, canAdd: false, adding: '' },

  onLoad(query = {}) {
    this.client = getApp().client;
    this.setData({ group: query.group || '' });
    this.off = [this.client.on('open', () => this.load())];
    this.load();
  },

  onUnload() {
    for (const off of this.off) off();
  },

  load() {
    if (this.client.state !== 'open') return; // The next `open` loads it.
    this.client
      .groupInfo(this.data.group)
      .then((g) => this.show(g))
      .catch((e) => wx.showToast({ title: e.code === 'forbidden' ? '不是群成员' : '加载失败', icon: 'none' }));
  },

  show(g) {
    const me = this.client.user;
    const mine = g.members.find((m) => m.user === me);
    wx.setNavigationBarTitle({ title: `${g.name} (${g.member_count})` });
    this.setData({
      name: g.name,
      owner: g.owner || '',
      members: g.members.map((m) => ({ user: m.user, role: m.role, me: m.user === me })),
      count: g.member_count,
      canAdd: !!mine && (mine.role === 'owner' || mine.role === 'admin'),
    });
  },

  onAddInput(e) {
    this.setData({ adding: e.detail.value });
  },

  onAdd() {
    const users = this.data.adding.split(/[\s,，]+/).filter(Boolean);
    if (!users.length) return;
    return this.client
      .addMembers(this.data.group, users)
      .then((g) => {
        this.setData({ adding: '' });
        this.show(g);
      })
      .catch((e) => wx.showToast({ title: `添加失败 ${e.code || ''}`, icon: 'none' }));
  },
});
