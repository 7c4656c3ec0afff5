//! Private groups, as their specification: membership checked on every path on either of two
//! gateways, events sequenced among messages, removal felt everywhere within a second, roles and
//! ownership, limits and bad input. Real nats-server, two real gateways, a real persister on SQLite,
//! real WebSocket clients.

use std::time::Duration;

use e2e::{Persister, Stack, ask, code, next_within};
use serde_json::{Value, json};
use testkit::WsClient;

async fn create(c: &mut WsClient, group: &str, members: &[&str]) -> Value {
    let g = ask(
        c,
        json!({"type":"group_create","group":group,"name":"Team","members":members,"id":"c"}),
        "group",
    )
    .await;
    assert_eq!(g["type"], "group", "{g}");
    g
}

async fn join_group(c: &mut WsClient, group: &str) -> Value {
    ask(c, json!({"type":"join","group":group,"id":"j"}), "joined").await
}

async fn send_group(c: &mut WsClient, group: &str, cmid: &str) -> Value {
    ask(
        c,
        json!({"type":"send","group":group,"text":cmid,"client_msg_id":cmid,"id":cmid}),
        "ack",
    )
    .await
}

/// Frames of the group's sequence (messages and events) until `n` have arrived.
async fn items(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv().await.unwrap();
        if v["type"] == "message" || v["type"] == "event" {
            out.push(v);
        }
    }
    out
}

/// Asserts that each item's `prev_seq` is the previous item's `seq`, from `first_prev`.
fn assert_chain(items: &[Value], first_prev: u64) {
    let mut prev = first_prev;
    for it in items {
        assert_eq!(it["prev_seq"], prev, "gap before {it}");
        prev = it["seq"].as_u64().unwrap();
    }
}

