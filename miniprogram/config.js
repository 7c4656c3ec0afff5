// Where the backend lives. Both hosts must be on the mini-program's request and socket domain lists.
module.exports = {
  authUrl: 'https://auth.example.com',
  gatewayUrl: 'wss://chat.example.com/ws',
  heartbeatMs: 25000,
};
