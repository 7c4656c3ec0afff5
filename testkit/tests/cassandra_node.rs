//! The shared Cassandra node's launcher, as `cargo xtask test` runs it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Starts the launcher and returns it with the address it printed, checked to accept connections.
fn launch() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cassandra-node"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let host = line.trim().to_owned();
    assert!(host.starts_with("127.0.0.1:"), "{line:?}");
    assert!(TcpStream::connect(&host).is_ok());
    (child, host)
}

fn assert_gone(host: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(host).is_ok() {
        assert!(Instant::now() < deadline, "the JVM outlived its launcher");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Proves the launcher prints the address of a node that accepts CQL connections, and that the
// node is gone once the launcher's stdin closes, as when `cargo xtask test` ends.
#[test]
fn the_node_serves_until_its_launcher_lets_go() {
    let (mut child, host) = launch();
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_gone(&host);
}

// Proves the node dies with a launcher that is killed (SIGKILL, no destructor runs): the JVM's
// guard shell sees its stdin close.
#[test]
fn the_node_dies_with_a_killed_launcher() {
    let (mut child, host) = launch();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_gone(&host);
}
