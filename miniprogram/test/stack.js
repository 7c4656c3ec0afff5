// The real stack for the client tests: nats-server, redis-server, a fake WeChat API (Node http), and
// the real `auth`, `gateway` and `persister` binaries from LIAOTIAN_BIN_DIR (default ../target/debug).

'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const BIN_DIR = path.resolve(__dirname, '..', process.env.LIAOTIAN_BIN_DIR || '../target/debug');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${what} did not come up`);
    await sleep(50);
  }
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

async function httpOk(url) {
  const r = await fetch(url);
  return r.ok;
}

/** The fake WeChat API: `ok-<name>` codes log in as openid `o-<name>`; anything else is 40029. */
function fakeWeChat() {
  const calls = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/sns/jscode2session') {
      const code = url.searchParams.get('js_code') || '';
      calls.set(code, (calls.get(code) || 0) + 1);
      const m = /^ok-(.+?)(?:~\d+)?$/.exec(code);
      // WeChat answers 200 even for errors, sometimes as text/plain.
      res.writeHead(200, { 'content-type': 'text/plain' });
      if (m && calls.get(code) === 1) {
        res.end(JSON.stringify({ openid: `o-${m[1]}`, session_key: `FAKESESSIONKEY${m[1]}==` }));
      } else {
        res.end(JSON.stringify({ errcode: m ? 40163 : 40029, errmsg: 'invalid code, rid: fake' }));
      }
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, calls, url: `http://127.0.0.1:${server.address().port}` }));
  });
}

async function startStack() {
  for (const bin of ['auth', 'gateway', 'persister']) {
    if (!fs.existsSync(path.join(BIN_DIR, bin))) {
      throw new Error(`${path.join(BIN_DIR, bin)} is missing: run \`cargo build -p auth -p gateway\` or set LIAOTIAN_BIN_DIR`);
    }
  }
  const children = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'liaotian-mp-'));
  const run = (cmd, args, env) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', process.env.LIAOTIAN_TEST_LOGS ? 'inherit' : 'ignore'] });
    children.push(child);
    return child;
  };

  const natsPort = await freePort();
  run(process.env.NATS_SERVER_BIN || 'nats-server', ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', path.join(dir, 'nats')]);
  const redisPort = await freePort();
  run(process.env.REDIS_SERVER_BIN || 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  await waitFor('nats-server', () => tcpOpen(natsPort));
  await waitFor('redis-server', () => tcpOpen(redisPort));
  const wechat = await fakeWeChat();

  const authPort = await freePort();
  const authUrl = `http://127.0.0.1:${authPort}`;
  run(path.join(BIN_DIR, 'auth'), [], {
    AUTH_LISTEN: `127.0.0.1:${authPort}`,
    AUTH_WECHAT_APPID: 'wx-test',
    AUTH_WECHAT_SECRET: 'app-secret',
    AUTH_WECHAT_API_BASE: wechat.url,
    AUTH_USER_ID_SECRET: 'miniprogram-test-secret',
    AUTH_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    AUTH_NATS_URL: `nats://127.0.0.1:${natsPort}`,
    AUTH_LOGIN_PER_IP_PER_MIN: '1000',
    // The notifier and the grants it counts (docs/wechat.md, "Offline notifications").
    AUTH_NOTIFY_DM_TEMPLATE: 'tmpl-dm',
    AUTH_NOTIFY_MENTION_TEMPLATE: 'tmpl-at',
  });
  await waitFor('auth', () => httpOk(`${authUrl}/healthz`));

  const gwPort = await freePort();
  run(path.join(BIN_DIR, 'gateway'), [], {
    GATEWAY_LISTEN: `127.0.0.1:${gwPort}`,
    NATS_URL: `nats://127.0.0.1:${natsPort}`,
    GATEWAY_AUTH_URL: authUrl,
  });
  await waitFor('gateway', () => httpOk(`http://127.0.0.1:${gwPort}/healthz`));

  // The conversation list and read state are kept by the persister.
  const persisterPort = await freePort();
  run(path.join(BIN_DIR, 'persister'), [], {
    PERSISTER_LISTEN: `127.0.0.1:${persisterPort}`,
    NATS_URL: `nats://127.0.0.1:${natsPort}`,
    PERSISTER_STORE: `sqlite://${path.join(dir, 'history.db')}`,
  });
  await waitFor('persister', () => httpOk(`http://127.0.0.1:${persisterPort}/readyz`));

  return {
    authUrl,
    wsUrl: `ws://127.0.0.1:${gwPort}/ws`,
    wechat,
    async stop() {
      for (const c of children) c.kill('SIGKILL');
      wechat.server.close();
      await sleep(50);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

module.exports = { startStack, sleep, waitFor };
