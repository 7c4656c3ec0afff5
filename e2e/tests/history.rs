//! History through the gateway: resume served from the persister's store once the stream no
//! longer holds the range, and history pages, through a real gateway, nats-server and persister on
//! SQLite.

use std::time::Duration;

use e2e::{Backend, Persister, Stack, join, resume_and_check, send_many};
use serde_json::{Value, json};
use testkit::WsClient;

#[tokio::test]
async fn resume_reads_from_the_persister_when_the_stream_no_longer_holds_the_range() {
    // After the stream dropped old messages (here: a purge), a resume is served by the persister's history.
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut sender = stack.connect(&g, "sender").await;
    join(&mut sender, "old").await;
    let missed = send_many(&mut sender, "old", "p", 500).await;
    // Wait until the persister stored them all, then purge the stream.
    let mut probe = stack.connect(&g, "probe").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        probe
            .send(json!({"type":"history","room":"old","after": missed[498], "limit": 5}))
            .await
            .unwrap();
        let h = history_or_unavailable(&mut probe).await;
        if h.is_some_and(|h| h["messages"].as_array().is_some_and(|m| m.len() == 1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "persister did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    js.get_stream("CHAT").await.unwrap().purge().await.unwrap();
    // A gateway trusts "the stream has dropped nothing" for this long (docs/protocol.md).
    tokio::time::sleep(gateway::backlog::NOTHING_DROPPED_TTL).await;
    resume_and_check(&stack, &g, "old", 0, &missed, false).await;
}

#[tokio::test]
async fn history_pages_back_and_forth_through_the_gateway() {
    history_pages_back_and_forth_through_the_gateway_on(Backend::Sqlite).await;
}

// Proves the same with the persister on the ScyllaDB store (the test run's Cassandra node).
#[tokio::test]
async fn history_pages_back_and_forth_through_the_gateway_on_scylla() {
    history_pages_back_and_forth_through_the_gateway_on(Backend::Scylla).await;
}

async fn history_pages_back_and_forth_through_the_gateway_on(backend: Backend) {
    // history pages come from the persister in seq order with exact `more`; bad limits are bad_request.
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start_on(&stack, backend).await;
    let mut c = stack.connect(&g, "alice").await;
    join(&mut c, "h").await;
    let seqs = send_many(&mut c, "h", "h", 120).await;
    let page = |before: Option<u64>, after: Option<u64>, limit: u64| {
        let mut f = json!({"type":"history","room":"h","limit":limit,"id":"q"});
        if let Some(b) = before {
            f["before"] = json!(b);
        }
        if let Some(a) = after {
            f["after"] = json!(a);
        }
        f
    };
    // Wait until all 120 are persisted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let newest = loop {
        c.send(page(None, None, 50)).await.unwrap();
        if let Some(h) = history_or_unavailable(&mut c).await
            && h["messages"]
                .as_array()
                .unwrap()
                .last()
                .map(|m| m["seq"].as_u64().unwrap())
                == Some(seqs[119])
        {
            break h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "persister did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seqs_of = |h: &Value| {
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs_of(&newest), seqs[70..]);
    assert_eq!(
        (
            newest["more"].as_bool(),
            newest["room"].as_str(),
            newest["id"].as_str()
        ),
        (Some(true), Some("h"), Some("q"))
    );
    c.send(page(Some(seqs[70]), None, 50)).await.unwrap();
    let older = c.recv_type("history").await.unwrap();
    assert_eq!(seqs_of(&older), seqs[20..70]);
    assert_eq!(older["more"], true);
    c.send(page(Some(seqs[20]), None, 50)).await.unwrap();
    let oldest = c.recv_type("history").await.unwrap();
    assert_eq!(seqs_of(&oldest), seqs[..20]);
    assert_eq!(oldest["more"], false);
    c.send(page(None, Some(seqs[99]), 50)).await.unwrap();
    let forward = c.recv_type("history").await.unwrap();
    assert_eq!(seqs_of(&forward), seqs[100..]);
    assert_eq!(forward["more"], false);
    for limit in [0, 101] {
        c.send(page(None, None, limit)).await.unwrap();
        assert_eq!(c.recv_type("error").await.unwrap()["code"], "bad_request");
    }
}

/// The answer to a `history` request: the page, or `None` while the history service is not up yet
/// (`unavailable`: the persister started in the same test may still be connecting).
async fn history_or_unavailable(c: &mut WsClient) -> Option<Value> {
    loop {
        let v = c.recv().await.unwrap();
        match v["type"].as_str() {
            Some("history") => return Some(v),
            Some("error") if v["code"] == "unavailable" => return None,
            _ => {}
        }
    }
}
