//! The conversation list, read state and receipts, as their specification: exact unread counts
//! across sends, reads and restarts of the persister and the gateway, read state synced to the
//! user's other device on another gateway, receipts in threads and small groups and none above the
//! limit, and a list of 1,000 conversations paged. Real nats-server, real gateways, a real persister
//! on SQLite, real WebSocket clients.

use std::time::Duration;

use e2e::{Backend, Persister, Stack, ask, code};
use serde_json::{Value, json};
use testkit::WsClient;

async fn send_to(c: &mut WsClient, target: (&str, &str), cmid: &str) -> u64 {
    let mut f = json!({"type":"send","text":cmid,"client_msg_id":cmid,"id":cmid});
    f[target.0] = json!(target.1);
    let ack = ask(c, f, "ack").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_u64().unwrap()
}

/// The whole conversation list, paged with `limit`.
async fn list_all(c: &mut WsClient, limit: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut f = json!({"type":"conversations","limit":limit,"id":"l"});
        if let Some(b) = before {
            f["before"] = json!(b);
        }
        let page = ask(c, f, "conversations").await;
        assert_eq!(page["type"], "conversations", "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() as u64 <= limit);
        out.extend(items.iter().cloned());
        before = items.last().map(|i| i["activity"].as_u64().unwrap());
        if page["more"] != true {
            return out;
        }
    }
}

