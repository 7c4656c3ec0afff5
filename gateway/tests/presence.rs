//! Presence through real gateways, a real nats-server and its KV TTLs and delete markers.

use std::time::Duration;
use tokio::time::Instant;

use gateway::presence::RoomPresenceWatch;
use gateway::testing::{Stack, join, metric};
use serde_json::{Value, json};
use testkit::WsClient;

const TTL: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(1);

/// Presence among strangers: these tests are about the presence machinery, not about whose
/// presence a user may see (that is `e2e/tests/conversations.rs`, with a persister).
fn config(stack: &Stack) -> gateway::Config {
    gateway::Config {
        presence_ttl: TTL,
        presence_grace: GRACE,
        presence_privacy: gateway::config::PresencePrivacy::Open,
        ..stack.config()
    }
}

/// [`config`] with the given way of watching rooms.
fn config_watching(stack: &Stack, room_presence: RoomPresenceWatch) -> gateway::Config {
    gateway::Config {
        room_presence,
        ..config(stack)
    }
}

/// The next presence frame, skipping others.
async fn next_presence(c: &mut WsClient, within: Duration) -> anyhow::Result<Value> {
    next_presence_where(c, within, |_| true).await
}

/// The next presence frame about `user`, skipping others.
async fn presence_of(c: &mut WsClient, user: &str, within: Duration) -> anyhow::Result<Value> {
    next_presence_where(c, within, |v| v["user"] == user).await
}

/// The next presence frame that `wanted` accepts, skipping every other frame.
async fn next_presence_where(
    c: &mut WsClient,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = c
            .recv_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await?;
        if v["type"] == "presence" && wanted(&v) {
            return Ok(v);
        }
    }
}

/// Asserts that no presence frame arrives for `quiet`.
async fn assert_no_presence(c: &mut WsClient, quiet: Duration) {
    if let Ok(v) = next_presence(c, quiet).await {
        panic!("unexpected presence event {v}");
    }
}

async fn watch(c: &mut WsClient, users: &[&str]) -> Vec<Value> {
    c.send(json!({"type":"watch","users":users,"id":"w"}))
        .await
        .unwrap();
    let mut states = Vec::new();
    loop {
        let v = c.recv().await.unwrap();
        match v["type"].as_str() {
            Some("presence") => states.push(v),
            Some("watched") => return states,
            _ => {}
        }
    }
}

#[tokio::test]
async fn crashed_gateway_users_go_offline_for_watchers_elsewhere() {
    // A user on a gateway that loses NATS without a goodbye shows offline within TTL + grace + 1 s.
    let stack = Stack::start();
    let (proxy, g1) = stack.gateway_behind_proxy(config(&stack)).await;
    let g2 = stack.gateway_with(config(&stack)).await;
    let mut watcher = stack.connect(&g2, "watcher").await;
    let initial = watch(&mut watcher, &["alice"]).await;
    assert_eq!(initial.len(), 1);
    assert_eq!(
        (initial[0]["user"].as_str(), initial[0]["online"].as_bool()),
        (Some("alice"), Some(false))
    );
    let _alice = stack.connect(&g1, "alice").await;
    let online = next_presence(&mut watcher, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (online["user"].as_str(), online["online"].as_bool()),
        (Some("alice"), Some(true))
    );
    // Her connect's `seen` time is then clearly older than the cut.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut_at = Instant::now();
    let cut_ms = gateway::publish::now_ms();
    proxy.cut();
    let offline = next_presence(&mut watcher, TTL + GRACE + Duration::from_secs(3))
        .await
        .unwrap();
    let took = cut_at.elapsed();
    let heard_ms = gateway::publish::now_ms();
    assert_eq!(
        (offline["user"].as_str(), offline["online"].as_bool()),
        (Some("alice"), Some(false))
    );
    // Alice did nothing after connecting, so her last activity is older than the cut: last_seen is
    // the moment her key was seen to expire, after the cut and before the event arrived.
    let last_seen = offline["last_seen"].as_u64().unwrap_or_default();
    assert!(
        (cut_ms..=heard_ms).contains(&last_seen),
        "last_seen {last_seen} not within the cut ({cut_ms}) and the event ({heard_ms}): {offline}"
    );
    assert!(
        took <= TTL + GRACE + Duration::from_secs(1),
        "offline after {took:?}"
    );
}

