//! The store contract: one suite, run against SQLite and against the ScyllaDB backend on a real CQL
//! server (a Cassandra node from testkit, or the cluster in `SCYLLA_URI`).

use persister::store::{DeadLetter, PageQuery, Record, Store};
use protocol::frame::Item;
use protocol::group::{EventKind, GroupEvent};
use protocol::subject::Conversation;
use protocol::{ClientMsgId, GroupId, RoomId, StoredMessage, UserId};

/// Messages in the paging conversation.
const N: u64 = 1000;

fn room(name: &str) -> Conversation {
    Conversation::Room(RoomId::parse(name).unwrap())
}

fn record(conv: &Conversation, seq: u64) -> Record {
    let (room, to, group) = match conv {
        Conversation::Room(r) => (Some(r.clone()), None, None),
        Conversation::Group(g) => (None, None, Some(g.clone())),
        Conversation::Dm { hi, .. } => (None, Some(hi.clone()), None),
    };
    let from = match conv {
        Conversation::Dm { lo, .. } => lo.clone(),
        _ => UserId::parse("alice").unwrap(),
    };
    // A group's every other item is a membership event.
    let event = (group.is_some() && seq.is_multiple_of(2)).then(|| {
        Box::new(GroupEvent {
            kind: EventKind::Added,
            users: vec![UserId::parse(format!("u{seq}")).unwrap()],
            name: None,
            role: None,
            owner: None,
        })
    });
    Record {
        conv: conv.clone(),
        seq,
        msg: StoredMessage {
            mentions: Vec::new(),
            from,
            room,
            to,
            text: if event.is_some() {
                String::new()
            } else {
                format!("message {seq}")
            },
            group,
            event,
            client_msg_id: ClientMsgId::parse(format!("c{seq}")).unwrap(),
            ts: 1_700_000_000_000 + seq,
        },
    }
}

fn q(conv: &Conversation, before: Option<u64>, after: Option<u64>, limit: u32) -> PageQuery {
    PageQuery::new(conv.clone(), before, after, limit).unwrap()
}

fn seqs(page: &persister::store::Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq()).collect()
}

