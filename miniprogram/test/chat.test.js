// The sample mini-program (app.js and its pages, all protocol logic in liaotian-client) against the real
// stack: nats-server, redis-server, a fake WeChat API and the auth, gateway and persister binaries, each
// user through its own wx shim. Each test says what it proves in its first line.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const { launch } = require('./harness');
const { startStack, sleep, waitFor } = require('./stack');

let stack;
const users = [];

before(async () => {
  stack = await startStack();
});

after(async () => {
  for (const u of users) u.client.stop();
  if (stack) await stack.stop();
});

/** Short timings, so reconnects and the hide grace take milliseconds. */
const OPTIONS = { backoffBaseMs: 100, backoffMaxMs: 400, hideGraceMs: 300, requestTimeoutMs: 5000 };

function user(name, extra = {}) {
  const u = launch({ name, stack, options: OPTIONS, ...extra });
  users.push(u);
  return u;
}

async function online(...us) {
  await Promise.all(us.map((u) => waitFor(`${u.name} online`, () => u.client.state === 'open', 10000)));
}

/** The next `event` of `client` that passes `pred`. */
function next(client, event, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(event, (v) => {
      if (pred(v)) {
        off();
        resolve(v);
      }
    });
  });
}

const texts = (u, key, value) => u.got.filter((m) => m.conv[key] === value && m.type !== 'event').map((m) => m.text);
const shown = (page) => page.data.items.filter((i) => !i.system).map((i) => i.text);
const until = (what, check, ms = 10000) => waitFor(what, check, ms);

/** A page's own message with `text`, once it is there. */
const own = (page, text) => page.data.items.find((i) => i.mine && i.text === text);

/** Types `text` into a chat page and taps send. */
function type(page, text) {
  page.onInput({ detail: { value: text } });
  page.onSend();
}

test('WeChat login runs wx.login once; a relaunch reuses the tokens, a refused token is refreshed, and only a refused refresh logs in again', async () => {
  const a = user('lin');
  await online(a);
  assert.equal(a.wx.loginCalls, 1);
  assert.deepEqual(a.wx.requests, ['/api/login']);
  assert.equal(stack.wechat.calls.get('ok-lin~1'), 1, 'the wx.login code went to WeChat');
  assert.match(a.client.user, /^u_/);

  // A cold start on the same device: the stored tokens are used as they are.
  a.client.stop();
  a.app.detachWx();
  await until('the old socket closed', () => a.wx.live === 0);
  const b = user('lin', { wx: a.wx });
  await online(b);
  assert.deepEqual(a.wx.requests, ['/api/login'], 'no login and no refresh at a relaunch');
  assert.equal(b.client.user, a.client.user);

  // The gateway refuses the access token: the client refreshes it (rotating the refresh token) and reconnects.
  b.client.stop();
  await until('closed', () => b.wx.live === 0);
  const t1 = b.wx.getStorageSync('liaotian.tokens');
  b.wx.setStorageSync('liaotian.tokens', { ...t1, accessToken: 'broken' });
  b.client.start();
  await online(b);
  assert.equal(b.wx.loginCalls, 1, 'a refresh, not wx.login');
  assert.deepEqual(b.wx.requests, ['/api/login', '/api/refresh']);
  assert.notEqual(b.wx.getStorageSync('liaotian.tokens').refreshToken, t1.refreshToken, 'the refresh token rotated');

  // The refresh token is refused too: now, and only now, wx.login runs again.
  b.client.stop();
  await until('closed', () => b.wx.live === 0);
  b.wx.setStorageSync('liaotian.tokens', { ...b.wx.getStorageSync('liaotian.tokens'), accessToken: 'broken', refreshToken: 'rt_broken' });
  b.client.start();
  await online(b);
  assert.equal(b.wx.loginCalls, 2);
  assert.deepEqual(b.wx.requests, ['/api/login', '/api/refresh', '/api/refresh', '/api/login']);
  assert.equal(b.client.user, a.client.user, 'the same WeChat user is the same chat user');

  // Logout closes the socket with 4001: the tokens are dropped and the client does not reconnect.
  const out = next(b.client, 'logged_out');
  await b.client.auth.logout();
  assert.equal((await out).code, 4001);
  assert.equal(b.client.state, 'stopped');
  assert.equal(b.wx.getStorageSync('liaotian.tokens'), '');
  assert.ok(a.wx.maxLive <= 1, `at most one socket at a time (saw ${a.wx.maxLive})`);
});

