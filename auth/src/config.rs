//! Auth service configuration, read once from the environment in `main`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// Default lifetime of an access token: 2 hours.
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 2 * 60 * 60;
/// Default `iss` claim.
pub const DEFAULT_ISSUER: &str = "liaotian";
/// Default listen address of `main`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
/// Default base URL of the WeChat server API.
pub const DEFAULT_WECHAT_API_BASE: &str = "https://api.weixin.qq.com";
/// Default lifetime of a refresh token family without use: 30 days (sliding: each rotation renews it).
pub const DEFAULT_REFRESH_TTL_SECS: u64 = 30 * 24 * 60 * 60;
/// Default time a `session_key` is kept in Redis: 3 days (overwritten at every login).
pub const DEFAULT_SESSION_KEY_TTL_SECS: u64 = 3 * 24 * 60 * 60;
/// Default timeout of one WeChat API call.
pub const DEFAULT_WECHAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the single retry of a `code2Session` that answered `-1`.
pub const DEFAULT_WECHAT_RETRY_DELAY: Duration = Duration::from_millis(300);
/// Default login attempts allowed per client IP per minute.
pub const DEFAULT_LOGIN_PER_IP_PER_MIN: u64 = 30;
/// Default login attempts allowed per `code` during its 5-minute life.
pub const DEFAULT_LOGIN_PER_CODE: u64 = 5;
/// Default `scene` of `msgSecCheck` (2: comment).
pub const DEFAULT_CONTENT_SCENE: u8 = 2;
/// Default time between publishing a new signing key and signing with it, so that every gateway has
/// fetched it first (the gateway default refresh is 60 s).
pub const DEFAULT_KEY_ACTIVATION_DELAY: Duration = Duration::from_secs(90);

/// A secret whose `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the signing key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A 32-byte seed given directly (`AUTH_SIGNING_KEY`, base64url).
    Seed(Secret<[u8; 32]>),
    /// A file holding the base64url seed, created with a random key if missing (`AUTH_KEY_FILE`).
    File(PathBuf),
    /// A random key for this process only; tokens die with it. Used when nothing is configured.
    Ephemeral,
}

/// The mini-program's credentials and where its API lives.
#[derive(Debug, Clone)]
pub struct WeChat {
    /// The mini-program appid (`AUTH_WECHAT_APPID`).
    pub appid: String,
    /// The mini-program AppSecret (`AUTH_WECHAT_SECRET`).
    pub secret: Secret<String>,
    /// Base URL of the WeChat server API, without a trailing slash (`AUTH_WECHAT_API_BASE`); tests point
    /// it at a local fake.
    pub api_base: String,
    /// Timeout of one WeChat API call (`AUTH_WECHAT_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Pause before retrying a `code2Session` that answered `-1` (`AUTH_WECHAT_RETRY_DELAY_MS`).
    pub retry_delay: Duration,
}

/// What the content check answers for `result.suggest = review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewPolicy {
    /// Publish it.
    Deliver,
    /// Keep it from others: the sender gets `content_held`.
    Hold,
}

/// What the content check answers when WeChat cannot be asked (`-1`, quota, network, token trouble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// Publish unchecked.
    Open,
    /// Hold it (the sender gets `content_held`).
    Closed,
}

/// Settings of the content-check NATS service.
#[derive(Debug, Clone)]
pub struct ContentCheck {
    /// `scene` sent to `msgSecCheck` (`AUTH_CONTENT_SCENE`, 1–4).
    pub scene: u8,
    /// `AUTH_CONTENT_REVIEW_POLICY`: `deliver` (default) or `hold`.
    pub review: ReviewPolicy,
    /// `AUTH_CONTENT_FAIL_POLICY`: `closed` (default) or `open`.
    pub fail: FailPolicy,
}

/// What a notification is about, and so which template it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyKind {
    /// A direct message.
    Dm,
    /// A group message that mentions the user.
    Mention,
}

