//! The two things the SDK needs from its platform, a WebSocket and an HTTP request, behind one small
//! interface, so the same client runs on WeChat mini-programs (`wx.connectSocket`, `wx.request`,
//! `wx.login`) and on browsers and Node (`WebSocket`, `fetch`).
//!
//! A transport is `{connect({url, token, protocols}), request({url, method, body, headers}), wxLogin?}`.
//! `connect` returns a socket `{send(text), close(code, reason)}` whose `onopen()`, `onmessage(text)`
//! and `onclose({code, reason})` the client sets; `onclose` is called once, also for a failed open.
//! `request` resolves with `{status, body}` (the body parsed as JSON when it is JSON) and rejects only
//! on a network failure.

export const PROTOCOL = 'chat.v1';

function once(fn) {
  let done = false;
  return (arg) => {
    if (done) return;
    done = true;
    fn(arg);
  };
}

function parse(text) {
  if (typeof text !== 'string') return text;
  try {
    return JSON.parse(text);
  } catch (e) {
    return text;
  }
}

/**
 * Browsers and Node. `WebSocket` defaults to the global one. Browsers cannot set headers on a
 * WebSocket, so the token goes in `?token=`; with `headers: true` (Node's `ws` package, whose
 * constructor takes options) it goes in `Authorization` instead.
 */
export function webTransport({ WebSocket: WS = globalThis.WebSocket, fetch: f = globalThis.fetch, headers = false } = {}) {
  return {
    connect({ url, token, protocols = [PROTOCOL] }) {
      const ws = headers
        ? new WS(url, protocols, { headers: { Authorization: `Bearer ${token}` } })
        : new WS(`${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`, protocols);
      const sock = {
        onopen: null,
        onmessage: null,
        onclose: null,
        send: (text) => {
          if (ws.readyState === 1) ws.send(text);
        },
        close: (code = 1000, reason = '') => {
          try {
            ws.close(code, reason);
          } catch (e) {
            ws.close();
          }
        },
      };
      const closed = once((ev) => sock.onclose && sock.onclose(ev));
      ws.onopen = () => sock.onopen && sock.onopen();
      ws.onmessage = (ev) => sock.onmessage && sock.onmessage(typeof ev.data === 'string' ? ev.data : String(ev.data));
      ws.onclose = (ev) => closed({ code: ev.code, reason: ev.reason || '' });
      ws.onerror = () => {
        // A failed open fires error then close; close carries the code.
      };
      return sock;
    },
    async request({ url, method = 'GET', body, headers: h = {} }) {
      const init = { method, headers: { ...h } };
      if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers['content-type'] = 'application/json';
      }
      const res = await f(url, init);
      return { status: res.status, body: parse(await res.text()) };
    },
  };
}

/** WeChat mini-programs. `wx.connectSocket` takes headers, so the token goes in `Authorization`. */
export function wxTransport(wx) {
  return {
    connect({ url, token, protocols = [PROTOCOL] }) {
      const task = wx.connectSocket({ url, header: { Authorization: `Bearer ${token}` }, protocols });
      const sock = {
        onopen: null,
        onmessage: null,
        onclose: null,
        send: (text) => task.send({ data: text }),
        close: (code = 1000, reason = '') => task.close({ code, reason }),
      };
      const closed = once((ev) => sock.onclose && sock.onclose(ev));
      task.onOpen(() => sock.onopen && sock.onopen());
      task.onMessage((res) => sock.onmessage && sock.onmessage(typeof res.data === 'string' ? res.data : ''));
      task.onClose((res) => closed({ code: (res && res.code) || 1006, reason: (res && res.reason) || '' }));
      // WeChat may report a failure only as an error: treat it as the close, and close the task, so
      // that it does not count against WeChat's five sockets.
      task.onError((err) => {
        try {
          task.close({ code: 1000, reason: 'error' });
        } catch (e) {
          // Closed already.
        }
        closed({ code: 1006, reason: (err && err.errMsg) || 'error' });
      });
      return sock;
    },
    request({ url, method = 'GET', body, headers = {} }) {
      return new Promise((resolve, reject) => {
        wx.request({
          url,
          method,
          data: body,
          header: { 'content-type': 'application/json', ...headers },
          success: (res) => resolve({ status: res.statusCode, body: parse(res.data) }),
          fail: (err) => reject(new Error((err && err.errMsg) || 'wx.request failed')),
        });
      });
    },
    wxLogin() {
      return new Promise((resolve, reject) => {
        wx.login({
          success: (res) => (res && res.code ? resolve(res.code) : reject(new Error('wx.login gave no code'))),
          fail: (err) => reject(new Error((err && err.errMsg) || 'wx.login failed')),
        });
      });
    },
  };
}
