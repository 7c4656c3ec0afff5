// App singleton: one login state and one chat connection shared by the pages.
// Logs in with wx.login once, stores our tokens, and afterwards only refreshes them: wx.login runs again
// only when the refresh token is refused.

'use strict';

const config = require('./config');
const { AuthClient } = require('./lib/auth');
const { ChatClient } = require('./lib/chat');

App({
  onLaunch() {
    this.auth = new AuthClient({ wx, baseUrl: config.authUrl });
    this.chat = new ChatClient({ wx, auth: this.auth, url: config.gatewayUrl, heartbeatMs: config.heartbeatMs });
    // A token is obtained lazily by the first connect; accessToken() logs in if none is stored.
    this.auth.accessToken().catch((e) => console.warn('login failed', e));
    wx.onNetworkStatusChange((res) => {
      if (res.isConnected && !this.chat.stopped && !this.chat.open) this.chat.connect();
    });
  },
  onShow() {
    // Back in the foreground: reconnect; rooms resume from their last seq and the outbox is resent.
    this.chat.start();
  },
  onHide() {
    // WeChat suspends JS about 5 s after hiding and drops the socket: close it cleanly first.
    this.chat.stop();
  },
});
