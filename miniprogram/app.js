// The App singleton: it owns the one liaotian-client `Client` that every page shares, so the mini-program
// has one socket, one login and one outbox. All protocol logic (login and refresh, resume, ordering,
// resends, the heartbeat, the app's hide/show lifecycle) lives in the SDK; this file only wires it to wx.

'use strict';

const { Client, Auth, wxTransport, wxStorage, attachWx } = require('liaotian-client');
const config = require('./config');

App({
  onLaunch() {
    const transport = wxTransport(wx);
    const storage = wxStorage(wx);
    // wx.login runs once; afterwards the stored refresh token is rotated, and wx.login runs again only if
    // the refresh is refused.
    const auth = new Auth({ transport, authUrl: config.authUrl, login: 'wechat', storage });
    // Pages read these: the chat page asks for notification grants on a send tap (notify.js).
    this.config = config;
    this.auth = auth;
    this.client = new Client({ url: config.gatewayUrl, transport, auth, storage, options: config.options || {} });
    // wx.onAppHide closes the socket after the grace, wx.onAppShow resumes, wx.onNetworkStatusChange
    // reconnects at once: App.onShow and App.onHide have nothing left to do.
    this.detachWx = attachWx(this.client, wx);
    this.client.on('logged_out', () => wx.showToast({ title: '已在别处退出登录', icon: 'none' }));
    this.client.on('error', (e) => console.warn('liaotian', e && e.message));
    this.client.start();
  },
});