/// Runs every contract check against `store`. `tag` makes conversation names unique per run, so a
/// shared Scylla keyspace can be reused.
async fn contract_suite(store: &dyn Store, tag: &str) {
    let paged = room(&format!("paged{tag}"));
    let other = room(&format!("other{tag}"));
    let dm = Conversation::dm(
        UserId::parse(format!("bob{tag}")).unwrap(),
        UserId::parse(format!("alice{tag}")).unwrap(),
    )
    .unwrap();

    // Idempotent rewrite: the same batch twice, and an overlapping batch, leave one copy each.
    let batch: Vec<Record> = (1..=10).map(|s| record(&other, s)).collect();
    store.write_batch(&batch).await.unwrap();
    store.write_batch(&batch).await.unwrap();
    store.write_batch(&batch[5..]).await.unwrap();
    assert_eq!(store.count(&other).await.unwrap(), 10);
    store.write_batch(&[]).await.unwrap();

    // The paged room gets seq 100 + 3i, interleaved with the DM (101 + 3i), in mixed batches.
    let p: Vec<u64> = (0..N).map(|i| 100 + 3 * i).collect();
    let all: Vec<Record> = p
        .iter()
        .flat_map(|&s| [record(&paged, s), record(&dm, s + 1)])
        .collect();
    for chunk in all.chunks(250) {
        store.write_batch(chunk).await.unwrap();
    }
    assert_eq!(store.count(&paged).await.unwrap(), N);
    assert_eq!(store.count(&dm).await.unwrap(), N);

    // Backward from the newest: 10 full pages, `more` true until the oldest page, prev_seq exact.
    let mut got = Vec::new();
    let mut before = None;
    for page_no in 1..=10 {
        let page = store.page(&q(&paged, before, None, 100)).await.unwrap();
        let s = seqs(&page);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "ascending");
        assert_eq!(page.more, page_no < 10, "page {page_no}");
        for m in &page.messages {
            let idx = p.binary_search(&m.seq()).unwrap();
            let prev = if idx == 0 { 0 } else { p[idx - 1] };
            assert_eq!(m.prev_seq(), prev, "prev_seq of {}", m.seq());
            assert_eq!(
                m.message()
                    .unwrap()
                    .room
                    .as_ref()
                    .map(|r| r.as_str().to_owned()),
                Some(format!("paged{tag}"))
            );
        }
        before = Some(s[0]);
        got.splice(0..0, s);
    }
    assert_eq!(got, p);
    let empty = store.page(&q(&paged, before, None, 100)).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.more);

    // Forward from the start with a limit that does not divide N: 142 pages of 7, then one of 6.
    let mut got: Vec<u64> = Vec::new();
    let mut after = Some(0);
    loop {
        let page = store.page(&q(&paged, None, after, 7)).await.unwrap();
        let s = seqs(&page);
        if got.is_empty() {
            assert_eq!(page.messages[0].prev_seq(), 0);
        } else {
            assert_eq!(page.messages[0].prev_seq(), *got.last().unwrap());
        }
        got.extend(&s);
        if !page.more {
            assert_eq!(s.len(), 6);
            break;
        }
        assert_eq!(s.len(), 7);
        after = s.last().copied();
    }
    assert_eq!(got, p);
    let end = store
        .page(&q(&paged, None, Some(p[999]), 100))
        .await
        .unwrap();
    assert!(end.messages.is_empty() && !end.more);

    // Both bounds: the oldest messages strictly between, `more` exact at the boundary.
    let page = store
        .page(&q(&paged, Some(p[20]), Some(p[10]), 5))
        .await
        .unwrap();
    assert_eq!(seqs(&page), p[11..16]);
    assert!(page.more);
    assert_eq!(page.messages[0].prev_seq(), p[10]);
    let page = store
        .page(&q(&paged, Some(p[20]), Some(p[10]), 9))
        .await
        .unwrap();
    assert_eq!(seqs(&page), p[11..20]);
    assert!(!page.more);
    let page = store
        .page(&q(&paged, Some(p[20]), Some(p[10]), 100))
        .await
        .unwrap();
    assert_eq!(seqs(&page), p[11..20]);
    assert!(!page.more);

    // Bounds that fall between stored sequences, and the exact first message.
    let page = store
        .page(&q(&paged, Some(p[500] + 1), None, 3))
        .await
        .unwrap();
    assert_eq!(seqs(&page), p[498..=500]);
    assert_eq!(page.messages[0].prev_seq(), p[497]);
    let page = store.page(&q(&paged, Some(p[1]), None, 100)).await.unwrap();
    assert_eq!(seqs(&page), [p[0]]);
    assert!(!page.more);
    assert_eq!(page.messages[0].prev_seq(), 0);

    // DM and room isolation: each conversation sees only its own messages.
    let page = store.page(&q(&dm, None, None, 100)).await.unwrap();
    assert_eq!(page.messages.len(), 100);
    assert!(page.more);
    for m in &page.messages {
        assert_eq!(m.seq() % 3, 2, "a DM seq");
        assert!(m.message().unwrap().room.is_none());
        assert_eq!(
            m.message()
                .unwrap()
                .to
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            Some(format!("bob{tag}"))
        );
        assert_eq!(m.prev_seq(), if m.seq() == 101 { 0 } else { m.seq() - 3 });
    }
    // A group keeps its messages and events in one chain, each read back as what it is.
    let group = Conversation::Group(GroupId::parse(format!("team{tag}")).unwrap());
    let items: Vec<Record> = (201..=210).map(|s| record(&group, s)).collect();
    store.write_batch(&items).await.unwrap();
    let page = store.page(&q(&group, None, None, 100)).await.unwrap();
    assert_eq!(seqs(&page), (201..=210).collect::<Vec<_>>());
    for item in &page.messages {
        match item {
            Item::Event(e) => {
                assert_eq!(e.seq % 2, 0, "events are the even seqs");
                assert_eq!(e.event.kind, EventKind::Added);
                assert_eq!(e.event.users[0].as_str(), format!("u{}", e.seq));
                assert_eq!(e.group.as_str(), format!("team{tag}"));
            }
            Item::Message(m) => {
                assert_eq!(m.seq % 2, 1);
                assert_eq!(m.text, format!("message {}", m.seq));
                assert_eq!(
                    m.group.as_ref().map(|g| g.as_str().to_owned()),
                    Some(format!("team{tag}"))
                );
            }
        }
        assert_eq!(
            item.prev_seq(),
            if item.seq() == 201 { 0 } else { item.seq() - 1 }
        );
    }
    // Rooms and groups of the same name are different conversations to the store.
    assert_eq!(store.count(&room(&format!("team{tag}"))).await.unwrap(), 0);

    let page = store.page(&q(&other, None, None, 100)).await.unwrap();
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<_>>());
    assert!(!page.more);
    let nobody = room(&format!("nobody{tag}"));
    let page = store.page(&q(&nobody, None, None, 1)).await.unwrap();
    assert!(page.messages.is_empty() && !page.more);
}