/// Asks for the group's history until the persister has stored `n` items.
async fn history(c: &mut WsClient, group: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h = ask(
            c,
            json!({"type":"history","group":group,"limit":100,"id":"h"}),
            "history",
        )
        .await;
        if code(&h) == "unavailable" {
            // The persister's history service is not registered yet.
            assert!(tokio::time::Instant::now() < deadline, "history: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(h["type"], "history", "{h}");
        let list = h["messages"].as_array().unwrap().clone();
        if list.len() >= n {
            assert_eq!(h["group"], group);
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "history has {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn non_members_cannot_join_send_read_or_query_a_group_on_either_gateway() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let g = create(&mut alice, "team", &["bob"]).await;
    assert_eq!(g["owner"], "alice");
    assert_eq!(g["member_count"], 2);
    assert_eq!(
        g["members"],
        json!([{"user":"alice","role":"owner"},{"user":"bob","role":"member"}])
    );
    join_group(&mut alice, "team").await;
    send_group(&mut alice, "team", "secret").await;
    for gw in [&g1, &g2] {
        let mut eve = stack.connect(gw, "eve").await;
        // The same answer for a group that exists and one that does not: ids cannot be probed.
        for group in ["team", "nosuch"] {
            let frames = [
                json!({"type":"join","group":group}),
                json!({"type":"join","group":group,"since":0}),
                json!({"type":"send","group":group,"text":"x","client_msg_id":"e1"}),
                json!({"type":"history","group":group}),
                json!({"type":"presence_query","group":group}),
                json!({"type":"group_info","group":group}),
                json!({"type":"group_add","group":group,"users":["eve2"]}),
                json!({"type":"group_quit","group":group}),
            ];
            for f in frames {
                let reply = ask(&mut eve, f.clone(), "never").await;
                assert_eq!(code(&reply), "forbidden", "{f} -> {reply}");
            }
        }
        // The group's id is not an open room either.
        let reply = ask(&mut eve, json!({"type":"join","room":"team"}), "joined").await;
        assert_eq!(code(&reply), "forbidden", "{reply}");
        assert_eq!(
            next_within(&mut eve, Duration::from_millis(300)).await,
            None
        );
    }
    // Taken ids: a group's, and an open room's that has messages.
    let again = ask(
        &mut alice,
        json!({"type":"group_create","group":"team","name":"x"}),
        "group",
    )
    .await;
    assert_eq!(code(&again), "conflict", "{again}");
    let mut carol = stack.connect(&g2, "carol").await;
    e2e::join(&mut carol, "lobby").await;
    carol.send(e2e::send("lobby", "hi", "l1")).await.unwrap();
    carol.recv_type("ack").await.unwrap();
    let taken = ask(
        &mut carol,
        json!({"type":"group_create","group":"lobby","name":"x"}),
        "group",
    )
    .await;
    assert_eq!(code(&taken), "conflict", "{taken}");
    // Without an id the server picks one.
    let made = ask(
        &mut carol,
        json!({"type":"group_create","name":"auto","members":["alice"]}),
        "group",
    )
    .await;
    let id = made["group"].as_str().unwrap();
    assert!(id.starts_with('g') && id.len() > 10, "{made}");
    // A member sees the group on the other gateway.
    let mut bob = stack.connect(&g2, "bob").await;
    let info = ask(
        &mut bob,
        json!({"type":"group_info","group":"team"}),
        "group",
    )
    .await;
    assert_eq!(info["name"], "Team", "{info}");
    let joined = join_group(&mut bob, "team").await;
    assert_eq!(joined["group"], "team");
    assert!(joined.get("room").is_none(), "{joined}");
    let p = ask(
        &mut bob,
        json!({"type":"presence_query","group":"team"}),
        "presence_state",
    )
    .await;
    assert_eq!(p["group"], "team", "{p}");
    let online: Vec<&str> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["online"] == true)
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(online, ["alice", "bob"]);
}

#[tokio::test]
async fn an_added_member_reads_the_whole_history_and_the_chain_has_no_gap() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    create(&mut alice, "crew", &["bob"]).await;
    let joined = join_group(&mut alice, "crew").await;
    let created_seq = joined["last_seq"].as_u64().unwrap();
    assert!(created_seq > 0, "the created event is the first item");
    let mut watcher = stack.connect(&g2, "bob").await;
    join_group(&mut watcher, "crew").await;
    for i in 0..3 {
        send_group(&mut alice, "crew", &format!("m{i}")).await;
    }
    let added = ask(
        &mut alice,
        json!({"type":"group_add","group":"crew","users":["dave"]}),
        "group",
    )
    .await;
    assert_eq!(added["member_count"], 3, "{added}");
    send_group(&mut alice, "crew", "m3").await;
    // Live, on the other gateway: messages and the event in one chain.
    let live = items(&mut watcher, 5).await;
    assert_chain(&live, created_seq);
    assert_eq!(live[3]["type"], "event");
    assert_eq!(live[3]["kind"], "added");
    assert_eq!(live[3]["users"], json!(["dave"]));
    assert_eq!(live[3]["by"], "alice");
    assert_eq!(live[3]["group"], "crew");
    // The added member reads everything, from the group's creation.
    let mut dave = stack.connect(&g2, "dave").await;
    let all = history(&mut dave, "crew", 6).await;
    assert_eq!(all[0]["type"], "event");
    assert_eq!(all[0]["kind"], "created");
    assert_eq!(all[0]["users"], json!(["alice", "bob"]));
    assert_eq!(all[0]["name"], "Team");
    assert_chain(&all, 0);
    let texts: Vec<&str> = all
        .iter()
        .filter(|i| i["type"] == "message")
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3"]);
    // A resume replays events and messages in order.
    dave.send(json!({"type":"join","group":"crew","since":0,"id":"r"}))
        .await
        .unwrap();
    let resumed = dave.recv_type("joined").await.unwrap();
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let replay = items(&mut dave, 6).await;
    assert_eq!(
        replay.iter().map(|i| i["seq"].clone()).collect::<Vec<_>>(),
        all.iter().map(|i| i["seq"].clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_removed_member_is_told_and_refused_everywhere_within_a_second() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    create(&mut alice, "club", &["bob"]).await;
    join_group(&mut alice, "club").await;
    let mut phone = stack.connect(&g1, "bob").await;
    let mut desk = stack.connect(&g2, "bob").await;
    let mut tablet = stack.connect(&g2, "bob").await;
    join_group(&mut phone, "club").await;
    join_group(&mut desk, "club").await;
    join_group(&mut tablet, "club").await;
    send_group(&mut desk, "club", "before").await;
    let removed = ask(
        &mut alice,
        json!({"type":"group_remove","group":"club","users":["bob"]}),
        "group",
    )
    .await;
    let at = tokio::time::Instant::now();
    assert_eq!(removed["member_count"], 1, "{removed}");
    // Refused on the other gateway within a second of the answer.
    loop {
        let r = ask(
            &mut tablet,
            json!({"type":"send","group":"club","text":"x","client_msg_id":format!("late{}", at.elapsed().as_micros())}),
            "ack",
        )
        .await;
        if code(&r) == "forbidden" {
            break;
        }
        assert!(at.elapsed() < Duration::from_secs(1), "still accepted: {r}");
    }
    // Both sockets got the event, then `removed`.
    for c in [&mut phone, &mut desk] {
        let ev = loop {
            let v = c.recv().await.unwrap();
            if v["type"] == "event" {
                break v;
            }
        };
        assert_eq!(ev["kind"], "removed");
        assert_eq!(ev["users"], json!(["bob"]));
        let r = c.recv_type("removed").await.unwrap();
        assert_eq!(r["group"], "club");
    }
    // Their sockets stop receiving the group.
    send_group(&mut alice, "club", "after").await;
    for c in [&mut phone, &mut desk] {
        assert_eq!(next_within(c, Duration::from_millis(500)).await, None);
    }
    // And the group is closed to them on every path.
    for c in [&mut phone, &mut desk] {
        for f in [
            json!({"type":"join","group":"club"}),
            json!({"type":"history","group":"club"}),
            json!({"type":"send","group":"club","text":"x","client_msg_id":"z"}),
            json!({"type":"group_info","group":"club"}),
        ] {
            let reply = ask(c, f.clone(), "never").await;
            assert_eq!(code(&reply), "forbidden", "{f} -> {reply}");
        }
    }
    // Leaving what the connection still lists is fine.
    let left = ask(&mut desk, json!({"type":"leave","group":"club"}), "left").await;
    assert_eq!(left["group"], "club", "{left}");
    // The remaining member's presence no longer lists bob.
    let p = ask(
        &mut alice,
        json!({"type":"presence_query","group":"club"}),
        "presence_state",
    )
    .await;
    let users: Vec<&str> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice"], "{p}");
}

#[tokio::test]
async fn roles_ownership_limits_and_bad_input() {
    let stack = Stack::start();
    let g1 = stack
        .gateway_with(gateway::Config {
            group_max_members: 4,
            ..stack.config_unlimited()
        })
        .await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g1, "bob").await;
    create(&mut alice, "band", &["bob", "carol"]).await;
    // A member cannot manage.
    for f in [
        json!({"type":"group_add","group":"band","users":["dave"]}),
        json!({"type":"group_remove","group":"band","users":["carol"]}),
        json!({"type":"group_rename","group":"band","name":"x"}),
        json!({"type":"group_role","group":"band","user":"carol","role":"admin"}),
    ] {
        // With an id: bob's connection was also told of the group by a `group` frame without one.
        let mut f = f;
        f["id"] = json!("m");
        let r = ask(&mut bob, f.clone(), "group").await;
        assert_eq!(code(&r), "forbidden", "{f} -> {r}");
    }
    let r = ask(
        &mut alice,
        json!({"type":"group_role","group":"band","user":"bob","role":"admin"}),
        "group",
    )
    .await;
    assert_eq!(r["members"][1], json!({"user":"bob","role":"admin"}), "{r}");
    // An admin adds and renames, but cannot remove the owner or change roles.
    let r = ask(
        &mut bob,
        json!({"type":"group_add","group":"band","users":["dave"]}),
        "group",
    )
    .await;
    assert_eq!(r["member_count"], 4, "{r}");
    let r = ask(
        &mut bob,
        json!({"type":"group_rename","group":"band","name":"乐队"}),
        "group",
    )
    .await;
    assert_eq!(r["name"], "乐队", "{r}");
    let r = ask(
        &mut bob,
        json!({"type":"group_remove","group":"band","users":["alice"]}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
    let r = ask(
        &mut bob,
        json!({"type":"group_role","group":"band","user":"carol","role":"admin"}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "forbidden", "{r}");
    // Limits and bad input.
    let r = ask(
        &mut alice,
        json!({"type":"group_add","group":"band","users":["erin"]}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains('4'),
        "names the limit: {r}"
    );
    for name in [json!(""), json!(" "), json!("x".repeat(65))] {
        let r = ask(
            &mut alice,
            json!({"type":"group_rename","group":"band","name":name}),
            "group",
        )
        .await;
        assert_eq!(code(&r), "bad_request", "{name} -> {r}");
        let r = ask(
            &mut alice,
            json!({"type":"group_create","name":name}),
            "group",
        )
        .await;
        assert_eq!(code(&r), "bad_request", "{name} -> {r}");
    }
    let r = ask(
        &mut alice,
        json!({"type":"group_role","group":"band","user":"bob","role":"king"}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
    // Passing ownership on makes the old owner an admin.
    let r = ask(
        &mut alice,
        json!({"type":"group_role","group":"band","user":"carol","role":"owner"}),
        "group",
    )
    .await;
    assert_eq!(r["owner"], "carol", "{r}");
    assert_eq!(
        r["members"][0],
        json!({"user":"alice","role":"admin"}),
        "{r}"
    );
    // The owner quits: the oldest admin (alice, before bob) takes over.
    let mut carol = stack.connect(&g1, "carol").await;
    let r = ask(
        &mut carol,
        json!({"type":"group_quit","group":"band"}),
        "group",
    )
    .await;
    assert_eq!(r["owner"], "alice", "{r}");
    assert_eq!(r["member_count"], 3);
    // The last members quit: the group stays, empty, with its history.
    for c in [&mut alice, &mut bob] {
        let r = ask(c, json!({"type":"group_quit","group":"band"}), "group").await;
        assert_eq!(r["type"], "group", "{r}");
    }
    let mut dave = stack.connect(&g1, "dave").await;
    let r = ask(
        &mut dave,
        json!({"type":"group_quit","group":"band"}),
        "group",
    )
    .await;
    assert_eq!(r["member_count"], 0, "{r}");
    assert!(r.get("owner").is_none(), "{r}");
    let again = ask(
        &mut dave,
        json!({"type":"group_create","group":"band","name":"new"}),
        "group",
    )
    .await;
    assert_eq!(
        code(&again),
        "conflict",
        "an empty group keeps its id: {again}"
    );
}

#[tokio::test]
async fn a_user_belongs_to_at_most_the_configured_number_of_groups() {
    let stack = Stack::start();
    let g1 = stack
        .gateway_with(gateway::Config {
            group_max_per_user: 2,
            ..stack.config_unlimited()
        })
        .await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut zed = stack.connect(&g1, "zed").await;
    create(&mut alice, "one", &["zed"]).await;
    create(&mut zed, "two", &[]).await;
    // The counts come from the persister's index: wait until zed's list shows both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = ask(&mut zed, json!({"type":"conversations"}), "conversations").await;
        if l["items"].as_array().is_some_and(|i| i.len() == 2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ask(
        &mut alice,
        json!({"type":"group_create","group":"three","name":"x","members":["zed"]}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("zed is in 2 groups"),
        "{r}"
    );
    create(&mut alice, "four", &[]).await;
    let r = ask(
        &mut alice,
        json!({"type":"group_add","group":"four","users":["zed"]}),
        "group",
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
    // Leaving one makes room again.
    ask(
        &mut zed,
        json!({"type":"group_quit","group":"two"}),
        "group",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = ask(
            &mut alice,
            json!({"type":"group_add","group":"four","users":["zed"]}),
            "group",
        )
        .await;
        if r["type"] == "group" {
            assert_eq!(r["member_count"], 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_gateway_cut_off_from_nats_catches_up_on_group_changes() {
    // While a gateway is cut off, a member it serves is removed on another gateway. After it
    // reconnects, it refuses that member (its group copies are read again; the removal event is
    // filled in too).
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let (proxy, g2) = stack.gateway_behind_proxy(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    create(&mut alice, "cut", &["bob"]).await;
    let mut bob = stack.connect(&g2, "bob").await;
    join_group(&mut bob, "cut").await;
    send_group(&mut bob, "cut", "before").await;
    proxy.cut();
    let r = ask(
        &mut alice,
        json!({"type":"group_remove","group":"cut","users":["bob"]}),
        "group",
    )
    .await;
    assert_eq!(r["member_count"], 1, "{r}");
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let r = ask(
            &mut bob,
            json!({"type":"send","group":"cut","text":"x","client_msg_id":format!("after{n}")}),
            "ack",
        )
        .await;
        if code(&r) == "forbidden" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepted: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_change_abandoned_midway_is_completed_by_the_next_one() {
    // A gateway that wrote a change's record but died before storing its event leaves it pending;
    // the next change, finding it stale, stores that event first, once, in order.
    use protocol::group::{EventKind, GroupEvent, Pending, Record};
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    create(&mut alice, "stale", &["bob"]).await;
    // What the dead gateway left: the renamed record, with its event pending for 10 s.
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(nats)
        .get_key_value(protocol::group::BUCKET)
        .await
        .unwrap();
    let entry = kv.entry("g.stale").await.unwrap().unwrap();
    let mut record: Record = serde_json::from_slice(&entry.value).unwrap();
    let by = protocol::UserId::parse("alice").unwrap();
    let event = GroupEvent {
        kind: EventKind::Renamed,
        users: vec![],
        name: Some("abandoned".into()),
        role: None,
        owner: None,
    };
    record.apply(&by, &event);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 10_000;
    record.pending = Some(Pending { by, ts, event });
    kv.update(
        "g.stale",
        serde_json::to_vec(&record).unwrap().into(),
        entry.revision,
    )
    .await
    .unwrap();
    for name in ["next", "last"] {
        let r = ask(
            &mut alice,
            json!({"type":"group_rename","group":"stale","name":name}),
            "group",
        )
        .await;
        assert_eq!(r["name"], name, "{r}");
    }
    let all = history(&mut alice, "stale", 4).await;
    let names: Vec<&str> = all
        .iter()
        .filter(|i| i["kind"] == "renamed")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["abandoned", "next", "last"], "{all:?}");
    assert_chain(&all, 0);
    let entry = kv.entry("g.stale").await.unwrap().unwrap();
    let record: Record = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(record.pending, None);
}

#[tokio::test]
async fn users_put_in_a_group_are_told_on_every_connection_and_no_one_else_is() {
    // A group sends nothing to a member who has not joined it, so without this a user added to a
    // group would not know of it until they next read their conversation list.
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut alice_phone = stack.connect(&g2, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    let mut carol = stack.connect(&g1, "carol").await;
    let answer = create(&mut alice, "told", &["bob"]).await;
    assert_eq!(answer["id"], "c");
    for c in [&mut bob, &mut alice_phone] {
        let told = c.recv_type("group").await.unwrap();
        assert_eq!(told["group"], "told", "{told}");
        assert_eq!(told["name"], "Team");
        assert_eq!(told["member_count"], 2);
        assert!(
            told.get("id").is_none(),
            "an unsolicited group frame has no id: {told}"
        );
    }
    assert_eq!(
        next_within(&mut carol, Duration::from_millis(500)).await,
        None
    );
    assert_eq!(
        next_within(&mut alice, Duration::from_millis(300)).await,
        None,
        "the connection that made the change has its answer only"
    );
    let added = ask(
        &mut alice,
        json!({"type":"group_add","group":"told","users":["carol"],"id":"a"}),
        "group",
    )
    .await;
    assert_eq!(added["member_count"], 3, "{added}");
    let told = carol.recv_type("group").await.unwrap();
    assert_eq!(told["group"], "told");
    assert_eq!(told["member_count"], 3);
    assert_eq!(
        next_within(&mut bob, Duration::from_millis(500)).await,
        None,
        "bob was a member already"
    );
}

// Proves `mentions` in a group `send` names members only, is delivered with the message, and is
// refused outside a group.
#[tokio::test]
async fn mentions_name_members_and_travel_with_the_message() {
    let stack = Stack::start();
    let _p = Persister::start(&stack).await;
    let g = stack.gateway().await;
    let mut alice = stack.connect(&g, "alice").await;
    let mut bob = stack.connect(&g, "bob").await;
    create(&mut alice, "team", &["bob"]).await;
    join_group(&mut alice, "team").await;
    join_group(&mut bob, "team").await;
    let refused = ask(
        &mut alice,
        json!({"type":"send","group":"team","text":"hi","client_msg_id":"x","mentions":["mallory"],"id":"x"}),
        "ack",
    )
    .await;
    assert_eq!(code(&refused), "bad_request", "{refused}");
    let refused = ask(
        &mut alice,
        json!({"type":"send","to":"bob","text":"hi","client_msg_id":"y","mentions":["bob"],"id":"y"}),
        "ack",
    )
    .await;
    assert_eq!(code(&refused), "bad_request", "{refused}");
    let ack = ask(
        &mut alice,
        json!({"type":"send","group":"team","text":"@bob look","client_msg_id":"m","mentions":["bob"],"id":"m"}),
        "ack",
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = items(&mut bob, 1).await;
    assert_eq!(got[0]["mentions"], json!(["bob"]), "{}", got[0]);
    // Stored in stream CHAT with the message (where the notifier reads it); the history store
    // does not keep it yet (docs/protocol.md, `send`).
    let stored = history(&mut bob, "team", 2).await;
    assert_eq!(stored.last().unwrap()["text"], "@bob look");
}