/// What a template data field is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldSource {
    /// The sender's user id.
    Sender,
    /// The message text, scrubbed and cut to the field's limit.
    Text,
    /// When it was sent, `YYYY-MM-DD HH:MM` in China Standard Time.
    Time,
    /// The group's name for a mention, the sender for a direct message.
    Conversation,
}

/// One subscribe-message template and how its data fields are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub kind: NotifyKind,
    pub id: String,
    /// `(key, source)`, for example `("thing1", Sender)`.
    pub fields: Vec<(String, FieldSource)>,
}

/// Default field mapping of a template: `thing1=sender,thing2=text,time3=time`.
pub const DEFAULT_NOTIFY_FIELDS: &str = "thing1=sender,thing2=text,time3=time";
/// Default time without a connection before a user is notified.
pub const DEFAULT_NOTIFY_OFFLINE_AFTER_SECS: u64 = 30;
/// Default page a notification opens.
pub const DEFAULT_NOTIFY_PAGE: &str = "pages/chat/chat";

/// Offline notifications through WeChat subscribe messages (`notify`).
#[derive(Debug, Clone)]
pub struct Notify {
    /// One per kind configured.
    pub templates: Vec<Template>,
    /// `NOTIFY_OFFLINE_AFTER_SECS`: how long a user must have had no connection.
    pub offline_after: Duration,
    /// `AUTH_NOTIFY_PAGE`: the mini-program page a notification opens, given `?with=` or `?group=`.
    pub page: String,
    /// `AUTH_NOTIFY_MINIPROGRAM_STATE`: `formal` (default), `trial` or `developer`.
    pub miniprogram_state: String,
}

impl Notify {
    pub fn template(&self, kind: NotifyKind) -> Option<&Template> {
        self.templates.iter().find(|t| t.kind == kind)
    }
}

/// Parses `thing1=sender,thing2=text,time3=time`.
pub fn parse_fields(v: &str) -> Result<Vec<(String, FieldSource)>, String> {
    let mut out = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, source) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=source, got {pair:?}"))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{key:?} is not a template data key"));
        }
        let source = match source.trim() {
            "sender" => FieldSource::Sender,
            "text" => FieldSource::Text,
            "time" => FieldSource::Time,
            "conversation" => FieldSource::Conversation,
            other => {
                return Err(format!(
                    "unknown source {other:?}: use sender, text, time or conversation"
                ));
            }
        };
        out.push((key.to_owned(), source));
    }
    if out.is_empty() {
        return Err("map at least one field".into());
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Address `main` binds (`AUTH_LISTEN`).
    pub listen: String,
    /// Whether `POST /api/login {"dev_user"}` is allowed (`AUTH_DEV_LOGIN=1` or `--dev`). Off by default,
    /// and so off whenever WeChat credentials are set without the flag.
    pub dev_login: bool,
    /// The signing key (`AUTH_SIGNING_KEY` or `AUTH_KEY_FILE`).
    pub key: KeySource,
    /// Files holding further keys (base64url seeds) whose public halves are served by `/api/keys` so that
    /// tokens they signed stay valid (`AUTH_PREVIOUS_KEY_FILES`, comma separated). A missing file is
    /// skipped, so the rotation layout can be configured before the first rotation.
    pub previous_key_files: Vec<PathBuf>,
    /// Time between serving a new signing key (after a reload) and signing with it
    /// (`AUTH_KEY_ACTIVATION_DELAY_SECS`); keep it above the gateways' key refresh interval.
    pub key_activation_delay: Duration,
    /// The `iss` claim of issued tokens (`AUTH_ISSUER`).
    pub issuer: String,
    /// Access token lifetime in seconds (`AUTH_ACCESS_TTL_SECS`).
    pub access_ttl_secs: u64,
    /// Refresh token family lifetime in seconds, renewed by each rotation (`AUTH_REFRESH_TTL_SECS`).
    pub refresh_ttl_secs: u64,
    /// How long a `session_key` is kept in Redis (`AUTH_SESSION_KEY_TTL_SECS`).
    pub session_key_ttl_secs: u64,
    /// WeChat login, enabled by `AUTH_WECHAT_APPID` and `AUTH_WECHAT_SECRET` together.
    pub wechat: Option<WeChat>,
    /// Key of the HMAC that turns an openid into a user id (`AUTH_USER_ID_SECRET`, at least 16 bytes).
    /// Changing it changes every user id.
    pub user_id_secret: Option<Secret<Vec<u8>>>,
    /// Redis URL (`AUTH_REDIS_URL`, for example `redis://127.0.0.1:6379`); required for WeChat login.
    pub redis_url: Option<Secret<String>>,
    /// NATS URL(s), comma separated (`AUTH_NATS_URL`); used to close a user's sockets at logout and to
    /// serve the content check.
    pub nats_url: Option<String>,
    /// Login attempts per client IP per minute (`AUTH_LOGIN_PER_IP_PER_MIN`).
    pub login_per_ip_per_min: u64,
    /// Login attempts per `code` during its 5-minute life (`AUTH_LOGIN_PER_CODE`).
    pub login_per_code: u64,
    /// Take the client IP from the first `X-Forwarded-For` entry (`AUTH_TRUST_FORWARDED_FOR`); set it
    /// only behind a proxy that overwrites that header.
    pub trust_forwarded_for: bool,
    /// The content-check service (`AUTH_CONTENT_CHECK=1`); needs WeChat credentials and NATS.
    pub content_check: Option<ContentCheck>,
    /// Offline notifications, on when a template is configured (`AUTH_NOTIFY_DM_TEMPLATE`,
    /// `AUTH_NOTIFY_MENTION_TEMPLATE`); needs WeChat credentials, Redis and NATS.
    pub notify: Option<Notify>,
}