test('a room in the chat page: history first, then live messages by seq; own messages go pending → sent, or failed with a retry', async () => {
  const a = user('alice');
  const b = user('bob');
  await online(a, b);
  const room = 'room-chat';
  const pa = a.page('chat', { room });
  await until('alice joined', () => a.client.joined.has(`room:${room}`) && a.client.state === 'open');
  type(pa, 'before 1');
  assert.equal(own(pa, 'before 1').state, 'pending', 'shown at once, pending');
  type(pa, 'before 2');
  await until('both sent', () => own(pa, 'before 1').state === 'sent' && own(pa, 'before 2').state === 'sent' && own(pa, 'before 2').seq);

  // Bob opens the room later: the newest history page shows what was said before he came.
  const pb = b.page('chat', { room });
  await until('bob sees the history', () => shown(pb).length === 2, 10000);
  assert.deepEqual(shown(pb), ['before 1', 'before 2']);
  assert.ok(pb.data.items.every((i) => !i.mine));
  type(pa, 'live 3');
  await until('bob sees live 3', () => shown(pb).includes('live 3'));
  type(pb, 'reply 4');
  await until('alice sees reply 4', () => shown(pa).includes('reply 4'));
  await sleep(200);
  assert.deepEqual(shown(pb), ['before 1', 'before 2', 'live 3', 'reply 4'], 'once each, in order');
  assert.deepEqual(shown(pa), ['before 1', 'before 2', 'live 3', 'reply 4']);
  const seqs = pb.data.items.map((i) => i.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'sorted by seq');
  assert.ok(pa.data.items.every((i) => i.mine === (i.text !== 'reply 4') && (!i.mine || i.state === 'sent')));

  // A text the gateway refuses (too long) is shown failed, with a retry that sends it again.
  const long = 'x'.repeat(4001);
  type(pa, long);
  await until('failed', () => own(pa, long).state === 'failed');
  assert.equal(own(pa, long).error, 'too_large');
  const attempts = [];
  const off = a.client.on('outbox', (m) => attempts.push(m.state));
  pa.onRetry({ currentTarget: { dataset: { id: own(pa, long).id } } });
  await until('failed again', () => attempts.includes('failed'));
  off();
  assert.deepEqual(attempts, ['pending', 'failed'], 'the retry went out again');
  pa.onUnload();
  pb.onUnload();
});

test('a thread: messages both ways in the chat page, and reading it sends the other user a receipt', async () => {
  const a = user('alice');
  const b = user('bob');
  await online(a, b);
  const pa = a.page('chat', { with: b.client.user });
  type(pa, 'hi bob');
  await until('bob got hi bob', () => texts(b, 'with', a.client.user).includes('hi bob'));
  const receipt = next(a.client, 'receipt', (r) => r.with === b.client.user);
  const pb = b.page('chat', { with: a.client.user });
  await until('bob sees the thread', () => shown(pb).includes('hi bob'));
  const r = await receipt;
  assert.equal(r.read_seq, own(pa, 'hi bob').seq, 'bob read up to the message he was shown');
  type(pb, 'hi alice');
  await until('alice sees hi alice', () => shown(pa).includes('hi alice'));
  await sleep(200);
  assert.deepEqual(shown(pa), ['hi bob', 'hi alice']);
  assert.deepEqual(shown(pb), ['hi bob', 'hi alice']);
  pa.onUnload();
  pb.onUnload();
});

