//! liaotian-client: the SDK for liaotian's chat protocol `chat.v1`, for WeChat mini-programs,
//! browsers and Node. See README.md for what it guarantees and how to use it.

export { Client, CLIENT_DEFAULTS, TYPING_INTERVAL_MS } from './client.js';
export { ChatError } from './errors.js';
export { Auth, AuthError, EXPIRY_MARGIN_MS } from './auth.js';
export { webTransport, wxTransport, PROTOCOL } from './transport.js';
export { memoryStorage, wxStorage, webStorage } from './storage.js';
export { convKey, convOf } from './conv.js';
export { OUTBOX_DEFAULTS, FINAL_ERRORS } from './outbox.js';
export { FILL_DEFAULTS } from './order.js';
export { PACER_DEFAULTS } from './pacer.js';
export { attachWx } from './wx.js';