#[tokio::test]
async fn user_stays_online_while_any_device_is_connected() {
    // Closing one of two devices changes nothing; closing the second sends one offline event.
    let stack = Stack::start();
    let g = stack.gateway_with(config(&stack)).await;
    let mut watcher = stack.connect(&g, "watcher").await;
    watch(&mut watcher, &["alice"]).await;
    let phone = stack.connect(&g, "alice").await;
    assert_eq!(
        next_presence(&mut watcher, Duration::from_secs(5))
            .await
            .unwrap()["online"],
        true
    );
    let pc = stack.connect(&g, "alice").await;
    drop(phone);
    assert_no_presence(&mut watcher, GRACE + Duration::from_millis(1500)).await;
    let closed_ms = gateway::publish::now_ms();
    drop(pc);
    let off = next_presence(&mut watcher, GRACE + Duration::from_secs(3))
        .await
        .unwrap();
    let heard_ms = gateway::publish::now_ms();
    assert_eq!(
        (off["user"].as_str(), off["online"].as_bool()),
        (Some("alice"), Some(false))
    );
    // The clean close of the last device is her latest activity.
    let last_seen = off["last_seen"].as_u64().unwrap_or_default();
    assert!(
        (closed_ms..=heard_ms).contains(&last_seen),
        "last_seen {last_seen} not within the close ({closed_ms}) and the event ({heard_ms}): {off}"
    );
}

