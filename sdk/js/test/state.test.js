// The SDK's state machine against a scripted fake socket: resume bookkeeping, ordering and gap fill,
// the outbox, lifecycle, pacing and auth. Each test names the client rule of docs/protocol.md it
// keeps. The same rules are run against the real stack in stack.test.js.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Client, Auth, memoryStorage } from '../src/index.js';
import { fakeTransport, sleep, msg } from '../testing/fake.js';

function setup(opts = {}) {
  const transport = fakeTransport();
  let tokens = 0;
  const auth = new Auth({ transport, tokenProvider: async () => `tok${++tokens}` });
  const client = new Client({
    url: 'ws://gw/ws',
    transport,
    auth,
    storage: opts.storage || null,
    options: { backoffBaseMs: 5, backoffMaxMs: 20, hideGraceMs: 50, requestTimeoutMs: 1000, ...(opts.options || {}) },
    outbox: { ackTimeoutMs: 5000, rateLimitedMs: 30, ...(opts.outbox || {}) },
    fill: { retryMs: 20, ...(opts.fill || {}) },
    pacer: opts.pacer || {},
    random: () => 0.5,
  });
  const seen = [];
  client.on('message', (m) => seen.push(m.seq));
  client.on('event', (m) => seen.push(m.seq));
  const gaps = [];
  client.on('gap', (g) => gaps.push(g));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  return { transport, client, seen, gaps, errors, auth, tokens: () => tokens };
}

/** Answers the next `join` of `room` on `s` with `joined`. */
async function answerJoin(s, fields) {
  const j = await s.next('join');
  s.recv({ type: 'joined', id: j.id, ...(j.room ? { room: j.room } : { group: j.group }), last_seq: 0, ...fields });
  return j;
}

test('a room joined while empty is rejoined with since 0, so what was sent meanwhile is replayed', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ room: 'r' });
  const j1 = await answerJoin(s1, { last_seq: 0 });
  assert.equal(j1.since, undefined);
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const j2 = await s2.next('join');
  assert.equal(j2.since, 0, 'an empty room resumes from 0, not as a fresh join');
  client.stop();
});

test('a rejoin resumes from the highest seq seen, and the replay overlap is not surfaced twice', async () => {
  const { transport, client, seen } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ room: 'r' });
  await answerJoin(s1, { last_seq: 10 });
  s1.recv(msg('r', 11, 10));
  s1.recv(msg('r', 12, 11));
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const j = await s2.next('join');
  assert.equal(j.since, 12);
  s2.recv({ type: 'joined', id: j.id, room: 'r', last_seq: 14, recovered: true });
  s2.recv(msg('r', 12, 11)); // An overlap: already seen.
  s2.recv(msg('r', 13, 12));
  s2.recv(msg('r', 14, 13));
  assert.deepEqual(seen, [11, 12, 13, 14]);
  client.stop();
});

test('prev_seq above the last seen fetches the gap from history before the later message, holding live ones', async () => {
  const { transport, client, seen } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.join({ room: 'r' });
  await answerJoin(s, { last_seq: 5 });
  s.recv(msg('r', 9, 7)); // 6 and 7 missing.
  const h = await s.next('history');
  assert.deepEqual([h.room, h.after, h.before], ['r', 5, 9]);
  s.recv(msg('r', 10, 9)); // Live, while the fill runs: held.
  assert.deepEqual(seen, []);
  s.recv({ type: 'history', id: h.id, room: 'r', messages: [msg('r', 6, 5), msg('r', 7, 6)], more: false });
  await sleep(5);
  assert.deepEqual(seen, [6, 7, 9, 10]);
  client.stop();
});

test('a history store behind the stream is asked again until the gap is filled', async () => {
  const { transport, client, seen, gaps } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.join({ room: 'r' });
  await answerJoin(s, { last_seq: 5 });
  s.recv(msg('r', 8, 7));
  const h1 = await s.next('history');
  s.recv({ type: 'history', id: h1.id, room: 'r', messages: [msg('r', 6, 5)], more: false }); // 7 not stored yet.
  const h2 = await s.next('history');
  assert.equal(h2.after, 6, 'the second page starts after what the first gave');
  s.recv({ type: 'history', id: h2.id, room: 'r', messages: [msg('r', 7, 6)], more: false });
  await sleep(5);
  assert.deepEqual(seen, [6, 7, 8]);
  assert.deepEqual(gaps, []);
  client.stop();
});