test('a socket cut under the client: it reconnects as soon as the network is back, what the other user sent meanwhile arrives once and in order, and sends queued while offline are acked once', async () => {
  const a = user('dave');
  // Backoff delays of up to 10 minutes: a quick reconnect can only come from the network listener.
  const b = user('erin', { options: { ...OPTIONS, backoffBaseMs: 600000, backoffMaxMs: 600000 } });
  await online(a, b);
  const room = 'room-cut';
  await Promise.all([a.client.join({ room }), b.client.join({ room })]);
  await a.client.send({ room }, 'm1').acked;
  await until('erin got m1', () => texts(b, 'room', room).includes('m1'));
  const sent = new Map();
  b.client.on('outbox', (m) => {
    if (m.state === 'sent') sent.set(m.client_msg_id, (sent.get(m.client_msg_id) || 0) + 1);
  });

  // The network goes and the socket dies without a close frame.
  const sockets = b.wx.sockets.length;
  b.wx.setNetwork(false);
  b.wx.socket().ws.terminate();
  await until('erin offline', () => b.client.state !== 'open' && b.wx.live === 0);
  for (const t of ['m2', 'm3', 'm4']) await a.client.send({ room }, t).acked;
  const q = [b.client.send({ room }, 'q1'), b.client.send({ room }, 'q2')];
  await sleep(300);
  assert.deepEqual(texts(b, 'room', room), ['m1'], 'nothing while offline');
  assert.deepEqual(q.map((x) => x.state), ['pending', 'pending'], 'queued in the outbox');
  assert.equal(b.client.pending().length, 2);

  // The network is back: the client reconnects at once, resumes the room and resends the queue.
  b.wx.setNetwork(true);
  await until('erin back online', () => b.client.state === 'open', 2000);
  const acks = await Promise.all(q.map((x) => x.acked));
  await until('erin got q2', () => texts(b, 'room', room).includes('q2'));
  await until('dave got q2', () => texts(a, 'room', room).includes('q2'));
  await sleep(300);
  assert.deepEqual(texts(b, 'room', room), ['m1', 'm2', 'm3', 'm4', 'q1', 'q2'], 'once each, in order');
  assert.deepEqual(texts(a, 'room', room), ['m1', 'm2', 'm3', 'm4', 'q1', 'q2']);
  assert.ok(acks[0].seq < acks[1].seq);
  assert.deepEqual([...sent.values()], [1, 1], 'each queued send acked once');
  assert.equal(b.client.pending().length, 0);
  assert.ok(b.wx.sockets.length > sockets);
  assert.ok(b.wx.maxLive <= 1 && a.wx.maxLive <= 1, 'never two sockets at once');
});

test('groups: the list shows unread counts (99+ past 99), the group view lets the owner add members, and reading sends a receipt', async () => {
  const a = user('alice');
  const b = user('bob');
  const c = user('carol');
  await online(a, b, c);
  const list = b.page('list');
  const g = await a.client.createGroup({ name: '小组', members: [b.client.user] });
  assert.equal(g.member_count, 2);
  const pa = a.page('chat', { group: g.group });
  await until('alice joined the group', () => pa.data.items.some((i) => i.system));
  type(pa, '大家好');
  await until('sent', () => own(pa, '大家好') && own(pa, '大家好').state === 'sent');
  const seq = own(pa, '大家好').seq;
  let row;
  await until("the group in bob's list with one unread", () => {
    list.onPullDownRefresh();
    row = list.data.items.find((i) => i.key === `group:${g.group}`);
    return row && row.badge === '1';
  });
  assert.equal(row.title, '小组 (2)');
  assert.equal(row.preview, '大家好');

  // A hundred direct messages: they reach bob live, the list refreshes itself, the badge says 99+.
  const dms = [];
  for (let i = 0; i < 100; i += 1) dms.push(a.client.send({ with: b.client.user }, `dm ${i}`).acked);
  await Promise.all(dms);
  await until('99+ on the thread', () => {
    const t = list.data.items.find((i) => i.key === `with:${a.client.user}`);
    return t && t.badge === '99+';
  }, 15000);
  assert.equal(list.data.items[0].key, `with:${a.client.user}`, 'newest activity first');

  // Bob opens the group: it is marked read, alice gets the receipt, the badge goes.
  const receipt = next(a.client, 'receipt', (r) => r.group === g.group);
  list.onHide();
  const pb = b.page('chat', { group: g.group });
  await until('bob sees the group', () => shown(pb).includes('大家好'));
  assert.ok(pb.data.items[0].system, 'the created event comes first');
  const r = await receipt;
  assert.equal(r.user, b.client.user);
  assert.equal(r.read_seq, seq);
  const read = await a.client.groupReceipts(g.group, seq);
  assert.ok(read.users.includes(b.client.user));
  list.onShow();
  await until('no badge on the group', () => {
    const x = list.data.items.find((i) => i.key === `group:${g.group}`);
    return x && x.badge === '';
  });

  // The group view: a member sees the members, only the owner may add.
  const gb = b.page('group', { group: g.group });
  await until('bob sees the members', () => gb.data.members.length === 2);
  assert.equal(gb.data.canAdd, false);
  assert.equal(gb.data.owner, a.client.user);
  const ga = a.page('group', { group: g.group });
  await until('alice sees the members', () => ga.data.members.length === 2);
  assert.equal(ga.data.canAdd, true);
  ga.onAddInput({ detail: { value: c.client.user } });
  await ga.onAdd();
  assert.equal(ga.data.count, 3);
  assert.ok(ga.data.members.some((m) => m.user === c.client.user && m.role === 'member'));
  await until('bob sees the added event live', () => pb.data.items.some((i) => i.system && i.text.includes(c.client.user)));
  await until('the group in carol\'s list', async () => {
    const l = await c.client.conversations();
    return l.items.some((i) => i.group === g.group);
  });
  pa.onUnload();
  pb.onUnload();
});

