//! Per-user limits across connections and gateways (`userlimit.rs`): real nats-server, two real
//! gateways, real WebSocket clients.

use std::time::Duration;

use gateway::testing::{Gateway, Stack};
use serde_json::json;
use testkit::WsClient;

/// The HTTP status and body of a refused handshake, or `None` if it was accepted.
async fn refused(gw: &Gateway, token: &str) -> Option<String> {
    match WsClient::connect(gw.addr, token).await {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

// Proves a user holds at most GATEWAY_MAX_CONNS_PER_USER connections across two gateways: the
// next handshake on either is refused with 429, others are not affected, and closing one makes
// room again.
#[tokio::test]
async fn connections_per_user_hold_across_two_gateways() {
    let s = Stack::start();
    let config = || gateway::Config {
        max_conns_per_user: 3,
        ..s.config()
    };
    let (g1, g2) = (
        s.gateway_with(config()).await,
        s.gateway_with(config()).await,
    );
    let token = s.token("alice");
    let mut open = Vec::new();
    for g in [&g1, &g2, &g1] {
        open.push(WsClient::connect(g.addr, &token).await.unwrap().0);
    }
    for g in [&g1, &g2] {
        let err = refused(g, &token)
            .await
            .expect("a fourth connection was accepted");
        assert!(err.contains("429"), "{err}");
    }
    let _bob = s.connect(&g2, "bob").await;
    drop(open.pop());
    // The closed connection's key goes when its session ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while refused(&g2, &token).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after a close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends as fast as the socket takes for `for_`, to a thread with `to`; returns how many were
/// acked (the others are answered `rate_limited`).
async fn flood(mut c: WsClient, tag: &str, to: &str, for_: Duration) -> usize {
    let until = tokio::time::Instant::now() + for_;
    let mut sent = 0;
    let mut acked = 0;
    let mut answered = 0;
    while tokio::time::Instant::now() < until {
        let cmid = format!("{tag}-{sent}");
        c.send(json!({"type": "send", "to": to, "text": "x", "client_msg_id": cmid, "id": cmid}))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while answered < sent {
        let v = c.recv().await.unwrap();
        match v["type"].as_str() {
            Some("ack") => {
                acked += 1;
                answered += 1;
            }
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                answered += 1;
            }
            _ => {}
        }
    }
    acked
}

// Proves the per-user send rate holds across two gateways: one user flooding from a connection
// on each gets about one user's rate in all (burst + rate × time), not twice it, while a user
// alone on one gateway gets the same.
#[tokio::test]
async fn the_send_rate_per_user_holds_across_two_gateways() {
    let s = Stack::start();
    let config = || gateway::Config {
        user_sends_per_sec: 10.0,
        user_send_burst: 10.0,
        ..s.config_unlimited()
    };
    let (g1, g2) = (
        s.gateway_with(config()).await,
        s.gateway_with(config()).await,
    );
    let window = Duration::from_secs(2);
    // Each is allowed 10 + 10 × 2 = 30 in the window (a little more as the answers come in).
    let alone = flood(s.connect(&g1, "carol").await, "c", "dave", window).await;
    assert!((25..=36).contains(&alone), "alone: {alone}");

    let a1 = s.connect(&g1, "alice").await;
    let a2 = s.connect(&g2, "alice").await;
    // g2's handshake announces the change; g1 counts again within a round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n1, n2) = tokio::join!(
        flood(a1, "a1", "bob", window),
        flood(a2, "a2", "bob", window)
    );
    eprintln!("acked across two gateways: {n1} + {n2}; alone: {alone}");
    assert!(n1 + n2 <= 38, "two gateways gave one user {n1} + {n2}");
    assert!(n1 >= 8 && n2 >= 8, "a share starved: {n1} + {n2}");
}
