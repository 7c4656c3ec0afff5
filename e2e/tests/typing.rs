//! `typing`, as its specification: passed on to the other user of a thread and the other members
//! of a small group on any gateway, throttled per connection, refused to non-members, never stored,
//! and not sent in groups above the receipt limit. Real nats-server, two gateways, a persister.

use std::time::Duration;

use e2e::{Persister, Stack, ask, code, next_within};
use serde_json::json;

#[tokio::test]
async fn typing_reaches_the_other_side_once_per_interval_and_is_never_stored() {
    let stack = Stack::start();
    let g1 = stack.gateway_with(stack.config_unlimited()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut alice_laptop = stack.connect(&g2, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    alice
        .send(json!({"type":"typing","with":"bob"}))
        .await
        .unwrap();
    let t = bob.recv_type("typing").await.unwrap();
    assert_eq!(t, json!({"type":"typing","with":"alice","user":"alice"}));
    // Within the interval, a second one is dropped without an answer.
    alice
        .send(json!({"type":"typing","with":"bob","id":"t2"}))
        .await
        .unwrap();
    assert_eq!(
        next_within(&mut bob, Duration::from_millis(600)).await,
        None
    );
    assert_eq!(
        next_within(&mut alice, Duration::from_millis(100)).await,
        None
    );
    assert_eq!(
        next_within(&mut alice_laptop, Duration::from_millis(100)).await,
        None,
        "the typer's own devices are not told"
    );
    // Never stored: the thread has no message.
    let r = ask(
        &mut bob,
        json!({"type":"resume","with":"alice","since":0,"id":"r"}),
        "resumed",
    )
    .await;
    assert_eq!(r["last_seq"], 0, "{r}");
    // Bad input.
    for (f, want) in [
        (
            json!({"type":"typing","with":"alice","id":"x"}),
            "bad_request",
        ),
        (json!({"type":"typing","id":"x"}), "bad_request"),
        (
            json!({"type":"typing","with":"bad id!","id":"x"}),
            "invalid_id",
        ),
        (
            json!({"type":"typing","group":"g","with":"bob","id":"x"}),
            "bad_request",
        ),
    ] {
        let r = ask(&mut alice_laptop, f.clone(), "never").await;
        assert_eq!(code(&r), want, "{f} -> {r}");
    }
}

#[tokio::test]
async fn typing_in_a_group_reaches_the_other_members_and_not_above_the_limit() {
    let stack = Stack::start();
    let config = gateway::Config {
        group_receipt_limit: 3,
        ..stack.config_unlimited()
    };
    let g1 = stack.gateway_with(config.clone()).await;
    let g2 = stack.gateway_with(config).await;
    let _persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    let mut carol = stack.connect(&g1, "carol").await;
    let mut dave = stack.connect(&g2, "dave").await;
    for (group, members) in [
        ("small", vec!["bob", "carol"]),
        ("big", vec!["bob", "carol", "dave"]),
    ] {
        let g = ask(
            &mut alice,
            json!({"type":"group_create","group":group,"name":group,"members":members,"id":"c"}),
            "group",
        )
        .await;
        assert_eq!(g["type"], "group", "{g}");
    }
    // The members were told of the groups; those frames are not what this test is about.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in [&mut bob, &mut carol, &mut dave] {
        while next_within(c, Duration::from_millis(50)).await.is_some() {}
    }
    alice
        .send(json!({"type":"typing","group":"small"}))
        .await
        .unwrap();
    for c in [&mut bob, &mut carol] {
        let t = c.recv_type("typing").await.unwrap();
        assert_eq!(t, json!({"type":"typing","group":"small","user":"alice"}));
    }
    assert_eq!(
        next_within(&mut dave, Duration::from_millis(300)).await,
        None
    );
    // A non-member gets `forbidden`, as for every group frame.
    let r = ask(
        &mut dave,
        json!({"type":"typing","group":"small","id":"d"}),
        "never",
    )
    .await;
    assert_eq!(code(&r), "forbidden", "{r}");
    // Four members, above the limit of 3: nobody is told.
    bob.send(json!({"type":"typing","group":"big"}))
        .await
        .unwrap();
    for c in [&mut alice, &mut carol, &mut dave] {
        assert_eq!(next_within(c, Duration::from_millis(400)).await, None);
    }
}
