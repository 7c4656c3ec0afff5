//! One conversation's order: messages and events reach the app once each, in `seq` order, with
//! nothing missing that the server can still give. It keeps `seen`, the highest `seq` handed to the
//! app; a frame at or below it is a duplicate. A frame whose `prev_seq` is above it shows a gap: the
//! missing range is paged with `history` while later frames wait, and only then is the frame handed
//! on. `recovered: false` after a resume fills the same way. The state machine does no I/O itself:
//! the client gives it `fetch` (a history page) and `surface` (hand a frame to the app).

export const FILL_DEFAULTS = {
  /** History pages per fill; a longer gap is handed on as a `gap` after this many. */
  maxPages: 50,
  /** Tries when a page fails or the store has not caught up with the stream yet. */
  attempts: 4,
  /** Pause between tries. The history store trails the stream by the persister's backlog. */
  retryMs: 400,
  /** Frames held while a fill runs; past it, the fill is dropped and the conversation replayed. */
  maxHeld: 2000,
};

export class Order {
  /**
   * @param {object} o
   * @param {string} o.key
   * @param {number|null} [o.seen] null while nothing is known of the conversation
   * @param {(after: number, before: number) => Promise<{messages: object[], more: boolean}>} o.fetch
   * @param {(frame: object) => void} o.surface
   * @param {(gap: {after: number, before: number}) => void} o.gap an unfillable range, handed on
   * @param {() => void} [o.resync] replays the conversation from `seen` (a join or resume with `since`)
   * @param {object} [o.limits]
   */
  constructor({ key, seen = null, fetch, surface, gap, resync = () => {}, limits = {} }) {
    Object.assign(this, { key, seen, fetch, surface, gap, resync });
    this.limits = { ...FILL_DEFAULTS, ...limits };
    this.filling = false;
    this.resyncing = false;
    this.held = [];
    this.epoch = 0;
  }

  /** A live or replayed `message` or `event` frame. */
  push(f) {
    // Waiting for a resync's `joined`: its replay brings these frames again, in order.
    if (this.resyncing) return;
    if (this.filling) {
      if (this.held.length >= this.limits.maxHeld) {
        // Past the bound: drop the fill and what it holds, and have the gateway replay the
        // conversation from `seen` out of the stream (a join or resume with `since`). The history
        // store may trail the stream, so it is not asked for frames this client was given.
        this.reset();
        this.resyncing = true;
        this.resync();
        return;
      }
      this.held.push(f);
      return;
    }
    this._take(f);
  }

  /** A join or resume answered: what the server says the conversation holds. */
  joined({ since, last_seq: last = 0, recovered }) {
    this.resyncing = false;
    if (this.filling) return; // A fill is on its way past `last` already.
    if (since !== undefined && recovered === false) {
      const from = this.seen ?? since;
      if (last > from) this._fill(from, last, last + 1);
    } else if (since === undefined && this.seen === null) {
      this.seen = last;
    }
  }

  /** The socket closed: a fill in flight is dropped; the resume replays what it would have fetched. */
  reset() {
    this.epoch += 1;
    this.resyncing = false;
    this.filling = false;
    this.held = [];
  }

  _take(f) {
    if (this.seen !== null && f.seq <= this.seen) return; // Seen already (a replay's overlap).
    if (this.seen !== null && (f.prev_seq || 0) > this.seen) {
      this.held.push(f);
      this._fill(this.seen, f.prev_seq, f.seq);
      return;
    }
    this.seen = f.seq;
    this.surface(f);
  }

  /** Pages `(after, before)` from history until `target` has been handed on, then the held frames. */
  async _fill(after, target, before) {
    this.filling = true;
    const epoch = this.epoch;
    let pages = 0;
    let tries = 0;
    let cursor = after;
    while ((this.seen ?? after) < target) {
      let page = null;
      try {
        page = await this.fetch(cursor, before);
      } catch (e) {
        // Offline, unavailable: tried again below.
      }
      if (epoch !== this.epoch) return; // Reset meanwhile.
      if (page) {
        pages += 1;
        for (const m of page.messages) {
          if (m.seq > cursor) cursor = m.seq;
          if (m.seq < before && (this.seen === null || m.seq > this.seen)) {
            this.seen = m.seq;
            this.surface(m);
          }
        }
        if ((this.seen ?? after) >= target) break;
        if (page.more && pages < this.limits.maxPages) continue;
      }
      tries += 1;
      if (tries >= this.limits.attempts || pages >= this.limits.maxPages) {
        // The store cannot give the range (retention, a persister far behind, none running): say so,
        // and go on from the frame that showed the gap.
        this.gap({ after: this.seen ?? after, before: target + 1 });
        this.seen = Math.max(this.seen ?? 0, target);
        break;
      }
      await new Promise((r) => setTimeout(r, this.limits.retryMs));
      if (epoch !== this.epoch) return;
    }
    this.filling = false;
    const held = this.held.sort((a, b) => a.seq - b.seq);
    this.held = [];
    for (const f of held) {
      if (this.filling) this.held.push(f);
      else this._take(f);
    }
  }
}