/// The configuration variables that cannot be used, each named.
pub use svc::env::ConfigError;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            dev_login: false,
            key: KeySource::Ephemeral,
            previous_key_files: Vec::new(),
            key_activation_delay: DEFAULT_KEY_ACTIVATION_DELAY,
            issuer: DEFAULT_ISSUER.into(),
            access_ttl_secs: DEFAULT_ACCESS_TTL_SECS,
            refresh_ttl_secs: DEFAULT_REFRESH_TTL_SECS,
            session_key_ttl_secs: DEFAULT_SESSION_KEY_TTL_SECS,
            wechat: None,
            user_id_secret: None,
            redis_url: None,
            nats_url: None,
            login_per_ip_per_min: DEFAULT_LOGIN_PER_IP_PER_MIN,
            login_per_code: DEFAULT_LOGIN_PER_CODE,
            trust_forwarded_for: false,
            content_check: None,
            notify: None,
        }
    }
}

impl Config {
    /// Reads the configuration through `get`, which is `std::env::var` in `main` and a map in tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut env = svc::env::Env::new(get);
        let mut c = Config::default();
        if let Some(v) = env.string("AUTH_LISTEN") {
            c.listen = v;
        }
        if let Some(b) = env.flag("AUTH_DEV_LOGIN") {
            c.dev_login = b;
        }
        if let Some(v) = env.string("AUTH_ISSUER") {
            c.issuer = v;
        }
        if let Some(n) = env.positive("AUTH_ACCESS_TTL_SECS") {
            c.access_ttl_secs = n;
        }
        if let Some(n) = env.positive("AUTH_REFRESH_TTL_SECS") {
            c.refresh_ttl_secs = n;
        }
        if let Some(n) = env.positive("AUTH_SESSION_KEY_TTL_SECS") {
            c.session_key_ttl_secs = n;
        }
        let seed = env.with("AUTH_SIGNING_KEY", parse_seed);
        c.key = match (seed, env.string("AUTH_KEY_FILE")) {
            (Some(seed), _) => KeySource::Seed(Secret(seed)),
            (None, Some(path)) => KeySource::File(path.into()),
            (None, None) => KeySource::Ephemeral,
        };
        if let Some(v) = env.string("AUTH_PREVIOUS_KEY_FILES") {
            c.previous_key_files = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(n) = env.unsigned("AUTH_KEY_ACTIVATION_DELAY_SECS") {
            c.key_activation_delay = Duration::from_secs(n);
        }
        let timeout = env.positive("AUTH_WECHAT_TIMEOUT_MS");
        let retry_delay = env.positive("AUTH_WECHAT_RETRY_DELAY_MS");
        c.wechat = match (
            env.string("AUTH_WECHAT_APPID"),
            env.string("AUTH_WECHAT_SECRET"),
        ) {
            (Some(appid), Some(secret)) => Some(WeChat {
                appid,
                secret: Secret(secret),
                api_base: env
                    .string("AUTH_WECHAT_API_BASE")
                    .unwrap_or_else(|| DEFAULT_WECHAT_API_BASE.into())
                    .trim_end_matches('/')
                    .to_owned(),
                timeout: timeout.map_or(DEFAULT_WECHAT_TIMEOUT, Duration::from_millis),
                retry_delay: retry_delay.map_or(DEFAULT_WECHAT_RETRY_DELAY, Duration::from_millis),
            }),
            (None, None) => None,
            (Some(_), None) => {
                env.invalid(
                    "AUTH_WECHAT_SECRET",
                    "AUTH_WECHAT_APPID is set, so the AppSecret is needed too",
                );
                None
            }
            (None, Some(_)) => {
                env.invalid(
                    "AUTH_WECHAT_APPID",
                    "AUTH_WECHAT_SECRET is set, so the appid is needed too",
                );
                None
            }
        };
        if let Some(v) = env.with("AUTH_USER_ID_SECRET", |v| {
            (v.len() >= 16)
                .then(|| v.to_owned())
                .ok_or_else(|| "expected at least 16 bytes".to_owned())
        }) {
            c.user_id_secret = Some(Secret(v.into_bytes()));
        }
        c.redis_url = env.string("AUTH_REDIS_URL").map(Secret);
        c.nats_url = env.string("AUTH_NATS_URL");
        if let Some(n) = env.positive("AUTH_LOGIN_PER_IP_PER_MIN") {
            c.login_per_ip_per_min = n;
        }
        if let Some(n) = env.positive("AUTH_LOGIN_PER_CODE") {
            c.login_per_code = n;
        }
        if let Some(b) = env.flag("AUTH_TRUST_FORWARDED_FOR") {
            c.trust_forwarded_for = b;
        }
        if env.flag("AUTH_CONTENT_CHECK").unwrap_or(false) {
            let scene = env
                .with("AUTH_CONTENT_SCENE", |v| {
                    v.parse::<u8>()
                        .ok()
                        .filter(|s| (1..=4).contains(s))
                        .ok_or_else(|| format!("expected 1, 2, 3 or 4, got {v:?}"))
                })
                .unwrap_or(DEFAULT_CONTENT_SCENE);
            let review = match env.mode("AUTH_CONTENT_REVIEW_POLICY", &["deliver", "hold"]) {
                Some(1) => ReviewPolicy::Hold,
                _ => ReviewPolicy::Deliver,
            };
            let fail = match env.mode("AUTH_CONTENT_FAIL_POLICY", &["closed", "open"]) {
                Some(1) => FailPolicy::Open,
                _ => FailPolicy::Closed,
            };
            c.content_check = Some(ContentCheck {
                scene,
                review,
                fail,
            });
        }
        let mut templates = Vec::new();
        for (kind, id_var, fields_var) in [
            (
                NotifyKind::Dm,
                "AUTH_NOTIFY_DM_TEMPLATE",
                "AUTH_NOTIFY_DM_FIELDS",
            ),
            (
                NotifyKind::Mention,
                "AUTH_NOTIFY_MENTION_TEMPLATE",
                "AUTH_NOTIFY_MENTION_FIELDS",
            ),
        ] {
            let fields = env
                .with(fields_var, parse_fields)
                .unwrap_or_else(|| parse_fields(DEFAULT_NOTIFY_FIELDS).unwrap_or_default());
            if let Some(id) = env.string(id_var) {
                templates.push(Template {
                    kind,
                    id: id.trim().to_owned(),
                    fields,
                });
            }
        }
        let offline_after = env
            .unsigned("NOTIFY_OFFLINE_AFTER_SECS")
            .unwrap_or(DEFAULT_NOTIFY_OFFLINE_AFTER_SECS);
        let page = env
            .string("AUTH_NOTIFY_PAGE")
            .unwrap_or_else(|| DEFAULT_NOTIFY_PAGE.into());
        let state = match env.mode(
            "AUTH_NOTIFY_MINIPROGRAM_STATE",
            &["formal", "trial", "developer"],
        ) {
            Some(1) => "trial",
            Some(2) => "developer",
            _ => "formal",
        };
        if !templates.is_empty() {
            c.notify = Some(Notify {
                templates,
                offline_after: Duration::from_secs(offline_after),
                page: page.trim_start_matches('/').to_owned(),
                miniprogram_state: state.to_owned(),
            });
        }
        // The checks across variables only mean something once each variable was readable.
        let c = env.finish(c)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings that only make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.wechat.is_some() {
            if self.redis_url.is_none() {
                return Err(ConfigError::one(
                    "AUTH_REDIS_URL",
                    "WeChat login keeps sessions and refresh tokens in Redis; set it",
                ));
            }
            if self.user_id_secret.is_none() {
                return Err(ConfigError::one(
                    "AUTH_USER_ID_SECRET",
                    "WeChat login derives user ids with this key; set it (at least 16 bytes)",
                ));
            }
        }
        if self.notify.is_some() {
            let missing = if self.wechat.is_none() {
                Some("AUTH_WECHAT_APPID")
            } else if self.redis_url.is_none() {
                Some("AUTH_REDIS_URL")
            } else if self.nats_url.is_none() {
                Some("AUTH_NATS_URL")
            } else {
                None
            };
            if let Some(var) = missing {
                return Err(ConfigError::one(
                    var,
                    "offline notifications send through WeChat, count grants in Redis and read \
                     the stream over NATS; set it",
                ));
            }
        }
        if self.content_check.is_some() {
            if self.wechat.is_none() {
                return Err(ConfigError::one(
                    "AUTH_CONTENT_CHECK",
                    "the content check calls WeChat; set AUTH_WECHAT_APPID and AUTH_WECHAT_SECRET",
                ));
            }
            if self.nats_url.is_none() {
                return Err(ConfigError::one(
                    "AUTH_NATS_URL",
                    "the content check is a NATS service; set it",
                ));
            }
        }
        Ok(())
    }