/// Lists until `pred` holds for the list (the persister lags the stream a little).
async fn list_until(c: &mut WsClient, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = ask(c, json!({"type":"conversations","id":"l"}), "conversations").await;
        if page["type"] == "conversations" {
            let items = page["items"].as_array().unwrap().clone();
            if pred(&items) {
                return items;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "list: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(items: &'a [Value], key: &str, value: &str) -> Option<&'a Value> {
    items.iter().find(|i| i[key] == value)
}

/// The next frame of type `ty`, within `t`.
async fn next_of(c: &mut WsClient, ty: &str, t: Duration) -> Option<Value> {
    let until = tokio::time::Instant::now() + t;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(v) if v["type"] == ty => return Some(v),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_read_on_one_device_reaches_the_other_and_the_sender_gets_a_receipt() {
    a_read_on_one_device_reaches_the_other_and_the_sender_gets_a_receipt_on(Backend::Sqlite).await;
}

// Proves the same with the persister on the ScyllaDB store (the test run's Cassandra node).
#[tokio::test]
async fn a_read_on_one_device_reaches_the_other_and_the_sender_gets_a_receipt_on_scylla() {
    a_read_on_one_device_reaches_the_other_and_the_sender_gets_a_receipt_on(Backend::Scylla).await;
}

async fn a_read_on_one_device_reaches_the_other_and_the_sender_gets_a_receipt_on(backend: Backend) {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start_on(&stack, backend).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut phone = stack.connect(&g1, "bob").await;
    let mut desk = stack.connect(&g2, "bob").await;
    send_to(&mut alice, ("to", "bob"), "a1").await;
    let last = send_to(&mut alice, ("to", "bob"), "a2").await;
    let items = list_until(&mut phone, |l| {
        find(l, "with", "alice").is_some_and(|i| i["unread"] == 2)
    })
    .await;
    let thread = find(&items, "with", "alice").unwrap();
    assert_eq!(thread["last"]["text"], "a2");
    assert_eq!(thread["last"]["type"], "message");
    assert_eq!(thread["activity"], last);
    let r = ask(
        &mut phone,
        json!({"type":"read","with":"alice","seq":last,"id":"r"}),
        "read",
    )
    .await;
    assert_eq!(
        (r["read_seq"].as_u64(), r["unread"].as_u64()),
        (Some(last), Some(0)),
        "{r}"
    );
    assert_eq!(r["with"], "alice");
    // The desktop on the other gateway clears its badge.
    let synced = next_of(&mut desk, "read_state", Duration::from_secs(5))
        .await
        .expect("read_state on the other device");
    assert_eq!(synced["with"], "alice");
    assert_eq!(synced["read_seq"], last);
    assert_eq!(synced["unread"], 0);
    // The phone itself gets no read_state: it has the answer.
    assert_eq!(
        next_of(&mut phone, "read_state", Duration::from_millis(300)).await,
        None
    );
    let receipt = next_of(&mut alice, "receipt", Duration::from_secs(5))
        .await
        .expect("receipt to the sender");
    assert_eq!(receipt["with"], "bob");
    assert_eq!(receipt["read_seq"], last);
    // A lower seq moves nothing and tells no one.
    let r = ask(
        &mut phone,
        json!({"type":"read","with":"alice","seq":1}),
        "read",
    )
    .await;
    assert_eq!(r["read_seq"], last);
    assert_eq!(
        next_of(&mut alice, "receipt", Duration::from_millis(300)).await,
        None
    );
    // A seq beyond the newest is clamped to it.
    send_to(&mut alice, ("to", "bob"), "a3").await;
    let r = ask(
        &mut phone,
        json!({"type":"read","with":"alice","seq":u64::MAX / 2}),
        "read",
    )
    .await;
    assert_eq!(r["unread"], 0, "{r}");
    assert!(r["read_seq"].as_u64().unwrap() > last);
    assert!(r["read_seq"].as_u64().unwrap() < u64::MAX / 2);
    // Bad input.
    for (f, want) in [
        (json!({"type":"read","with":"bob","seq":1}), "bad_request"),
        (
            json!({"type":"read","with":"alice","group":"g","seq":1}),
            "bad_request",
        ),
        (json!({"type":"read","with":"alice"}), "bad_request"),
        (json!({"type":"read","group":"nosuch","seq":1}), "forbidden"),
        (json!({"type":"conversations","limit":0}), "bad_request"),
        (json!({"type":"conversations","limit":101}), "bad_request"),
        (
            json!({"type":"group_receipts","group":"nosuch","seq":1}),
            "forbidden",
        ),
    ] {
        let r = ask(&mut phone, f.clone(), "never").await;
        assert_eq!(code(&r), want, "{f} -> {r}");
    }
}

#[tokio::test]
async fn receipts_in_small_groups_and_none_above_the_limit() {
    let stack = Stack::start();
    let g1 = stack
        .gateway_with(gateway::Config {
            group_receipt_limit: 3,
            ..stack.config_unlimited()
        })
        .await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g1, "bob").await;
    let mut carol = stack.connect(&g1, "carol").await;
    for (group, members) in [
        ("small", vec!["bob", "carol"]),
        ("big", vec!["bob", "carol", "dave"]),
    ] {
        let g = ask(
            &mut alice,
            json!({"type":"group_create","group":group,"name":group,"members":members}),
            "group",
        )
        .await;
        assert_eq!(g["type"], "group", "{g}");
    }
    ask(&mut alice, json!({"type":"join","group":"small"}), "joined").await;
    ask(&mut alice, json!({"type":"join","group":"big"}), "joined").await;
    let small = send_to(&mut alice, ("group", "small"), "s1").await;
    let big = send_to(&mut alice, ("group", "big"), "b1").await;
    list_until(&mut bob, |l| {
        find(l, "group", "small").is_some_and(|i| i["unread"] == 1)
            && find(l, "group", "big").is_some_and(|i| i["unread"] == 1)
    })
    .await;
    let r = ask(
        &mut bob,
        json!({"type":"read","group":"small","seq":small}),
        "read",
    )
    .await;
    assert_eq!(
        (r["group"].as_str(), r["unread"].as_u64()),
        (Some("small"), Some(0)),
        "{r}"
    );
    for c in [&mut alice, &mut carol] {
        let receipt = next_of(c, "receipt", Duration::from_secs(5))
            .await
            .expect("a receipt in a small group");
        assert_eq!(receipt["group"], "small");
        assert_eq!(receipt["user"], "bob");
        assert_eq!(receipt["read_seq"], small);
    }
    let who = ask(
        &mut carol,
        json!({"type":"group_receipts","group":"small","seq":small,"id":"w"}),
        "group_receipts",
    )
    .await;
    assert_eq!(who["users"], json!(["alice", "bob"]), "{who}");
    assert_eq!(who["count"], 2);
    // Four members is above the limit of 3: the read is answered, and nobody gets a receipt.
    let r = ask(
        &mut bob,
        json!({"type":"read","group":"big","seq":big}),
        "read",
    )
    .await;
    assert_eq!(r["unread"], 0, "{r}");
    for c in [&mut alice, &mut carol] {
        assert_eq!(
            next_of(c, "receipt", Duration::from_millis(500)).await,
            None
        );
    }
    // group_receipts still answers there.
    let who = ask(
        &mut carol,
        json!({"type":"group_receipts","group":"big","seq":big}),
        "group_receipts",
    )
    .await;
    assert_eq!(who["users"], json!(["alice", "bob"]), "{who}");
}

#[tokio::test]
async fn unread_counts_are_exact_across_reads_and_restarts() {
    unread_counts_are_exact_across_reads_and_restarts_on(Backend::Sqlite).await;
}

// Proves the same with the persister on the ScyllaDB store (the test run's Cassandra node).
#[tokio::test]
async fn unread_counts_are_exact_across_reads_and_restarts_on_scylla() {
    unread_counts_are_exact_across_reads_and_restarts_on(Backend::Scylla).await;
}

async fn unread_counts_are_exact_across_reads_and_restarts_on(backend: Backend) {
    let stack = Stack::start();
    let mut g1 = stack.gateway_with(stack.config_unlimited()).await;
    let persister = Persister::start_on(&stack, backend).await;
    let mut alice = stack.connect(&g1, "alice").await;
    ask(
        &mut alice,
        json!({"type":"group_create","group":"crew","name":"Crew","members":["bob"]}),
        "group",
    )
    .await;
    ask(&mut alice, json!({"type":"join","group":"crew"}), "joined").await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(send_to(&mut alice, ("group", "crew"), &format!("c{i}")).await);
    }
    // An event among them does not count.
    ask(
        &mut alice,
        json!({"type":"group_rename","group":"crew","name":"Crew 2"}),
        "group",
    )
    .await;
    let mut bob = stack.connect(&g1, "bob").await;
    let items = list_until(&mut bob, |l| {
        find(l, "group", "crew").is_some_and(|i| i["unread"] == 5 && i["name"] == "Crew 2")
    })
    .await;
    let crew = find(&items, "group", "crew").unwrap();
    assert_eq!(crew["members"], 2);
    assert_eq!(crew["last"]["type"], "event");
    assert_eq!(crew["last"]["kind"], "renamed");
    let r = ask(
        &mut bob,
        json!({"type":"read","group":"crew","seq":seqs[2]}),
        "read",
    )
    .await;
    assert_eq!(r["unread"], 2, "{r}");
    // Bob's own message marks the group read up to it.
    send_to(&mut alice, ("group", "crew"), "c5").await;
    ask(&mut bob, json!({"type":"join","group":"crew"}), "joined").await;
    let mine = send_to(&mut bob, ("group", "crew"), "b0").await;
    send_to(&mut alice, ("group", "crew"), "c6").await;
    list_until(&mut bob, |l| {
        find(l, "group", "crew").is_some_and(|i| i["unread"] == 1)
    })
    .await;
    // The persister restarts: the counts are stored.
    let _persister = persister.restart(&stack).await;
    let items = list_until(&mut bob, |l| !l.is_empty()).await;
    let crew = find(&items, "group", "crew").unwrap();
    assert_eq!(
        (crew["read_seq"].as_u64(), crew["unread"].as_u64()),
        (Some(mine), Some(1))
    );
    // The gateway restarts: a new connection joins with the same state.
    drop(bob);
    drop(alice);
    g1.shutdown();
    let _ = (&mut g1.task).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let mut bob = stack.connect(&g2, "bob").await;
    let joined = ask(
        &mut bob,
        json!({"type":"join","group":"crew","id":"j"}),
        "joined",
    )
    .await;
    assert_eq!(
        (joined["read_seq"].as_u64(), joined["unread"].as_u64()),
        (Some(mine), Some(1)),
        "{joined}"
    );
    let resumed = ask(
        &mut bob,
        json!({"type":"resume","with":"alice","since":0}),
        "resumed",
    )
    .await;
    assert_eq!(resumed["unread"], 0, "{resumed}");
    // Quitting keeps the group in the list, until hidden.
    ask(
        &mut bob,
        json!({"type":"group_quit","group":"crew"}),
        "group",
    )
    .await;
    let items = list_until(&mut bob, |l| {
        find(l, "group", "crew").is_some_and(|i| i["last"]["kind"] == "quit")
    })
    .await;
    assert_eq!(find(&items, "group", "crew").unwrap()["unread"], 1);
    // A member who left may still hide it.
    let h = ask(
        &mut bob,
        json!({"type":"conversation_hide","group":"crew","id":"h"}),
        "conversation_hidden",
    )
    .await;
    assert_eq!(h["group"], "crew", "{h}");
    let items = list_all(&mut bob, 50).await;
    assert!(find(&items, "group", "crew").is_none(), "{items:?}");
}

#[tokio::test]
async fn a_list_of_a_thousand_conversations_pages_correctly() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut me = stack.connect(&g1, "hub").await;
    for i in 0..990 {
        let to = format!("u{i}");
        send_to(&mut me, ("to", &to), &format!("d{i}")).await;
    }
    for i in 0..10 {
        let g = ask(
            &mut me,
            json!({"type":"group_create","group":format!("g{i}"),"name":format!("G{i}")}),
            "group",
        )
        .await;
        assert_eq!(g["type"], "group", "{g}");
    }
    list_until(&mut me, |l| find(l, "group", "g9").is_some()).await;
    let all = list_all(&mut me, 100).await;
    assert_eq!(all.len(), 1000);
    let activity: Vec<u64> = all
        .iter()
        .map(|i| i["activity"].as_u64().unwrap())
        .collect();
    assert!(
        activity.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first"
    );
    // The groups were created last, so they come first.
    assert_eq!(all[0]["group"], "g9");
    assert_eq!(all[9]["group"], "g0");
    assert_eq!(all[10]["with"], "u989");
    assert_eq!(all[999]["with"], "u0");
    assert!(all.iter().all(|i| i["unread"] == 0), "sending marks read");
    // Pages of another size give the same list.
    let again = list_all(&mut me, 37).await;
    assert_eq!(again, all);
}

