//! The resume storm: every client joins its room and records `last_seq`, disconnects, misses a burst,
//! and on `go` reconnects with every other client at once and resumes with `join {since}`.
//!
//! The parent publishes the burst between `ready` and `go` ([`crate::inject`]): `missed` messages into
//! every room, each text carrying its index, then an end marker. After `joined`, a resuming client
//! must see every message of its room with a `seq` above its `since`, once each, in `seq` order, and
//! then the marker. A client is caught up when the marker arrives; its catch-up time is `go` → that
//! moment, and it keeps reading for `hold_ms` afterwards so that a late duplicate is still counted.
//!
//! Accounting uses the traffic run's keys: the client adds itself to `receivers[room]` and its
//! distinct burst messages to `got[room|burst]`; the parent adds `acked_by[room|burst]` (what
//! JetStream acked), so `lost = missed × receivers − got` comes out of [`crate::merge`] unchanged.

use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    self, CONNECT_TIMEOUT, Ctx, MessageView, Ws, close_label, fail, next_text, short, unix_ns,
};
use crate::plan::{ClientSpec, source_ip};

/// The sender name in the `got` and `acked_by` keys of the burst.
pub const BURST: &str = "burst";

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    ty: String,
    last_seq: Option<u64>,
    recovered: Option<bool>,
    code: Option<String>,
}

/// Runs one client of a resume storm; everything it observes goes into `ctx.stats`.
pub async fn run(ctx: Rc<Ctx>, c: ClientSpec, missed: u64) {
    let Some(room) = c.join.clone() else {
        return fail(&ctx, "storm client without a room".into());
    };
    // Phase 1, during the ramp: join, remember `last_seq`, leave by closing.
    let since = {
        let _permit = ctx.connecting.acquire().await;
        match tokio::time::timeout(CONNECT_TIMEOUT, first_visit(&ctx, &c, &room)).await {
            Ok(Ok(since)) => since,
            Ok(Err(e)) => return fail(&ctx, short(&format!("{e:#}"))),
            Err(_) => return fail(&ctx, "timeout".into()),
        }
    };
    if ctx.late.get() {
        return fail(&ctx, "connected after the ready deadline".into());
    }
    ctx.stats.borrow_mut().connected += 1;

    // Phase 2, on `go`: everyone reconnects at once and resumes.
    let mut go = ctx.go.clone();
    let Some(phase) = go.wait_for(|p| p.is_some()).await.ok().and_then(|p| *p) else {
        return;
    };
    let hard_end = phase.go + Duration::from_millis(ctx.spec.send_ms + ctx.spec.drain_ms);
    let mut r = Resume {
        since,
        last_seq: since,
        seen: vec![0; (missed as usize).div_ceil(64)],
        got: 0,
        marker: None,
    };
    let end = match tokio::time::timeout_at(hard_end, resume(&ctx, &c, &room, &mut r)).await {
        Ok(Ok(())) => {
            if let Some(at) = r.marker {
                let mut s = ctx.stats.borrow_mut();
                s.latency
                    .record(at.duration_since(phase.go).as_micros() as u64);
                s.count("caught_up", 1);
            }
            None
        }
        Ok(Err(why)) => Some(why),
        Err(_) => {
            ctx.stats.borrow_mut().timed_out += 1;
            None
        }
    };
    let mut s = ctx.stats.borrow_mut();
    if let Some(why) = end {
        *s.closed_early.entry(why).or_default() += 1;
    }
    s.markers_expected += 1;
    s.markers_got += u64::from(r.marker.is_some());
    *s.receivers.entry(room.clone()).or_default() += 1;
    *s.got.entry(format!("{room}|{BURST}")).or_default() += r.got;
}

/// What one resuming client has seen.
struct Resume {
    since: u64,
    last_seq: u64,
    /// Bit `i` is set once burst message `i` arrived.
    seen: Vec<u64>,
    got: u64,
    /// When the end marker arrived: the client was caught up.
    marker: Option<Instant>,
}