test('the app lifecycle: hidden, the socket closes after the grace; shown, what was sent meanwhile arrives once and in order; never two sockets', async () => {
  const a = user('frank');
  const b = user('grace');
  await online(a, b);
  const room = 'room-life';
  await Promise.all([a.client.join({ room }), b.client.join({ room })]);
  await a.client.send({ room }, 'l1').acked;
  await until('grace got l1', () => texts(b, 'room', room).includes('l1'));

  // Hidden and shown again within the grace: the socket stays.
  const sock = b.wx.socket();
  b.wx.fireAppHide();
  await sleep(100);
  b.wx.fireAppShow();
  await sleep(OPTIONS.hideGraceMs + 200);
  assert.equal(b.wx.socket(), sock, 'no new socket');
  assert.equal(sock.closed, false);

  // Hidden for good: the socket closes after the grace, and stays closed while hidden.
  b.wx.fireAppHide();
  await sleep(100);
  assert.equal(sock.closed, false, 'not before the grace');
  await until('the socket closed', () => b.wx.live === 0, 2000);
  for (const t of ['l2', 'l3', 'l4']) await a.client.send({ room }, t).acked;
  await sleep(500);
  assert.equal(b.wx.live, 0, 'no reconnect while hidden');
  assert.deepEqual(texts(b, 'room', room), ['l1']);

  // Shown: it reconnects at once and resumes the room from the last seq seen.
  b.wx.fireAppShow();
  await until('grace got l4', () => texts(b, 'room', room).includes('l4'), 5000);
  await sleep(300);
  assert.deepEqual(texts(b, 'room', room), ['l1', 'l2', 'l3', 'l4'], 'once each, in order');
  assert.equal(b.wx.live, 1);
  assert.ok(b.wx.maxLive <= 1 && a.wx.maxLive <= 1, `never two sockets at once (saw ${b.wx.maxLive})`);
});

test('a send tap asks for the notification templates, and the accepted ones are reported to auth as grants', async () => {
  const a = user('grace', { notifyTemplates: ['tmpl-dm', 'tmpl-at'] });
  const b = user('heidi');
  await online(a, b);
  a.wx.subscribeAnswers = { 'tmpl-at': 'reject' };
  const pa = a.page('chat', { with: b.client.user });
  type(pa, 'ping');
  assert.deepEqual(a.wx.subscribeCalls, [['tmpl-dm', 'tmpl-at']], 'asked within the tap');
  assert.deepEqual(await pa.notifyAsked, ['tmpl-dm'], 'only the accepted template is reported');
  assert.ok(a.wx.requests.includes('/api/notify/grants'));
  // The server counted it: a second report makes two.
  const token = await a.app.auth.accessToken();
  const r = await fetch(`${stack.authUrl}/api/notify/grants`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ template_ids: ['tmpl-dm'] }),
  });
  assert.equal((await r.json()).data.grants['tmpl-dm'], 2);
  // Without templates configured, a tap asks for nothing.
  const pb = b.page('chat', { with: a.client.user });
  type(pb, 'pong');
  assert.deepEqual(b.wx.subscribeCalls, []);
  pa.onUnload();
  pb.onUnload();
});
