//! Gateway configuration: plain data, read once from the environment in `main`.
//!
//! Every limit has a named default here and a row in `docs/operations.md`.

use std::time::Duration;

/// Default address of the WebSocket/HTTP listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Largest accepted client frame, in bytes (64 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest message text, in chars.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;
/// Rooms one connection may have joined at once.
pub const DEFAULT_MAX_ROOMS_PER_CONN: usize = 50;
/// Token bucket refill rate, client frames per second.
pub const DEFAULT_RATE_PER_SEC: f64 = 20.0;
/// Token bucket size.
pub const DEFAULT_RATE_BURST: f64 = 40.0;
/// Open connections one user may hold across the cluster.
pub const DEFAULT_MAX_CONNS_PER_USER: usize = 10;
/// Sends one user may make per second across all their connections and gateways.
pub const DEFAULT_USER_SENDS_PER_SEC: f64 = 20.0;
/// The burst of the per-user send bucket.
pub const DEFAULT_USER_SEND_BURST: f64 = 40.0;
/// Connections one gateway accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Frames queued for one connection before it counts as a slow consumer.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Interval of server pings and the heartbeat announced to clients.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// Silence after which a connection is closed with 4000.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Total time a publish is retried (with the same `Nats-Msg-Id`) before `unavailable`.
/// Covers a JetStream leader election (4–8 s).
pub const DEFAULT_PUBLISH_BUDGET: Duration = Duration::from_secs(10);
/// Time given to sessions to close after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Sends one connection may have waiting for a JetStream ack; further frames wait unread.
pub const DEFAULT_MAX_INFLIGHT_SENDS: usize = 32;
/// Longest wait for the content-check service's answer.
pub const DEFAULT_CONTENT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Most messages a resume replays; past it `recovered` is false and the client pages with `history`.
pub const DEFAULT_MAX_RESUME: usize = 1000;
/// Delay before an offline presence event; a return within it produces no event.
pub const DEFAULT_PRESENCE_GRACE: Duration = Duration::from_secs(10);
/// How often keys are fetched again from the auth service.
pub const DEFAULT_KEYS_REFRESH: Duration = Duration::from_secs(60);

/// Settings of stream `CHAT`, applied by the gateway at start (create or update).
pub use protocol::stream::StreamSettings;

/// How a gateway subscribes to direct messages (`GATEWAY_DM_SUBSCRIPTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmSubscription {
    /// `per-user`: two subscriptions per local user, `chat.out.dm.<user>.*` and
    /// `chat.out.dm.*.<user>`, so NATS sends a gateway only its own users' direct messages. Costs about
    /// 12 KB of gateway memory per connected user (two async-nats subscription channels) and two
    /// subscriptions at the server: for clusters of many gateways with a high direct-message rate.
    PerUser,
    /// `shared` (the default): one `chat.out.dm.>` subscription per gateway, routed to local users by
    /// subject. No per-user memory or server interest, but every gateway receives every direct
    /// message of the cluster and drops those with no local user: for deployments with few
    /// gateways, or a direct message rate small enough to send to each of them.
    #[default]
    Shared,
}

pub use crate::presence::RoomPresenceWatch;

