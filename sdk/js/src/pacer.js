//! Client frames leave at most at the gateway's rate (`GATEWAY_RATE_PER_SEC` 20/s, burst 40 by
//! default), so that the SDK itself never gets `rate_limited`: a reconnect that resumes 50 rooms and
//! resends 30 messages queues them here instead of losing them to the server's bucket. The bucket is
//! kept a little under the server's, since the two clocks do not start together.

export const PACER_DEFAULTS = { ratePerSec: 18, burst: 30, maxQueued: 2000 };

export class Pacer {
  constructor({ write, limits = {}, now = Date.now }) {
    this.write = write;
    this.limits = { ...PACER_DEFAULTS, ...limits };
    this.now = now;
    this.queue = [];
    this.timer = null;
    this.reset();
  }

  /** A new socket: the server's bucket starts full. */
  reset() {
    clearTimeout(this.timer);
    this.timer = null;
    this.queue = [];
    this.tokens = this.limits.burst;
    this.at = this.now();
  }

  /** Writes `text` now or once a token is free; false when too much is queued already. */
  send(text) {
    if (this.queue.length >= this.limits.maxQueued) return false;
    this.queue.push(text);
    this._drain();
    return true;
  }

  _drain() {
    const t = this.now();
    this.tokens = Math.min(this.limits.burst, this.tokens + ((t - this.at) / 1000) * this.limits.ratePerSec);
    this.at = t;
    while (this.queue.length && this.tokens >= 1) {
      this.tokens -= 1;
      this.write(this.queue.shift());
    }
    if (this.queue.length && !this.timer) {
      const wait = Math.ceil(((1 - this.tokens) / this.limits.ratePerSec) * 1000);
      this.timer = setTimeout(() => {
        this.timer = null;
        this._drain();
      }, wait);
    }
  }
}
