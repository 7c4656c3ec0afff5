// Runs the mini-program itself in Node: app.js and the pages are loaded as WeChat loads them, each user
// with its own `wx` (the shim), `App`, `Page` and `getApp`, so several users can chat in one process.
// `./config` is swapped for the test stack's addresses; everything else (liaotian-client included) is
// required as the app requires it.

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');

const { createWx } = require('./wx-shim');

const ROOT = path.resolve(__dirname, '..');

/** Evaluates a mini-program file with the given globals; `modules` overrides some require()s. */
function load(file, globals, modules = {}) {
  const src = fs.readFileSync(file, 'utf8');
  const req = createRequire(file);
  const module = { exports: {} };
  const names = Object.keys(globals);
  // eslint-disable-next-line no-new-func
  const fn = new Function('require', 'module', 'exports', ...names, src);
  fn((spec) => (spec in modules ? modules[spec] : req(spec)), module, module.exports, ...names.map((n) => globals[n]));
  return module.exports;
}

/**
 * Launches the app for one user. `wx` may be given to relaunch on the same device (same storage).
 * Returns {wx, app, client, got, page(route, query)}; `got` holds every message and event the SDK
 * handed on, in order.
 */
function launch({ name, stack, options = {}, wx, notifyTemplates = [] }) {
  let n = 0;
  const device = wx || createWx({ nextCode: () => `ok-${name}~${(n += 1)}` });
  let def = null;
  const config = { authUrl: stack.authUrl, gatewayUrl: stack.wsUrl, options, notifyTemplates };
  load(path.join(ROOT, 'app.js'), { wx: device, App: (d) => (def = d), console }, { './config': config });
  const app = def;
  app.onLaunch({ path: 'pages/list/list', scene: 1001 });
  const got = [];
  app.client.on('message', (m, conv) => got.push({ ...m, conv }));
  app.client.on('event', (e, conv) => got.push({ ...e, conv }));
  const user = {
    name,
    wx: device,
    app,
    client: app.client,
    got,
    /** Opens a page as WeChat does: a fresh instance, onLoad(query), then onShow(). */
    page(route, query = {}) {
      let pdef = null;
      load(path.join(ROOT, 'pages', route, `${route}.js`), { wx: device, Page: (d) => (pdef = d), getApp: () => app, console });
      const page = { ...pdef, data: JSON.parse(JSON.stringify(pdef.data || {})) };
      page.setData = (o) => Object.assign(page.data, o);
      if (page.onLoad) page.onLoad(query);
      if (page.onShow) page.onShow();
      return page;
    },
  };
  return user;
}

module.exports = { launch, ROOT };
