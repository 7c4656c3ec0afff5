// The sample mini-program's logic (lib/auth.js, lib/chat.js) against the real auth and gateway
// binaries, nats-server, redis-server and a fake WeChat API, through the wx shim.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const { AuthClient } = require('../lib/auth');
const { ChatClient } = require('../lib/chat');
const { createWx } = require('./wx-shim');
const { startStack, sleep, waitFor } = require('./stack');

let stack;

before(async () => {
  stack = await startStack();
});

after(async () => {
  if (stack) await stack.stop();
});

function client(name, opts = {}) {
  let n = 0;
  const wx = createWx({ nextCode: () => `ok-${name}~${(n += 1)}` });
  const auth = new AuthClient({ wx, baseUrl: stack.authUrl });
  const chat = new ChatClient({ wx, auth, url: stack.wsUrl, heartbeatMs: 200, backoffBaseMs: 100, backoffMaxMs: 1000, ...opts });
  const got = [];
  chat.on('message', (m) => got.push(m));
  return { wx, auth, chat, got };
}

function once(chat, event, pred = () => true) {
  return new Promise((resolve) => {
    const fn = (v) => {
      if (pred(v)) {
        chat.listeners.set(event, chat.listeners.get(event).filter((f) => f !== fn));
        resolve(v);
      }
    };
    chat.on(event, fn);
  });
}

const texts = (got, room) => got.filter((m) => m.room === room).map((m) => m.text);

test('logs in, chats, and survives a forced disconnect without losing queued messages', async () => {
  const a = client('alice');
  const b = client('bob');
  const room = 'lobby1';
  for (const c of [a, b]) {
    const joined = once(c.chat, 'joined', (f) => f.room === room);
    c.chat.start();
    c.chat.join(room);
    await joined;
  }
  assert.equal(a.wx.loginCalls, 1);
  assert.match(a.auth.user, /^u_/);
  const ack = await a.chat.send({ room }, 'hello 1');
  assert.equal(ack.type, 'ack');
  await waitFor('bob gets hello 1', () => texts(b.got, room).includes('hello 1'), 5000);

  // Pings flow (200 ms heartbeat here).
  await once(a.chat, 'pong');

  // Cut alice's socket under her feet (as WeChat does in the background), then write while offline.
  const reopened = once(a.chat, 'open');
  a.wx.sockets[a.wx.sockets.length - 1].ws.terminate();
  const sends = [a.chat.send({ room }, 'queued 2'), a.chat.send({ room }, 'queued 3')];
  assert.ok(a.chat.pending.length >= 2, 'messages wait in the outbox');
  await reopened;
  const acks = await Promise.all(sends);
  assert.ok(acks.every((x) => x.type === 'ack'));
  assert.equal(a.chat.pending.length, 0);
  await waitFor('bob gets the queued messages', () => texts(b.got, room).includes('queued 3'), 5000);
  assert.deepEqual(texts(b.got, room), ['hello 1', 'queued 2', 'queued 3'], 'each message exactly once, in order');
  assert.equal(a.wx.loginCalls, 1, 'a reconnect does not call wx.login');
  assert.ok(a.chat.connects >= 2);

  // A resend of an already-stored message (lost ack) is stored once: same client_msg_id, same seq.
  const frame = { type: 'send', room, text: 'once', client_msg_id: 'dup-1', id: 'dup-1' };
  a.chat.raw(frame);
  a.chat.raw(frame);
  await waitFor('bob gets once', () => texts(b.got, room).includes('once'), 5000);
  await sleep(300);
  assert.equal(texts(b.got, room).filter((t) => t === 'once').length, 1);

  a.chat.stop();
  b.chat.stop();
});

test('a refused token is refreshed; wx.login runs again only when the refresh fails', async () => {
  const c = client('carol');
  const room = 'lobby2';
  const joined = once(c.chat, 'joined');
  c.chat.start();
  c.chat.join(room);
  await joined;
  assert.equal(c.wx.loginCalls, 1);
  const firstRefresh = c.auth.tokens.refreshToken;

  // A broken access token: the handshake is refused, the client refreshes and reconnects.
  c.chat.stop();
  c.auth.tokens = { ...c.auth.tokens, accessToken: 'broken' };
  let opened = once(c.chat, 'open');
  c.chat.start();
  await opened;
  assert.equal(c.wx.loginCalls, 1, 'refresh, not wx.login');
  assert.notEqual(c.auth.tokens.refreshToken, firstRefresh, 'the refresh token rotated');

  // A broken refresh token too: the refresh is refused, so wx.login runs once more.
  c.chat.stop();
  c.auth.tokens = { ...c.auth.tokens, accessToken: 'broken', refreshToken: 'rt_broken' };
  opened = once(c.chat, 'open');
  c.chat.start();
  await opened;
  assert.equal(c.wx.loginCalls, 2);

  // Logout closes the socket with 4001 and drops the tokens.
  const closed = once(c.chat, 'close');
  await c.auth.logout();
  const res = await closed;
  assert.equal(res.code, 4001);
  c.chat.stop();
});

test('rejoining with since replays what was missed, once and in order', async () => {
  const a = client('dave');
  const b = client('erin');
  const room = 'lobby3';
  for (const c of [a, b]) {
    const joined = once(c.chat, 'joined', (f) => f.room === room);
    c.chat.start();
    c.chat.join(room);
    await joined;
  }
  await a.chat.send({ room }, 'before');
  await waitFor('dave sees before', () => texts(a.got, room).includes('before'), 5000);
  a.chat.stop();
  await b.chat.send({ room }, 'missed 1');
  await b.chat.send({ room }, 'missed 2');
  const rejoined = once(a.chat, 'joined', (f) => f.room === room);
  a.chat.start();
  const joined = await rejoined;
  assert.equal(joined.recovered, true, 'the gateway recovered everything after since');
  await waitFor('dave gets what he missed', () => texts(a.got, room).includes('missed 2'), 5000);
  assert.deepEqual(texts(a.got, room), ['before', 'missed 1', 'missed 2']);
  a.chat.stop();
  b.chat.stop();
});
