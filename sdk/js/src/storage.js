//! Where the SDK keeps what must outlive the process (the highest `seq` seen per conversation, the
//! unsent outbox): a synchronous key-value interface over `wx` storage, `localStorage` or memory.

/** `{get(key), set(key, value), remove(key)}` with JSON-able values. */
export function memoryStorage() {
  const m = new Map();
  return {
    get: (k) => (m.has(k) ? JSON.parse(m.get(k)) : null),
    set: (k, v) => m.set(k, JSON.stringify(v)),
    remove: (k) => m.delete(k),
  };
}

export function wxStorage(wx) {
  return {
    get: (k) => {
      const v = wx.getStorageSync(k);
      return v === '' || v === undefined ? null : v;
    },
    set: (k, v) => wx.setStorageSync(k, v),
    remove: (k) => wx.removeStorageSync(k),
  };
}

/** Over `localStorage` (or any Web Storage); a full or disabled store loses the write, not the app. */
export function webStorage(store) {
  return {
    get: (k) => {
      try {
        const v = store.getItem(k);
        return v === null ? null : JSON.parse(v);
      } catch (e) {
        return null;
      }
    },
    set: (k, v) => {
      try {
        store.setItem(k, JSON.stringify(v));
      } catch (e) {
        // Quota exceeded or storage disabled: the state lives on in memory.
      }
    },
    remove: (k) => {
      try {
        store.removeItem(k);
      } catch (e) {
        // As above.
      }
    },
  };
}
