// A small `wx` for Node, enough to run the mini-program and liaotian-client outside WeChat DevTools:
// wx.connectSocket over the npm `ws` package, wx.request over fetch, wx.login returning codes the fake
// WeChat API knows, synchronous storage, the app lifecycle and network listeners, and the few UI calls the
// pages make. It also records what a test needs to see: the login calls, the auth requests, and how many
// sockets are not closed yet at any moment (WeChat allows 5 at once, and a stray socket counts).

'use strict';

const WebSocket = require('ws');

function createWx({ nextCode }) {
  const storage = new Map();
  const listeners = { appHide: [], appShow: [], network: [] };
  const on = (list) => (f) => listeners[list].push(f);
  const off = (list) => (f) => {
    listeners[list] = listeners[list].filter((g) => g !== f);
  };
  const fire = (list, arg) => listeners[list].slice().forEach((f) => f(arg));
  const wx = {
    loginCalls: 0,
    /** The path of every wx.request, in order (`/api/login`, `/api/refresh`, …). */
    requests: [],
    /** Every SocketTask made. */
    sockets: [],
    /** Sockets made and not closed yet, now and at most so far. */
    live: 0,
    maxLive: 0,
    online: true,
    toasts: [],
    navigations: [],

    login({ success, fail }) {
      wx.loginCalls += 1;
      setImmediate(() => {
        try {
          success({ code: nextCode(), errMsg: 'login:ok' });
        } catch (e) {
          fail({ errMsg: `login:fail ${e.message}` });
        }
      });
    },

    request({ url, method = 'GET', data, header = {}, success, fail }) {
      wx.requests.push(new URL(url).pathname);
      if (!wx.online) {
        setImmediate(() => fail({ errMsg: 'request:fail network' }));
        return;
      }
      const init = { method, headers: { ...header } };
      if (data !== undefined && method !== 'GET') init.body = typeof data === 'string' ? data : JSON.stringify(data);
      fetch(url, init)
        .then(async (r) => {
          const text = await r.text();
          let body = text;
          try {
            body = JSON.parse(text);
          } catch (e) {
            // wx.request leaves non-JSON bodies as strings.
          }
          success({ statusCode: r.status, data: body, header: Object.fromEntries(r.headers) });
        })
        .catch((e) => fail({ errMsg: `request:fail ${e.message}` }));
    },

    connectSocket({ url, header = {}, protocols }) {
      const cbs = { open: [], message: [], close: [], error: [] };
      let closed = false;
      wx.live += 1;
      wx.maxLive = Math.max(wx.maxLive, wx.live);
      const ended = () => {
        if (closed) return;
        closed = true;
        wx.live -= 1;
      };
      const task = {
        ws: null,
        get closed() {
          return closed;
        },
        onOpen: (f) => cbs.open.push(f),
        onMessage: (f) => cbs.message.push(f),
        onClose: (f) => cbs.close.push(f),
        onError: (f) => cbs.error.push(f),
        send({ data }) {
          if (task.ws && task.ws.readyState === WebSocket.OPEN) task.ws.send(data);
        },
        close({ code = 1000, reason = '' } = {}) {
          const ws = task.ws;
          if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) ws.close(code, reason);
        },
      };
      wx.sockets.push(task);
      if (!wx.online) {
        // No network: WeChat fails the socket with an error, then a close.
        setImmediate(() => {
          ended();
          cbs.error.forEach((f) => f({ errMsg: 'connectSocket:fail network' }));
          cbs.close.forEach((f) => f({ code: 1006, reason: 'network' }));
        });
        return task;
      }
      const ws = new WebSocket(url, protocols, { headers: header });
      task.ws = ws;
      ws.on('open', () => cbs.open.forEach((f) => f({})));
      ws.on('message', (data) => cbs.message.forEach((f) => f({ data: data.toString() })));
      ws.on('close', (code, reason) => {
        ended();
        cbs.close.forEach((f) => f({ code, reason: reason.toString() }));
      });
      ws.on('error', (e) => cbs.error.forEach((f) => f({ errMsg: e.message })));
      ws.on('unexpected-response', (req, res) => {
        // A refused handshake (401): WeChat reports it as an error, then a close.
        cbs.error.forEach((f) => f({ errMsg: `handshake ${res.statusCode}` }));
        ws.terminate();
      });
      return task;
    },

    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => storage.set(k, JSON.parse(JSON.stringify(v))),
    removeStorageSync: (k) => storage.delete(k),

    onAppHide: on('appHide'),
    onAppShow: on('appShow'),
    onNetworkStatusChange: on('network'),
    offAppHide: off('appHide'),
    offAppShow: off('appShow'),
    offNetworkStatusChange: off('network'),

    /** What wx.requestSubscribeMessage answers per template id (`accept` when absent), and each call's ids. */
    subscribeAnswers: {},
    subscribeCalls: [],
    requestSubscribeMessage({ tmplIds, success }) {
      wx.subscribeCalls.push(tmplIds);
      const res = { errMsg: 'requestSubscribeMessage:ok' };
      for (const id of tmplIds) res[id] = wx.subscribeAnswers[id] || 'accept';
      setImmediate(() => success(res));
    },
    showToast: (o) => wx.toasts.push(o.title),
    navigateTo: (o) => wx.navigations.push(o.url),
    setNavigationBarTitle: () => {},
    stopPullDownRefresh: () => {},

    // --- test helpers ---

    /** The user sends the mini-program to the background, as WeChat reports it. */
    fireAppHide() {
      fire('appHide', {});
    },
    fireAppShow() {
      fire('appShow', { scene: 1001 });
    },
    /** The network goes (new sockets and requests fail) or comes back; the listeners hear of it. */
    setNetwork(isConnected) {
      wx.online = isConnected;
      fire('network', { isConnected, networkType: isConnected ? 'wifi' : 'none' });
    },
    /** The newest socket, the one in use. */
    socket() {
      return wx.sockets[wx.sockets.length - 1];
    },
    /** Listeners registered, by kind: what the app wired. */
    listening(kind) {
      return listeners[kind].length;
    },
  };
  return wx;
}

module.exports = { createWx };
