//! The notifier: a durable consumer on stream `CHAT` that decides, for each direct message and
//! each group message with mentions, whether its recipients get a WeChat subscribe message, and
//! sends it.
//!
//! A recipient is notified when all of these hold, checked in this order:
//! 1. they are not the sender (nor `system`);
//! 2. they have no open connection (presence bucket, `conn.<user>.*`) and their latest activity
//!    (`seen.<user>`) is at least `NOTIFY_OFFLINE_AFTER_SECS` old; one who left less long ago is
//!    asked about again once that time has passed (the message is redelivered with a delay);
//! 3. the conversation is not muted (bucket `mutes`);
//! 4. they were not notified of this conversation since they were last seen (coalescing: one
//!    notification per conversation until they come back);
//! 5. they logged in with WeChat (an openid is known);
//! 6. they hold a grant for the template of the kind (taken here; given back when WeChat did not
//!    send).
//!
//! The message is acked once every recipient is decided, so a restart redelivers what was in
//! flight and coalescing keeps it from being sent twice. Sends to one user are serialized
//! (WeChat answers 43108 to concurrent ones). The WeChat answers are handled as
//! docs/wechat.md's table says: 43101 drops the grants, 47003 is counted and not retried, a
//! stale access token is refreshed once, 45009 and network failures are retried with backoff a
//! bounded number of times.
//!
//! The consumer is pulled in bursts ([`BURSTS`], `svc::bursts`), and the online check of step 2 is
//! one presence read for a burst's recipients (up to 64 at once): nearly every recipient in a busy
//! stream is online, and the decision ends there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv};
use protocol::{StoredMessage, UserId};
use serde_json::json;
use tokio::sync::Semaphore;

use super::message::{self, About};
use crate::config::{Notify, NotifyKind};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wechat::{TokenHolder, WxError};

/// The notifier's durable consumer on stream `CHAT`.
pub const CONSUMER: &str = "notifier";
/// Messages decided at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Unacked messages the consumer holds out at most.
pub const MAX_ACK_PENDING: i64 = 1024;
/// How the consumer is pulled: every 250 ms, at most 512 messages a pull (below
/// [`MAX_ACK_PENDING`], so a pull never waits on its own unacked messages).
pub const BURSTS: svc::bursts::Bursts = svc::bursts::Bursts {
    every: Duration::from_millis(250),
    max: 512,
};
/// Deliveries of one message before it is given up (a user who keeps coming back shortly before
/// each redelivery).
pub const MAX_DELIVER: i64 = 20;
/// Attempts of one send through 45009 and network failures.
pub const SEND_ATTEMPTS: u32 = 4;
/// First pause between those attempts; doubles.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Errcodes meaning the access token is stale: refresh it once and retry.
const STALE_TOKEN: [i64; 3] = [40001, 40014, 42001];

