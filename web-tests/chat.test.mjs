// Two headless-Chromium pages log in through the dev page, join one room, chat and send a direct
// message; then one creates a group with the other, who sees it in the conversation list with an
// unread badge, opens it, and so sends the receipt the first one sees; against the real dev stack started by `xtask dev --no-build` (nats-server, auth, gateway,
// persister). `cargo xtask test` has built the binaries already, so the wait below covers only the
// stack starting; if the start fails, the stack's own output is in the error.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

const root = path.resolve(import.meta.dirname, "..");
let stack, browser, dataDir, gatewayUrl;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** How long the stack may take to start: four processes, no compiler. */
const START_MS = 60_000;
/** Chunks of the stack's output kept for an error message. */
const OUTPUT_CHUNKS = 2000;

/** Waits until `url` answers 200, failing at once if `child` exits first. */
async function waitFor(url, ms, child, output) {
  const deadline = Date.now() + ms;
  const failed = (why) => new Error(`${why}; the stack's output:\n${output.join("")}`);
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw failed(`the stack exited (${child.exitCode ?? child.signalCode}) before ${url} was up`);
    }
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 200));
  }
  throw failed(`${url} not up within ${ms} ms`);
}

before(async () => {
  const [gw, auth, nats, monitor, persister] =
    [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  dataDir = mkdtempSync(path.join(tmpdir(), "liaotian-web-"));
  gatewayUrl = `http://127.0.0.1:${gw}`;
  const binDir = process.env.LIAOTIAN_BIN_DIR || path.join(root, "target/debug");
  const xtask = process.env.LIAOTIAN_XTASK || path.join(binDir, "xtask");
  stack = spawn(xtask, ["dev", "--no-build"], {
    cwd: root,
    env: {
      ...process.env,
      LIAOTIAN_GATEWAY_ADDR: `127.0.0.1:${gw}`,
      LIAOTIAN_AUTH_ADDR: `127.0.0.1:${auth}`,
      LIAOTIAN_NATS_PORT: String(nats),
      LIAOTIAN_NATS_MONITOR_PORT: String(monitor),
      LIAOTIAN_PERSISTER_ADDR: `127.0.0.1:${persister}`,
      LIAOTIAN_DATA_DIR: dataDir,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Kept for the error message (the last OUTPUT_CHUNKS chunks), and passed on so a passing run
  // still shows the stack's log.
  const output = [];
  for (const s of [stack.stdout, stack.stderr]) {
    s.setEncoding("utf8");
    s.on("data", (chunk) => {
      output.push(chunk);
      if (output.length > OUTPUT_CHUNKS) output.shift();
      process.stderr.write(chunk);
    });
  }
  await waitFor(`${gatewayUrl}/readyz`, START_MS, stack, output);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  if (stack && stack.exitCode === null) {
    const exited = new Promise((r) => stack.once("exit", r));
    stack.kill("SIGTERM");
    await exited;
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function openAs(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => { throw e; });
  await page.goto(gatewayUrl);
  await page.fill("#name", name);
  await page.click("#login");
  await page.waitForSelector("#status:has-text('online')");
  return page;
}

async function joinRoom(page, room) {
  await page.fill("#room", room);
  await page.click("#join");
  await page.waitForSelector(`#log li:has-text('joined #${room}')`);
}

test("two pages chat in a room and exchange a direct message", async () => {
  const alice = await openAs("alice");
  const bob = await openAs("bob");
  await joinRoom(alice, "lobby");
  await joinRoom(bob, "lobby");

  await alice.fill("#text", "hello from alice");
  await alice.click("#send");
  await bob.waitForSelector("li.msg:has-text('hello from alice')");
  await bob.fill("#text", "hi alice, bob here");
  await bob.click("#send");
  await alice.waitForSelector("li.msg:has-text('hi alice, bob here')");

  // Both pages show the room in the same order with the same sequence numbers.
  const seqs = (p) => p.$$eval("li.msg", (els) => els.map((e) => `${e.dataset.seq}:${e.querySelector(".text").textContent}`));
  assert.deepEqual(await seqs(alice), await seqs(bob));
  assert.equal((await seqs(alice)).length, 2);

  await bob.fill("#dm-to", "alice");
  await bob.fill("#dm-text", "a secret for alice");
  await bob.click("#dm-send");
  const dm = await alice.waitForSelector("li.msg:has-text('a secret for alice')");
  assert.match(await dm.textContent(), /bob → alice/);
  // The sender's page shows its own direct message too.
  await bob.waitForSelector("li.msg:has-text('a secret for alice')");
});

test("a group appears in the member's list with its unread count, and opening it sends a receipt", async () => {
  const alice = await openAs("alice");
  const bob = await openAs("bob");
  await alice.fill("#group-name", "Web team");
  await alice.fill("#group-members", "bob");
  await alice.click("#group-create");
  const item = "#conv-list button.conv:has-text('Web team')";
  await alice.waitForSelector(item);
  await alice.click(item);
  await alice.waitForSelector("#log li:has-text('joined group')");
  await alice.fill("#text", "welcome to the group");
  await alice.click("#send");
  await alice.waitForSelector("li.msg:has-text('welcome to the group')");

  // Bob's list shows the group with one unread message.
  const badge = await bob.waitForSelector(`${item} .badge:has-text('1')`);
  assert.equal(await badge.textContent(), "1");
  await bob.click(item);
  await bob.waitForSelector("#log li:has-text('joined group')");
  // Opening it read it: alice sees bob's receipt, and bob's badge is gone.
  await alice.waitForSelector("li.receipt:has-text('read by bob')");
  await bob.waitForFunction(() => {
    const b = [...document.querySelectorAll("#conv-list button.conv")].find((e) => e.textContent.includes("Web team"));
    return b && !b.querySelector(".badge");
  });
  // And the conversation continues live for both.
  await bob.fill("#text", "thanks");
  await bob.click("#send");
  await alice.waitForSelector("li.msg:has-text('thanks')");
});
