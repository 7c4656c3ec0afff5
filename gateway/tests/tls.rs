//! The gateway terminates TLS itself (wss://) with rustls, TLS 1.2 and up.

use std::sync::Arc;

use gateway::testing::Stack;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn wss_with_a_configured_certificate() {
    // A client that trusts the configured certificate completes a TLS 1.2 handshake and then chat.v1.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stack = Stack::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = testkit::temp_dir("liaotian-tls").unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let g = stack
        .gateway_with(gateway::Config {
            tls_cert: Some(cert_path.to_str().unwrap().to_owned()),
            tls_key: Some(key_path.to_str().unwrap().to_owned()),
            ..stack.config()
        })
        .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_cfg =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut req = format!("wss://localhost:{}/ws", g.addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.token("alice")).parse().unwrap(),
    );
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v1"
    );
    use futures_util::StreamExt;
    let welcome = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(welcome.contains("\"type\":\"welcome\""), "{welcome}");

    // Plain TCP without TLS gets no WebSocket.
    let plain = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws?token={}",
        g.addr,
        stack.token("bob")
    ))
    .await;
    assert!(plain.is_err());
}
