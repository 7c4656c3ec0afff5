//! A real Apache Cassandra 5.0 node, for the tests of the ScyllaDB store.
//!
//! No registry this project can reach ships ScyllaDB, and no Docker engine runs here. Cassandra
//! speaks the same CQL protocol and accepts every statement the store uses, so the store is tested
//! against it (docs/persister.md says what only ScyllaDB itself could show). Its jars come from
//! Maven Central through `testkit/cassandra/pom.xml`, copied once into the workspace's `target/`;
//! the node runs with `java` on ephemeral loopback ports, a small heap and a temp data directory.
//!
//! A node takes seconds and a JVM's memory to start, so a test run shares one: `cargo xtask test`
//! starts it and passes its address to every test process in [`SHARED_ENV`]; a test binary run on
//! its own starts one for itself on first use ([`shared`]). Tests isolate by keyspace.
//!
//! The JVM runs under a small shell that kills it when the standard input it reads from closes, so
//! a node never outlives the process that started it, even one that exits without dropping it.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};

use crate::TempDir;

/// The Cassandra release the pom resolves (kept equal to its `<version>` by a test).
pub const CASSANDRA_VERSION: &str = "5.0.6";
/// The variable that hands a running node's `host:port` to test processes.
pub const SHARED_ENV: &str = "LIAOTIAN_TEST_CQL";
/// How long a node may take to accept CQL connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Port pairs tried before giving up (another process may take a port between pick and bind).
const START_ATTEMPTS: usize = 3;
/// The JVM's heap: small, since a test node holds a few thousand rows.
const HEAP: &str = "-Xmx768m";

/// The options Cassandra's `conf/jvm17-server.options` gives the JVM on Java 17: the internals
/// it opens, and the attach permission its startup checks need.
const JVM17_OPTIONS: &[&str] = &[
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
];

