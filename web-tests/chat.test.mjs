// The gateway's dev page, a thin view over the client SDK, driven in headless Chromium against the
// real dev stack started by `xtask dev --no-build` (nats-server, auth, gateway, persister). Two pages,
// alice and bob, go through one story, in order, each test going on from the last:
// 1. a room and a direct thread, with the marks on own messages (sent, read, failed) and presence;
// 2. a reload of bob's page: the open thread comes back, and new messages arrive once;
// 3. a network cut of bob's page: what alice sends meanwhile arrives once, and what bob sent waits;
// 4. a group: alice creates it with bob, bob sees it with 1 unread, opens it, and alice sees it read;
// 5. scroll-back: a third page opens the room on its newest page and pages back to the first message.
// Each step leaves a screenshot in web-tests/out/ for a reviewer. `cargo xtask test` has built the
// binaries already, so the wait below covers only the stack starting; if the start fails, the
// stack's own output is in the error.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

const root = path.resolve(import.meta.dirname, "..");
const outDir = path.join(import.meta.dirname, "out");
let stack, browser, dataDir, gatewayUrl, gatewayPort, cutter;

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
/** How long the network cut lasts. */
const CUT_MS = 2_000;
/** Reconnecting after the cut: the SDK's backoff (full jitter, 500 ms × 2^attempt) may wait a few s. */
const RECONNECT_MS = 30_000;

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

/**
 * A TCP proxy in front of the gateway that can cut the network: `cut()` resets every connection
 * through it (the browser's WebSocket ends with 1006, as when a phone loses its network) and
 * resets new ones until `restore()`. This is the honest cut: Playwright's `context.setOffline(true)`
 * makes `navigator.onLine` false but leaves an open WebSocket open and delivering in this Chromium
 * (measured: still open 10 s later), so it would cut nothing, and the gateway closes sockets itself
 * (4001) only on logout, which the SDK takes as the end of the session.
 */
function cutter_(port) {
  const live = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) return client.resetAndDestroy();
    const upstream = net.connect(port, "127.0.0.1");
    const end = () => {
      live.delete(client);
      live.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      live.add(s);
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return {
    listen: () => new Promise((r) => server.listen(0, "127.0.0.1", () => r(`http://127.0.0.1:${server.address().port}`))),
    cut() {
      down = true;
      for (const s of live) s.resetAndDestroy();
      live.clear();
    },
    restore() {
      down = false;
    },
    close: () => new Promise((r) => server.close(r)),
  };
}