fn u(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// A stored message of `conv` from `from` (text `text`), or an event when `event` is given.
fn item(conv: &Conversation, seq: u64, from: &str, event: Option<GroupEvent>) -> Record {
    let (to, group) = match conv {
        Conversation::Dm { lo, hi } => (
            Some(if lo.as_str() == from { hi } else { lo }.clone()),
            None,
        ),
        Conversation::Group(g) => (None, Some(g.clone())),
        Conversation::Room(_) => (None, None),
    };
    Record {
        conv: conv.clone(),
        seq,
        msg: StoredMessage {
            mentions: Vec::new(),
            from: u(from),
            room: None,
            to,
            group,
            text: if event.is_some() {
                String::new()
            } else {
                format!("m{seq}")
            },
            event: event.map(Box::new),
            client_msg_id: ClientMsgId::parse(format!("c{seq}")).unwrap(),
            ts: seq,
        },
    }
}

fn event(kind: EventKind, users: &[&str]) -> GroupEvent {
    GroupEvent {
        kind,
        users: users.iter().map(|s| u(s)).collect(),
        name: (kind == EventKind::Created).then(|| "Team".to_owned()),
        role: None,
        owner: None,
    }
}

/// The conversation index: lists, read positions and exact unread counts, built from the stored
/// messages and events, idempotent under redelivery.
async fn conv_suite(store: &dyn Store, tag: &str) {
    let (alice, bob, carol, dave) = (
        format!("alice{tag}"),
        format!("bob{tag}"),
        format!("carol{tag}"),
        format!("dave{tag}"),
    );
    let dm = Conversation::dm(u(&alice), u(&bob)).unwrap();
    let team = Conversation::Group(GroupId::parse(format!("team{tag}")).unwrap());
    let mut log = vec![
        item(&dm, 1001, &alice, None),
        item(&dm, 1002, &alice, None),
        item(&dm, 1003, &alice, None),
        item(&dm, 1004, &bob, None),
        item(
            &team,
            1005,
            &alice,
            Some(event(EventKind::Created, &[&alice, &bob, &carol])),
        ),
    ];
    for seq in 1006..=1010 {
        log.push(item(&team, seq, &alice, None));
    }
    log.push(item(
        &team,
        1011,
        &alice,
        Some(event(EventKind::Added, &[&dave])),
    ));
    log.push(item(&team, 1012, &bob, None));
    log.push(item(
        &team,
        1013,
        &alice,
        Some(event(EventKind::Removed, &[&carol])),
    ));
    log.push(item(&team, 1014, &alice, None));
    store.write_batch(&log[..7]).await.unwrap();
    store.write_batch(&log[7..]).await.unwrap();
    // Redelivered batches change nothing.
    store.write_batch(&log[3..12]).await.unwrap();
    store.write_batch(&log).await.unwrap();

    let state = |user: String, conv: Conversation| async move {
        store.read_state(&u(&user), &conv).await.unwrap()
    };
    // Sending marks read: alice read her thread up to her own last message; bob's one is unread.
    let s = state(alice.clone(), dm.clone()).await;
    assert_eq!((s.read_seq, s.unread), (1003, 1));
    let s = state(bob.clone(), dm.clone()).await;
    assert_eq!((s.read_seq, s.unread), (1004, 0));
    // In the group: bob read up to his message at 1012; alice's 1014 follows. Events do not count.
    let s = state(bob.clone(), team.clone()).await;
    assert_eq!((s.read_seq, s.unread), (1012, 1));
    // dave counts from his joining: 1012 and 1014.
    let s = state(dave.clone(), team.clone()).await;
    assert_eq!((s.read_seq, s.unread), (1011, 2));
    // carol left at 1013: her count stops there (the five messages and bob's).
    let s = state(carol.clone(), team.clone()).await;
    assert_eq!((s.read_seq, s.unread), (1005, 6));

    // Reads never move back, and clamp to the newest.
    let (s, moved) = store.mark_read(&u(&bob), &team, 1008).await.unwrap();
    assert!(!moved);
    assert_eq!((s.read_seq, s.unread), (1012, 1));
    let (s, moved) = store.mark_read(&u(&dave), &team, 1_000_000).await.unwrap();
    assert!(moved);
    assert_eq!((s.read_seq, s.unread), (1014, 0));
    let (s, _) = store.mark_read(&u(&carol), &team, 1_000_000).await.unwrap();
    assert_eq!(
        (s.read_seq, s.unread),
        (1013, 0),
        "a member who left reads up to their leaving"
    );
    // Many at once, as the conversation service commits them: in order, each on the one before.
    let states = store
        .mark_read_many(&[(u(&alice), dm.clone(), 1004), (u(&alice), dm.clone(), 1002)])
        .await
        .unwrap();
    assert_eq!(
        states
            .iter()
            .map(|(s, m)| (s.read_seq, s.unread, *m))
            .collect::<Vec<_>>(),
        [(1004, 0, true), (1004, 0, false)]
    );
    let (s, moved) = store.mark_read(&u(&dave), &team, 1009).await.unwrap();
    assert!(!moved);
    assert_eq!(s.read_seq, 1014);
    assert_eq!(store.newest(&team).await.unwrap(), 1014);
    assert_eq!(
        store.readers(&team, 1013).await.unwrap(),
        vec![u(&alice), u(&dave)],
        "current members read up to 1013 (alice by sending 1014)"
    );

    // The lists: newest activity first, the last item, names and member counts.
    let (items, more) = store.conversations(&u(&bob), 50, None).await.unwrap();
    assert!(!more);
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0].group.as_ref().map(|g| g.as_str().to_owned()),
        Some(format!("team{tag}"))
    );
    assert_eq!(items[0].name.as_deref(), Some("Team"));
    assert_eq!(items[0].members, Some(3));
    assert_eq!(items[0].activity, 1014);
    assert_eq!(items[0].unread, 1);
    assert_eq!(items[0].last.as_ref().map(Item::seq), Some(1014));
    assert_eq!(
        items[1].with.as_ref().map(|w| w.as_str().to_owned()),
        Some(alice.clone())
    );
    assert_eq!((items[1].activity, items[1].unread), (1004, 0));
    // A member who left keeps the group, frozen at their leaving.
    let (items, _) = store.conversations(&u(&carol), 50, None).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].activity, 1013);
    assert!(
        matches!(items[0].last, Some(Item::Event(ref e)) if e.event.kind == EventKind::Removed)
    );
    // Hidden until the next message.
    store.hide(&u(&bob), &dm).await.unwrap();
    let (items, _) = store.conversations(&u(&bob), 50, None).await.unwrap();
    assert_eq!(items.len(), 1);
    store
        .write_batch(&[item(&dm, 1015, &alice, None)])
        .await
        .unwrap();
    let (items, _) = store.conversations(&u(&bob), 50, None).await.unwrap();
    assert_eq!(
        items[0].with.as_ref().map(|w| w.as_str().to_owned()),
        Some(alice.clone())
    );
    assert_eq!(items[0].unread, 1);

    // Contacts: a thread with a message, or a group both are current members of.
    let among: Vec<UserId> = [&alice, &bob, &carol, &dave, &"stranger".to_owned()]
        .iter()
        .map(|s| u(s))
        .collect();
    assert_eq!(
        store.contacts(&u(&bob), &among).await.unwrap(),
        vec![u(&alice), u(&bob), u(&dave)],
        "carol left the group, and bob never wrote to her"
    );
    assert_eq!(
        store.contacts(&u(&carol), &among).await.unwrap(),
        vec![u(&carol)]
    );

    assert_eq!(
        store
            .group_counts(&[u(&alice), u(&carol), u(&dave), u("stranger")])
            .await
            .unwrap(),
        vec![1, 0, 1, 0]
    );

    // Paging: 30 threads, in pages of 7, each once, newest first.
    let pager = format!("pager{tag}");
    let threads: Vec<Record> = (0..30)
        .map(|i| {
            let conv = Conversation::dm(u(&pager), u(&format!("p{i}{tag}"))).unwrap();
            item(&conv, 2000 + i, &format!("p{i}{tag}"), None)
        })
        .collect();
    store.write_batch(&threads).await.unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let (items, more) = store.conversations(&u(&pager), 7, before).await.unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|i| i.activity));
        before = items.last().map(|i| i.activity);
        if !more {
            break;
        }
    }
    assert_eq!(seen, (2000..2030).rev().collect::<Vec<_>>());
}