test('a gap the store cannot fill is reported as `gap`, and the stream goes on', async () => {
  const { transport, client, seen, gaps } = setup({ fill: { attempts: 2, retryMs: 10 } });
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.join({ room: 'r' });
  await answerJoin(s, { last_seq: 5 });
  s.recv(msg('r', 9, 8));
  for (let i = 0; i < 2; i += 1) {
    const h = await s.next('history');
    s.recv({ type: 'error', id: h.id, code: 'unavailable', message: 'no persister' });
  }
  await sleep(20);
  assert.deepEqual(gaps, [{ conversation: { room: 'r' }, after: 5, before: 9 }]);
  assert.deepEqual(seen, [9]);
  s.recv(msg('r', 10, 9));
  assert.deepEqual(seen, [9, 10]);
  client.stop();
});

test('recovered: false pages the missed range from history, all pages, before live messages', async () => {
  const { transport, client, seen } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ room: 'r' });
  await answerJoin(s1, { last_seq: 100 });
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const j = await s2.next('join');
  assert.equal(j.since, 100);
  s2.recv({ type: 'joined', id: j.id, room: 'r', last_seq: 1300, recovered: false });
  s2.recv(msg('r', 1301, 1300)); // Live: held until the range is in.
  const h1 = await s2.next('history');
  assert.deepEqual([h1.after, h1.before], [100, 1301]);
  const page1 = Array.from({ length: 100 }, (_, i) => msg('r', 101 + i, 100 + i));
  s2.recv({ type: 'history', id: h1.id, room: 'r', messages: page1, more: true });
  const h2 = await s2.next('history');
  assert.equal(h2.after, 200);
  s2.recv({ type: 'history', id: h2.id, room: 'r', messages: [msg('r', 1300, 200)], more: false });
  await sleep(5);
  assert.equal(seen.length, 102);
  assert.deepEqual(seen.slice(-3), [200, 1300, 1301]);
  client.stop();
});

test('events sit in a group\'s order with its messages, and a group resumes like a room', async () => {
  const { transport, client, seen } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ group: 'g' });
  await answerJoin(s1, { last_seq: 3 });
  s1.recv({ type: 'event', group: 'g', kind: 'added', users: ['dave'], by: 'alice', seq: 4, prev_seq: 3, ts: 1 });
  s1.recv({ ...msg(null, 5, 4), room: undefined, group: 'g' });
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const j = await s2.next('join');
  assert.deepEqual([j.group, j.since], ['g', 5]);
  assert.deepEqual(seen, [4, 5]);
  client.stop();
});

test('direct threads resume after a reconnect with `resume {with, since}`', async () => {
  const { transport, client, seen } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  s1.recv({ type: 'message', to: 'alice', from: 'bob', text: 'hi', seq: 7, prev_seq: 0, ts: 1, client_msg_id: 'x' });
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const r = await s2.next('resume');
  assert.deepEqual([r.with, r.since], ['bob', 7]);
  s2.recv({ type: 'resumed', id: r.id, with: 'bob', last_seq: 9, recovered: true });
  s2.recv({ type: 'message', to: 'bob', from: 'alice', text: 'mine', seq: 9, prev_seq: 7, ts: 2, client_msg_id: 'y' });
  assert.deepEqual(seen, [7, 9]);
  client.stop();
});

test('a send answered `unavailable` is resent on the live socket with the same client_msg_id', async () => {
  const { transport, client } = setup();
  const states = [];
  client.on('outbox', (m) => states.push(m.state));
  client.start();
  const s = await transport.socket(1);
  s.open();
  const out = client.send({ with: 'bob' }, 'hello');
  const f1 = await s.next('send');
  assert.equal(f1.to, 'bob');
  s.recv({ type: 'error', id: f1.id, code: 'unavailable', message: 'JetStream' });
  const f2 = await s.next('send');
  assert.equal(f2.client_msg_id, f1.client_msg_id);
  s.recv({ type: 'ack', id: f2.id, client_msg_id: f2.client_msg_id, seq: 3, ts: 1 });
  const ack = await out.acked;
  assert.equal(ack.seq, 3);
  assert.equal(out.state, 'sent');
  assert.deepEqual(states, ['pending', 'sent']);
  assert.equal(client.pending().length, 0);
  client.stop();
});

