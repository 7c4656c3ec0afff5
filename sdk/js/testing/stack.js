// The real stack for the SDK's integration tests: nats-server with JetStream, and the `auth` (dev
// login), `gateway` and `persister` binaries from LIAOTIAN_BIN_DIR (default ../../target/debug).
// Each process can be killed with SIGKILL and started again on the same port and data, so the tests
// can take a gateway or the broker away under load.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const BIN_DIR = path.resolve(import.meta.dirname, '..', process.env.LIAOTIAN_BIN_DIR || '../../target/debug');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

export async function waitFor(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      // Not yet.
    }
    if (Date.now() > deadline) throw new Error(`${what} did not come within ${timeoutMs} ms`);
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

const httpOk = async (url) => (await fetch(url)).ok;

/** A process that can be killed and started again with the same command. */
class Proc {
  constructor(name, cmd, args, env, ready) {
    Object.assign(this, { name, cmd, args, env, ready, child: null });
  }

  async start() {
    this.child = spawn(this.cmd, this.args, {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'ignore', process.env.LIAOTIAN_TEST_LOGS ? 'inherit' : 'ignore'],
    });
    await waitFor(this.name, this.ready);
  }

  /** SIGKILL, and wait until it is gone. */
  async kill() {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }
}

/** `gatewayEnv` adds to the gateways' environment (a lower GATEWAY_MAX_RESUME, say); `gateways`
 *  is how many (`procs.gateway` is the first, `procs.gateways` all, `wsUrls` their sockets). */
export async function startStack({ gatewayEnv = {}, gateways = 1 } = {}) {
  for (const bin of ['auth', 'gateway', 'persister']) {
    if (!fs.existsSync(path.join(BIN_DIR, bin))) {
      throw new Error(`${path.join(BIN_DIR, bin)} is missing: run \`cargo build\` or set LIAOTIAN_BIN_DIR`);
    }
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'liaotian-sdk-'));
  const [natsPort, authPort, persisterPort] = [await freePort(), await freePort(), await freePort()];
  const gwPorts = [];
  for (let i = 0; i < gateways; i += 1) gwPorts.push(await freePort());
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const authUrl = `http://127.0.0.1:${authPort}`;
  const procs = {
    nats: new Proc(
      'nats-server',
      process.env.NATS_SERVER_BIN || 'nats-server',
      ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', path.join(dir, 'nats')],
      {},
      () => tcpOpen(natsPort),
    ),
    auth: new Proc(
      'auth',
      path.join(BIN_DIR, 'auth'),
      [],
      { AUTH_LISTEN: `127.0.0.1:${authPort}`, AUTH_DEV_LOGIN: '1', AUTH_KEY_FILE: path.join(dir, 'signing.key') },
      () => httpOk(`${authUrl}/healthz`),
    ),
    persister: new Proc(
      'persister',
      path.join(BIN_DIR, 'persister'),
      [],
      { PERSISTER_LISTEN: `127.0.0.1:${persisterPort}`, NATS_URL: natsUrl, PERSISTER_STORE: `sqlite://${path.join(dir, 'history.db')}` },
      () => httpOk(`http://127.0.0.1:${persisterPort}/readyz`),
    ),
  };
  procs.gateways = gwPorts.map(
    (port, i) =>
      new Proc(
        `gateway-${i}`,
        path.join(BIN_DIR, 'gateway'),
        [],
        { GATEWAY_LISTEN: `127.0.0.1:${port}`, NATS_URL: natsUrl, GATEWAY_AUTH_URL: authUrl, ...gatewayEnv },
        () => httpOk(`http://127.0.0.1:${port}/readyz`),
      ),
  );
  procs.gateway = procs.gateways[0];
  await procs.nats.start();
  await procs.auth.start();
  for (const g of procs.gateways) await g.start();
  await procs.persister.start();
  const wsUrls = gwPorts.map((port) => `ws://127.0.0.1:${port}/ws`);
  return {
    authUrl,
    wsUrl: wsUrls[0],
    wsUrls,
    procs,
    async stop() {
      for (const p of [procs.nats, procs.auth, ...procs.gateways, procs.persister]) await p.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
