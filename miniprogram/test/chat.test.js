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

test('a group shows in the member\'s conversation list with its unread count; reading sends a receipt', async () => {
  const a = client('alice');
  const b = client('bob');
  for (const c of [a, b]) {
    const open = once(c.chat, 'open');
    c.chat.start();
    await open;
  }
  const g = await a.chat.createGroup('小组', [b.auth.user]);
  assert.equal(g.type, 'group');
  assert.equal(g.member_count, 2);
  const joined = once(a.chat, 'joined', (f) => f.group === g.group);
  a.chat.joinGroup(g.group);
  await joined;
  const ack = await a.chat.send({ group: g.group }, '大家好');
  // Bob's list has the group with one unread message (the persister indexes it within moments).
  let item;
  await waitFor('the group in bob\'s list', async () => {
    const list = await b.chat.conversations().catch(() => ({ items: [] }));
    item = list.items.find((i) => i.group === g.group);
    return item && item.unread === 1;
  });
  assert.equal(item.name, '小组');
  assert.equal(item.last.text, '大家好');
  const receipt = once(a.chat, 'receipt', (r) => r.group === g.group);
  const read = await b.chat.read({ group: g.group }, ack.seq);
  assert.equal(read.unread, 0);
  const r = await receipt;
  assert.equal(r.user, b.auth.user);
  assert.equal(r.read_seq, ack.seq);
  // Bob opens the group: live messages and events follow, in one chain.
  const bJoined = once(b.chat, 'joined', (f) => f.group === g.group);
  b.chat.joinGroup(g.group);
  assert.equal((await bJoined).unread, 0);
  const next = once(b.chat, 'message', (m) => m.group === g.group);
  await a.chat.send({ group: g.group }, 'second');
  assert.equal((await next).text, 'second');
  a.chat.stop();
  b.chat.stop();
});