test('a send answered `rate_limited` is resent after the hinted delay', async () => {
  const { transport, client } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.send({ with: 'bob' }, 'hello');
  const f1 = await s.next('send');
  const t0 = Date.now();
  s.recv({ type: 'error', id: f1.id, code: 'rate_limited', message: 'slow down', retry_after_ms: 120 });
  const f2 = await s.next('send');
  assert.ok(Date.now() - t0 >= 110, `resent after ${Date.now() - t0} ms`);
  assert.equal(f2.client_msg_id, f1.client_msg_id);
  client.stop();
});

test('a refused send fails at once and stays listed until discarded; retry keeps its id', async () => {
  const { transport, client } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  const out = client.send({ with: 'bob' }, 'bad words');
  const f = await s.next('send');
  s.recv({ type: 'error', id: f.id, code: 'content_rejected', message: 'no' });
  await assert.rejects(out.acked, (e) => e.code === 'content_rejected');
  assert.deepEqual(client.pending().map((m) => [m.state, m.error.code]), [['failed', 'content_rejected']]);
  const retried = client.retry(out.client_msg_id);
  assert.ok(retried);
  const again = await s.next('send');
  assert.equal(again.client_msg_id, f.client_msg_id);
  s.recv({ type: 'error', id: f.id, code: 'content_rejected', message: 'no' });
  await assert.rejects(retried, (e) => e.code === 'content_rejected');
  const states = [];
  client.on('outbox', (m) => states.push(m.state));
  assert.ok(client.discard(out.client_msg_id));
  assert.deepEqual(states, ['discarded']);
  assert.equal(client.pending().length, 0);
  client.stop();
});

test('sends made offline wait in the outbox and go out after the resumes of a reconnect', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ group: 'g' });
  await answerJoin(s1, { last_seq: 1 });
  s1.drop();
  const out = client.send({ group: 'g' }, 'while away');
  assert.equal(out.state, 'pending');
  const s2 = await transport.socket(2);
  s2.open();
  const kinds = s2.sent.map((f) => f.type).filter((t) => t !== 'ping');
  assert.deepEqual(kinds, ['join', 'send'], 'the group is joined before the resend');
  client.stop();
});

test('an ack that never comes on an open socket gets the frame again, then fails after the bound', async () => {
  const { transport, client } = setup({ outbox: { ackTimeoutMs: 30, maxAttempts: 3 } });
  client.start();
  const s = await transport.socket(1);
  s.open();
  const out = client.send({ with: 'bob' }, 'hello');
  await assert.rejects(out.acked, (e) => e.code === 'unavailable');
  assert.equal(s.of('send').length, 4, 'the first write and three resends');
  assert.equal(new Set(s.of('send').map((f) => f.client_msg_id)).size, 1);
  client.stop();
});

test('the outbox is bounded: beyond maxPending a send fails with outbox_full; old pending ones expire', async () => {
  let now = 1000;
  const transport = fakeTransport();
  const auth = new Auth({ transport, tokenProvider: async () => 't' });
  const client = new Client({ url: 'ws://gw/ws', transport, auth, outbox: { maxPending: 2, maxAgeMs: 500 }, now: () => now });
  const a = client.send({ with: 'bob' }, '1');
  client.send({ with: 'bob' }, '2');
  const c = client.send({ with: 'bob' }, '3');
  await assert.rejects(c.acked, (e) => e.code === 'outbox_full');
  now += 1000;
  client.start();
  const s = await transport.socket(1);
  s.open();
  await assert.rejects(a.acked, (e) => e.code === 'expired');
  assert.equal(s.of('send').length, 0, 'nothing past the duplicate window is resent');
  client.stop();
});

