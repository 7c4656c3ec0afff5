//! Admin service configuration, read once from the environment in `main`.
//!
//! The admin service shares its deployment's settings rather than repeating them: it reads the
//! gateway's variables (`NATS_URL`, `GROUP_MAX_MEMBERS`, `GATEWAY_MAX_TEXT_CHARS`, `CHAT_*`, …)
//! and auth's `AUTH_REDIS_URL` and `AUTH_ACCESS_TTL_SECS`, so one environment file serves all three
//! and a group or a message made here is held to the limits a member's is.

use auth::config::Secret;

pub use svc::env::ConfigError;

/// Default listen address: loopback, since the API is for the app's backend, never for clients.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Shortest server key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct Config {
    /// Address `main` binds (`ADMIN_LISTEN`): a private one, apart from the public ports.
    pub listen: String,
    /// The server keys callers present as `Authorization: Bearer` (`ADMIN_KEYS`, comma separated,
    /// each at least [`MIN_KEY_LEN`] bytes). More than one lets a key be rotated without downtime.
    pub keys: Vec<Secret<String>>,
    /// Auth's Redis (`AUTH_REDIS_URL`), where refresh tokens live: `revoke` revokes them there.
    /// Unset when auth runs without Redis, which then issues no refresh tokens.
    pub redis_url: Option<Secret<String>>,
    /// Auth's access token lifetime (`AUTH_ACCESS_TTL_SECS`): how long a revocation record lives.
    pub access_ttl_secs: u64,
    /// The gateway settings this service shares (NATS, stream, groups, text limit).
    pub gateway: gateway::Config,
    /// The webhook relay (`WEBHOOK_URL` and the rest), when set.
    pub webhook: Option<crate::webhook::Settings>,
}

impl Config {
    /// Reads the configuration through `get`, which is `std::env::var` in `main` and a map in tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let gateway = gateway::Config::from_lookup(&get)?;
        let mut env = svc::env::Env::new(&get);
        let listen = env
            .string("ADMIN_LISTEN")
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let keys = env.with("ADMIN_KEYS", parse_keys).unwrap_or_default();
        if keys.is_empty() && env.string("ADMIN_KEYS").is_none() {
            env.invalid(
                "ADMIN_KEYS",
                format!("set at least one server key of {MIN_KEY_LEN}+ bytes"),
            );
        }
        let redis_url = env.string("AUTH_REDIS_URL").map(Secret);
        let access_ttl_secs = env
            .positive("AUTH_ACCESS_TTL_SECS")
            .unwrap_or(auth::config::DEFAULT_ACCESS_TTL_SECS);
        let webhook = crate::webhook::settings(&mut env);
        env.finish(Config {
            listen,
            keys,
            redis_url,
            access_ttl_secs,
            gateway,
            webhook,
        })
    }
}

fn parse_keys(v: &str) -> Result<Vec<Secret<String>>, String> {
    let keys: Vec<_> = v
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err("expected one or more comma-separated keys".into());
    }
    if keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
        return Err(format!("every key must be at least {MIN_KEY_LEN} bytes"));
    }
    Ok(keys.into_iter().map(Secret).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn keys_are_required_and_long() {
        assert_eq!(cfg(&[]).unwrap_err().vars(), ["ADMIN_KEYS"]);
        assert_eq!(
            cfg(&[("ADMIN_KEYS", "short")]).unwrap_err().vars(),
            ["ADMIN_KEYS"]
        );
        let long = "k".repeat(32);
        let two = format!("{long}, {}", "j".repeat(40));
        let c = cfg(&[
            ("ADMIN_KEYS", &two),
            ("GROUP_MAX_MEMBERS", "20"),
            ("AUTH_ACCESS_TTL_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.gateway.group_max_members, 20);
        assert_eq!(c.access_ttl_secs, 60);
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert!(c.webhook.is_none());
        let hook = |vars: &[(&str, &str)]| {
            let mut all = vec![("ADMIN_KEYS", long.as_str())];
            all.extend_from_slice(vars);
            cfg(&all)
        };
        assert_eq!(
            hook(&[("WEBHOOK_URL", "https://app.example/hook")])
                .unwrap_err()
                .vars(),
            ["WEBHOOK_SECRET"]
        );
        let secret = "s".repeat(32);
        let w = hook(&[
            ("WEBHOOK_URL", "https://app.example/hook"),
            ("WEBHOOK_SECRET", &secret),
            ("WEBHOOK_EVENTS", "message, presence"),
            ("WEBHOOK_MAX_ATTEMPTS", "99"),
        ])
        .unwrap()
        .webhook
        .unwrap();
        assert_eq!(w.kinds.len(), 2);
        assert_eq!(w.max_attempts, 10, "bounded");
        assert_eq!(
            hook(&[("WEBHOOK_URL", "ftp://x"), ("WEBHOOK_SECRET", &secret)])
                .unwrap_err()
                .vars(),
            ["WEBHOOK_URL"]
        );
        assert_eq!(
            hook(&[
                ("WEBHOOK_URL", "https://x"),
                ("WEBHOOK_SECRET", &secret),
                ("WEBHOOK_EVENTS", "typing")
            ])
            .unwrap_err()
            .vars(),
            ["WEBHOOK_EVENTS"]
        );
    }
}