#[tokio::test]
async fn presence_is_shown_only_to_those_who_share_a_thread_or_a_group() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let _bob = stack.connect(&g1, "bob").await;
    let _carol = stack.connect(&g1, "carol").await;
    let _dave = stack.connect(&g1, "dave").await;
    send_to(&mut alice, ("to", "bob"), "hi").await;
    ask(
        &mut alice,
        json!({"type":"group_create","group":"pals","name":"Pals","members":["carol"]}),
        "group",
    )
    .await;
    // The persister has indexed both once alice's list shows them.
    list_until(&mut alice, |l| l.len() == 2).await;
    alice
        .send(json!({"type":"watch","users":["bob","carol","dave"],"id":"w"}))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let v = alice.recv().await.unwrap();
        match v["type"].as_str() {
            Some("presence") => {
                seen.insert(v["user"].as_str().unwrap().to_owned(), v["online"].clone());
            }
            Some("watched") => {
                assert_eq!(v["watching"], 3);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(seen["bob"], true, "a thread");
    assert_eq!(seen["carol"], true, "a group");
    assert_eq!(seen["dave"], false, "a stranger shows as offline");
    let q = ask(
        &mut alice,
        json!({"type":"presence_query","users":["dave","bob"]}),
        "presence_state",
    )
    .await;
    assert_eq!(q["users"][0], json!({"user":"dave","online":false}), "{q}");
    assert_eq!(q["users"][1]["online"], true, "{q}");
}

// Proves `conversation_mute` marks a thread and a group `muted` in the list, and unmuting clears
// it; that only a member mutes a group; and that the mute is the user's own (the other side's
// list is unchanged).
#[tokio::test]
async fn muted_conversations_are_marked_in_the_list() {
    let stack = Stack::start();
    let _p = Persister::start(&stack).await;
    let g = stack.gateway().await;
    let mut alice = stack.connect(&g, "alice").await;
    let mut bob = stack.connect(&g, "bob").await;
    send_to(&mut alice, ("to", "bob"), "m1").await;
    let grp = ask(
        &mut alice,
        json!({"type":"group_create","group":"team","name":"Team","members":["bob"],"id":"c"}),
        "group",
    )
    .await;
    assert_eq!(grp["type"], "group", "{grp}");
    let muted = ask(
        &mut bob,
        json!({"type":"conversation_mute","with":"alice","muted":true,"id":"m"}),
        "conversation_muted",
    )
    .await;
    assert_eq!(
        muted,
        json!({"type":"conversation_muted","id":"m","with":"alice","muted":true})
    );
    let muted = ask(
        &mut bob,
        json!({"type":"conversation_mute","group":"team","muted":true,"id":"m2"}),
        "conversation_muted",
    )
    .await;
    assert_eq!(muted["muted"], true, "{muted}");
    let items = list_until(&mut bob, |items| {
        find(items, "with", "alice").is_some() && find(items, "group", "team").is_some()
    })
    .await;
    assert_eq!(find(&items, "with", "alice").unwrap()["muted"], true);
    assert_eq!(find(&items, "group", "team").unwrap()["muted"], true);
    let theirs = list_until(&mut alice, |items| find(items, "with", "bob").is_some()).await;
    assert_eq!(find(&theirs, "with", "bob").unwrap().get("muted"), None);

    ask(
        &mut bob,
        json!({"type":"conversation_mute","with":"alice","muted":false,"id":"u"}),
        "conversation_muted",
    )
    .await;
    let items = list_until(&mut bob, |items| find(items, "with", "alice").is_some()).await;
    assert_eq!(find(&items, "with", "alice").unwrap().get("muted"), None);
    assert_eq!(find(&items, "group", "team").unwrap()["muted"], true);

    let mut carol = stack.connect(&g, "carol").await;
    let refused = ask(
        &mut carol,
        json!({"type":"conversation_mute","group":"team","muted":true,"id":"x"}),
        "conversation_muted",
    )
    .await;
    assert_eq!(code(&refused), "forbidden", "{refused}");
    let bad = ask(
        &mut carol,
        json!({"type":"conversation_mute","with":"alice","id":"y"}),
        "conversation_muted",
    )
    .await;
    assert_eq!(code(&bad), "bad_request", "{bad}");
}