test('messages another user queued on this storage are not sent as this user', async () => {
  const storage = memoryStorage();
  storage.set('liaotian.outbox', [{ frame: { type: 'send', id: 'x1', to: 'bob', text: 'from mallory', client_msg_id: 'x1' }, conv: { with: 'bob' }, firstAt: Date.now(), user: 'mallory' }]);
  const { transport, client } = setup({ storage });
  const failed = [];
  client.on('outbox', (m) => failed.push([m.client_msg_id, m.state, m.error && m.error.code]));
  client.start();
  const s = await transport.socket(1);
  s.open({ user: 'alice' });
  await sleep(10);
  assert.equal(s.of('send').length, 0);
  assert.deepEqual(failed, [['x1', 'failed', 'other_user']]);
  assert.deepEqual(storage.get('liaotian.outbox'), []);
  client.stop();
});

test('the outbox and positions survive a restart through storage', async () => {
  const storage = memoryStorage();
  const one = setup({ storage });
  one.client.start();
  const s1 = await one.transport.socket(1);
  s1.open();
  one.client.join({ room: 'r' });
  await answerJoin(s1, { last_seq: 40 });
  s1.recv(msg('r', 41, 40));
  s1.recv({ type: 'message', to: 'alice', from: 'carol', text: 'x', seq: 42, prev_seq: 0, ts: 1, client_msg_id: 'c' });
  one.client.send({ with: 'bob' }, 'unsent');
  one.client.stop();
  const two = setup({ storage });
  two.client.start();
  const s2 = await two.transport.socket(1);
  s2.open();
  two.client.join({ room: 'r' });
  const r = await s2.next('resume');
  assert.deepEqual([r.with, r.since], ['carol', 42]);
  const j = await s2.next('join');
  assert.equal(j.since, 41);
  const f = await s2.next('send');
  assert.equal(f.text, 'unsent');
  two.client.stop();
});

test('positions stored for another user are not used', async () => {
  const storage = memoryStorage();
  storage.set('liaotian.seen', { user: 'mallory', seen: { 'room:r': 99 } });
  const { transport, client } = setup({ storage });
  client.start();
  const s = await transport.socket(1);
  s.open({ user: 'alice' });
  client.join({ room: 'r' });
  const j = await s.next('join');
  assert.equal(j.since, undefined);
  client.stop();
});

test('one socket at a time: network changes and show() while connecting or open open no second socket', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  client.networkChanged(true);
  client.show();
  client.start();
  await sleep(20);
  assert.equal(transport.sockets.length, 1);
  s1.open();
  client.networkChanged(true);
  client.show();
  await sleep(20);
  assert.equal(transport.sockets.length, 1);
  client.stop();
});

test('a socket asked to close holds the next one back until it reports its close, or for closeWaitMs', async () => {
  const { transport, client } = setup({ options: { closeWaitMs: 300 } });
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  s1.holdClose = true;
  client.stop();
  client.start();
  await sleep(50);
  assert.equal(transport.sockets.length, 1, 'no second socket while the first is closing');
  s1.onclose({ code: 1000, reason: '' });
  const s2 = await transport.socket(2);
  s2.open();
  s2.holdClose = true;
  client.stop();
  client.start();
  await sleep(100);
  assert.equal(transport.sockets.length, 2);
  await transport.socket(3); // Its close never came: the wait ran out.
  client.stop();
});

test('network back during the backoff reconnects at once', async () => {
  const { transport, client } = setup({ options: { backoffBaseMs: 60000, backoffMaxMs: 60000 } });
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  s1.drop();
  assert.equal(client.state, 'waiting');
  client.networkChanged(false);
  await sleep(20);
  assert.equal(transport.sockets.length, 1);
  client.networkChanged(true);
  await transport.socket(2);
  client.stop();
});

test('hide closes the socket after the grace; show within it keeps the socket; show later resumes', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ room: 'r' });
  await answerJoin(s1, { last_seq: 5 });
  client.hide();
  await sleep(10);
  client.show();
  await sleep(80);
  assert.equal(s1.closed, null, 'shown within the grace');
  client.hide();
  await sleep(80);
  assert.deepEqual(s1.closed, { code: 1000, reason: 'background' });
  assert.equal(client.state, 'suspended');
  await sleep(50);
  assert.equal(transport.sockets.length, 1, 'no reconnect while hidden');
  client.show();
  const s2 = await transport.socket(2);
  s2.open();
  const j = await s2.next('join');
  assert.equal(j.since, 5);
  client.stop();
});

