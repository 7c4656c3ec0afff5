// The SDK against the real stack (nats-server, auth, gateway, persister), with faults: the socket
// killed mid-stream, the gateway killed and started again, nats-server killed and started again on
// its store. The app must see every message once, in order, and every send acked once.

import test from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client, Auth, webTransport } from '../src/index.js';
import { startStack, sleep, waitFor } from '../testing/stack.js';

/** `ws` sockets, kept so a test can cut one the way a network does (no close frame). */
function trackedTransport() {
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { transport: webTransport({ WebSocket: Tracked, headers: true }), sockets };
}

/** Every client a test made, stopped when it ends however it ends: a client left running keeps
 *  reconnecting, and so keeps the test process alive. */
const clients = [];
test.afterEach(() => {
  for (const c of clients.splice(0)) c.stop();
});

function user(stack, name, options = {}, url = stack.wsUrl) {
  const { transport, sockets } = trackedTransport();
  const auth = new Auth({ transport, authUrl: stack.authUrl, login: { dev_user: name } });
  const client = new Client({
    url,
    transport,
    auth,
    options: { backoffBaseMs: 100, backoffMaxMs: 1000, ...options },
  });
  clients.push(client);
  const got = new Map(); // conversation key -> [frames]
  const gaps = [];
  const onFrame = (f, conv) => {
    const k = JSON.stringify(conv);
    if (!got.has(k)) got.set(k, []);
    got.get(k).push(f);
  };
  client.on('message', onFrame);
  client.on('event', onFrame);
  client.on('gap', (g) => gaps.push(g));
  client.on('error', () => {});
  return { client, auth, sockets, got, gaps, seqs: (conv) => (got.get(JSON.stringify(conv)) || []).filter((f) => f.type === 'message').map((f) => f.seq) };
}

/** `p`, or a failure naming `what` after `ms`. */
function within(ms, p, what) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const opened = (c) => new Promise((r) => (c.state === 'open' ? r() : c.on('open', () => r())));

function assertOnceInOrder(seqs, acked, who) {
  for (let i = 1; i < seqs.length; i += 1) assert.ok(seqs[i] > seqs[i - 1], `${who}: ${seqs[i]} after ${seqs[i - 1]}`);
  assert.deepEqual([...seqs].sort((a, b) => a - b), [...acked].sort((a, b) => a - b), `${who}: every acked message once`);
}

test('every message once and in order, every send acked once, through a cut socket, a gateway kill and a NATS restart', { timeout: 180000 }, async () => {
  // A publish budget shorter than the broker's outage below: sends caught in it get `unavailable`,
  // and the SDK's resends (same client_msg_id) must still store each message once.
  const stack = await startStack({ gatewayEnv: { GATEWAY_PUBLISH_BUDGET_MS: '1000' } });
  try {
    const alice = user(stack, 'alice');
    const bob = user(stack, 'bob');
    alice.client.start();
    bob.client.start();
    await Promise.all([opened(alice.client), opened(bob.client)]);
    const g = await alice.client.createGroup({ name: 'Faults', members: ['bob'] });
    await Promise.all([alice.client.join({ group: g.group }), bob.client.join({ group: g.group })]);
    const group = { group: g.group };
    const thread = { with: 'bob' };
    let resent = 0;
    alice.client.on('outbox', (m) => {
      if (m.state === 'sent' && m.attempts > 1) resent += 1;
    });

    const sends = [];
    let sending = true;
    const sender = (async () => {
      for (let i = 0; sending; i += 1) {
        sends.push({ conv: group, out: alice.client.send(group, `g${i}`) });
        sends.push({ conv: thread, out: alice.client.send(thread, `d${i}`) });
        await sleep(125); // 16 frames/s: under the gateway's 20/s.
      }
    })();
    await sleep(1500);
    bob.sockets.at(-1).terminate(); // A network cut on bob's side: no close frame.
    await sleep(1500);
    await stack.procs.gateway.kill();
    await sleep(1000);
    await stack.procs.gateway.start();
    await sleep(2000);
    await stack.procs.nats.kill();
    await sleep(2500);
    await stack.procs.nats.start();
    await sleep(2500);
    sending = false;
    await sender;

    const acks = await within(60000, Promise.all(sends.map((s) => s.out.acked)), 'every send acked');
    assert.equal(new Set(acks.map((a) => a.client_msg_id)).size, sends.length, 'one ack per send');
    const ackedIn = (conv) => acks.filter((_, i) => sends[i].conv === conv).map((a) => a.seq);
    assert.equal(new Set(acks.map((a) => a.seq)).size, sends.length, 'each send stored once');
    const bobThread = { with: 'alice' };
    await waitFor('bob has every acked message', () =>
      bob.seqs(group).length >= ackedIn(group).length && bob.seqs(bobThread).length >= ackedIn(thread).length,
    60000).catch(() => {});
    await waitFor('alice has every echo', () =>
      alice.seqs(group).length >= ackedIn(group).length && alice.seqs(thread).length >= ackedIn(thread).length,
    30000).catch(() => {});
    assertOnceInOrder(bob.seqs(group), ackedIn(group), 'bob, group');
    assertOnceInOrder(bob.seqs(bobThread), ackedIn(thread), 'bob, thread');
    assertOnceInOrder(alice.seqs(group), ackedIn(group), 'alice, group');
    assertOnceInOrder(alice.seqs(thread), ackedIn(thread), 'alice, thread');
    assert.ok(bob.sockets.length >= 3, `bob reconnected after the cut and the gateway kill (${bob.sockets.length} sockets)`);
    assert.deepEqual([...alice.gaps, ...bob.gaps], []);
    assert.equal(alice.client.pending().length, 0);
    assert.ok(resent > 0, 'some sends were caught by the outage and acked only after a resend');
    alice.client.stop();
    bob.client.stop();
  } finally {
    await stack.stop();
  }
});