async fn first_visit(ctx: &Ctx, c: &ClientSpec, room: &str) -> anyhow::Result<u64> {
    let mut ws = client::connect(ctx, c.gateway, source_ip(c.idx), &c.user).await?;
    let frame = format!(r#"{{"type":"join","id":"j","room":"{room}"}}"#);
    ws.send(Message::text(frame)).await?;
    let since = loop {
        let t = next_text(&mut ws).await?;
        if t.starts_with(r#"{"type":"joined""#) {
            let r: Reply = serde_json::from_str(&t)?;
            break r.last_seq.unwrap_or(0);
        }
        if t.starts_with(r#"{"type":"error""#) {
            anyhow::bail!("join refused: {t}");
        }
    };
    close(ws).await;
    Ok(since)
}

/// Sends a Close and waits briefly for the server's, so the gateway sees a clean close.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Reconnects, resumes, and reads until the end marker (then `hold_ms` more). `Err` says why the
/// connection ended early.
async fn resume(ctx: &Ctx, c: &ClientSpec, room: &str, r: &mut Resume) -> Result<(), String> {
    let mut ws = {
        let _permit = ctx.connecting.acquire().await;
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            client::connect(ctx, c.gateway, source_ip(c.idx), &c.user),
        )
        .await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Err(format!("reconnect: {}", short(&format!("{e:#}")))),
            Err(_) => return Err("reconnect: timeout".into()),
        }
    };
    let frame = format!(
        r#"{{"type":"join","id":"j","room":"{room}","since":{}}}"#,
        r.since
    );
    if ws.send(Message::text(frame)).await.is_err() {
        return Err("reset".into());
    }
    let mut linger_end: Option<Instant> = None;
    loop {
        let next = match linger_end {
            Some(end) => match tokio::time::timeout_at(end, ws.next()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => ws.next().await,
        };
        match next {
            Some(Ok(Message::Text(t))) => match on_text(ctx, room, r, &t) {
                Step::Marker if linger_end.is_none() => {
                    linger_end = Some(Instant::now() + Duration::from_millis(ctx.spec.hold_ms));
                }
                Step::NotRecovered => return Err("not recovered".into()),
                _ => {}
            },
            Some(Ok(Message::Close(f))) => {
                return Err(close_label(f.as_ref().map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            _ => return Err("reset".into()),
        }
    }
    close(ws).await;
    Ok(())
}

/// What a frame means for the resuming client.
enum Step {
    Continue,
    Marker,
    /// `joined` with `recovered: false`: nothing will be replayed (more than `GATEWAY_MAX_RESUME`
    /// missing), so what is missing counts as lost.
    NotRecovered,
}

/// Accounts for one frame.
fn on_text(ctx: &Ctx, room: &str, r: &mut Resume, t: &str) -> Step {
    let mut s = ctx.stats.borrow_mut();
    if let Some(m) = MessageView::slice(t) {
        if m.room != Some(room) {
            s.unexpected += 1;
            return Step::Continue;
        }
        // In order, once: the seq must grow, and must be above `since`.
        if m.seq <= r.last_seq {
            s.dup_seq += 1;
            return Step::Continue;
        }
        r.last_seq = m.seq;
        if m.text.starts_with("e|") {
            r.marker.get_or_insert_with(Instant::now);
            return Step::Marker;
        }
        let Some(i) = crate::inject::index_of(m.text) else {
            s.unexpected += 1;
            return Step::Continue;
        };
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if word >= r.seen.len() {
            s.unexpected += 1;
            return Step::Continue;
        }
        if r.seen[word] & bit != 0 {
            s.dup_cmid += 1;
            return Step::Continue;
        }
        r.seen[word] |= bit;
        r.got += 1;
        s.deliveries += 1;
        s.last_delivery_unix_ns = s.last_delivery_unix_ns.max(unix_ns());
        return Step::Continue;
    }
    match serde_json::from_str::<Reply>(t) {
        Ok(reply) if reply.ty == "joined" => {
            if reply.recovered == Some(false) {
                s.count("not_recovered", 1);
                return Step::NotRecovered;
            }
        }
        Ok(reply) if reply.ty == "error" => {
            *s.send_errors
                .entry(reply.code.unwrap_or_default())
                .or_default() += 1;
        }
        Ok(reply) if reply.ty == "welcome" => {}
        Ok(reply) => *s.other_frames.entry(reply.ty).or_default() += 1,
        Err(_) => s.unexpected += 1,
    }
    Step::Continue
}