test('a socket that answers nothing for 2.5 heartbeats is replaced', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open({ heartbeat_ms: 20 });
  await s1.next('ping');
  const s2 = await transport.socket(2);
  assert.ok(s1.closed, 'the silent socket was closed');
  assert.equal(client.state, 'connecting');
  assert.ok(s2);
  client.stop();
});

test('close 4001 (logged out) forgets the tokens and does not reconnect', async () => {
  const { transport, client, auth } = setup();
  let out = 0;
  client.on('logged_out', () => (out += 1));
  client.start();
  const s = await transport.socket(1);
  s.open();
  s.drop(4001, 'logged out');
  await sleep(50);
  assert.equal(out, 1);
  assert.equal(transport.sockets.length, 1);
  assert.equal(auth.tokens, null);
  assert.equal(client.state, 'stopped');
});

test('a socket refused before it opened gets a fresh token once per outage', async () => {
  const { transport, client, tokens } = setup();
  client.start();
  (await transport.socket(1)).drop(1006);
  (await transport.socket(2)).drop(1006);
  (await transport.socket(3)).drop(1006);
  const s4 = await transport.socket(4);
  assert.deepEqual(transport.sockets.map((s) => s.token), ['tok1', 'tok2', 'tok2', 'tok2']);
  assert.equal(tokens(), 2);
  s4.open();
  client.stop();
});

test('requests reject with `offline` when the socket closes, and with the server\'s code on error', async () => {
  const { transport, client } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  const a = client.conversations({ limit: 5 });
  const q = await s.next('conversations');
  assert.equal(q.limit, 5);
  s.recv({ type: 'error', id: q.id, code: 'unavailable', message: 'no persister' });
  await assert.rejects(a, (e) => e.code === 'unavailable');
  const b = client.groupInfo('g');
  await s.next('group_info');
  s.drop();
  await assert.rejects(b, (e) => e.code === 'offline');
  await assert.rejects(client.read({ with: 'bob' }, 3), (e) => e.code === 'offline');
  client.stop();
});

test('the pacer keeps a burst of frames under the gateway\'s rate limit', async () => {
  const { transport, client } = setup({ pacer: { burst: 5, ratePerSec: 100 } });
  client.start();
  const s = await transport.socket(1);
  s.open();
  for (let i = 0; i < 15; i += 1) client.send({ with: 'bob' }, `m${i}`);
  assert.equal(s.of('send').length, 5, 'the burst goes at once');
  await sleep(60);
  const n = s.of('send').length;
  assert.ok(n > 5 && n < 15, `${n} after 60 ms at 100/s`);
  await sleep(120);
  assert.equal(s.of('send').length, 15);
  client.stop();
});

test('watches are made again after a reconnect', async () => {
  const { transport, client } = setup();
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.watch(['bob', 'carol']).catch(() => {}); // Rejected `offline` by the drop below.
  const w1 = await s1.next('watch');
  assert.deepEqual(w1.users, ['bob', 'carol']);
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const w2 = await s2.next('watch');
  assert.deepEqual(w2.users, ['bob', 'carol']);
  client.stop();
});

test('a group join refused `forbidden` (removed while away) is dropped and reported as `removed`', async () => {
  const { transport, client } = setup();
  const removed = [];
  client.on('removed', (r) => removed.push(r.group));
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ group: 'g' });
  await answerJoin(s1, { last_seq: 2 });
  s1.drop();
  const s2 = await transport.socket(2);
  s2.open();
  const j = await s2.next('join');
  s2.recv({ type: 'error', id: j.id, code: 'forbidden', message: 'not a member' });
  await sleep(5);
  assert.deepEqual(removed, ['g']);
  assert.throws(() => client.send({ group: 'g' }, 'x'), (e) => e.code === 'not_joined');
  client.stop();
});

test('a listener that throws does not break the order', async () => {
  const { transport, client, seen } = setup();
  client.on('message', () => {
    throw new Error('app bug');
  });
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.join({ room: 'r' });
  await answerJoin(s, { last_seq: 0 });
  s.recv(msg('r', 1, 0));
  s.recv(msg('r', 2, 1));
  s.recv('not json at all' && { type: 42 });
  assert.deepEqual(seen, [1, 2]);
  client.stop();
});

