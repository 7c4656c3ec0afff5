//! A minimal event emitter: the SDK runs where Node's `events` does not (mini-programs, browsers).

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Calls `fn` on every `event`; returns a function that removes it. */
  on(event, fn) {
    let list = this._listeners.get(event);
    if (!list) this._listeners.set(event, (list = []));
    list.push(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const list = this._listeners.get(event);
    if (!list) return;
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  }

  /** A listener that throws must not break the SDK's bookkeeping: its error goes to `error`. */
  emit(event, ...args) {
    for (const fn of (this._listeners.get(event) || []).slice()) {
      try {
        fn(...args);
      } catch (e) {
        if (event !== 'error') this.emit('error', e);
      }
    }
  }
}
