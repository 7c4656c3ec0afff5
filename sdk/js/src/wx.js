//! The mini-program's lifecycle wired to a client: `wx.onAppHide` closes the socket after the grace,
//! `wx.onAppShow` resumes, and `wx.onNetworkStatusChange` reconnects at once when the network is back.

/** Returns a function that unhooks the three listeners (where `wx` has the `off*` forms). */
export function attachWx(client, wx) {
  const hide = () => client.hide();
  const show = () => client.show();
  const net = (res) => client.networkChanged(!!(res && res.isConnected));
  if (wx.onAppHide) wx.onAppHide(hide);
  if (wx.onAppShow) wx.onAppShow(show);
  if (wx.onNetworkStatusChange) wx.onNetworkStatusChange(net);
  return () => {
    if (wx.offAppHide) wx.offAppHide(hide);
    if (wx.offAppShow) wx.offAppShow(show);
    if (wx.offNetworkStatusChange) wx.offNetworkStatusChange(net);
  };
}
