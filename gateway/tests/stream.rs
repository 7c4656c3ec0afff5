//! Stream `CHAT`'s settings have one owner: a gateway creates the stream when there is none, but
//! never changes an existing one, and refuses to start when its `CHAT_*` settings differ; only the
//! operator's `gateway stream apply` changes them. Real nats-server.

use std::time::Duration;

use gateway::testing::Stack;

async fn stream_config(stack: &Stack) -> async_nats::jetstream::stream::Config {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut s = js.get_stream("CHAT").await.unwrap();
    s.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn a_gateway_with_smaller_settings_changes_nothing_and_refuses_to_start() {
    let stack = Stack::start();
    let _first = stack.gateway().await;
    let before = stream_config(&stack).await;
    let mut small = stack.config();
    small.stream.max_bytes = 1 << 20;
    small.stream.max_age = Duration::from_secs(60);
    small.stream.duplicate_window = Duration::from_secs(30);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys = token::KeySet::new("liaotian");
    let signer = token::Signer::generate("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let run = gateway::run(listener, small.clone(), keys, std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the gateway with other settings did not stop")
        .expect_err("it must refuse to start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("CHAT_MAX_BYTES") && msg.contains("CHAT_MAX_AGE_SECS"),
        "{msg}"
    );
    assert!(msg.contains("gateway stream apply"), "{msg}");
    let after = stream_config(&stack).await;
    assert_eq!(after.max_bytes, before.max_bytes, "retention unchanged");
    assert_eq!(after.max_age, before.max_age);

    // The operator's step changes them, and then such a gateway starts.
    gateway::stream_admin::apply(&small).await.unwrap();
    let applied = stream_config(&stack).await;
    assert_eq!(applied.max_bytes, 1 << 20);
    assert_eq!(applied.max_age, Duration::from_secs(60));
    gateway::stream_admin::check(&small).await.unwrap();
    assert!(gateway::stream_admin::check(&stack.config()).await.is_err());
    let _second = stack.gateway_with(small).await;
}
