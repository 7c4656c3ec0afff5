// A small `wx` for Node: wx.connectSocket over the npm `ws` package, wx.request over fetch, wx.login
// returning codes the fake WeChat API knows, and synchronous storage. Enough for lib/*.js.

'use strict';

const WebSocket = require('ws');

function createWx({ nextCode }) {
  const storage = new Map();
  const sockets = [];
  const wx = {
    loginCalls: 0,
    sockets,
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
      const ws = new WebSocket(url, protocols, { headers: header });
      const cbs = { open: [], message: [], close: [], error: [] };
      ws.on('open', () => cbs.open.forEach((f) => f({})));
      ws.on('message', (data) => cbs.message.forEach((f) => f({ data: data.toString() })));
      ws.on('close', (code, reason) => cbs.close.forEach((f) => f({ code, reason: reason.toString() })));
      ws.on('error', (e) => cbs.error.forEach((f) => f({ errMsg: e.message })));
      ws.on('unexpected-response', (req, res) => {
        // A refused handshake (401): WeChat reports it as an error, then a close.
        cbs.error.forEach((f) => f({ errMsg: `handshake ${res.statusCode}` }));
        ws.terminate();
      });
      const task = {
        ws,
        onOpen: (f) => cbs.open.push(f),
        onMessage: (f) => cbs.message.push(f),
        onClose: (f) => cbs.close.push(f),
        onError: (f) => cbs.error.push(f),
        send({ data }) {
          if (ws.readyState === WebSocket.OPEN) ws.send(data);
        },
        close({ code = 1000, reason = '' } = {}) {
          if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
        },
      };
      sockets.push(task);
      return task;
    },
    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => storage.set(k, JSON.parse(JSON.stringify(v))),
    removeStorageSync: (k) => storage.delete(k),
    onNetworkStatusChange() {},
  };
  return wx;
}

module.exports = { createWx };