test('stored tokens of another dev user are not used; a login as this one is made', async () => {
  const storage = memoryStorage();
  storage.set('liaotian.tokens', { user: 'mallory', accessToken: 'mallory-token', refreshToken: 'r', expiresAt: Date.now() + 3600000 });
  const calls = [];
  const transport = fakeTransport();
  transport.request = async ({ url, body }) => {
    calls.push([url, body]);
    return { status: 200, body: { code: 0, data: { user: 'alice', access_token: 'alice-token', refresh_token: 'r2', expires_in: 3600 } } };
  };
  const auth = new Auth({ transport, authUrl: 'http://auth', login: { dev_user: 'alice' }, storage });
  assert.equal(await auth.accessToken(), 'alice-token');
  assert.deepEqual(calls, [['http://auth/api/login', { dev_user: 'alice' }]]);
  assert.equal(await auth.accessToken(), 'alice-token', 'kept, and used again');
  assert.equal(calls.length, 1);
});

test('typing goes out at most every 3 s, and others\' typing arrives as an event', async () => {
  let now = 10000;
  const transport = fakeTransport();
  const auth = new Auth({ transport, tokenProvider: async () => 't' });
  const client = new Client({ url: 'ws://gw/ws', transport, auth, now: () => now });
  const typed = [];
  client.on('typing', (t, conv) => typed.push([t.user, conv]));
  assert.equal(client.typing({ with: 'bob' }), false, 'offline: nothing to tell');
  client.start();
  const s = await transport.socket(1);
  s.open();
  assert.equal(client.typing({ with: 'bob' }), true);
  now += 1000;
  assert.equal(client.typing({ with: 'bob' }), false);
  assert.equal(client.typing({ group: 'g' }), false, 'the interval is the connection\'s');
  now += 2000;
  assert.equal(client.typing({ group: 'g' }), true);
  assert.deepEqual(s.of('typing').map(({ with: w, group }) => w || group), ['bob', 'g']);
  assert.throws(() => client.typing({ room: 'r' }));
  s.recv({ type: 'typing', with: 'bob', user: 'bob' });
  s.recv({ type: 'typing', group: 'g', user: 'carol' });
  assert.deepEqual(typed, [['bob', { with: 'bob' }], ['carol', { group: 'g' }]]);
  client.stop();
});

test('a join or resume refused `unavailable` or `rate_limited` is sent again, and a send behind it waits', async () => {
  const { transport, client, seen } = setup({ options: { rejoinMs: 30 }, outbox: { rejoinWaitMs: 60 } });
  client.start();
  const s1 = await transport.socket(1);
  s1.open();
  client.join({ room: 'r' });
  await answerJoin(s1, { last_seq: 5 });
  s1.recv({ type: 'message', to: 'alice', from: 'bob', text: 'x', seq: 6, prev_seq: 0, ts: 1, client_msg_id: 'b' });
  s1.drop();
  const out = client.send({ room: 'r' }, 'queued');
  const s2 = await transport.socket(2);
  s2.open();
  const j1 = await s2.next('join');
  const r1 = await s2.next('resume');
  const f1 = await s2.next('send');
  s2.recv({ type: 'error', id: j1.id, code: 'unavailable', message: 'store' });
  s2.recv({ type: 'error', id: r1.id, code: 'rate_limited', message: 'slow', retry_after_ms: 10 });
  s2.recv({ type: 'error', id: f1.id, code: 'not_joined', message: 'join first' });
  const r2 = await s2.next('resume');
  assert.deepEqual([r2.with, r2.since], ['bob', 6]);
  const j2 = await s2.next('join');
  assert.equal(j2.since, 5);
  s2.recv({ type: 'joined', id: j2.id, room: 'r', last_seq: 5, recovered: true });
  const f2 = await s2.next('send');
  assert.equal(f2.client_msg_id, f1.client_msg_id, 'the send waited for the join, and is not failed');
  s2.recv({ type: 'ack', id: f2.id, client_msg_id: f2.client_msg_id, seq: 7, ts: 1 });
  assert.equal((await out.acked).seq, 7);
  assert.deepEqual(seen, [6]);
  client.stop();
});

