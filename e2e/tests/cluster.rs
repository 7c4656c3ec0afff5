//! The chat on a real three-node nats-server cluster, stream `CHAT` and the KV buckets with three
//! replicas, two gateways on different nodes, under a steady load of sends, while nodes are killed
//! (SIGKILL, as a crash) and started again: every message that got an `ack` reaches the other
//! gateway's member once, in order, with no gap; a send that was not acked in time is resent with
//! its `client_msg_id` and stored at most once; a persister on the cluster has each acked message in
//! the history store once. It also measures how long sends waited for their
//! ack across a leader's death (docs/operations.md).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use e2e::Stack;
use serde_json::{Value, json};
use testkit::{NatsCluster, WsClient};

/// Sends `text` with `cmid` and waits for its ack, resending the same frame after `unavailable`.
/// Returns the ack's `seq` and how long it took from the first attempt.
async fn send_acked(c: &mut WsClient, room: &str, cmid: &str) -> (u64, Duration) {
    let t0 = Instant::now();
    let mut attempts = 0;
    let frame = json!({"type":"send","room":room,"text":cmid,"client_msg_id":cmid,"id":cmid});
    loop {
        c.send(frame.clone()).await.unwrap();
        attempts += 1;
        if attempts > 1 {
            eprintln!("{cmid}: resent after unavailable ({:?})", t0.elapsed());
        }
        loop {
            let v = c.recv_timeout(Duration::from_secs(30)).await.unwrap();
            if v["id"] != cmid {
                continue; // The sender's own copies of its messages, pongs.
            }
            match v["type"].as_str() {
                Some("ack") => return (v["seq"].as_u64().unwrap(), t0.elapsed()),
                Some("error") if v["code"] == "unavailable" => break,
                _ => panic!("{cmid}: {v}"),
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{cmid} never acked");
    }
}

/// A gateway config on `urls` (in that order), stream `CHAT` and the buckets at three replicas.
fn gateway_with_urls(stack: &Stack, urls: &[String]) -> gateway::Config {
    let mut c = stack.config_unlimited();
    c.nats_url = urls.join(",");
    c.stream.replicas = 3;
    c
}

/// A gateway config listing node `node` first, then the others: gateways made for different nodes
/// sit on different nodes.
fn gateway_on(stack: &Stack, cluster: &NatsCluster, node: usize) -> gateway::Config {
    let mut urls = vec![cluster.url(node)];
    urls.extend(
        (0..cluster.len())
            .filter(|&i| i != node)
            .map(|i| cluster.url(i)),
    );
    gateway_with_urls(stack, &urls)
}

/// Sends messages `m<i>` for `range` one after another; returns the slowest ack.
async fn phase(c: &mut WsClient, range: std::ops::Range<usize>, acked: &mut Vec<u64>) -> Duration {
    let mut worst = Duration::ZERO;
    for i in range {
        let (seq, took) = send_acked(c, "r", &format!("m{i}")).await;
        acked.push(seq);
        worst = worst.max(took);
    }
    worst
}

/// Reads `room`'s messages on `c` until every seq in `want` has arrived; returns them in arrival order.
async fn receive(c: &mut WsClient, want: &HashSet<u64>) -> Vec<Value> {
    let mut got = Vec::new();
    let mut have = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&have) {
        assert!(
            Instant::now() < deadline,
            "still missing {:?}",
            want.difference(&have)
        );
        let v = c.recv_timeout(Duration::from_secs(30)).await.unwrap();
        if v["type"] == "message" {
            have.insert(v["seq"].as_u64().unwrap());
            got.push(v);
        }
    }
    got
}

/// Pages room `r`'s history through `c` (the gateway asks the persister) until it holds every seq
/// of `acked`, or 20 s pass; asserts the store has each acked message once, in order.
async fn assert_stored_once(c: &mut WsClient, acked: &[u64]) {
    let mut want = acked.to_vec();
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = e2e::history_seqs(c, "room", "r").await;
        if stored.len() >= want.len() || Instant::now() > deadline {
            assert_eq!(
                stored, want,
                "every acked message in the history store, once"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Proves that killing a follower, then the stream's leader, and starting each again loses and
// duplicates no acked message, live or in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_and_then_the_stream_leader_loses_no_acked_message() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3)).unwrap();
    let stack = Stack::start();
    let g1 = stack.gateway_with(gateway_on(&stack, &cluster, 0)).await;
    let g2 = stack.gateway_with(gateway_on(&stack, &cluster, 1)).await;
    let leader = tokio::task::block_in_place(|| {
        cluster.wait_for_stream_leader("CHAT", Duration::from_secs(20))
    })
    .unwrap();
    let _persister = e2e::Persister::start_on_nats(&cluster.urls()).await;
    // Each gateway is on the node its NATS_URL lists first (svc keeps the order given).
    for node in [0, 1] {
        let names = cluster.client_names(node).unwrap();
        let gateways = names.iter().filter(|n| *n == "liaotian-gateway").count();
        assert_eq!(gateways, 1, "node {node}'s clients: {names:?}");
    }
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    for c in [&mut alice, &mut bob] {
        e2e::join(c, "r").await;
    }

    // Steady sends; a follower dies and comes back; then the leader dies and comes back.
    let mut acked = Vec::new();
    let mut slowest = Vec::new();
    slowest.push(("before", phase(&mut alice, 0..20, &mut acked).await));
    let follower = (0..3).find(|&i| i != leader).unwrap();
    cluster.kill(follower);
    slowest.push(("follower down", phase(&mut alice, 20..40, &mut acked).await));
    tokio::task::block_in_place(|| cluster.restart(follower)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.stream_leader("CHAT").unwrap_or(leader);
    cluster.kill(leader);
    slowest.push(("leader killed", phase(&mut alice, 40..60, &mut acked).await));
    tokio::task::block_in_place(|| cluster.restart(leader)).unwrap();
    slowest.push(("leader back", phase(&mut alice, 60..70, &mut acked).await));
    eprintln!("slowest ack per phase: {slowest:?}");

    // Every acked message was stored once: 70 sends, 70 distinct sequences.
    let want: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(want.len(), 70, "a send stored twice: {acked:?}");
    // Bob, on the other gateway and another node, gets each once, in order, with no gap.
    let got = receive(&mut bob, &want).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, {
        let mut s = acked.clone();
        s.sort_unstable();
        s
    });
    for w in got.windows(2) {
        assert_eq!(
            w[1]["prev_seq"], w[0]["seq"],
            "gap between {} and {}",
            w[0], w[1]
        );
    }
    assert_stored_once(&mut bob, &acked).await;
}

// Proves the same across a rolling restart of all three nodes, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_loses_no_acked_message() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3)).unwrap();
    let stack = Stack::start();
    let g1 = stack.gateway_with(gateway_on(&stack, &cluster, 0)).await;
    let g2 = stack.gateway_with(gateway_on(&stack, &cluster, 2)).await;
    tokio::task::block_in_place(|| cluster.wait_for_stream_leader("CHAT", Duration::from_secs(20)))
        .unwrap();
    let _persister = e2e::Persister::start_on_nats(&cluster.urls()).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    for c in [&mut alice, &mut bob] {
        e2e::join(c, "r").await;
    }
    let mut acked = Vec::new();
    let mut slowest = Vec::new();
    slowest.push(("before", phase(&mut alice, 0..10, &mut acked).await));
    for node in 0..3 {
        // One node at a time, as an upgrade does: down, a few sends, back, a few sends.
        cluster.kill(node);
        let down = phase(&mut alice, 10 + node * 20..20 + node * 20, &mut acked).await;
        tokio::task::block_in_place(|| cluster.restart(node)).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let back = phase(&mut alice, 20 + node * 20..30 + node * 20, &mut acked).await;
        slowest.push((["n0 down", "n1 down", "n2 down"][node], down));
        slowest.push((["n0 back", "n1 back", "n2 back"][node], back));
    }
    eprintln!("slowest ack per phase: {slowest:?}");
    let want: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(want.len(), 70, "a send stored twice: {acked:?}");
    let got = receive(&mut bob, &want).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "once each, in order");
    for w in got.windows(2) {
        assert_eq!(
            w[1]["prev_seq"], w[0]["seq"],
            "gap between {} and {}",
            w[0], w[1]
        );
    }
    assert_stored_once(&mut bob, &acked).await;
}

// Proves the same when the leader is cut off from both other nodes for 10 s, then healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_isolates_the_leader_for_10_s_loses_no_acked_message() {
    let cluster = NatsCluster::start_partitionable(3).await.unwrap();
    let stack = Stack::start();
    // The gateways know only the two nodes that stay together, as clients on the majority's side
    // of a real partition would.
    let first = stack
        .gateway_with(gateway_with_urls(&stack, &[cluster.url(0)]))
        .await;
    let leader = tokio::task::block_in_place(|| {
        cluster.wait_for_stream_leader("CHAT", Duration::from_secs(20))
    })
    .unwrap();
    drop(first);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let g1 = stack
        .gateway_with(gateway_with_urls(
            &stack,
            &[cluster.url(others[0]), cluster.url(others[1])],
        ))
        .await;
    let g2 = stack
        .gateway_with(gateway_with_urls(
            &stack,
            &[cluster.url(others[1]), cluster.url(others[0])],
        ))
        .await;
    // The persister, like the gateways, on the majority's side.
    let _persister = e2e::Persister::start_on_nats(&format!(
        "{},{}",
        cluster.url(others[0]),
        cluster.url(others[1])
    ))
    .await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    for c in [&mut alice, &mut bob] {
        e2e::join(c, "r").await;
    }
    let mut acked = Vec::new();
    let before = phase(&mut alice, 0..10, &mut acked).await;
    cluster.partition(leader);
    let cut_at = Instant::now();
    let mut during = Duration::ZERO;
    let mut i = 10;
    while cut_at.elapsed() < Duration::from_secs(10) {
        during = during.max(phase(&mut alice, i..i + 1, &mut acked).await);
        i += 1;
    }
    cluster.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = phase(&mut alice, i..i + 10, &mut acked).await;
    let new_leader = cluster.stream_leader("CHAT");
    eprintln!(
        "partition of the leader n{leader}: slowest ack before {before:?}, during {during:?}, after {after:?}; {} sends; leader after: {new_leader:?}",
        acked.len()
    );
    let want: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(want.len(), acked.len(), "a send stored twice: {acked:?}");
    let got = receive(&mut bob, &want).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "once each, in order");
    for w in got.windows(2) {
        assert_eq!(
            w[1]["prev_seq"], w[0]["seq"],
            "gap between {} and {}",
            w[0], w[1]
        );
    }
    assert_stored_once(&mut bob, &acked).await;
}