#[tokio::test]
async fn reconnect_within_the_grace_period_produces_no_events() {
    // A socket dropped and reopened within the grace period (a mini-program's background trip) is invisible.
    let stack = Stack::start();
    let g = stack.gateway_with(config(&stack)).await;
    let mut watcher = stack.connect(&g, "watcher").await;
    let alice = stack.connect(&g, "alice").await;
    let state = watch(&mut watcher, &["alice"]).await;
    assert_eq!(state[0]["online"], true);
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _alice = stack.connect(&g, "alice").await;
    assert_no_presence(&mut watcher, GRACE + Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_re_created_presence_key_still_expires() {
    // The async-nats create_with_ttl pitfall: a key written again after expiring must expire again.
    let stack = Stack::start();
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let settings = gateway::presence::PresenceSettings {
        ttl: Duration::from_secs(1),
        grace: GRACE,
        room_event_limit: 500,
        room_watch: RoomPresenceWatch::Shared,
    };
    let (_reconnects_tx, reconnects) = tokio::sync::watch::channel(0);
    let presence =
        gateway::presence::Presence::ensure(js, settings, 1, Default::default(), reconnects)
            .await
            .unwrap();
    let user = protocol::UserId::parse("alice").unwrap();
    let conn = protocol::ConnId::parse("c1").unwrap();
    let online = || async {
        let state = presence
            .query(gateway::presence::WatchKey::User(user.clone()))
            .await
            .unwrap();
        state[0].online
    };
    for round in 0..2 {
        presence.put_conn(&user, &conn).await;
        assert!(online().await, "round {round}: online after the write");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!online().await, "round {round}: the key expired");
    }
}

#[tokio::test]
async fn joined_lists_online_members_and_leave_removes_them() {
    joined_and_leave(RoomPresenceWatch::Shared).await;
}

#[tokio::test]
async fn joined_lists_online_members_and_leave_removes_them_per_room() {
    joined_and_leave(RoomPresenceWatch::PerRoom).await;
}

/// joined carries the room's online users; members see joins, and a leave takes the user out.
async fn joined_and_leave(room_presence: RoomPresenceWatch) {
    let stack = Stack::start();
    let (g1, g2) = (
        stack
            .gateway_with(config_watching(&stack, room_presence))
            .await,
        stack
            .gateway_with(config_watching(&stack, room_presence))
            .await,
    );
    let mut bob = stack.connect(&g1, "bob").await;
    let j = join(&mut bob, "lobby").await;
    assert_eq!(j["online"], json!(["bob"]));
    let mut alice = stack.connect(&g2, "alice").await;
    let j = join(&mut alice, "lobby").await;
    assert_eq!(j["online"], json!(["alice", "bob"]));
    assert_eq!(j["online_count"], 2);
    let p = next_presence(&mut bob, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (
            p["room"].as_str(),
            p["user"].as_str(),
            p["online"].as_bool()
        ),
        (Some("lobby"), Some("alice"), Some(true))
    );
    alice
        .send(json!({"type":"leave","room":"lobby"}))
        .await
        .unwrap();
    alice.recv_type("left").await.unwrap();
    let p = next_presence(&mut bob, GRACE + Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        (
            p["room"].as_str(),
            p["user"].as_str(),
            p["online"].as_bool()
        ),
        (Some("lobby"), Some("alice"), Some(false))
    );
    bob.send(json!({"type":"presence_query","room":"lobby","id":"q"}))
        .await
        .unwrap();
    let q = bob.recv_type("presence_state").await.unwrap();
    let users: Vec<&str> = q["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["bob"]);
    bob.send(json!({"type":"presence_query","users":["alice","bob"]}))
        .await
        .unwrap();
    let q = bob.recv_type("presence_state").await.unwrap();
    assert_eq!(q["users"][0]["user"], "alice");
    assert_eq!(
        q["users"][0]["online"], true,
        "alice is still connected, only out of the room"
    );
    assert_eq!(q["users"][1]["online"], true);
}

/// Consumers on the presence bucket's stream.
async fn presence_consumers(stack: &Stack) -> usize {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream("KV_presence").await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

/// Presence events for `user` in the rooms named, as they arrive, until one per room.
async fn online_in_rooms(c: &mut WsClient, user: &str, rooms: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < rooms {
        let p = next_presence(c, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("after {seen:?}: {e}"));
        assert_eq!(
            (p["user"].as_str(), p["online"].as_bool()),
            (Some(user), Some(true)),
            "{p}"
        );
        seen.push(p["room"].as_str().unwrap().to_owned());
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn one_consumer_per_gateway_follows_all_its_rooms() {
    // With the shared room feed, thirty rooms with members on two gateways cost the presence bucket
    // two consumers (one per gateway, once the snapshot consumers are deleted), not one per room per
    // gateway, and every room still hears of every join.
    let stack = Stack::start();
    let (g1, g2) = (
        stack.gateway_with(config(&stack)).await,
        stack.gateway_with(config(&stack)).await,
    );
    let rooms: Vec<String> = (0..30).map(|i| format!("r{i:02}")).collect();
    let mut alice = stack.connect(&g1, "alice").await;
    for r in &rooms {
        join(&mut alice, r).await;
    }
    let mut bob = stack.connect(&g2, "bob").await;
    for r in &rooms {
        let j = join(&mut bob, r).await;
        assert_eq!(j["online"], json!(["alice", "bob"]), "{r}");
    }
    assert_eq!(online_in_rooms(&mut alice, "bob", rooms.len()).await, rooms);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut consumers = presence_consumers(&stack).await;
    while consumers != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        consumers = presence_consumers(&stack).await;
    }
    assert_eq!(consumers, 2, "one room feed per gateway");
}

#[tokio::test]
async fn presence_carries_on_after_a_nats_restart() {
    after_a_nats_restart(RoomPresenceWatch::Shared).await;
}

#[tokio::test]
async fn presence_carries_on_after_a_nats_restart_per_room() {
    after_a_nats_restart(RoomPresenceWatch::PerRoom).await;
}

/// Watches outlive a NATS crash: a join and a connect after the restart reach a room member and a
/// watcher who were there before it, well within async-nats' own recovery (two missed 15 s
/// heartbeats).
async fn after_a_nats_restart(room_presence: RoomPresenceWatch) {
    let mut stack = Stack::start();
    let g = stack
        .gateway_with(config_watching(&stack, room_presence))
        .await;
    let mut alice = stack.connect(&g, "alice").await;
    join(&mut alice, "lobby").await;
    let mut watcher = stack.connect(&g, "watcher").await;
    let initial = watch(&mut watcher, &["carol"]).await;
    assert_eq!(initial[0]["online"], false);
    stack.nats.restart().unwrap();
    let restarted = Instant::now();
    let mut bob = stack.connect(&g, "bob").await;
    loop {
        bob.send(json!({"type":"join","room":"lobby","id":"j"}))
            .await
            .unwrap();
        let v = bob.recv().await.unwrap();
        if v["type"] == "joined" {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "bob never joined: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _carol = stack.connect(&g, "carol").await;
    let p = next_presence(&mut alice, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (
            p["room"].as_str(),
            p["user"].as_str(),
            p["online"].as_bool()
        ),
        (Some("lobby"), Some("bob"), Some(true))
    );
    let p = next_presence(&mut watcher, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (p["user"].as_str(), p["online"].as_bool()),
        (Some("carol"), Some(true))
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "{:?} after the restart",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn removals_missed_while_cut_off_are_found_after_reconnect() {
    missed_while_cut_off(RoomPresenceWatch::Shared).await;
}

#[tokio::test]
async fn removals_missed_while_cut_off_are_found_after_reconnect_per_room() {
    missed_while_cut_off(RoomPresenceWatch::PerRoom).await;
}

/// Bob's gateway loses NATS (a crash, as far as presence goes) while alice's gateway is cut off
/// for longer than a delete marker lives: when alice's gateway is back, nothing left in the stream
/// says bob's keys went. Its room member and its watcher must still hear him go offline.
async fn missed_while_cut_off(room_presence: RoomPresenceWatch) {
    let stack = Stack::start();
    let (here, g1) = stack
        .gateway_behind_proxy(config_watching(&stack, room_presence))
        .await;
    let (there, g2) = stack
        .gateway_behind_proxy(config_watching(&stack, room_presence))
        .await;
    let mut alice = stack.connect(&g1, "alice").await;
    join(&mut alice, "lobby").await;
    let mut watcher = stack.connect(&g1, "watcher").await;
    assert_eq!(watch(&mut watcher, &["bob"]).await[0]["online"], false);
    let mut bob = stack.connect(&g2, "bob").await;
    join(&mut bob, "lobby").await;
    let wait = Duration::from_secs(5);
    let p = presence_of(&mut alice, "bob", wait).await.unwrap();
    assert_eq!(
        (p["room"].as_str(), p["online"].as_bool()),
        (Some("lobby"), Some(true))
    );
    let p = presence_of(&mut watcher, "bob", wait).await.unwrap();
    assert_eq!(p["online"], true);

    here.cut();
    there.cut();
    // Bob's keys expire within the TTL; their markers are kept 5 s.
    tokio::time::sleep(TTL + Duration::from_secs(5) + Duration::from_secs(3)).await;
    here.restore();
    let restored = Instant::now();
    let within = Duration::from_secs(15);
    let p = presence_of(&mut alice, "bob", within).await.unwrap();
    assert_eq!(
        (p["room"].as_str(), p["online"].as_bool()),
        (Some("lobby"), Some(false)),
        "{p}"
    );
    let p = presence_of(&mut watcher, "bob", within).await.unwrap();
    assert_eq!(p["online"], false, "{p}");
    assert!(
        restored.elapsed() < within,
        "{:?} after the restore",
        restored.elapsed()
    );
    let missed = metric(&g1, "gateway_presence_missed_removals_total").await;
    // Bob's room key, his connection key, and (in the room watch) alice's and the watcher's own
    // keys, which expired too while their gateway was cut off.
    assert!(missed.is_some_and(|n| n >= 2.0), "{missed:?}");
}

#[tokio::test]
async fn a_room_watch_started_amid_writes_ends_with_the_bucket_state() {
    // The shared feed keeps a room's writes while the room's snapshot is read, then merges them by
    // stream sequence. A watch started while the room's keys keep changing must end with exactly
    // what the bucket holds, as a fresh snapshot (a second instance without watches) reads it.
    use gateway::conn::{ConnShared, Outbox, Queue};
    use gateway::presence::{Presence, PresenceSettings, WatchKey};
    use protocol::{ConnId, RoomId, UserId};
    let stack = Stack::start();
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let settings = |room_watch| PresenceSettings {
        ttl: Duration::from_secs(60),
        grace: GRACE,
        room_event_limit: 500,
        room_watch,
    };
    let start = |room_watch| {
        let js = js.clone();
        async move {
            let (_tx, reconnects) = tokio::sync::watch::channel(0);
            Presence::ensure(js, settings(room_watch), 1, Default::default(), reconnects)
                .await
                .unwrap()
        }
    };
    let presence = start(RoomPresenceWatch::Shared).await;
    let truth = start(RoomPresenceWatch::PerRoom).await;
    let online = |state: Vec<protocol::frame::PresenceEntry>| -> Vec<String> {
        state
            .into_iter()
            .filter(|p| p.online)
            .map(|p| p.user.to_string())
            .collect()
    };
    for round in 0..10u64 {
        let room = RoomId::parse(format!("busy{round}")).unwrap();
        let writer = tokio::spawn({
            let (p, room) = (presence.clone(), room.clone());
            async move {
                for i in 0..150u32 {
                    let user = UserId::parse(format!("u{}", i % 20)).unwrap();
                    let conn = ConnId::parse(format!("c{}", i % 20)).unwrap();
                    if i % 3 == 2 {
                        p.delete_room(&room, &user, &conn).await;
                    } else {
                        p.put_room(&room, &user, &conn).await;
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        let member = Outbox::new(
            Queue::new(1024),
            std::sync::Arc::new(ConnShared::new(
                ConnId::parse(format!("w{round}")).unwrap(),
                UserId::parse("watcher").unwrap(),
                Default::default(),
            )),
        );
        presence.watch(WatchKey::Room(room.clone()), member).await;
        writer.await.unwrap();
        let key = WatchKey::Room(room);
        let expected = online(truth.query(key.clone()).await.unwrap());
        assert!(
            !expected.is_empty(),
            "round {round}: the writes left users online"
        );
        // Offline changes seen live wait out the grace period.
        let deadline = Instant::now() + GRACE + Duration::from_secs(3);
        loop {
            let seen = online(presence.query(key.clone()).await.unwrap());
            if seen == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: watch {seen:?}, bucket {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn bad_watch_requests_get_bad_request() {
    // More than 200 watched users, or an invalid id, is bad_request; the connection stays usable.
    let stack = Stack::start();
    let g = stack.gateway_with(config(&stack)).await;
    let mut c = stack.connect(&g, "alice").await;
    let too_many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    c.send(json!({"type":"watch","users":too_many,"id":"a"}))
        .await
        .unwrap();
    assert_eq!(c.recv_type("error").await.unwrap()["code"], "bad_request");
    c.send(json!({"type":"watch","users":["ok","no.dots"],"id":"b"}))
        .await
        .unwrap();
    assert_eq!(c.recv_type("error").await.unwrap()["code"], "bad_request");
    let first: Vec<String> = (0..150).map(|i| format!("a{i}")).collect();
    c.send(json!({"type":"watch","users":first})).await.unwrap();
    assert_eq!(c.recv_type("watched").await.unwrap()["watching"], 150);
    let second: Vec<String> = (0..60).map(|i| format!("b{i}")).collect();
    c.send(json!({"type":"watch","users":second}))
        .await
        .unwrap();
    assert_eq!(
        c.recv_type("error").await.unwrap()["code"],
        "bad_request",
        "200 per connection in total"
    );
    c.send(json!({"type":"unwatch","users":["a0","a1"]}))
        .await
        .unwrap();
    assert_eq!(c.recv_type("unwatched").await.unwrap()["watching"], 148);
}

#[tokio::test]
async fn large_rooms_stop_per_member_presence_events() {
    // Past the room event limit, joins are no longer announced to every member (no quadratic fan-out).
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            presence_room_event_limit: 2,
            ..config(&stack)
        })
        .await;
    let mut first = stack.connect(&g, "first").await;
    join(&mut first, "big").await;
    let mut second = stack.connect(&g, "second").await;
    join(&mut second, "big").await;
    let p = next_presence(&mut first, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(p["user"], "second", "within the limit, joins are announced");
    let mut third = stack.connect(&g, "third").await;
    let j = join(&mut third, "big").await;
    assert_eq!(j["online_count"], 3, "joined still counts everyone");
    assert_no_presence(&mut first, Duration::from_secs(1)).await;
    let suppressed = metric(&g, "gateway_presence_room_events_suppressed_total").await;
    assert!(
        suppressed.is_some_and(|n| n >= 1.0),
        "suppression is counted: {suppressed:?}"
    );
}

#[tokio::test]
async fn a_close_as_the_first_frame_still_goes_offline_after_the_grace_period() {
    // A client that closes before sending anything else goes offline after the grace period, not
    // after the TTL. (A presence refresh started by the Close frame used to be able to land after
    // the close's delete; this test rarely loses that race, `bench/tests/smoke.rs`'s presence churn,
    // with 40 such closes, reliably did.)
    let stack = Stack::start();
    let long_ttl = Duration::from_secs(60);
    let g = stack
        .gateway_with(gateway::Config {
            presence_ttl: long_ttl,
            ..config(&stack)
        })
        .await;
    let mut watcher = stack.connect(&g, "watcher").await;
    watch(&mut watcher, &["alice"]).await;
    for cycle in 0..5 {
        let mut alice = stack.connect(&g, "alice").await;
        let on = next_presence(&mut watcher, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(on["online"], true, "cycle {cycle}: {on}");
        alice.inner().close(None).await.unwrap();
        let off = next_presence(&mut watcher, GRACE + Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| {
                panic!("cycle {cycle}: no offline event within the grace period: {e}")
            });
        assert_eq!(off["online"], false, "cycle {cycle}: {off}");
    }
}

#[tokio::test]
async fn more_than_a_thousand_watches_all_work() {
    // nats-server 2.15 caps a stream at 1000 consumers unless the stream sets its own limit; every
    // watched user is a consumer. Six connections watching 200 distinct users each need 1200.
    let stack = Stack::start();
    let g = stack.gateway_with(config(&stack)).await;
    let mut watchers = Vec::new();
    for w in 0..6 {
        let mut c = stack.connect(&g, &format!("watcher{w}")).await;
        let users: Vec<String> = (0..200).map(|i| format!("u{w}x{i}")).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let states = watch(&mut c, &refs).await;
        assert_eq!(states.len(), 200, "watcher {w}");
        watchers.push(c);
    }
    // The last user watched comes online: its watcher hears of it.
    let _last = stack.connect(&g, "u5x199").await;
    let on = next_presence(&mut watchers[5], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (on["user"].as_str(), on["online"].as_bool()),
        (Some("u5x199"), Some(true))
    );
}

#[tokio::test]
async fn gateways_starting_together_on_a_fresh_server_all_come_up() {
    // They race to create the presence bucket and raise its consumer limit; none may give up.
    let stack = Stack::start();
    let mut starts = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = token::KeySet::new("liaotian");
        keys.insert(stack.signer.kid().to_owned(), stack.signer.public_key());
        let task = tokio::spawn(gateway::run(
            listener,
            config(&stack),
            keys,
            std::future::pending(),
        ));
        starts.push((addr, task));
    }
    for (addr, task) in &starts {
        gateway::testing::wait_ready(*addr).await;
        assert!(!task.is_finished(), "gateway at {addr} stopped");
        let (mut c, welcome) = WsClient::connect(*addr, &stack.token("alice"))
            .await
            .unwrap();
        assert_eq!(welcome["type"], "welcome");
        c.send(json!({"type":"ping","id":"p"})).await.unwrap();
        assert_eq!(c.recv_type("pong").await.unwrap()["id"], "p");
    }
}
