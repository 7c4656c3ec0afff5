//! Persister configuration: plain data, read once from the environment in `main`.
//!
//! Every limit has a named default here and a row in `docs/persister.md`.

use std::path::PathBuf;
use std::time::Duration;

/// Default address of the HTTP listener (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8082";
/// Default NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default history store: an embedded SQLite file under `.data/`.
pub const DEFAULT_STORE: &str = "sqlite://.data/history.db";
/// Most messages fetched (and written in one store transaction) per batch.
pub const DEFAULT_BATCH_MAX: usize = 2000;
/// Longest wait for a batch to fill before the messages already fetched are written.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(50);
/// Time JetStream waits for the persister's ack before redelivering a message.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default name of the durable consumer on stream `CHAT`.
pub const DEFAULT_CONSUMER: &str = "persister";
/// Default keyspace replication: three replicas per data center, for `LOCAL_QUORUM`.
pub const DEFAULT_SCYLLA_REPLICATION: &str =
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}";
/// CQL port used when a Scylla host is given without one.
pub const DEFAULT_SCYLLA_PORT: u16 = 9042;

/// Which history store to use, parsed from `PERSISTER_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `sqlite://<path>`: an embedded SQLite database file (created with its directory if missing).
    Sqlite { path: PathBuf },
    /// `scylla://host1[:port],host2/keyspace`: a ScyllaDB (or Cassandra) cluster.
    Scylla {
        /// `host:port` contact points.
        hosts: Vec<String>,
        /// Keyspace, created on start if missing; `[A-Za-z0-9_]{1,48}`.
        keyspace: String,
    },
}

impl StoreConfig {
    /// Parses a store URI (`sqlite://…` or `scylla://…`).
    pub fn parse(uri: &str) -> Result<Self, String> {
        if let Some(path) = uri.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path".into());
            }
            return Ok(Self::Sqlite { path: path.into() });
        }
        if let Some(rest) = uri.strip_prefix("scylla://") {
            let (hosts, keyspace) = rest
                .split_once('/')
                .ok_or("scylla:// needs a keyspace: scylla://host1,host2/keyspace")?;
            let valid_ks = !keyspace.is_empty()
                && keyspace.len() <= 48
                && keyspace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_ks {
                return Err(format!(
                    "keyspace {keyspace:?} must match [A-Za-z0-9_]{{1,48}}"
                ));
            }
            let hosts: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| {
                    if h.contains(':') {
                        h.to_owned()
                    } else {
                        format!("{h}:{DEFAULT_SCYLLA_PORT}")
                    }
                })
                .collect();
            if hosts.is_empty() {
                return Err("scylla:// needs at least one host".into());
            }
            return Ok(Self::Scylla {
                hosts,
                keyspace: keyspace.to_owned(),
            });
        }
        Err(format!(
            "expected sqlite://<path> or scylla://<hosts>/<keyspace>, got {uri:?}"
        ))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address used by `main` (`PERSISTER_LISTEN`).
    pub listen: String,
    /// NATS server URL(s), comma separated (`NATS_URL`).
    pub nats_url: String,
    /// History store (`PERSISTER_STORE`).
    pub store: StoreConfig,
    /// Most messages per fetched batch and per store write (`PERSISTER_BATCH_MAX`).
    pub batch_max: usize,
    /// Longest wait for a batch to fill (`PERSISTER_BATCH_WAIT_MS`).
    pub batch_wait: Duration,
    /// Keyspace replication map, used only when the keyspace is created (`SCYLLA_REPLICATION`).
    pub scylla_replication: String,
    /// Name of the durable pull consumer on stream `CHAT` (`PERSISTER_CONSUMER`).
    /// Instances sharing a name share the work; a new name re-reads the whole stream.
    pub consumer: String,
    /// Time before an unacked message is redelivered (`PERSISTER_ACK_WAIT_MS`); applies when the
    /// consumer is created. After a crash, the messages it held come back after this long.
    pub ack_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            nats_url: DEFAULT_NATS_URL.into(),
            store: StoreConfig::Sqlite {
                path: DEFAULT_STORE.trim_start_matches("sqlite://").into(),
            },
            batch_max: DEFAULT_BATCH_MAX,
            batch_wait: DEFAULT_BATCH_WAIT,
            scylla_replication: DEFAULT_SCYLLA_REPLICATION.into(),
            consumer: DEFAULT_CONSUMER.into(),
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }
}

/// The configuration variables that cannot be used, each named.
pub use svc::env::ConfigError;

impl Config {
    /// Reads the configuration through `get` (`std::env::var` in `main`, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut env = svc::env::Env::new(get);
        let mut c = Config::default();
        if let Some(v) = env.string("PERSISTER_LISTEN") {
            c.listen = v;
        }
        if let Some(v) = env.string("NATS_URL") {
            c.nats_url = v;
        }
        if let Some(store) = env.with("PERSISTER_STORE", StoreConfig::parse) {
            c.store = store;
        }
        if let Some(n) = env.positive("PERSISTER_BATCH_MAX") {
            c.batch_max = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = env.positive("PERSISTER_BATCH_WAIT_MS") {
            c.batch_wait = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("PERSISTER_ACK_WAIT_MS") {
            c.ack_wait = Duration::from_millis(n);
        }
        if let Some(v) = env.string("SCYLLA_REPLICATION") {
            let v = v.trim();
            // The map is spliced into CREATE KEYSPACE, so accept only a single map literal.
            if !(v.starts_with('{') && v.ends_with('}')) || v.contains(';') {
                env.invalid(
                    "SCYLLA_REPLICATION",
                    format!("expected a CQL map like {DEFAULT_SCYLLA_REPLICATION}"),
                );
            } else {
                c.scylla_replication = v.to_owned();
            }
        }
        if let Some(v) = env.string("PERSISTER_CONSUMER") {
            let ok = !v.is_empty()
                && v.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
            if ok {
                c.consumer = v;
            } else {
                env.invalid(
                    "PERSISTER_CONSUMER",
                    format!("expected [A-Za-z0-9_-]+, got {v:?}"),
                );
            }
        }
        env.finish(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    // Proves the defaults are the documented ones.
    #[test]
    fn defaults_are_documented_values() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8082");
        assert_eq!(
            c.store,
            StoreConfig::Sqlite {
                path: ".data/history.db".into()
            }
        );
        assert_eq!(c.batch_max, 2000);
        assert_eq!(c.batch_wait, Duration::from_millis(50));
        assert_eq!(c.consumer, "persister");
    }

    // Proves store URIs parse into hosts with ports and a keyspace, and bad ones name their variable.
    #[test]
    fn store_uris_parse_or_name_the_variable() {
        let c = cfg(&[("PERSISTER_STORE", "scylla://a,b:9043/chat")]).unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Scylla {
                hosts: vec!["a:9042".into(), "b:9043".into()],
                keyspace: "chat".into()
            }
        );
        for bad in [
            "scylla://a",
            "scylla:///ks",
            "scylla://a/bad-ks",
            "postgres://x",
            "sqlite://",
        ] {
            assert_eq!(
                cfg(&[("PERSISTER_STORE", bad)]).unwrap_err().vars()[0],
                "PERSISTER_STORE",
                "{bad}"
            );
        }
        assert_eq!(
            cfg(&[("PERSISTER_BATCH_MAX", "0")]).unwrap_err().vars()[0],
            "PERSISTER_BATCH_MAX"
        );
        assert_eq!(
            cfg(&[("SCYLLA_REPLICATION", "{}; DROP")])
                .unwrap_err()
                .vars()[0],
            "SCYLLA_REPLICATION"
        );
    }
}
