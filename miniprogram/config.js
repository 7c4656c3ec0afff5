// Where the backend lives, and the client's tuning: the one file that differs between deployments.
// Both hosts must be on the mini-program's request and socket domain lists (request 合法域名, socket 合法域名).
module.exports = {
  authUrl: 'https://auth.example.com',
  gatewayUrl: 'wss://chat.example.com/ws',
  // Client options of liaotian-client (CLIENT_DEFAULTS); empty keeps its defaults.
  options: {},
};
