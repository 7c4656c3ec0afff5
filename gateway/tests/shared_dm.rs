//! `GATEWAY_DM_SUBSCRIPTION`: `shared` (the default: one `chat.out.dm.>` subscription per gateway,
//! routed to local users) next to gateways that subscribe per user. Real nats-server, real
//! gateways. The other test files run the default; the per-user mode's own paths are here.

use std::time::Duration;

use gateway::config::DmSubscription;
use gateway::testing::{Stack, messages, metric};
use serde_json::{Value, json};
use testkit::WsClient;

fn shared(stack: &Stack) -> gateway::Config {
    gateway::Config {
        dm_subscription: DmSubscription::Shared,
        ..stack.config_unlimited()
    }
}

fn per_user(stack: &Stack) -> gateway::Config {
    gateway::Config {
        dm_subscription: DmSubscription::PerUser,
        ..stack.config_unlimited()
    }
}

/// Sends `n` direct messages from `c` to `to`, waiting for each ack; returns their seqs.
async fn send_dms(c: &mut WsClient, to: &str, prefix: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let cmid = format!("{prefix}{i}");
        c.send(json!({"type":"send","to":to,"text":cmid,"client_msg_id":cmid}))
            .await
            .unwrap();
        seqs.push(c.recv_type("ack").await.unwrap()["seq"].as_u64().unwrap());
    }
    seqs
}

async fn message_seqs(c: &mut WsClient, n: usize) -> Vec<u64> {
    messages(c, n)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Waits until the gateway has no open connection left (teardown done).
async fn until_no_connections(gw: &gateway::testing::Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(gw, "gateway_connections").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shared_and_per_user_gateways_deliver_direct_messages_to_every_device() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(shared(&stack)).await;
    let g2 = stack.gateway_with(per_user(&stack)).await;
    let mut alice_phone = stack.connect(&g1, "alice").await;
    let mut alice_pc = stack.connect(&g2, "alice").await;
    let mut bob = stack.connect(&g1, "bob").await;
    let mut carol = stack.connect(&g1, "carol").await;

    // (The sending connection's own copy may come before its ack, which `send_dms` waits for.)
    let ack = send_dms(&mut alice_phone, "bob", "a", 1).await[0];
    for c in [&mut bob, &mut alice_pc] {
        let m = c.recv_type("message").await.unwrap();
        assert_eq!(
            (m["from"].as_str(), m["to"].as_str()),
            (Some("alice"), Some("bob"))
        );
        assert_eq!(m["seq"], ack);
    }
    // The reply: bob is `lo` or `hi` of the pair, the shared route finds both users either way.
    let reply = send_dms(&mut bob, "alice", "b", 1).await[0];
    for c in [&mut alice_phone, &mut alice_pc] {
        let m = c.recv_type("message").await.unwrap();
        assert_eq!(m["seq"], reply);
        assert_eq!(m["prev_seq"], ack);
    }
    // Carol, on the shared gateway too, got none of it.
    carol.send(json!({"type":"ping","id":"p"})).await.unwrap();
    let next: Value = carol.recv().await.unwrap();
    assert_eq!(next["type"], "pong", "carol got {next}");
}

#[tokio::test]
async fn shared_subscription_drops_foreign_threads_and_restarts_a_returning_users_chain() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(shared(&stack)).await;
    let g2 = stack.gateway_with(per_user(&stack)).await;
    let mut alice = stack.connect(&g2, "alice").await;

    // Bob is on the shared gateway: his thread is tracked there.
    let mut bob = stack.connect(&g1, "bob").await;
    let first = send_dms(&mut alice, "bob", "a", 1).await;
    assert_eq!(message_seqs(&mut bob, 1).await, first);
    drop(bob);
    until_no_connections(&g1).await;

    // While bob is away, the thread has no local user on g1: dropped, not delivered, not decoded.
    let delivered = metric(&g1, "gateway_messages_delivered_total").await;
    send_dms(&mut alice, "bob", "b", 5).await;
    send_dms(&mut alice, "dave", "c", 5).await;

    // Bob comes back without resuming: he gets the next message only, not the five he missed as
    // an unasked-for gap fill (he pages with `history` or resumes with `since` for those).
    let mut bob = stack.connect(&g1, "bob").await;
    let next = send_dms(&mut alice, "bob", "d", 1).await;
    assert_eq!(message_seqs(&mut bob, 1).await, next);
    bob.send(json!({"type":"ping","id":"p"})).await.unwrap();
    assert_eq!(bob.recv().await.unwrap()["type"], "pong");
    assert_eq!(
        metric(&g1, "gateway_messages_delivered_total").await,
        delivered.map(|d| d + 1.0),
        "only the message for bob was delivered on g1"
    );
    assert_eq!(metric(&g1, "gateway_gap_fills_total").await, Some(0.0));
    assert_eq!(metric(&g1, "gateway_undecodable_total").await, Some(0.0));
}

#[tokio::test]
async fn shared_subscription_fills_the_gap_after_reconnecting() {
    gap_fill_after_reconnecting(shared, per_user).await;
}

#[tokio::test]
async fn per_user_subscriptions_fill_the_gap_after_reconnecting() {
    gap_fill_after_reconnecting(per_user, shared).await;
}

/// Direct messages stored while a gateway's NATS link was cut reach its user after the reconnect,
/// in order, once.
async fn gap_fill_after_reconnecting(
    cut: fn(&Stack) -> gateway::Config,
    other: fn(&Stack) -> gateway::Config,
) {
    let stack = Stack::start();
    let (proxy, cut_off) = stack.gateway_behind_proxy(cut(&stack)).await;
    let g2 = stack.gateway_with(other(&stack)).await;
    let mut bob = stack.connect(&cut_off, "bob").await;
    let mut alice = stack.connect(&g2, "alice").await;
    let mut seqs = send_dms(&mut alice, "bob", "a", 10).await;
    assert_eq!(message_seqs(&mut bob, 10).await, seqs);
    proxy.cut();
    let missed = send_dms(&mut alice, "bob", "b", 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    assert_eq!(
        message_seqs(&mut bob, 40).await,
        missed,
        "all 40, in order, once"
    );
    seqs = send_dms(&mut alice, "bob", "c", 1).await;
    assert_eq!(message_seqs(&mut bob, 1).await, seqs);
    let fills = metric(&cut_off, "gateway_gap_fills_total").await;
    assert!(
        fills.is_some_and(|n| n >= 1.0),
        "a gap fill was counted: {fills:?}"
    );
}
