// Where the backend lives, and the client's tuning: the one file that differs between deployments.
// Both hosts must be on the mini-program's request and socket domain lists (request 合法域名, socket 合法域名).
module.exports = {
  authUrl: 'https://auth.example.com',
  gatewayUrl: 'wss://chat.example.com/ws',
  // Client options of liaotian-client (CLIENT_DEFAULTS); empty keeps its defaults.
  options: {},
  // One-time subscribe-message template ids to ask for when the user taps send (at most 5): the
  // server's AUTH_NOTIFY_DM_TEMPLATE and AUTH_NOTIFY_MENTION_TEMPLATE. Empty asks for nothing.
  notifyTemplates: [],
};