/// Where the gateway gets the public keys that verify tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// Fetched from `<url>/api/keys` at start and every [`Config::keys_refresh`] (`GATEWAY_AUTH_URL`).
    AuthUrl(String),
    /// Given by the caller (tests, or embedding).
    Static,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address used by `main` (`GATEWAY_LISTEN`).
    pub listen: String,
    /// Accept queue depth of that listener (`GATEWAY_LISTEN_BACKLOG`); the kernel caps it at
    /// `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// `GATEWAY_METRICS_LISTEN`: where `/metrics` is served instead of on the public listener, so
    /// that it need not face the internet. Unset: on the public listener.
    pub metrics_listen: Option<String>,
    /// `GATEWAY_PERSISTER_CONSUMERS`: the persisters' durable consumers on stream `CHAT`, whose
    /// ack floors the retention guard reads (comma-separated; default `persister`).
    pub persister_consumers: Vec<String>,
    /// How often the retention guard reads the stream (fixed at 1 s outside tests).
    pub retention_check: Duration,
    /// NATS server URL(s), comma separated (`NATS_URL`).
    pub nats_url: String,
    /// Token key source (`GATEWAY_AUTH_URL`).
    pub keys: KeySource,
    /// Expected `iss` of tokens (`GATEWAY_JWT_ISSUER`, default `liaotian`).
    pub issuer: String,
    /// Interval between key fetches (`GATEWAY_KEYS_REFRESH_SECS`).
    pub keys_refresh: Duration,
    /// Auth URL that the web page calls for login, as a browser sees it (`GATEWAY_PUBLIC_AUTH_URL`).
    pub public_auth_url: String,
    /// `GATEWAY_MAX_FRAME_BYTES`.
    pub max_frame_bytes: usize,
    /// `GATEWAY_MAX_TEXT_CHARS`.
    pub max_text_chars: usize,
    /// `GATEWAY_MAX_ROOMS_PER_CONN`: rooms and groups one connection may join.
    pub max_rooms_per_conn: usize,
    /// `GROUP_MAX_MEMBERS`: members a group may have.
    pub group_max_members: usize,
    /// `GROUP_MAX_PER_USER`: groups one user may belong to.
    pub group_max_per_user: usize,
    /// `GROUP_RECEIPT_LIMIT`: groups up to this size get live receipts.
    pub group_receipt_limit: usize,
    /// `GATEWAY_RATE_PER_SEC`.
    pub rate_per_sec: f64,
    /// `GATEWAY_RATE_BURST`.
    pub rate_burst: f64,
    /// `GATEWAY_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `GATEWAY_MAX_CONNS_PER_USER`: open connections per user, across gateways.
    pub max_conns_per_user: usize,
    /// `GATEWAY_USER_SENDS_PER_SEC`: sends per user per second, across connections and gateways.
    pub user_sends_per_sec: f64,
    /// `GATEWAY_USER_SEND_BURST`.
    pub user_send_burst: f64,
    /// `GATEWAY_OUTBOUND_QUEUE`.
    pub outbound_queue: usize,
    /// `GATEWAY_HEARTBEAT_MS`.
    pub heartbeat: Duration,
    /// `GATEWAY_IDLE_TIMEOUT_MS`.
    pub idle_timeout: Duration,
    /// `GATEWAY_PUBLISH_BUDGET_MS`.
    pub publish_budget: Duration,
    /// `GATEWAY_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace: Duration,
    /// `GATEWAY_MAX_INFLIGHT_SENDS`.
    pub max_inflight_sends: usize,
    /// PEM certificate chain for TLS (`GATEWAY_TLS_CERT`); with `tls_key`, the gateway serves `wss://`.
    pub tls_cert: Option<String>,
    /// PEM private key for TLS (`GATEWAY_TLS_KEY`).
    pub tls_key: Option<String>,
    /// Ask the content-check service (served by auth) about every text before publishing it
    /// (`GATEWAY_CONTENT_CHECK`, default off).
    pub content_check: bool,
    /// `GATEWAY_CONTENT_CHECK_TIMEOUT_MS`.
    pub content_check_timeout: Duration,
    /// When the content-check service does not answer: publish anyway (`true`) or answer
    /// `unavailable` (`false`, the default) (`GATEWAY_CONTENT_CHECK_FAIL_OPEN`).
    pub content_check_fail_open: bool,
    /// Lifetime of a presence key without refresh (`GATEWAY_PRESENCE_TTL_SECS`, default 3 × heartbeat).
    pub presence_ttl: Duration,
    /// `GATEWAY_PRESENCE_GRACE_MS`.
    pub presence_grace: Duration,
    /// `GATEWAY_PRESENCE_ROOM_EVENT_LIMIT` (default 500).
    pub presence_room_event_limit: usize,
    /// `GATEWAY_MAX_RESUME`.
    pub max_resume: usize,
    /// `GATEWAY_DM_SUBSCRIPTION`: `shared` (default) or `per-user`.
    pub dm_subscription: DmSubscription,
    /// `GATEWAY_ROOM_PRESENCE`: `shared` (default) or `per-room`.
    pub room_presence: RoomPresenceWatch,
    /// `GATEWAY_PRESENCE_PRIVACY`: `contacts` (default) or `open`.
    pub presence_privacy: PresencePrivacy,
    /// Stream `CHAT` settings.
    pub stream: StreamSettings,
}

