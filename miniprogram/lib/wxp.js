// Promise wrappers around the callback-style wx APIs (wx.* has no promise form for these).

'use strict';

function wxLogin(wx) {
  return new Promise((resolve, reject) => {
    wx.login({
      success: (res) => (res && res.code ? resolve(res.code) : reject(new Error('wx.login gave no code'))),
      fail: (err) => reject(new Error((err && err.errMsg) || 'wx.login failed')),
    });
  });
}

function wxRequest(wx, { url, method = 'GET', data, header = {} }) {
  return new Promise((resolve, reject) => {
    wx.request({
      url,
      method,
      data,
      header: { 'content-type': 'application/json', ...header },
      success: (res) => resolve(res),
      fail: (err) => reject(new Error((err && err.errMsg) || 'wx.request failed')),
    });
  });
}

module.exports = { wxLogin, wxRequest };