/// Dead letters are kept once per seq with their subject, payload and error.
async fn dead_letter_suite(store: &dyn Store, base: u64) {
    let a = DeadLetter {
        seq: base + 1,
        subject: "chat.in.room.a.b".into(),
        payload: b"x".to_vec(),
        error: "bad subject".into(),
    };
    let b = DeadLetter {
        seq: base + 2,
        subject: "chat.in.room.r".into(),
        payload: vec![0xc1, 0xff],
        error: "bad payload".into(),
    };
    store.dead_letter(&a).await.unwrap();
    store.dead_letter(&b).await.unwrap();
    store.dead_letter(&a).await.unwrap();
    let listed: Vec<DeadLetter> = store
        .dead_letters(10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.seq > base && d.seq <= base + 2)
        .collect();
    assert_eq!(listed, vec![a, b]);
}

// Proves the SQLite backend meets the whole store contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_meets_the_store_contract() {
    let dir = testkit::temp_dir("persister-contract").unwrap();
    let store = persister::store::SqliteStore::open(dir.path().join("h.db"))
        .await
        .unwrap();
    contract_suite(&store, "").await;
    dead_letter_suite(&store, 0).await;
    conv_suite(&store, "-c").await;
}

// Proves the ScyllaDB backend meets the same contract, against a real CQL server: the test run's
// Cassandra node (testkit::cassandra), or the cluster in SCYLLA_URI when one is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_meets_the_store_contract() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (hosts, keyspace) = match std::env::var("SCYLLA_URI") {
        Ok(uri) => match persister::StoreConfig::parse(&uri).expect("SCYLLA_URI") {
            persister::StoreConfig::Scylla { hosts, keyspace } => (hosts, keyspace),
            _ => panic!("SCYLLA_URI must be scylla://host1,host2/keyspace"),
        },
        Err(_) => (
            vec![testkit::cassandra::shared().unwrap()],
            format!("contract_{nanos}"),
        ),
    };
    let replication = std::env::var("SCYLLA_REPLICATION")
        .unwrap_or_else(|_| "{'class': 'SimpleStrategy', 'replication_factor': 1}".into());
    let store = persister::store::ScyllaStore::connect(&hosts, &keyspace, &replication)
        .await
        .unwrap();
    contract_suite(&store, &format!("x{nanos}")).await;
    dead_letter_suite(&store, (nanos % 1_000_000_000) as u64 * 10).await;
    conv_suite(&store, &format!("c{nanos}")).await;
}