/// Whose presence `watch` and `presence_query {users}` reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresencePrivacy {
    /// Only users who share a direct thread or a group with the asker; others show as offline.
    #[default]
    Contacts,
    /// Anyone's (for deployments where every user may see every other, and for tests of the
    /// presence machinery itself).
    Open,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            listen_backlog: crate::listener::DEFAULT_BACKLOG,
            metrics_listen: None,
            persister_consumers: vec!["persister".to_owned()],
            retention_check: crate::retention::DEFAULT_CHECK_EVERY,
            nats_url: DEFAULT_NATS_URL.into(),
            keys: KeySource::Static,
            issuer: "liaotian".into(),
            keys_refresh: DEFAULT_KEYS_REFRESH,
            public_auth_url: "http://127.0.0.1:8081".into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            max_rooms_per_conn: DEFAULT_MAX_ROOMS_PER_CONN,
            group_max_members: protocol::group::DEFAULT_MAX_MEMBERS,
            group_receipt_limit: protocol::conv::DEFAULT_RECEIPT_LIMIT,
            group_max_per_user: protocol::group::DEFAULT_MAX_GROUPS_PER_USER,
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            rate_burst: DEFAULT_RATE_BURST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_conns_per_user: DEFAULT_MAX_CONNS_PER_USER,
            user_sends_per_sec: DEFAULT_USER_SENDS_PER_SEC,
            user_send_burst: DEFAULT_USER_SEND_BURST,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            heartbeat: DEFAULT_HEARTBEAT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            publish_budget: DEFAULT_PUBLISH_BUDGET,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_inflight_sends: DEFAULT_MAX_INFLIGHT_SENDS,
            tls_cert: None,
            tls_key: None,
            content_check: false,
            content_check_timeout: DEFAULT_CONTENT_CHECK_TIMEOUT,
            content_check_fail_open: false,
            max_resume: DEFAULT_MAX_RESUME,
            presence_ttl: DEFAULT_HEARTBEAT * 3,
            presence_grace: DEFAULT_PRESENCE_GRACE,
            presence_room_event_limit: crate::presence::DEFAULT_ROOM_EVENT_LIMIT,
            dm_subscription: DmSubscription::default(),
            room_presence: RoomPresenceWatch::default(),
            presence_privacy: PresencePrivacy::default(),
            stream: StreamSettings::default(),
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
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(v) = env.string("GATEWAY_LISTEN") {
            c.listen = v;
        }
        if let Some(v) = env.string("GATEWAY_PERSISTER_CONSUMERS") {
            c.persister_consumers = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = env.string("GATEWAY_METRICS_LISTEN") {
            c.metrics_listen = Some(v);
        }
        if let Some(n) = env.positive("GATEWAY_LISTEN_BACKLOG") {
            c.listen_backlog = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(v) = env.string("NATS_URL") {
            c.nats_url = v;
        }
        if let Some(v) = env.string("GATEWAY_AUTH_URL") {
            c.public_auth_url = v.trim_end_matches('/').to_owned();
            c.keys = KeySource::AuthUrl(v.trim_end_matches('/').to_owned());
        }
        if let Some(v) = env.string("GATEWAY_PUBLIC_AUTH_URL") {
            c.public_auth_url = v.trim_end_matches('/').to_owned();
        }
        if let Some(v) = env.string("GATEWAY_JWT_ISSUER") {
            c.issuer = v;
        }
        if let Some(n) = env.positive("GATEWAY_KEYS_REFRESH_SECS") {
            c.keys_refresh = Duration::from_secs(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_FRAME_BYTES") {
            c.max_frame_bytes = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_TEXT_CHARS") {
            c.max_text_chars = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_ROOMS_PER_CONN") {
            c.max_rooms_per_conn = usize_of(n);
        }
        if let Some(n) = env.positive("GROUP_MAX_MEMBERS") {
            c.group_max_members = usize_of(n);
        }
        if let Some(n) = env.positive("GROUP_MAX_PER_USER") {
            c.group_max_per_user = usize_of(n);
        }
        if let Some(n) = env.positive("GROUP_RECEIPT_LIMIT") {
            c.group_receipt_limit = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_RATE_PER_SEC") {
            c.rate_per_sec = n as f64;
        }
        if let Some(n) = env.positive("GATEWAY_RATE_BURST") {
            c.rate_burst = n as f64;
        }
        if let Some(n) = env.positive("GATEWAY_MAX_CONNECTIONS") {
            c.max_connections = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_CONNS_PER_USER") {
            c.max_conns_per_user = usize_of(n);
        }
        // Unless set, the per-user limit is at least the per-connection one: an operator who
        // lifts that (a load test, a platform of bots) lifts this with it.
        c.user_sends_per_sec = env
            .positive("GATEWAY_USER_SENDS_PER_SEC")
            .map_or(c.rate_per_sec.max(DEFAULT_USER_SENDS_PER_SEC), |n| n as f64);
        c.user_send_burst = env
            .positive("GATEWAY_USER_SEND_BURST")
            .map_or(c.rate_burst.max(DEFAULT_USER_SEND_BURST), |n| n as f64);
        if let Some(n) = env.positive("GATEWAY_OUTBOUND_QUEUE") {
            c.outbound_queue = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_HEARTBEAT_MS") {
            c.heartbeat = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("GATEWAY_IDLE_TIMEOUT_MS") {
            c.idle_timeout = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("GATEWAY_PUBLISH_BUDGET_MS") {
            c.publish_budget = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("GATEWAY_SHUTDOWN_GRACE_MS") {
            c.shutdown_grace = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("GATEWAY_HEARTBEAT_MS") {
            // Nats-TTL has whole seconds: round up.
            c.presence_ttl = Duration::from_secs((n * 3).div_ceil(1000).max(1));
        }
        if let Some(n) = env.positive("GATEWAY_PRESENCE_TTL_SECS") {
            c.presence_ttl = Duration::from_secs(n);
        }
        if let Some(n) = env.positive("GATEWAY_PRESENCE_GRACE_MS") {
            c.presence_grace = Duration::from_millis(n);
        }
        if let Some(n) = env.positive("GATEWAY_PRESENCE_ROOM_EVENT_LIMIT") {
            c.presence_room_event_limit = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_RESUME") {
            c.max_resume = usize_of(n);
        }
        if let Some(n) = env.positive("GATEWAY_MAX_INFLIGHT_SENDS") {
            c.max_inflight_sends = usize_of(n);
        }
        if let Some(b) = env.flag("GATEWAY_CONTENT_CHECK") {
            c.content_check = b;
        }
        if let Some(b) = env.flag("GATEWAY_CONTENT_CHECK_FAIL_OPEN") {
            c.content_check_fail_open = b;
        }
        if let Some(n) = env.positive("GATEWAY_CONTENT_CHECK_TIMEOUT_MS") {
            c.content_check_timeout = Duration::from_millis(n);
        }
        if let Some(i) = env.mode("GATEWAY_DM_SUBSCRIPTION", &["shared", "per-user"]) {
            c.dm_subscription = [DmSubscription::Shared, DmSubscription::PerUser][i];
        }
        if let Some(i) = env.mode("GATEWAY_ROOM_PRESENCE", &["shared", "per-room"]) {
            c.room_presence = [RoomPresenceWatch::Shared, RoomPresenceWatch::PerRoom][i];
        }
        if let Some(i) = env.mode("GATEWAY_PRESENCE_PRIVACY", &["contacts", "open"]) {
            c.presence_privacy = [PresencePrivacy::Contacts, PresencePrivacy::Open][i];
        }
        c.tls_cert = env.string("GATEWAY_TLS_CERT");
        c.tls_key = env.string("GATEWAY_TLS_KEY");
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            env.invalid(
                "GATEWAY_TLS_CERT",
                "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY must be set together",
            );
        }
        if let Some(n) = env.positive("CHAT_MAX_AGE_SECS") {
            c.stream.max_age = Duration::from_secs(n);
        }
        if let Some(n) = env.positive("CHAT_MAX_BYTES") {
            c.stream.max_bytes = i64::try_from(n).unwrap_or(i64::MAX);
        }
        if let Some(n) = env.positive("CHAT_DUPLICATE_WINDOW_SECS") {
            c.stream.duplicate_window = Duration::from_secs(n);
        }
        if let Some(n) = env.positive("CHAT_REPLICAS") {
            c.stream.replicas = usize_of(n);
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

    #[test]
    fn the_per_user_send_limit_follows_a_raised_connection_limit_unless_set() {
        let c = cfg(&[]).unwrap();
        assert_eq!((c.user_sends_per_sec, c.user_send_burst), (20.0, 40.0));
        assert_eq!(c.max_conns_per_user, 10);
        let c = cfg(&[
            ("GATEWAY_RATE_PER_SEC", "1000"),
            ("GATEWAY_RATE_BURST", "2000"),
        ])
        .unwrap();
        assert_eq!((c.user_sends_per_sec, c.user_send_burst), (1000.0, 2000.0));
        let c = cfg(&[
            ("GATEWAY_RATE_PER_SEC", "1000"),
            ("GATEWAY_USER_SENDS_PER_SEC", "5"),
            ("GATEWAY_USER_SEND_BURST", "5"),
            ("GATEWAY_MAX_CONNS_PER_USER", "3"),
        ])
        .unwrap();
        assert_eq!((c.user_sends_per_sec, c.user_send_burst), (5.0, 5.0));
        assert_eq!(c.max_conns_per_user, 3);
    }

    #[test]
    fn defaults_match_the_protocol_doc() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.max_text_chars, 4000);
        assert_eq!(c.max_rooms_per_conn, 50);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.group_max_members, 500);
        assert_eq!(c.group_receipt_limit, 100);
        assert_eq!(c.group_max_per_user, 1000);
        assert_eq!(c.presence_privacy, PresencePrivacy::Contacts);
        assert_eq!(c.heartbeat, Duration::from_millis(25_000));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert!(c.stream.duplicate_window >= Duration::from_secs(300));
        assert_eq!(c.dm_subscription, DmSubscription::Shared);
        assert_eq!(c.room_presence, RoomPresenceWatch::Shared);
    }

    #[test]
    fn the_listen_backlog_is_a_positive_count() {
        let c = cfg(&[("GATEWAY_LISTEN_BACKLOG", "8192")]).unwrap();
        assert_eq!(c.listen_backlog, 8192);
        let err = cfg(&[("GATEWAY_LISTEN_BACKLOG", "0")]).unwrap_err();
        assert_eq!(err.vars()[0], "GATEWAY_LISTEN_BACKLOG");
    }

    #[test]
    fn room_presence_is_shared_or_per_room() {
        let per_room = cfg(&[("GATEWAY_ROOM_PRESENCE", "per-room")]).unwrap();
        assert_eq!(per_room.room_presence, RoomPresenceWatch::PerRoom);
        let shared = cfg(&[("GATEWAY_ROOM_PRESENCE", " shared ")]).unwrap();
        assert_eq!(shared.room_presence, RoomPresenceWatch::Shared);
        assert_eq!(
            cfg(&[("GATEWAY_ROOM_PRESENCE", "per-user")])
                .unwrap_err()
                .vars()[0],
            "GATEWAY_ROOM_PRESENCE"
        );
    }

    #[test]
    fn dm_subscription_is_per_user_or_shared() {
        let shared = cfg(&[("GATEWAY_DM_SUBSCRIPTION", "shared")]).unwrap();
        assert_eq!(shared.dm_subscription, DmSubscription::Shared);
        let per_user = cfg(&[("GATEWAY_DM_SUBSCRIPTION", "per-user")]).unwrap();
        assert_eq!(per_user.dm_subscription, DmSubscription::PerUser);
        assert_eq!(
            cfg(&[("GATEWAY_DM_SUBSCRIPTION", "all")])
                .unwrap_err()
                .vars()[0],
            "GATEWAY_DM_SUBSCRIPTION"
        );
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let err = cfg(&[
            ("GATEWAY_MAX_FRAME_BYTES", "lots"),
            ("GATEWAY_ROOM_PRESENCE", "all"),
            ("GATEWAY_TLS_KEY", "k.pem"),
        ])
        .unwrap_err();
        assert_eq!(
            err.vars(),
            [
                "GATEWAY_MAX_FRAME_BYTES",
                "GATEWAY_ROOM_PRESENCE",
                "GATEWAY_TLS_CERT"
            ]
        );
        // An empty value is the default, as it is for auth and the persister.
        let c = cfg(&[("GATEWAY_MAX_FRAME_BYTES", ""), ("NATS_URL", "")]).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.max_frame_bytes, c.nats_url),
            (d.max_frame_bytes, d.nats_url)
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            cfg(&[("GATEWAY_MAX_FRAME_BYTES", "lots")])
                .unwrap_err()
                .vars()[0],
            "GATEWAY_MAX_FRAME_BYTES"
        );
        assert_eq!(
            cfg(&[("GATEWAY_IDLE_TIMEOUT_MS", "0")]).unwrap_err().vars()[0],
            "GATEWAY_IDLE_TIMEOUT_MS"
        );
        // The session's one timer would fire at once forever with a zero period.
        assert_eq!(
            cfg(&[("GATEWAY_HEARTBEAT_MS", "0")]).unwrap_err().vars()[0],
            "GATEWAY_HEARTBEAT_MS"
        );
        assert_eq!(
            cfg(&[("GATEWAY_TLS_KEY", "k.pem")]).unwrap_err().vars()[0],
            "GATEWAY_TLS_CERT"
        );
    }

    #[test]
    fn auth_url_sets_keys_and_page_login() {
        let c = cfg(&[("GATEWAY_AUTH_URL", "http://auth:8081/")]).unwrap();
        assert_eq!(c.keys, KeySource::AuthUrl("http://auth:8081".into()));
        assert_eq!(c.public_auth_url, "http://auth:8081");
    }
}
