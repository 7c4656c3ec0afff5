// The login state of the mini-program: wx.login → POST /api/login {code}, tokens in storage,
// refresh on 401, and wx.login again only when the refresh token is refused.

'use strict';

const { wxLogin, wxRequest } = require('./wxp');

const STORAGE_KEY = 'liaotian.tokens';
// Refresh an access token this long before it expires.
const EXPIRY_MARGIN_MS = 60 * 1000;

class HttpError extends Error {
  constructor(status, body) {
    const reason = body && body.data && body.data.reason;
    super(`HTTP ${status}${reason ? ` ${reason}` : ''}`);
    this.status = status;
    this.reason = reason;
    this.body = body;
  }
}

class AuthClient {
  /**
   * @param {object} opts
   * @param {object} opts.wx the wx object (the real one, or the test shim)
   * @param {string} opts.baseUrl the auth service, e.g. https://auth.example.com
   * @param {() => number} [opts.now]
   */
  constructor({ wx, baseUrl, now = Date.now }) {
    this.wx = wx;
    this.baseUrl = baseUrl.replace(/\/$/, '');
    this.now = now;
    this.loginCalls = 0;
    this.pending = null;
  }

  get tokens() {
    const t = this.wx.getStorageSync(STORAGE_KEY);
    return t && typeof t === 'object' ? t : null;
  }

  set tokens(t) {
    if (t) this.wx.setStorageSync(STORAGE_KEY, t);
    else this.wx.removeStorageSync(STORAGE_KEY);
  }

  get user() {
    return this.tokens && this.tokens.user;
  }

  async post(path, data, bearer) {
    const header = bearer ? { Authorization: `Bearer ${bearer}` } : {};
    const res = await wxRequest(this.wx, { url: this.baseUrl + path, method: 'POST', data, header });
    const body = typeof res.data === 'string' ? safeJson(res.data) : res.data;
    if (res.statusCode !== 200 || !body || body.code !== 0) throw new HttpError(res.statusCode, body);
    return body.data;
  }

  store(data) {
    this.tokens = {
      user: data.user,
      accessToken: data.access_token,
      refreshToken: data.refresh_token,
      expiresAt: this.now() + data.expires_in * 1000,
    };
    return this.tokens;
  }

  /** wx.login and exchange the code. A `relogin` answer (code used or invalid) gets one fresh code. */
  async login() {
    for (let attempt = 0; ; attempt += 1) {
      const code = await wxLogin(this.wx);
      this.loginCalls += 1;
      try {
        return this.store(await this.post('/api/login', { code }));
      } catch (e) {
        if (attempt === 0 && e.status === 401 && e.reason === 'relogin') continue;
        throw e;
      }
    }
  }

  /** Rotates the refresh token; on refusal, drops the tokens and logs in again with wx.login. */
  async refreshOrLogin() {
    if (!this.pending) {
      this.pending = (async () => {
        const t = this.tokens;
        if (t && t.refreshToken) {
          try {
            return this.store(await this.post('/api/refresh', { refresh_token: t.refreshToken }));
          } catch (e) {
            if (e.status !== 401) throw e; // Network or 503: keep the tokens, try again later.
            this.tokens = null;
          }
        }
        return this.login();
      })().finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  /** A usable access token: the stored one, a refreshed one, or one from a new login. */
  async accessToken() {
    const t = this.tokens;
    if (t && t.accessToken && t.expiresAt - EXPIRY_MARGIN_MS > this.now()) return t.accessToken;
    return (await this.refreshOrLogin()).accessToken;
  }

  /** An authenticated request; on 401 refreshes once (wx.login only if the refresh fails) and retries. */
  async request(opts) {
    const send = async () => {
      const token = await this.accessToken();
      return wxRequest(this.wx, { ...opts, header: { ...(opts.header || {}), Authorization: `Bearer ${token}` } });
    };
    const res = await send();
    if (res.statusCode !== 401) return res;
    const t = this.tokens;
    if (t) this.tokens = { ...t, expiresAt: 0 };
    await this.refreshOrLogin();
    return send();
  }

  async logout() {
    const t = this.tokens;
    this.tokens = null;
    if (t && t.accessToken) {
      try {
        await this.post('/api/logout', {}, t.accessToken);
      } catch (e) {
        if (t.refreshToken) await this.post('/api/logout', { refresh_token: t.refreshToken });
      }
    }
  }
}

function safeJson(s) {
  try {
    return JSON.parse(s);
  } catch (e) {
    return null;
  }
}

module.exports = { AuthClient, HttpError, STORAGE_KEY };
