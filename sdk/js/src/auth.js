//! Tokens for the socket and the HTTP API: a login (WeChat's `wx.login` code, a dev user, or the app's
//! own token provider), the tokens kept in storage, a refresh before they expire and after a refusal,
//! and a new login only when the refresh token is refused.

const TOKENS_KEY = 'liaotian.tokens';
/** Refresh an access token this long before it expires. */
export const EXPIRY_MARGIN_MS = 60 * 1000;

export class AuthError extends Error {
  constructor(status, body) {
    const reason = body && body.data && body.data.reason;
    super(`HTTP ${status}${reason ? ` ${reason}` : ''}${body && body.message ? `: ${body.message}` : ''}`);
    this.status = status;
    this.code = reason || `http_${status}`;
    this.reason = reason;
  }
}

/**
 * @param {object} o
 * @param {object} o.transport
 * @param {string} [o.authUrl] the auth service (`POST /api/login`, `/api/refresh`, `/api/logout`)
 * @param {'wechat'|{dev_user: string}} [o.login] how to log in: `wx.login` through the transport, or a dev user
 * @param {(o: {reason: string}) => Promise<string>} [o.tokenProvider] the app's own tokens instead of a login
 * @param {object} [o.storage]
 * @param {() => number} [o.now]
 */
export class Auth {
  constructor({ transport, authUrl = '', login, tokenProvider, storage, now = Date.now }) {
    if (!login && !tokenProvider) throw new TypeError('Auth needs `login` or `tokenProvider`');
    this.transport = transport;
    this.authUrl = authUrl.replace(/\/$/, '');
    this.loginWith = login;
    this.tokenProvider = tokenProvider;
    this.storage = storage;
    this.now = now;
    this.mem = storage ? null : undefined;
    this.pending = null;
    this.stale = false;
    this.logins = 0;
  }

  get tokens() {
    return this.storage ? this.storage.get(TOKENS_KEY) : this.mem;
  }

  set tokens(t) {
    if (!this.storage) this.mem = t;
    else if (t) this.storage.set(TOKENS_KEY, t);
    else this.storage.remove(TOKENS_KEY);
  }

  get user() {
    const t = this.tokens;
    return (t && t.user) || null;
  }

  /** A usable access token: the stored one, a refreshed one, or one from a new login. */
  async accessToken() {
    const t = this._mine(this.tokens);
    if (!this.stale && t && t.accessToken && (t.expiresAt === undefined || t.expiresAt - EXPIRY_MARGIN_MS > this.now())) {
      return t.accessToken;
    }
    return (await this.refresh()).accessToken;
  }

  /** The server refused the token (a 401, a socket refused before it opened): get another next time. */
  invalidate() {
    this.stale = true;
  }

  /** Forget the tokens (logged out or revoked); the next token needs a login. */
  clear() {
    this.tokens = null;
    this.stale = false;
  }

  /** Rotates the refresh token; on refusal logs in again. Concurrent callers share one attempt. */
  refresh() {
    if (!this.pending) {
      this.pending = this._refresh().finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  async _refresh() {
    if (this.tokenProvider) {
      const token = await this.tokenProvider({ reason: this.tokens ? 'refresh' : 'login' });
      this.stale = false;
      return (this.tokens = { user: null, accessToken: token });
    }
    const t = this._mine(this.tokens);
    if (t && t.refreshToken) {
      try {
        return this._store(await this.post('/api/refresh', { refresh_token: t.refreshToken }));
      } catch (e) {
        if (e.status !== 401) throw e; // Offline or 503: keep the tokens, try again later.
        this.tokens = null;
      }
    }
    return this.login();
  }

  /** Logs in; a `relogin` answer (a WeChat code used or unknown) gets one fresh code. */
  async login() {
    for (let attempt = 0; ; attempt += 1) {
      const body = this.loginWith === 'wechat' ? { code: await this.transport.wxLogin() } : { ...this.loginWith };
      this.logins += 1;
      try {
        return this._store(await this.post('/api/login', body));
      } catch (e) {
        if (attempt === 0 && e.status === 401 && e.reason === 'relogin') continue;
        throw e;
      }
    }
  }

  async logout() {
    const t = this.tokens;
    this.clear();
    if (t && t.refreshToken) await this.post('/api/logout', { refresh_token: t.refreshToken }).catch(() => {});
  }

  async post(path, body, bearer) {
    const headers = bearer ? { Authorization: `Bearer ${bearer}` } : {};
    const res = await this.transport.request({ url: this.authUrl + path, method: 'POST', body, headers });
    if (res.status !== 200 || !res.body || res.body.code !== 0) throw new AuthError(res.status, res.body);
    return res.body.data;
  }

  /** An HTTP request with the access token; on 401 it refreshes once and tries again. */
  async request(opts) {
    const go = async () => {
      const token = await this.accessToken();
      return this.transport.request({ ...opts, headers: { ...(opts.headers || {}), Authorization: `Bearer ${token}` } });
    };
    const res = await go();
    if (res.status !== 401) return res;
    this.invalidate();
    return go();
  }

  /** Stored tokens, unless they are another dev user's (one browser, several names). */
  _mine(t) {
    const dev = this.loginWith && this.loginWith.dev_user;
    return t && dev && t.user && t.user !== dev ? null : t;
  }

  _store(d) {
    this.stale = false;
    return (this.tokens = {
      user: d.user,
      accessToken: d.access_token,
      refreshToken: d.refresh_token,
      expiresAt: this.now() + d.expires_in * 1000,
    });
  }
}