/// What was decided for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sent,
    Skipped(&'static str),
    /// Not offline long enough yet: ask again after this long.
    Later(Duration),
    Failed(&'static str),
}

/// Everything a decision reads and writes.
#[derive(Clone)]
pub struct Notifier {
    pub settings: Arc<Notify>,
    pub tokens: Arc<TokenHolder>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub nats: async_nats::Client,
    presence: kv::Store,
    live: svc::kv::LiveKeys,
    mutes: kv::Store,
    groups: kv::Store,
    locks: Arc<Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Opens a bucket the gateways create, waiting for it.
async fn bucket(js: &jetstream::Context, name: &str) -> anyhow::Result<kv::Store> {
    svc::retry::until_deadline(
        name,
        Duration::from_secs(60),
        svc::retry::Backoff::constant(Duration::from_secs(1)),
        || js.get_key_value(name),
    )
    .await
    .map_err(|e| anyhow::anyhow!("bucket {name}: {e}"))
}

impl Notifier {
    pub async fn new(
        settings: Notify,
        tokens: Arc<TokenHolder>,
        store: Store,
        metrics: Arc<Metrics>,
        nats: async_nats::Client,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(nats.clone());
        Ok(Self {
            presence: bucket(&js, protocol::presence::BUCKET).await?,
            live: svc::kv::LiveKeys::new(nats.clone()).await?,
            mutes: bucket(&js, protocol::mute::BUCKET).await?,
            groups: bucket(&js, protocol::group::BUCKET).await?,
            settings: Arc::new(settings),
            tokens,
            store,
            metrics,
            nats,
            locks: Arc::default(),
        })
    }

    /// Creates (or opens) the durable consumer: direct messages and group messages, from the
    /// first one stored after it was created.
    pub async fn consumer(&self) -> anyhow::Result<consumer::PullConsumer> {
        let js = jetstream::new(self.nats.clone());
        let stream = svc::retry::until_deadline(
            "stream CHAT",
            Duration::from_secs(60),
            svc::retry::Backoff::constant(Duration::from_secs(1)),
            || js.get_stream(protocol::subject::STREAM),
        )
        .await
        .map_err(|e| anyhow::anyhow!("stream CHAT: {e}"))?;
        Ok(stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("liaotian notifier (auth)".into()),
                    filter_subjects: vec!["chat.in.dm.>".into(), "chat.in.group.>".into()],
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_deliver: MAX_DELIVER,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await?)
    }

    /// Decides every message the consumer delivers, [`MAX_IN_FLIGHT`] at once, until it ends. The
    /// consumer is pulled in bursts ([`BURSTS`]): a notification waits for its recipient to be
    /// offline for `offline_after` anyway, and nats-server then writes one burst per tick.
    pub async fn run(self, consumer: consumer::PullConsumer) -> anyhow::Result<()> {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let limit_pending = usize::try_from(MAX_ACK_PENDING).unwrap_or(1);
        let mut reader = svc::bursts::Reader::new(consumer, BURSTS, limit_pending);
        let acks = reader.acks();
        loop {
            let msgs = match reader.next().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier: consumer unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Each payload decoded once, for the burst's presence read and for its decision.
            let mut msgs = msgs.into_iter().map(|m| {
                let stored = StoredMessage::decode(&m.payload).ok();
                (m, stored)
            });
            loop {
                let chunk: Vec<_> = msgs.by_ref().take(svc::kv::MAX_FILTERS).collect();
                if chunk.is_empty() {
                    break;
                }
                let online = Arc::new(self.online_among(&chunk).await);
                for (msg, stored) in chunk {
                    let permit = limit.clone().acquire_owned().await?;
                    let (this, online, acks) = (self.clone(), online.clone(), acks.clone());
                    tokio::spawn(async move {
                        this.handle(msg, stored, &online, &acks).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// The recipients of `msgs` who have a connection now, in one read of the presence bucket
    /// (one request for up to [`svc::kv::MAX_FILTERS`] of them): in a busy conversation nearly
    /// every recipient is online, and the decision ends there. Empty when the read fails or
    /// there are too many recipients; each decision then reads presence itself.
    async fn online_among(
        &self,
        msgs: &[(jetstream::Message, Option<StoredMessage>)],
    ) -> HashSet<UserId> {
        let mut users: Vec<UserId> = msgs
            .iter()
            .filter_map(|(_, stored)| stored.as_ref())
            .flat_map(|m| recipients(m).into_iter().map(|(u, _)| u))
            .collect();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() || users.len() > svc::kv::MAX_FILTERS {
            return HashSet::new();
        }
        let filters: Vec<String> = users.iter().map(|u| format!("conn.{u}.*")).collect();
        // A user's connections are capped per user; a truncated answer only leaves some
        // recipients to their own read.
        let max = filters.len() * 16;
        match self
            .live
            .read_many(protocol::presence::BUCKET, &filters, max)
            .await
        {
            Ok(keys) => keys
                .iter()
                .filter_map(|k| k.strip_prefix("conn.")?.split_once('.'))
                .filter_map(|(u, _)| UserId::parse(u).ok())
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "notifier: batched presence read failed");
                HashSet::new()
            }
        }
    }

    async fn handle(
        &self,
        msg: jetstream::Message,
        stored: Option<StoredMessage>,
        online: &HashSet<UserId>,
        acks: &svc::bursts::Acks,
    ) {
        let Some(stored) = stored else {
            acks.send(msg, AckKind::Ack).await;
            return;
        };
        let mut later: Option<Duration> = None;
        for (recipient, kind) in recipients(&stored) {
            let decision = self
                .decide(&stored, &recipient, kind, online.contains(&recipient))
                .await;
            self.count(decision);
            if let Decision::Later(d) = decision {
                later = Some(later.map_or(d, |l| l.min(d)));
            }
        }
        let kind = later.map_or(AckKind::Ack, |delay| AckKind::Nak(Some(delay)));
        acks.send(msg, kind).await;
    }

    fn count(&self, d: Decision) {
        match d {
            Decision::Sent => self.metrics.notify_sent.inc(),
            Decision::Skipped(why) => self.metrics.notify_skipped.with_label_values(&[why]).inc(),
            Decision::Later(_) => self
                .metrics
                .notify_skipped
                .with_label_values(&["recently_online"])
                .inc(),
            Decision::Failed(code) => self.metrics.notify_failed.with_label_values(&[code]).inc(),
        }
    }

    /// Holds `user`'s send lock: one decision per user at a time.
    async fn lock(&self, user: &UserId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the locks nobody holds, so the map stays as large as the users in flight.
            if locks.len() > 4 * MAX_IN_FLIGHT {
                locks.retain(|_, m| Arc::strong_count(m) > 1);
            }
            locks.entry(user.clone()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// The decision for one recipient, sending when it is to be sent. `online_now`: the burst's
    /// presence read found a connection of theirs.
    pub async fn decide(
        &self,
        m: &StoredMessage,
        user: &UserId,
        kind: NotifyKind,
        online_now: bool,
    ) -> Decision {
        if *user == m.from || user.is_system() {
            return Decision::Skipped("sender");
        }
        let Some(template) = self.settings.template(kind) else {
            return Decision::Skipped("no_template");
        };
        if online_now {
            return Decision::Skipped("online");
        }
        let _serial = self.lock(user).await;
        // Online now, or lately?
        match self
            .live
            .read(protocol::presence::BUCKET, &format!("conn.{user}.*"), 256)
            .await
        {
            Ok(keys) if !keys.is_empty() => return Decision::Skipped("online"),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "notifier: presence unreadable");
                return Decision::Later(Duration::from_secs(5));
            }
        }
        let seen = match self.presence.get(protocol::presence::seen_key(user)).await {
            Ok(v) => v
                .and_then(|b| serde_json::from_slice::<protocol::presence::Seen>(&b).ok())
                .map_or(0, |s| s.ts),
            Err(_) => return Decision::Later(Duration::from_secs(5)),
        };
        let away = Duration::from_millis(now_ms().saturating_sub(seen));
        if away < self.settings.offline_after {
            return Decision::Later(
                self.settings.offline_after - away + Duration::from_millis(200),
            );
        }
        let (conv_key, target) = match (&m.group, &m.to) {
            (Some(g), _) => (
                format!("g.{g}"),
                protocol::frame::ConvTarget::Group(g.clone()),
            ),
            (None, _) => (
                format!("u.{}", m.from),
                protocol::frame::ConvTarget::With(m.from.clone()),
            ),
        };
        match self.mutes.get(protocol::mute::key(user, &target)).await {
            Ok(Some(_)) => return Decision::Skipped("muted"),
            Ok(None) => {}
            Err(_) => return Decision::Later(Duration::from_secs(5)),
        }
        let redis_down = |e| {
            tracing::warn!(error = %e, "notifier: redis unavailable");
            Decision::Later(Duration::from_secs(5))
        };
        match self.store.notified(user.as_str(), &conv_key).await {
            Ok(Some(at)) if at >= seen => return Decision::Skipped("coalesced"),
            Ok(_) => {}
            Err(e) => return redis_down(e),
        }
        let openid = match self.store.openid_of(user.as_str()).await {
            Ok(Some(o)) => o,
            Ok(None) => return Decision::Skipped("no_openid"),
            Err(e) => return redis_down(e),
        };
        match self.store.take_grant(user.as_str(), &template.id).await {
            Ok(true) => {}
            Ok(false) => return Decision::Skipped("no_grant"),
            Err(e) => return redis_down(e),
        }
        let group_name = match &m.group {
            Some(g) => self
                .groups
                .get(protocol::group::record_key(g))
                .await
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<protocol::group::Record>(&b).ok())
                .map(|r| r.name),
            None => None,
        };
        let about = About {
            sender: m.from.as_str(),
            text: &m.text,
            ts: m.ts,
            group_name: group_name.as_deref(),
        };
        let body = json!({
            "touser": openid,
            "template_id": template.id,
            "page": message::page(&self.settings.page, m.from.as_str(), m.group.as_ref().map(|g| g.as_str())),
            "miniprogram_state": self.settings.miniprogram_state,
            "lang": "zh_CN",
            "data": message::data(template, &about),
        });
        let result = self.send(&body).await;
        let give_back = async {
            if let Err(e) = self.store.return_grant(user.as_str(), &template.id).await {
                tracing::warn!(error = %e, "notifier: a grant could not be given back");
            }
        };
        match result {
            Ok(()) => {
                if let Err(e) = self
                    .store
                    .set_notified(user.as_str(), &conv_key, seen)
                    .await
                {
                    tracing::warn!(error = %e, "notifier: sent, but not marked; a redelivery may send again");
                }
                Decision::Sent
            }
            Err(WxError::Api { errcode: 43101, .. }) => {
                tracing::info!(%user, "notifier: the user holds no subscription (43101); grants dropped");
                let _ = self.store.drop_grants(user.as_str(), &template.id).await;
                Decision::Failed("43101")
            }
            Err(WxError::Api {
                errcode: 47003,
                errmsg,
            }) => {
                tracing::warn!(%errmsg, template = %template.id, "notifier: template data refused (47003); check AUTH_NOTIFY_*_FIELDS");
                give_back.await;
                Decision::Failed("47003")
            }
            Err(WxError::Api { errcode, errmsg }) => {
                tracing::warn!(errcode, %errmsg, "notifier: send refused");
                give_back.await;
                Decision::Failed(match errcode {
                    45009 => "45009",
                    40001 | 40014 | 42001 => "token",
                    43108 => "43108",
                    _ => "other",
                })
            }
            Err(WxError::Transport(e)) => {
                tracing::warn!(error = %e, "notifier: WeChat unreachable; dropped after retries");
                give_back.await;
                Decision::Failed("network")
            }
        }
    }

    /// Sends `body`: once more with a fresh access token after a stale-token answer, and up to
    /// [`SEND_ATTEMPTS`] times with backoff through 45009, 43108 and network failures.
    async fn send(&self, body: &serde_json::Value) -> Result<(), WxError> {
        let mut backoff = FIRST_BACKOFF;
        let mut refreshed = false;
        let mut attempt = 1;
        loop {
            let token = self.tokens.get().await?;
            let result = self.tokens.client().subscribe_send(&token.0, body).await;
            match result {
                Err(WxError::Api { errcode, .. })
                    if STALE_TOKEN.contains(&errcode) && !refreshed =>
                {
                    tracing::info!(errcode, "access token refused; fetching a new one");
                    self.tokens.invalidate(&token.0).await;
                    refreshed = true;
                }
                Err(
                    WxError::Api {
                        errcode: 45009 | 43108,
                        ..
                    }
                    | WxError::Transport(_),
                ) if attempt < SEND_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }
}

/// Who a stored message may notify, and as what: the recipient of a direct message, the mentioned
/// members of a group message. Group events and room messages notify no one.
pub fn recipients(m: &StoredMessage) -> Vec<(UserId, NotifyKind)> {
    if m.event.is_some() {
        return Vec::new();
    }
    match (&m.group, &m.to) {
        (Some(_), _) => m
            .mentions
            .iter()
            .filter(|u| **u != m.from)
            .map(|u| (u.clone(), NotifyKind::Mention))
            .collect(),
        (None, Some(to)) => vec![(to.clone(), NotifyKind::Dm)],
        _ => Vec::new(),
    }
}