before(async () => {
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const [gw, auth, nats, monitor, persister, admin] = [
    await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort(),
  ];
  dataDir = mkdtempSync(path.join(tmpdir(), "liaotian-web-"));
  gatewayPort = gw;
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
      LIAOTIAN_ADMIN_ADDR: `127.0.0.1:${admin}`,
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
  cutter = cutter_(gatewayPort);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await cutter?.close();
  if (stack && stack.exitCode === null) {
    const exited = new Promise((r) => stack.once("exit", r));
    stack.kill("SIGTERM");
    await exited;
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

let shots = 0;
/** A screenshot of `page` into web-tests/out/, numbered in the order of the story. */
async function shot(page, name) {
  shots += 1;
  await page.screenshot({ path: path.join(outDir, `${String(shots).padStart(2, "0")}-${name}.png`) });
}

/** Errors thrown in any page; each test ends by checking there were none. */
const pageErrors = [];

async function openAs(name, url = gatewayUrl) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${name}: ${e.message}`));
  await page.goto(url);
  await page.fill("#name", name);
  await page.click("#login");
  await online(page);
  return page;
}

const online = (page, timeout) => page.waitForSelector("#status[data-state='open']", { timeout });
const item = (key) => `#conv-list li.conv[data-key='${key}']`;
const msg = (text) => `#log li.msg:has(.text:text-is('${text}'))`;

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

async function openChat(page, user) {
  await page.fill("#to-user", user);
  await page.click("#open-dm");
  await page.waitForSelector(`#conv-title:text-is('${user}')`);
}

/** The open conversation's messages as `seq:text`, in the page's order. */
const shown = (page) =>
  page.$$eval("#log li.msg", (els) => els.map((e) => `${e.dataset.seq}:${e.querySelector(".text").textContent}`));

/** Every message is shown once (one row per `seq`) and in `seq` order. */
async function assertOnceInOrder(page) {
  const rows = await page.$$eval("#log li.msg[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
  assert.equal(new Set(rows).size, rows.length, `a seq shown twice: ${rows}`);
  assert.deepEqual(rows, [...rows].sort((a, b) => a - b), "rows in seq order");
}

const count = (page, text) => page.locator(msg(text)).count();
const mark = (page, text) => page.$eval(`${msg(text)} .mark`, (e) => e.dataset.mark);

let alice, bob;

test("two pages chat in a room and in a direct thread, with marks and presence", async () => {
  alice = await openAs("alice");
  // Bob's page reaches the gateway through the proxy that test 3 cuts; alice's does not.
  bob = await openAs("bob", await cutter.listen());
  for (const p of [alice, bob]) {
    await p.fill("#room", "lobby");
    await p.click("#join");
    await p.waitForSelector("#conv-sub:text-is('open room · joined')");
  }

  await say(alice, "hello from alice");
  await bob.waitForSelector(msg("hello from alice"));
  await say(bob, "hi alice, bob here");
  await alice.waitForSelector(msg("hi alice, bob here"));
  await alice.waitForSelector(`${msg("hello from alice")} .mark[data-mark='sent']`);
  // Both pages show the room in the same order with the same sequence numbers.
  assert.deepEqual(await shown(alice), await shown(bob));
  assert.equal((await shown(alice)).length, 2);
  await shot(alice, "room-alice");

  // A direct thread: bob's message is sent, alice sees it unread, opens it, and bob sees it read.
  await openChat(bob, "alice");
  await say(bob, "a secret for alice");
  await bob.waitForSelector(`${msg("a secret for alice")} .mark[data-mark='sent']`);
  const badge = await alice.waitForSelector(`${item("with:bob")} .badge`);
  assert.equal(await badge.textContent(), "1");
  await shot(alice, "thread-unread-alice");
  await alice.click(item("with:bob"));
  await alice.waitForSelector(msg("a secret for alice"));
  await bob.waitForSelector(`${msg("a secret for alice")} .mark[data-mark='read']`);
  await alice.waitForSelector(`${item("with:bob")}:not(:has(.badge))`);
  // Typing: bob, in the thread, sees alice typing; her message ends it.
  await alice.fill("#text", "got it, thanks");
  await bob.waitForSelector("#typing:text-is('alice is typing…')");
  await shot(bob, "typing-bob");
  await alice.click("#send");
  await bob.waitForSelector(msg("got it, thanks"));
  await bob.waitForSelector("#typing:empty", { state: "attached" });
  // Thread partners' presence: each sees the other online.
  await alice.waitForSelector(`${item("with:bob")} .dot.online`);
  await bob.waitForSelector(`${item("with:alice")} .dot.online`);
  await shot(bob, "thread-read-bob");

  // A message the gateway refuses for good (too long) is marked failed, with a retry that the
  // gateway refuses again; it is never shown as sent.
  await say(bob, "x".repeat(4001));
  await bob.waitForSelector("#log li.msg.own .mark[data-mark='failed']");
  await shot(bob, "failed-bob");
  await bob.click("#log li.msg.own .retry");
  await bob.waitForSelector("#log li.msg.own .mark[data-mark='failed']");
  assert.equal(await bob.locator("#log li.msg.own.unsent").count(), 1);
  await bob.click("#log li.msg.own .discard");
  await bob.waitForSelector("#log li.msg.own.unsent", { state: "detached" });
  await assertOnceInOrder(alice);
  await assertOnceInOrder(bob);
  assert.deepEqual(pageErrors, []);
});

test("after a reload the thread is still there and new messages arrive once", async () => {
  const before = (await shown(bob)).filter((r) => !r.startsWith("undefined:"));
  await bob.reload();
  await online(bob);
  // The page reopens the thread and reads its newest page; the SDK resumes it from storage.
  await bob.waitForSelector("#conv-title:text-is('alice')");
  await bob.waitForSelector(msg("got it, thanks"));
  assert.deepEqual((await shown(bob)).filter((r) => !r.startsWith("undefined:")), before);
  // The room is joined again too.
  await bob.waitForSelector("#room-list li.conv[data-key='room:lobby']");

  await say(alice, "after the reload");
  await bob.waitForSelector(msg("after the reload"));
  await say(bob, "bob is back");
  await alice.waitForSelector(msg("bob is back"));
  await bob.waitForSelector(`${msg("bob is back")} .mark[data-mark='read']`);
  // Give a late duplicate (a replay, a history page, an ack) the time to show, then count.
  await bob.waitForTimeout(500);
  assert.equal(await count(bob, "after the reload"), 1);
  assert.equal(await count(alice, "bob is back"), 1);
  await assertOnceInOrder(bob);
  await assertOnceInOrder(alice);
  await shot(bob, "reloaded-bob");
  assert.deepEqual(pageErrors, []);
});

test("messages sent during a network cut arrive once after it", async () => {
  cutter.cut();
  await bob.waitForSelector("#status:not([data-state='open'])");
  const during = ["during the cut 1", "during the cut 2", "during the cut 3"];
  for (const t of during) {
    await say(alice, t);
    await alice.waitForSelector(`${msg(t)} .mark[data-mark='sent']`);
  }
  // Bob writes while cut off: it waits in the outbox.
  await say(bob, "bob wrote offline");
  await bob.waitForSelector(`${msg("bob wrote offline")} .mark[data-mark='pending']`);
  // The cut is real: nothing of alice's reaches bob meanwhile.
  await bob.waitForTimeout(CUT_MS);
  for (const t of during) assert.equal(await count(bob, t), 0, `${t} arrived through the cut`);
  await shot(bob, "cut-bob");

  cutter.restore();
  await online(bob, RECONNECT_MS);
  for (const t of during) await bob.waitForSelector(msg(t));
  // Stored: sent, or already read, since alice has the thread open.
  await bob.waitForSelector(`${msg("bob wrote offline")} .mark:is([data-mark='sent'], [data-mark='read'])`);
  await alice.waitForSelector(msg("bob wrote offline"));
  await say(alice, "after the cut");
  await bob.waitForSelector(msg("after the cut"));
  await bob.waitForTimeout(500);
  for (const t of [...during, "after the cut"]) assert.equal(await count(bob, t), 1, `${t} once at bob`);
  assert.equal(await count(alice, "bob wrote offline"), 1);
  await assertOnceInOrder(bob);
  await assertOnceInOrder(alice);
  // Alice's messages in the order she sent them.
  const order = (await shown(bob)).map((r) => r.split(":").slice(1).join(":")).filter((t) => t.startsWith("during"));
  assert.deepEqual(order, during);
  await shot(bob, "after-cut-bob");
  assert.deepEqual(pageErrors, []);
});

test("a group appears in the member's list with one unread, and opening it sends a receipt", async () => {
  await alice.click("#group-box summary");
  await alice.fill("#group-name", "Web team");
  await alice.fill("#group-members", "bob");
  await alice.click("#group-create");
  // The creator's page opens the new group, which starts with its `created` event.
  await alice.waitForSelector("#conv-title:text-is('Web team')");
  await alice.waitForSelector("#log li.event:has-text('alice created the group')");
  await say(alice, "welcome to the group");
  await alice.waitForSelector(`${msg("welcome to the group")} .mark[data-mark='sent']`);

  // Bob's connection is told he was put in the group (an unsolicited `group` frame), so his list
  // shows it and his page joins it; alice's message then arrives live and sets the badge, with no
  // refresh pressed.
  const groupItem = "#conv-list li.conv:has(.title:text-is('Web team (2)'))";
  await bob.waitForSelector(`${groupItem} .badge`, { timeout: 10_000 });
  assert.equal(await bob.textContent(`${groupItem} .badge`), "1");
  await shot(bob, "group-unread-bob");

  await bob.click(groupItem);
  await bob.waitForSelector(msg("welcome to the group"));
  // Opening it read it: alice sees bob's receipt, and bob's badge is gone.
  await alice.waitForSelector(`${msg("welcome to the group")} .mark[data-mark='read']:has-text('bob')`);
  await bob.waitForSelector(`${groupItem}:not(:has(.badge))`);
  await shot(alice, "group-read-alice");
  // And the conversation goes on live for both.
  await say(bob, "thanks");
  await alice.waitForSelector(msg("thanks"));
  await say(alice, "glad you are here");
  await bob.waitForSelector(msg("glad you are here"));
  await alice.waitForSelector(`${msg("glad you are here")} .mark[data-mark='read']`);
  assert.equal(await count(bob, "welcome to the group"), 1);
  await assertOnceInOrder(alice);
  await assertOnceInOrder(bob);
  await shot(bob, "group-bob");
  assert.deepEqual(pageErrors, []);
});

test("a room opens on its newest page, and earlier pages load on demand", async () => {
  const older = 60;
  await alice.click("#room-list li.conv[data-key='room:lobby']");
  await alice.waitForSelector("#conv-title:text-is('#lobby')");
  for (let i = 1; i <= older; i += 1) await say(alice, `backlog ${i}`);
  await alice.waitForSelector(`${msg(`backlog ${older}`)} .mark[data-mark='sent']`);
  const carol = await openAs("carol");
  await carol.fill("#room", "lobby");
  await carol.click("#join");
  // The newest page: 50 of the room's 62 messages, and a way to the earlier ones.
  await carol.waitForSelector(msg(`backlog ${older}`));
  await carol.waitForSelector("#load-earlier:visible");
  assert.equal(await carol.locator("#log li.msg").count(), 50);
  await shot(carol, "room-newest-page-carol");
  await carol.click("#load-earlier");
  await carol.waitForSelector(msg("hello from alice"));
  await carol.waitForSelector("#load-earlier", { state: "hidden" });
  // Live messages merge with the pages by seq.
  await say(alice, "live after paging");
  await carol.waitForSelector(msg("live after paging"));
  assert.deepEqual(await shown(carol), await shown(alice));
  assert.equal((await shown(carol)).length, 2 + older + 1);
  await assertOnceInOrder(carol);
  await shot(carol, "room-paged-carol");
  assert.deepEqual(pageErrors, []);
});
