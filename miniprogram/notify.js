// Offline notifications: WeChat lets the server send one subscribe message (订阅消息) per one-time
// subscription the user accepted, and wx.requestSubscribeMessage may only be called from a tap. So a
// tap that sends asks for the templates in config.notifyTemplates (at most 5 per call), and reports
// the accepted ones to auth (POST /api/notify/grants), which counts them per user and template
// (docs/wechat.md, "Offline notifications").

'use strict';

/**
 * Call first thing in a tap handler: WeChat refuses the dialog outside a tap's call stack.
 * Resolves to the template ids reported as accepted ([] when none, or when nothing was asked).
 */
function askForNotifications(wx, app) {
  const ids = ((app.config && app.config.notifyTemplates) || []).slice(0, 5);
  if (!ids.length || typeof wx.requestSubscribeMessage !== 'function') return Promise.resolve([]);
  return new Promise((resolve) => {
    wx.requestSubscribeMessage({
      tmplIds: ids,
      success(res) {
        const accepted = ids.filter((id) => res[id] === 'accept');
        if (!accepted.length) return resolve([]);
        app.auth
          .accessToken()
          .then((token) => {
            wx.request({
              url: `${app.config.authUrl}/api/notify/grants`,
              method: 'POST',
              header: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
              data: { template_ids: accepted },
              success: (r) => resolve(r.statusCode === 200 ? accepted : []),
              fail: () => resolve([]),
            });
          })
          .catch(() => resolve([]));
      },
      // The user closed the dialog, or the main switch is off (20004): nothing to report.
      fail: () => resolve([]),
    });
  });
}

module.exports = { askForNotifications };
