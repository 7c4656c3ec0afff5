//! The error every failed promise of the SDK rejects with: `code` is the server's error code, or
//! one of the SDK's own (`offline`, `timeout`, `left`, `outbox_full`, `expired`, `other_user`).

export class ChatError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
    this.frame = frame;
  }
}
