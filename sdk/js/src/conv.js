//! Conversations by name: `{room}`, `{group}` or `{with}` (a direct thread, named by its other user),
//! their string keys, and the conversation a server frame belongs to.

/** `room:<id>`, `group:<id>` or `with:<user>`. */
export function convKey(conv) {
  if (conv.room) return `room:${conv.room}`;
  if (conv.group) return `group:${conv.group}`;
  if (conv.with) return `with:${conv.with}`;
  throw new TypeError('a conversation is {room}, {group} or {with}');
}

export function convFromKey(key) {
  const i = key.indexOf(':');
  return { [key.slice(0, i)]: key.slice(i + 1) };
}

/** The conversation of a `message` or `event` frame as `me` reads it. */
export function convOf(frame, me) {
  if (frame.room) return { room: frame.room };
  if (frame.group) return { group: frame.group };
  return { with: frame.from === me ? frame.to : frame.from };
}

/** The fields naming `conv` in a client frame; `send` names a thread's user `to`. */
export function target(conv, forSend = false) {
  if (conv.room) return { room: conv.room };
  if (conv.group) return { group: conv.group };
  return forSend ? { to: conv.with } : { with: conv.with };
}