    /// Loads or creates the signing key.
    pub fn signer(&self) -> anyhow::Result<crate::Signer> {
        use anyhow::Context;
        let seed = match &self.key {
            KeySource::Seed(s) => s.0,
            KeySource::Ephemeral => rand::random(),
            KeySource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => parse_seed(text.trim())
                    .map_err(|p| anyhow::anyhow!("{p}"))
                    .with_context(|| format!("reading key file {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let seed: [u8; 32] = rand::random();
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
                    }
                    write_private(path, &B64.encode(seed))
                        .with_context(|| format!("writing key file {}", path.display()))?;
                    tracing::info!(path = %path.display(), "created a new signing key");
                    seed
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading key file {}", path.display()));
                }
            },
        };
        Ok(crate::Signer::from_seed(&seed, self.issuer.clone()))
    }

    /// The public keys of [`Config::previous_key_files`] that exist, with their key ids.
    pub fn previous_keys(&self) -> anyhow::Result<Vec<token::VerifyingKey>> {
        use anyhow::Context;
        let mut out = Vec::new();
        for path in &self.previous_key_files {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let seed = parse_seed(text.trim())
                        .map_err(|p| anyhow::anyhow!("{p}"))
                        .with_context(|| format!("reading key file {}", path.display()))?;
                    out.push(crate::Signer::from_seed(&seed, "").public_key());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::debug!(path = %path.display(), "previous key file absent; skipped");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading key file {}", path.display()));
                }
            }
        }
        Ok(out)
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