/// A running single-node Cassandra. Killed, and its data removed, on drop.
pub struct CassandraServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl CassandraServer {
    /// Resolves the jars if needed, starts a node on free loopback ports with a fresh data
    /// directory, and waits until it accepts CQL connections.
    pub fn start() -> anyhow::Result<Self> {
        let lib = jars()?;
        let dir = crate::temp_dir("liaotian-cassandra")?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match spawn(&lib, dir.path()) {
                Ok((child, port)) => {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    /// `127.0.0.1:<port>`, the node's CQL address.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The node's log (warnings and start-up milestones).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("cassandra.log")
    }

    /// Kills the node (SIGKILL, through its guard shell) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

impl Drop for CassandraServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address of the node this test run shares: the one named in [`SHARED_ENV`], or else one
/// this process starts on first use and keeps until it exits.
pub fn shared() -> anyhow::Result<String> {
    if let Ok(host) = std::env::var(SHARED_ENV) {
        return Ok(host);
    }
    static NODE: OnceLock<Result<String, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        // Kept for the life of the process: its guard shell ends the JVM when the process exits.
        let node = CassandraServer::start().map_err(|e| format!("{e:#}"))?;
        let host = node.host();
        std::mem::forget(node);
        Ok(host)
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("starting the shared Cassandra node: {e}"))
}

/// The directory of Cassandra's jars, copied from Maven Central by `mvn` on first use.
pub fn jars() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("../target"), PathBuf::from);
    let lib = target.join(format!("cassandra-{CASSANDRA_VERSION}"));
    if lib.join("complete").exists() {
        return Ok(lib);
    }
    // Copied into a directory of this process's own, then renamed: parallel first uses do not
    // see each other's half-copied jars.
    let partial = target.join(format!(
        "cassandra-{CASSANDRA_VERSION}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    let pom = manifest.join("cassandra/pom.xml");
    let out = Command::new(mvn_bin())
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", partial.display()))
        .arg("-DincludeScope=runtime")
        .stdin(Stdio::null())
        .output()
        .context("running `mvn` to fetch Cassandra's jars (is Maven installed?)")?;
    if !out.status.success() {
        bail!(
            "mvn could not fetch Cassandra {CASSANDRA_VERSION}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::File::create(partial.join("complete"))?;
    if std::fs::rename(&partial, &lib).is_err() {
        // Another process finished first: use its copy.
        let _ = std::fs::remove_dir_all(&partial);
        if !lib.join("complete").exists() {
            bail!("could not move Cassandra's jars to {}", lib.display());
        }
    }
    Ok(lib)
}

/// `$JAVA_HOME/bin/java`, or `java` on `PATH`.
fn java_bin() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map_or_else(|| PathBuf::from("java"), |h| Path::new(&h).join("bin/java"))
}

fn mvn_bin() -> String {
    std::env::var("MVN_BIN").unwrap_or_else(|_| "mvn".to_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The node's configuration: one node, its own ports and directories, no snapshots on drop.
fn config(dir: &Path, cql: u16, storage: u16) -> String {
    let d = dir.display();
    format!(
        "cluster_name: liaotian-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: \"127.0.0.1:{storage}\"
endpoint_snitch: SimpleSnitch
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage}
native_transport_port: {cql}
start_native_transport: true
auto_snapshot: false
data_file_directories: [{d}/data]
commitlog_directory: {d}/commitlog
saved_caches_directory: {d}/saved_caches
hints_directory: {d}/hints
cdc_raw_directory: {d}/cdc_raw
"
    )
}

fn spawn(lib: &Path, dir: &Path) -> anyhow::Result<(Child, u16)> {
    let (cql, storage) = (free_port()?, free_port()?);
    let yaml = dir.join("cassandra.yaml");
    std::fs::write(&yaml, config(dir, cql, storage))?;
    let logback = Path::new(env!("CARGO_MANIFEST_DIR")).join("cassandra/logback.xml");
    let log_path = dir.join("cassandra.log");
    let log = std::fs::File::create(&log_path)?;
    let mut java = vec![java_bin().display().to_string(), HEAP.to_owned()];
    java.extend(JVM17_OPTIONS.iter().map(|s| (*s).to_owned()));
    java.extend([
        "-Dcassandra-foreground=yes".to_owned(),
        format!("-Dcassandra.config=file://{}", yaml.display()),
        format!("-Dcassandra.storagedir={}", dir.display()),
        format!("-Dlogback.configurationFile={}", logback.display()),
        "-Dcassandra.skip_wait_for_gossip_to_settle=0".to_owned(),
        "-Dcassandra.superuser_setup_delay_ms=0".to_owned(),
        "-cp".to_owned(),
        format!("{}/*", lib.display()),
        "org.apache.cassandra.service.CassandraDaemon".to_owned(),
    ]);
    // The guard: the JVM in the background, a reader that kills it when stdin closes, and the
    // shell's exit status is the JVM's. A background job's stdin is /dev/null unless redirected,
    // so the reader takes the shell's stdin through fd 3.
    let script = r#"exec 3<&0; "$@" & j=$!; (read _ <&3; kill -9 "$j" 2>/dev/null) & wait "$j""#;
    let mut child = Command::new("sh")
        .args(["-c", script, "cassandra"])
        .args(&java)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting Cassandra with `java` (is Java 17 installed?)")?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "Cassandra exited at start ({status}); its log ends:\n{}",
                tail(&log_path)
            );
        }
        if TcpStream::connect(("127.0.0.1", cql)).is_ok() {
            return Ok((child, cql));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_child(child);
    bail!(
        "Cassandra did not accept CQL connections on port {cql} within {START_TIMEOUT:?}; its log ends:\n{}",
        tail(&log_path)
    )
}

fn stop_child(mut child: Child) {
    // Closing stdin ends the guard's reader, which kills the JVM; the shell then exits.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.flush();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the version the helper names is the one its pom resolves.
    #[test]
    fn the_pom_resolves_the_named_version() {
        let pom = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("cassandra/pom.xml"),
        )
        .unwrap();
        assert!(
            pom.contains(&format!("<version>{CASSANDRA_VERSION}</version>")),
            "pom.xml pins another Cassandra"
        );
    }
}