test('a resume past the gateway\'s replay limit (recovered: false) is paged from history, once and in order', { timeout: 120000 }, async () => {
  const stack = await startStack({ gatewayEnv: { GATEWAY_MAX_RESUME: '10' } });
  try {
    const alice = user(stack, 'alice');
    const bob = user(stack, 'bob');
    alice.client.start();
    bob.client.start();
    await Promise.all([opened(alice.client), opened(bob.client)]);
    const room = { room: 'lobby' };
    await Promise.all([alice.client.join(room), bob.client.join(room)]);
    const first = await alice.client.send(room, 'before').acked;
    await waitFor('bob has the first', () => bob.seqs(room).length === 1);
    bob.client.stop();
    const outs = [];
    for (let i = 0; i < 150; i += 1) outs.push(alice.client.send(room, `away ${i}`));
    const acks = await within(30000, Promise.all(outs.map((o) => o.acked)), 'every send acked');
    let recovered;
    bob.client.on('joined', (j) => (recovered = j.recovered));
    bob.client.start();
    await waitFor('bob caught up', () => bob.seqs(room).length === 151, 60000).catch(() => {});
    assert.equal(recovered, false, 'the gateway did not replay');
    assertOnceInOrder(bob.seqs(room), [first.seq, ...acks.map((a) => a.seq)], 'bob');
    alice.client.stop();
    bob.client.stop();
  } finally {
    await stack.stop();
  }
});

test('what was sent while a client was stopped is replayed on start, in a room and a thread, with nothing sent after', { timeout: 120000 }, async () => {
  const stack = await startStack();
  try {
    const alice = user(stack, 'alice');
    const bob = user(stack, 'bob');
    alice.client.start();
    bob.client.start();
    await Promise.all([opened(alice.client), opened(bob.client)]);
    const room = { room: 'empty-at-join' };
    await Promise.all([alice.client.join(room), bob.client.join(room)]);
    const hello = await alice.client.send({ with: 'bob' }, 'hello').acked;
    await waitFor('bob has the thread', () => bob.seqs({ with: 'alice' }).length === 1);
    bob.client.stop();
    const outs = [];
    for (let i = 0; i < 5; i += 1) outs.push(alice.client.send(room, `r${i}`), alice.client.send({ with: 'bob' }, `d${i}`));
    const acks = await within(30000, Promise.all(outs.map((o) => o.acked)), 'every send acked');
    bob.client.start();
    await waitFor('bob caught up', () => bob.seqs(room).length === 5 && bob.seqs({ with: 'alice' }).length === 6, 20000).catch(() => {});
    assertOnceInOrder(bob.seqs(room), acks.filter((_, i) => i % 2 === 0).map((a) => a.seq), 'bob, room joined while empty');
    assertOnceInOrder(bob.seqs({ with: 'alice' }), [hello.seq, ...acks.filter((_, i) => i % 2 === 1).map((a) => a.seq)], 'bob, thread');
    alice.client.stop();
    bob.client.stop();
  } finally {
    await stack.stop();
  }
});

test('a gateway killed for good: its clients move to the other one and resume there without loss', { timeout: 120000 }, async () => {
  const stack = await startStack({ gateways: 2 });
  try {
    const alice = user(stack, 'alice', {}, stack.wsUrls);
    const bob = user(stack, 'bob', {}, stack.wsUrls);
    const carol = user(stack, 'carol', {}, [stack.wsUrls[1]]);
    for (const u of [alice, bob, carol]) u.client.start();
    await Promise.all([alice, bob, carol].map((u) => opened(u.client)));
    const g = await alice.client.createGroup({ name: 'Failover', members: ['bob', 'carol'] });
    const group = { group: g.group };
    await Promise.all([alice, bob, carol].map((u) => u.client.join(group)));
    const sends = [];
    let sending = true;
    const sender = (async () => {
      for (let i = 0; sending; i += 1) {
        sends.push(alice.client.send(group, `f${i}`));
        sends.push(carol.client.send(group, `c${i}`));
        await sleep(150);
      }
    })();
    await sleep(1500);
    await stack.procs.gateways[0].kill(); // alice and bob were on it; it does not come back.
    await sleep(3000);
    sending = false;
    await sender;
    const acks = await within(60000, Promise.all(sends.map((s) => s.acked)), 'every send acked');
    const want = acks.map((a) => a.seq);
    assert.equal(new Set(want).size, sends.length, 'each send stored once');
    for (const [who, u] of [['alice', alice], ['bob', bob], ['carol', carol]]) {
      await waitFor(`${who} has every message`, () => u.seqs(group).length >= want.length, 30000).catch(() => {});
      assertOnceInOrder(u.seqs(group), want, who);
    }
    assert.ok(alice.sockets.length >= 2 && bob.sockets.length >= 2, 'alice and bob reconnected');
    assert.equal(bob.sockets.at(-1).url, stack.wsUrls[1], 'bob is on the live gateway');
    assert.deepEqual([...alice.gaps, ...bob.gaps, ...carol.gaps], []);
  } finally {
    await stack.stop();
  }
});