test('a socket with no welcome is replaced; a transport that throws is tried again', async () => {
  const { transport, client } = setup({ options: { welcomeTimeoutMs: 40 } });
  const errors = [];
  client.on('error', (e) => errors.push(e.message));
  client.start();
  const s1 = await transport.socket(1);
  s1.onopen(); // Open, but no welcome ever.
  const s2 = await transport.socket(2);
  assert.ok(s1.closed, 'the silent socket was closed');
  s2.open();
  assert.equal(client.state, 'open');
  client.stop();
  const connect = transport.connect;
  let throws = 1;
  transport.connect = (o) => {
    if (throws-- > 0) throw new SyntaxError('bad url');
    return connect(o);
  };
  client.start();
  const s3 = await transport.socket(3);
  s3.open();
  assert.deepEqual(errors, ['bad url']);
  client.stop();
});

test('held frames past the bound resync the conversation from the stream instead of the store', async () => {
  const { transport, client, seen } = setup({ fill: { maxHeld: 3 } });
  client.start();
  const s = await transport.socket(1);
  s.open();
  client.join({ room: 'r' });
  await answerJoin(s, { last_seq: 10 });
  s.recv(msg('r', 20, 15));
  await s.next('history'); // Never answered: the fill waits.
  for (let q = 21; q <= 24; q += 1) s.recv(msg('r', q, q - 1));
  const j = await s.next('join');
  assert.equal(j.since, 10, 'a join with since replays from the stream');
  s.recv({ type: 'joined', id: j.id, room: 'r', last_seq: 24, recovered: true });
  for (const q of [15, 20, 21, 22, 23, 24]) s.recv(msg('r', q, q === 15 ? 10 : q === 20 ? 15 : q - 1));
  assert.deepEqual(seen, [15, 20, 21, 22, 23, 24]);
  client.stop();
});

test('watch refuses bad ids and the 201st user itself, so the re-watch after a reconnect stays valid', async () => {
  const { transport, client } = setup();
  client.start();
  const s = await transport.socket(1);
  s.open();
  await assert.rejects(client.watch(['bob', 'not valid!']), (e) => e.code === 'invalid_id');
  const many = Array.from({ length: 201 }, (_, i) => `u${i}`);
  await assert.rejects(client.watch(many), (e) => e.code === 'bad_request');
  assert.equal(s.of('watch').length, 0);
  client.stop();
});

test('a retry past the duplicate window goes under a new id, naming the old one', async () => {
  let now = 1000;
  const transport = fakeTransport();
  const auth = new Auth({ transport, tokenProvider: async () => 't' });
  const client = new Client({ url: 'ws://gw/ws', transport, auth, outbox: { maxAgeMs: 500 }, now: () => now });
  const events = [];
  client.on('outbox', (m) => events.push(m));
  const out = client.send({ with: 'bob' }, 'late');
  now += 1000;
  client.start();
  const s = await transport.socket(1);
  s.open();
  await assert.rejects(out.acked, (e) => e.code === 'expired');
  const retried = client.retry(out.client_msg_id);
  const f = await s.next('send');
  assert.notEqual(f.client_msg_id, out.client_msg_id);
  assert.equal(events.at(-1).replaces, out.client_msg_id);
  s.recv({ type: 'ack', id: f.id, client_msg_id: f.client_msg_id, seq: 9, ts: 1 });
  assert.equal((await retried).seq, 9);
  client.stop();
});

test('with several gateways, a lost connection tries the next one and resumes there', async () => {
  const transport = fakeTransport();
  const auth = new Auth({ transport, tokenProvider: async () => 't' });
  const client = new Client({ url: ['ws://a/ws', 'ws://b/ws'], transport, auth, options: { backoffBaseMs: 5 }, random: () => 0.5 });
  client.start();
  const s1 = await transport.socket(1);
  assert.equal(s1.url, 'ws://a/ws');
  s1.open();
  client.join({ room: 'r' });
  const j = await s1.next('join');
  s1.recv({ type: 'joined', id: j.id, room: 'r', last_seq: 4 });
  s1.drop(1006);
  const s2 = await transport.socket(2);
  assert.equal(s2.url, 'ws://b/ws');
  s2.open();
  assert.equal((await s2.next('join')).since, 4);
  client.stop();
  client.start();
  const s3 = await transport.socket(3);
  assert.equal(s3.url, 'ws://b/ws', 'a stop and start stays where it was');
  client.stop();
});
