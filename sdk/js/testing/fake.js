// A scripted transport for the state-machine tests: each socket records the frames the client
// writes, and the test plays the server (open, frames, close) by hand.

export class FakeSocket {
  constructor(url, token) {
    Object.assign(this, { url, token, sent: [], closed: null, onopen: null, onmessage: null, onclose: null });
    this.waiters = [];
  }

  send(text) {
    const f = JSON.parse(text);
    this.sent.push(f);
    for (const w of this.waiters.slice()) {
      if (w.match(f)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(f);
      }
    }
  }

  /** Like a real socket, reports its close a moment later, unless the test holds it (`holdClose`). */
  close(code, reason) {
    if (this.closed) return;
    this.closed = { code, reason };
    if (!this.holdClose) setTimeout(() => this.onclose({ code, reason }), 1);
  }

  /** The server side: open, then `welcome`. */
  open(welcome = {}) {
    this.onopen();
    this.recv({ type: 'welcome', user: 'alice', conn: 'c', heartbeat_ms: 25000, server_time: 0, protocol: 1, ...welcome });
  }

  recv(f) {
    this.onmessage(JSON.stringify(f));
  }

  /** The server or the network closes the socket. */
  drop(code = 1006, reason = '') {
    this.onclose({ code, reason });
  }

  /** The next frame (already written or still to come) that matches. */
  next(match, ms = 2000) {
    const m = typeof match === 'string' ? (f) => f.type === match : match;
    const seen = this.sent.find((f) => m(f) && !f.__taken);
    if (seen) {
      seen.__taken = true;
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${match} frame within ${ms} ms`)), ms);
      this.waiters.push({
        match: (f) => m(f),
        resolve: (f) => {
          clearTimeout(timer);
          f.__taken = true;
          resolve(f);
        },
      });
    });
  }

  /** Answers every `join` as the gateway would, with `last_seq` and `recovered`. */
  of(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

export function fakeTransport() {
  const t = {
    sockets: [],
    waiting: [],
    connect({ url, token }) {
      const s = new FakeSocket(url, token);
      t.sockets.push(s);
      for (const w of t.waiting.splice(0)) w(s);
      return s;
    },
    async request() {
      return { status: 500, body: null };
    },
    /** The next socket the client opens (or the newest one, if `n` sockets exist already). */
    socket(n) {
      if (t.sockets.length >= n) return Promise.resolve(t.sockets[n - 1]);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`socket ${n} never opened`)), 3000);
        t.waiting.push(function w(s) {
          if (t.sockets.length >= n) {
            clearTimeout(timer);
            resolve(t.sockets[n - 1]);
          } else t.waiting.push(w);
        });
      });
    },
  };
  return t;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function msg(room, seq, prev, extra = {}) {
  return { type: 'message', room, from: 'bob', text: `m${seq}`, seq, prev_seq: prev, ts: seq, client_msg_id: `b${seq}`, ...extra };
}
