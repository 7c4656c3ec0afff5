//! Auth service configuration, read once from the environment in `main`.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// Default lifetime of an access token: 2 hours.
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 2 * 60 * 60;
/// Default `iss` claim.
pub const DEFAULT_ISSUER: &str = "liaotian";
/// Default listen address of `main`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

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

#[derive(Debug, Clone)]
pub struct Config {
    /// Address `main` binds (`AUTH_LISTEN`).
    pub listen: String,
    /// Whether `POST /api/login {"dev_user"}` is allowed (`AUTH_DEV_LOGIN=1` or `--dev`). Off by default.
    pub dev_login: bool,
    /// The signing key (`AUTH_SIGNING_KEY` or `AUTH_KEY_FILE`).
    pub key: KeySource,
    /// The `iss` claim of issued tokens (`AUTH_ISSUER`).
    pub issuer: String,
    /// Access token lifetime in seconds (`AUTH_ACCESS_TTL_SECS`).
    pub access_ttl_secs: u64,
}

/// A configuration value that cannot be used; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            dev_login: false,
            key: KeySource::Ephemeral,
            issuer: DEFAULT_ISSUER.into(),
            access_ttl_secs: DEFAULT_ACCESS_TTL_SECS,
        }
    }
}

impl Config {
    /// Reads the configuration through `get`, which is `std::env::var` in `main` and a map in tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        if let Some(v) = get("AUTH_LISTEN") {
            c.listen = v;
        }
        if let Some(v) = get("AUTH_DEV_LOGIN") {
            c.dev_login = parse_bool("AUTH_DEV_LOGIN", &v)?;
        }
        if let Some(v) = get("AUTH_ISSUER") {
            c.issuer = v;
        }
        if let Some(v) = get("AUTH_ACCESS_TTL_SECS") {
            c.access_ttl_secs = v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError {
                    var: "AUTH_ACCESS_TTL_SECS",
                    problem: format!("expected a positive number of seconds, got {v:?}"),
                })?;
        }
        c.key = match (get("AUTH_SIGNING_KEY"), get("AUTH_KEY_FILE")) {
            (Some(seed), _) => KeySource::Seed(Secret(parse_seed(&seed).map_err(|problem| {
                ConfigError {
                    var: "AUTH_SIGNING_KEY",
                    problem,
                }
            })?)),
            (None, Some(path)) => KeySource::File(path.into()),
            (None, None) => KeySource::Ephemeral,
        };
        Ok(c)
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

/// Parses `1/0/true/false/yes/no`.
pub fn parse_bool(var: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError {
            var,
            problem: format!("expected true or false, got {v:?}"),
        }),
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
    fn dev_login_is_off_unless_asked() {
        assert!(!cfg(&[]).unwrap().dev_login);
        assert!(cfg(&[("AUTH_DEV_LOGIN", "1")]).unwrap().dev_login);
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            cfg(&[("AUTH_DEV_LOGIN", "maybe")]).unwrap_err().var,
            "AUTH_DEV_LOGIN"
        );
        assert_eq!(
            cfg(&[("AUTH_SIGNING_KEY", "short")]).unwrap_err().var,
            "AUTH_SIGNING_KEY"
        );
        assert_eq!(
            cfg(&[("AUTH_ACCESS_TTL_SECS", "0")]).unwrap_err().var,
            "AUTH_ACCESS_TTL_SECS"
        );
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