fn parse_seed(s: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(s)
        .map_err(|_| "expected 32 bytes in base64url".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "expected exactly 32 bytes".to_owned())
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
    fn dev_login_is_off_unless_asked() {
        assert!(!cfg(&[]).unwrap().dev_login);
        assert!(cfg(&[("AUTH_DEV_LOGIN", "1")]).unwrap().dev_login);
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            cfg(&[("AUTH_DEV_LOGIN", "maybe")]).unwrap_err().vars()[0],
            "AUTH_DEV_LOGIN"
        );
        assert_eq!(
            cfg(&[("AUTH_SIGNING_KEY", "short")]).unwrap_err().vars()[0],
            "AUTH_SIGNING_KEY"
        );
        assert_eq!(
            cfg(&[("AUTH_ACCESS_TTL_SECS", "0")]).unwrap_err().vars()[0],
            "AUTH_ACCESS_TTL_SECS"
        );
    }

    #[test]
    fn wechat_needs_redis_and_a_user_id_secret() {
        let base = [
            ("AUTH_WECHAT_APPID", "wx1"),
            ("AUTH_WECHAT_SECRET", "s3cr3t"),
        ];
        assert_eq!(cfg(&base).unwrap_err().vars()[0], "AUTH_REDIS_URL");
        let mut more = base.to_vec();
        more.push(("AUTH_REDIS_URL", "redis://127.0.0.1:1"));
        assert_eq!(cfg(&more).unwrap_err().vars()[0], "AUTH_USER_ID_SECRET");
        more.push(("AUTH_USER_ID_SECRET", "0123456789abcdef"));
        let c = cfg(&more).unwrap();
        assert!(
            !c.dev_login,
            "credentials without the flag leave dev login off"
        );
        let w = c.wechat.as_ref().unwrap();
        assert_eq!(w.api_base, DEFAULT_WECHAT_API_BASE);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("0123456789abcdef"));
        assert_eq!(
            cfg(&[("AUTH_WECHAT_APPID", "wx1")]).unwrap_err().vars()[0],
            "AUTH_WECHAT_SECRET"
        );
    }

    #[test]
    fn content_check_settings() {
        let mut v = vec![
            ("AUTH_WECHAT_APPID", "wx1"),
            ("AUTH_WECHAT_SECRET", "s"),
            ("AUTH_REDIS_URL", "redis://x"),
            ("AUTH_USER_ID_SECRET", "0123456789abcdef"),
            ("AUTH_CONTENT_CHECK", "1"),
        ];
        assert_eq!(cfg(&v).unwrap_err().vars()[0], "AUTH_NATS_URL");
        v.push(("AUTH_NATS_URL", "nats://127.0.0.1:4222"));
        let c = cfg(&v).unwrap().content_check.unwrap();
        assert_eq!(
            (c.scene, c.review, c.fail),
            (2, ReviewPolicy::Deliver, FailPolicy::Closed)
        );
        v.push(("AUTH_CONTENT_REVIEW_POLICY", "maybe"));
        assert_eq!(cfg(&v).unwrap_err().vars()[0], "AUTH_CONTENT_REVIEW_POLICY");
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("liaotian-auth-key-{}", std::process::id()));
        let path = dir.join("key");
        let c = cfg(&[("AUTH_KEY_FILE", path.to_str().unwrap())]).unwrap();
        let a = c.signer().unwrap();
        let b = c.signer().unwrap();
        assert_eq!(a.kid(), b.kid());
        assert!(!format!("{c:?}").contains(&std::fs::read_to_string(&path).unwrap()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
