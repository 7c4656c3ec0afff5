//! A real three-node (or N-node) nats-server cluster with JetStream on loopback, for tests of what a
//! cluster promises: each node can be killed (SIGKILL, keeping its store, as a crash would) and
//! started again on the same ports and store, the monitoring endpoint says which node leads
//! stream `CHAT`, and (started with [`NatsCluster::start_partitionable`]) a node can be cut off
//! from the others: every route runs through a proxy per direction, cut both ways.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};

use crate::TempDir;
use crate::nats::nats_server_bin;

/// Starts of a cluster tried before giving up (see [`NatsCluster::start`]).
const START_ATTEMPTS: usize = 3;

/// One node's ports and files.
struct Node {
    name: String,
    client: u16,
    monitor: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// A running cluster. Every node is killed, and the stores removed, on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// `(from, to, proxy)`: node `from`'s route to node `to`, when routes are proxied.
    links: Vec<(usize, usize, crate::TcpProxy)>,
    _dir: TempDir,
}

/// A loopback port nobody listens on now (the kernel's pick, released at once). Another process may
/// take it in between; tests on loopback live with that small risk, as the peers' ports do.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl NatsCluster {
    /// Starts `n` nodes (`n0`, `n1`, …) in one cluster, and returns once JetStream has a meta leader.
    /// The ports are picked free and released before the nodes bind them, so another test may take
    /// one meanwhile: a start that fails is tried again with new ports.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        crate::retry(START_ATTEMPTS, Duration::from_millis(100), || {
            let ports = Self::ports(n)?;
            let routes: Vec<Vec<String>> = (0..n)
                .map(|_| {
                    ports
                        .iter()
                        .map(|(_, _, route)| format!("nats-route://127.0.0.1:{route}"))
                        .collect()
                })
                .collect();
            Self::launch(&ports, &routes, Vec::new(), false)
        })
    }

    /// Like [`start`](Self::start), but node `i` reaches node `j` through a proxy of its own (one per
    /// direction), and the nodes do not gossip their route addresses, so [`partition`](Self::partition)
    /// can cut a node off from the others both ways.
    pub async fn start_partitionable(n: usize) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_partitionable(n).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn try_partitionable(n: usize) -> anyhow::Result<Self> {
        let ports = Self::ports(n)?;
        let mut links = Vec::new();
        let mut routes = vec![Vec::new(); n];
        for (from, list) in routes.iter_mut().enumerate() {
            for (to, (_, _, route)) in ports.iter().enumerate() {
                if from == to {
                    continue;
                }
                let proxy =
                    crate::TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], *route)))
                        .await?;
                list.push(format!("nats-route://{}", proxy.addr()));
                links.push((from, to, proxy));
            }
        }
        tokio::task::block_in_place(|| Self::launch(&ports, &routes, links, true))
    }

    /// Cuts node `i` off from every other node, both ways, until [`heal`](Self::heal). Clients
    /// connected to it stay connected to it.
    pub fn partition(&self, i: usize) {
        for (from, to, proxy) in &self.links {
            if *from == i || *to == i {
                proxy.cut();
            }
        }
    }

    /// Restores every route cut by [`partition`](Self::partition).
    pub fn heal(&self) {
        for (_, _, proxy) in &self.links {
            proxy.restore();
        }
    }

    fn ports(n: usize) -> anyhow::Result<Vec<(u16, u16, u16)>> {
        (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect()
    }

    fn launch(
        ports: &[(u16, u16, u16)],
        routes: &[Vec<String>],
        links: Vec<(usize, usize, crate::TcpProxy)>,
        no_advertise: bool,
    ) -> anyhow::Result<Self> {
        let dir = crate::temp_dir("liaotian-cluster")?;
        let n = ports.len();
        let mut nodes = Vec::new();
        for (i, (client, monitor, route)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}\n\
                     cluster {{\n  name: liaotian-test\n  listen: 127.0.0.1:{route}\n  no_advertise: {no_advertise}\n  routes: [\n    {}\n  ]\n}}\n",
                    store.display(),
                    routes[i].join("\n    ")
                ),
            )?;
            nodes.push(Node {
                name,
                client: *client,
                monitor: *monitor,
                conf,
                child: None,
            });
        }
        let mut cluster = Self {
            nodes,
            links,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_for_meta_leader(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: what a service's `NATS_URL` takes.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s server name (`n<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Kills node `i` abruptly (SIGKILL), keeping its store.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with the same ports and store.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        crate::retry(50, Duration::from_millis(100), || self.spawn(i))
    }

    /// The names of the clients connected to node `i` now (`/connz`), e.g. `liaotian-gateway`.
    pub fn client_names(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let connz = http_get(self.nodes[i].monitor, "/connz?limit=1024")?;
        let v: serde_json::Value = serde_json::from_str(&connz)?;
        Ok(v["connections"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The index of the node that leads stream `stream` (of the default account), as the first live
    /// node's monitoring endpoint reports it; `None` while there is none.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let i = (0..self.nodes.len()).find(|&i| self.nodes[i].child.is_some())?;
        let jsz = http_get(
            self.nodes[i].monitor,
            "/jsz?accounts=true&streams=true&config=false",
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&jsz).ok()?;
        let leader = v["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == stream)?
            .get("cluster")?
            .get("leader")?
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Waits until stream `stream` has a leader, and returns it.
    pub fn wait_for_stream_leader(&self, stream: &str, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.stream_leader(stream) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("stream {stream} has no leader after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_meta_leader(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let leader = http_get(self.nodes[0].monitor, "/jsz")
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_owned));
            if leader.is_some_and(|l| !l.is_empty()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster elected no JetStream meta leader within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let child = spawn_node(&self.nodes[i].conf)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn spawn_node(conf: &Path) -> anyhow::Result<Child> {
    let bin = nats_server_bin();
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting `{bin}` (install nats-server >= 2.11 or set NATS_SERVER_BIN)")
        })?;
    match crate::nats::ready(&mut child, false)? {
        Some(_) => Ok(child),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nats-server node {} did not become ready", conf.display())
        }
    }
}

/// A minimal HTTP/1.0 GET on loopback: the monitoring endpoint, without an async runtime.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let start = body.find("\r\n\r\n").context("no HTTP body")? + 4;
    Ok(body[start..].to_owned())
}
