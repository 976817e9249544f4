//! Typed, layered settings (figment): defaults < config/{profile}.toml < .env < environment.
//!
//! Names are flat so that the old service's environment variables (`DATABASE_URL`,
//! `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`, `HOST`, `PORT`) work unchanged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::domain::KeyAlgorithm;

/// The defaults and the profiles ship inside the binary, so it runs from any folder; files
/// in the config folder, when present, are layered on top.
const DEFAULTS: &str = include_str!("../config/default.toml");
const DEVELOPMENT: &str = include_str!("../config/development.toml");
const TEST: &str = include_str!("../config/test.toml");
const PRODUCTION: &str = include_str!("../config/production.toml");

/// Which set of defaults and checks applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Development,
    Test,
    Production,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Test => "test",
            Self::Production => "production",
        }
    }

    /// The profile's built-in settings.
    fn builtin(self) -> &'static str {
        match self {
            Self::Development => DEVELOPMENT,
            Self::Test => TEST,
            Self::Production => PRODUCTION,
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "development" | "dev" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "unknown profile {other:?}: expected development, test or production"
            )),
        }
    }
}

/// A secret that never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "lenient_string")] String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where abuse-limit counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStore {
    /// The service's database: one budget for every instance.
    Database,
    /// This process only.
    Memory,
}

/// What signs access tokens: the JOSE names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `SECRET_KEY`, as the old service did.
    #[serde(rename = "HS256", alias = "hs256")]
    Hs256,
    /// Ed25519 keys from the key table, published in the JWKS.
    #[serde(rename = "EdDSA", alias = "eddsa", alias = "EDDSA")]
    EdDsa,
    /// P-256 keys from the key table, published in the JWKS.
    #[serde(rename = "ES256", alias = "es256")]
    Es256,
    /// 2048-bit RSA keys from the key table, published in the JWKS: for relying parties that
    /// verify nothing else.
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
}

impl JwtAlgorithm {
    /// The asymmetric algorithm, or `None` for HS256.
    pub fn asymmetric(self) -> Option<KeyAlgorithm> {
        match self {
            Self::Hs256 => None,
            Self::EdDsa => Some(KeyAlgorithm::EdDsa),
            Self::Es256 => Some(KeyAlgorithm::Es256),
            Self::Rs256 => Some(KeyAlgorithm::Rs256),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.asymmetric().map_or("HS256", KeyAlgorithm::as_str)
    }
}

/// How mail leaves the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// Each whole message, link included, goes to the log at info level.
    Log,
    /// An SMTP server, at `smtp_url`.
    Smtp,
}

/// Every setting, with the names of `config/default.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(skip)]
    pub profile: Profile,
    pub host: String,
    pub port: u16,
    pub database_url: Option<String>,
    pub database_max_connections: u32,
    pub database_timeout_seconds: u64,
    pub session_lookup_queries: usize,
    pub session_cache: bool,
    pub session_cache_max_entries: usize,
    pub session_cache_max_bytes: usize,
    pub session_cache_max_age_seconds: u64,
    pub session_cache_listen_url: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub access_token_expire_minutes: i64,
    #[serde(deserialize_with = "lenient_string")]
    pub jwt_issuer: String,
    #[serde(deserialize_with = "lenient_string")]
    pub jwt_audience: String,
    pub jwt_leeway_seconds: i64,
    pub id_token_ttl_seconds: i64,
    pub jwt_algorithm: JwtAlgorithm,
    pub signing_key_rotation_days: i64,
    pub jwks_max_age: i64,
    pub signing_key_refresh_seconds: u64,
    pub refresh_token_expire_days: i64,
    pub session_max_age_days: i64,
    pub session_purge_interval_seconds: u64,
    pub max_sessions_per_user: u32,
    pub bcrypt_cost: u32,
    pub password_min_score: u8,
    pub accept_pyauth_tokens_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The issuer authenticator apps show for a TOTP factor.
    #[serde(deserialize_with = "lenient_string")]
    pub totp_issuer: String,
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub rate_limits_enabled: bool,
    pub rate_limit_window_seconds: i64,
    pub rate_limit_store: RateLimitStore,
    pub login_limit_per_ip: u32,
    pub login_limit_per_account: u32,
    pub register_limit_per_ip: u32,
    pub register_limit_per_account: u32,
    pub refresh_limit_per_ip: u32,
    pub refresh_limit_per_account: u32,
    pub token_limit_per_ip: u32,
    pub token_limit_per_client: u32,
    pub password_check_limit_per_ip: u32,
    pub password_check_limit_per_account: u32,
    pub ipv6_prefix_length: u8,
    pub login_free_failures: u32,
    pub login_failure_delay_max_seconds: i64,
    pub body_limit_bytes: usize,
    pub header_read_timeout_seconds: u64,
    pub body_read_timeout_seconds: u64,
    pub max_connections: usize,
    pub cors_allowed_origins: String,
    pub hsts_max_age_seconds: u64,
    pub trusted_proxies: String,
    /// Serve the web console under `/console`.
    pub console_enabled: bool,
    pub mail_transport: Option<MailTransport>,
    pub smtp_url: Option<Secret>,
    #[serde(deserialize_with = "lenient_string")]
    pub mail_from: String,
    pub public_url: Option<String>,
    pub mail_templates_dir: Option<PathBuf>,
    pub password_reset_ttl_minutes: i64,
    pub email_verification_ttl_hours: i64,
    pub invitation_ttl_hours: i64,
    pub audit_retention_days: i64,
    pub audit_fold_window_seconds: i64,
    pub require_verified_email: bool,
    pub verify_email_on_register: bool,
    pub reset_link_template: String,
    pub verify_link_template: String,
    pub email_change_link_template: String,
    pub mail_max_attempts: u32,
    pub mail_retry_base_seconds: i64,
    pub mail_limit_per_ip: u32,
    pub mail_limit_per_account: u32,
    pub mail_limit_per_recipient: u32,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout_seconds: u64,
    pub shutdown_drain_seconds: u64,
    /// The management listener for `/metrics`; unset or empty, `/metrics` is on the API's
    /// address (development and test only).
    pub metrics_listen: Option<String>,
}

/// Every key, in upper case, is also read from the environment.
const KEYS: &[&str] = &[
    "host",
    "port",
    "database_url",
    "database_max_connections",
    "database_timeout_seconds",
    "session_lookup_queries",
    "session_cache",
    "session_cache_max_entries",
    "session_cache_max_bytes",
    "session_cache_max_age_seconds",
    "session_cache_listen_url",
    "secret_key",
    "access_token_expire_minutes",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway_seconds",
    "id_token_ttl_seconds",
    "jwt_algorithm",
    "password_min_score",
    "accept_pyauth_tokens_until",
    "totp_issuer",
    "signing_key_rotation_days",
    "jwks_max_age",
    "signing_key_refresh_seconds",
    "refresh_token_expire_days",
    "session_max_age_days",
    "session_purge_interval_seconds",
    "max_sessions_per_user",
    "bcrypt_cost",
    "hash_workers",
    "hash_queue",
    "rate_limits_enabled",
    "rate_limit_window_seconds",
    "rate_limit_store",
    "login_limit_per_ip",
    "login_limit_per_account",
    "register_limit_per_ip",
    "register_limit_per_account",
    "refresh_limit_per_ip",
    "refresh_limit_per_account",
    "token_limit_per_ip",
    "token_limit_per_client",
    "password_check_limit_per_ip",
    "password_check_limit_per_account",
    "ipv6_prefix_length",
    "login_free_failures",
    "login_failure_delay_max_seconds",
    "body_limit_bytes",
    "header_read_timeout_seconds",
    "body_read_timeout_seconds",
    "max_connections",
    "cors_allowed_origins",
    "hsts_max_age_seconds",
    "trusted_proxies",
    "console_enabled",
    "mail_transport",
    "smtp_url",
    "mail_from",
    "public_url",
    "mail_templates_dir",
    "password_reset_ttl_minutes",
    "email_verification_ttl_hours",
    "invitation_ttl_hours",
    "audit_retention_days",
    "audit_fold_window_seconds",
    "require_verified_email",
    "verify_email_on_register",
    "reset_link_template",
    "verify_link_template",
    "email_change_link_template",
    "mail_max_attempts",
    "mail_retry_base_seconds",
    "mail_limit_per_ip",
    "mail_limit_per_account",
    "mail_limit_per_recipient",
    "data_dir",
    "log_format",
    "log_level",
    "shutdown_timeout_seconds",
    "shutdown_drain_seconds",
    "metrics_listen",
];

/// The longest lifetime, window or interval a setting may name: a hundred years. Far beyond it,
/// turning the setting into a time span, or adding it to now, overflows and panics at start or
/// on the first request that uses it; well before, deadlines leave the four-digit years that
/// SQLite's text timestamps compare correctly.
const MAX_DURATION_SECONDS: i64 = 100 * 365 * 86_400;

/// A setting that makes no sense, or that the profile does not allow. One line, for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads the layers for `profile`, reading `config_dir` for the TOML files. The process
    /// environment (with `.env` loaded into it beforehand) is the strongest layer.
    ///
    /// # Errors
    /// When a value has the wrong type, or [`Settings::validate`] refuses the result.
    pub fn load(profile: Profile, config_dir: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string(profile.builtin()))
            .merge(Toml::file(config_dir.join("default.toml")))
            .merge(Toml::file(
                config_dir.join(format!("{}.toml", profile.as_str())),
            ))
            .merge(Env::raw().only(KEYS));
        Self::from_figment(profile, &figment)
    }

    /// Builds settings from an explicit figment (tests use it to set values directly).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_figment(profile: Profile, figment: &Figment) -> Result<Self, ConfigError> {
        let mut settings: Self = figment
            .extract()
            .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
        settings.profile = profile;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults, for tests and tools that layer their own values on top.
    pub fn defaults() -> Figment {
        Figment::new().merge(Toml::string(DEFAULTS))
    }

    /// Refuses what would be unsafe or meaningless; production is strictest.
    ///
    /// # Errors
    /// One line naming the first setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError(msg.to_owned()));
        if !(4..=31).contains(&self.bcrypt_cost) {
            return fail("BCRYPT_COST must be between 4 and 31");
        }
        if self.access_token_expire_minutes < 1 {
            return fail("ACCESS_TOKEN_EXPIRE_MINUTES must be at least 1");
        }
        if self.refresh_token_expire_days < 1 || self.session_max_age_days < 1 {
            return fail("REFRESH_TOKEN_EXPIRE_DAYS and SESSION_MAX_AGE_DAYS must be at least 1");
        }
        if self.jwt_leeway_seconds < 0 {
            return fail("JWT_LEEWAY_SECONDS must not be negative");
        }
        if self.id_token_ttl_seconds < 1 {
            return fail("ID_TOKEN_TTL_SECONDS must be at least 1");
        }
        if self.signing_key_rotation_days < 1 || self.signing_key_refresh_seconds == 0 {
            return fail(
                "SIGNING_KEY_ROTATION_DAYS and SIGNING_KEY_REFRESH_SECONDS must be at least 1",
            );
        }
        if self.password_min_score > crate::domain::password::MAX_SCORE {
            return fail("PASSWORD_MIN_SCORE must be between 0 and 4");
        }
        let issuer = self.totp_issuer.trim();
        if issuer.is_empty() || issuer.chars().count() > 64 || issuer.chars().any(char::is_control)
        {
            return fail("TOTP_ISSUER must be 1 to 64 characters, without control characters");
        }
        if self.jwks_max_age < 0 {
            return fail("JWKS_MAX_AGE must not be negative");
        }
        if self.rate_limit_window_seconds < 1 {
            return fail("RATE_LIMIT_WINDOW_SECONDS must be at least 1");
        }
        if self.login_failure_delay_max_seconds < 1 {
            return fail("LOGIN_FAILURE_DELAY_MAX_SECONDS must be at least 1");
        }
        if self.body_limit_bytes < 1024 {
            return fail("BODY_LIMIT_BYTES must be at least 1024");
        }
        if self.max_sessions_per_user == 0 {
            return fail("MAX_SESSIONS_PER_USER must be at least 1");
        }
        if !(1..=128).contains(&self.ipv6_prefix_length) {
            return fail("IPV6_PREFIX_LENGTH must be between 1 and 128");
        }
        if self.header_read_timeout_seconds == 0 || self.body_read_timeout_seconds == 0 {
            return fail(
                "HEADER_READ_TIMEOUT_SECONDS and BODY_READ_TIMEOUT_SECONDS must be at least 1",
            );
        }
        if self.max_connections == 0 {
            return fail("MAX_CONNECTIONS must be at least 1");
        }
        self.validate_mail()?;
        self.validate_durations()?;
        if self.session_lookup_queries == 0 {
            return fail("SESSION_LOOKUP_QUERIES must be at least 1");
        }
        if self.session_cache
            && (self.session_cache_max_entries == 0
                || self.session_cache_max_bytes == 0
                || self.session_cache_max_age_seconds == 0)
        {
            return fail(
                "SESSION_CACHE_MAX_ENTRIES, SESSION_CACHE_MAX_BYTES and \
                 SESSION_CACHE_MAX_AGE_SECONDS must be at least 1 (or SESSION_CACHE=false)",
            );
        }
        if self.session_cache_listen_url.as_ref().is_some_and(|url| {
            !["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.expose().starts_with(scheme))
        }) {
            return fail("SESSION_CACHE_LISTEN_URL must be a postgres:// URL");
        }
        if self.database_max_connections == 0 || self.database_timeout_seconds == 0 {
            return fail(
                "DATABASE_MAX_CONNECTIONS and DATABASE_TIMEOUT_SECONDS must be at least 1",
            );
        }
        if let Some(key) = &self.secret_key
            && key.expose().len() < crate::outbound::jwt::MIN_SECRET_BYTES
        {
            return fail("SECRET_KEY must be at least 32 bytes");
        }
        if self.profile == Profile::Production {
            if self.database_url.is_none() {
                return fail("production requires DATABASE_URL to be set");
            }
            if self.secret_key.is_none() {
                return fail("production requires SECRET_KEY (at least 32 bytes) to be set");
            }
            if self.bcrypt_cost < 10 {
                return fail("production refuses BCRYPT_COST below 10");
            }
            if self
                .accept_pyauth_tokens_until
                .is_some_and(|until| until > chrono::Utc::now() + chrono::TimeDelta::days(1))
            {
                return fail(
                    "production refuses ACCEPT_PYAUTH_TOKENS_UNTIL more than a day ahead: pyauth \
                     tokens belong to no session and cannot be revoked",
                );
            }
            if self.cors_origins().iter().any(|o| o == "*") {
                return fail("production refuses CORS_ALLOWED_ORIGINS=\"*\": list the origins");
            }
            if self.metrics_address()?.is_none() {
                return fail(
                    "production serves /metrics only on the management listener: set \
                     METRICS_LISTEN (for example 127.0.0.1:9464)",
                );
            }
        }
        if self.shutdown_drain_seconds >= self.shutdown_timeout_seconds.max(1) {
            return fail("SHUTDOWN_DRAIN_SECONDS must be shorter than SHUTDOWN_TIMEOUT_SECONDS");
        }
        self.metrics_address()?;
        self.trusted_proxy_addrs().map(|_| ())
    }

    fn validate_mail(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError(msg.to_owned()));
        if self.mail_transport == Some(MailTransport::Smtp) && self.smtp_url.is_none() {
            return fail("MAIL_TRANSPORT=smtp needs SMTP_URL (smtp://host:port or smtps://...)");
        }
        if self.require_verified_email && self.mail_transport.is_none() {
            return fail(
                "REQUIRE_VERIFIED_EMAIL needs a mail transport (MAIL_TRANSPORT), or nobody could \
                 verify an address",
            );
        }
        if self.password_reset_ttl_minutes < 1
            || self.email_verification_ttl_hours < 1
            || self.invitation_ttl_hours < 1
        {
            return fail(
                "PASSWORD_RESET_TTL_MINUTES, EMAIL_VERIFICATION_TTL_HOURS and INVITATION_TTL_HOURS \
                 must be at least 1",
            );
        }
        if self.audit_retention_days < 1 {
            return fail("AUDIT_RETENTION_DAYS must be at least 1");
        }
        if !(0..=86_400).contains(&self.audit_fold_window_seconds) {
            return fail("AUDIT_FOLD_WINDOW_SECONDS must be from 0 to 86400");
        }
        if self.mail_max_attempts == 0 || self.mail_retry_base_seconds < 1 {
            return fail("MAIL_MAX_ATTEMPTS and MAIL_RETRY_BASE_SECONDS must be at least 1");
        }
        for (name, template) in [
            ("RESET_LINK_TEMPLATE", &self.reset_link_template),
            ("VERIFY_LINK_TEMPLATE", &self.verify_link_template),
            (
                "EMAIL_CHANGE_LINK_TEMPLATE",
                &self.email_change_link_template,
            ),
        ] {
            if !template.contains("{token}") {
                return Err(ConfigError(format!("{name} must contain {{token}}")));
            }
        }
        Ok(())
    }

    /// Refuses a lifetime, window or interval beyond [`MAX_DURATION_SECONDS`].
    fn validate_durations(&self) -> Result<(), ConfigError> {
        let signed = |value: i64, unit: i64| value.checked_mul(unit);
        let unsigned = |value: u64| i64::try_from(value).ok();
        for (name, seconds) in [
            (
                "ACCESS_TOKEN_EXPIRE_MINUTES",
                signed(self.access_token_expire_minutes, 60),
            ),
            (
                "PASSWORD_RESET_TTL_MINUTES",
                signed(self.password_reset_ttl_minutes, 60),
            ),
            (
                "EMAIL_VERIFICATION_TTL_HOURS",
                signed(self.email_verification_ttl_hours, 3600),
            ),
            (
                "INVITATION_TTL_HOURS",
                signed(self.invitation_ttl_hours, 3600),
            ),
            (
                "REFRESH_TOKEN_EXPIRE_DAYS",
                signed(self.refresh_token_expire_days, 86_400),
            ),
            (
                "SESSION_MAX_AGE_DAYS",
                signed(self.session_max_age_days, 86_400),
            ),
            (
                "SIGNING_KEY_ROTATION_DAYS",
                signed(self.signing_key_rotation_days, 86_400),
            ),
            (
                "AUDIT_RETENTION_DAYS",
                signed(self.audit_retention_days, 86_400),
            ),
            ("JWT_LEEWAY_SECONDS", Some(self.jwt_leeway_seconds)),
            ("ID_TOKEN_TTL_SECONDS", Some(self.id_token_ttl_seconds)),
            ("JWKS_MAX_AGE", Some(self.jwks_max_age)),
            (
                "RATE_LIMIT_WINDOW_SECONDS",
                Some(self.rate_limit_window_seconds),
            ),
            (
                "LOGIN_FAILURE_DELAY_MAX_SECONDS",
                Some(self.login_failure_delay_max_seconds),
            ),
            (
                "MAIL_RETRY_BASE_SECONDS",
                Some(self.mail_retry_base_seconds),
            ),
            (
                "SIGNING_KEY_REFRESH_SECONDS",
                unsigned(self.signing_key_refresh_seconds),
            ),
            (
                "DATABASE_TIMEOUT_SECONDS",
                unsigned(self.database_timeout_seconds),
            ),
            (
                "SESSION_CACHE_MAX_AGE_SECONDS",
                unsigned(self.session_cache_max_age_seconds),
            ),
            (
                "SESSION_PURGE_INTERVAL_SECONDS",
                unsigned(self.session_purge_interval_seconds),
            ),
            (
                "HEADER_READ_TIMEOUT_SECONDS",
                unsigned(self.header_read_timeout_seconds),
            ),
            (
                "BODY_READ_TIMEOUT_SECONDS",
                unsigned(self.body_read_timeout_seconds),
            ),
            (
                "SHUTDOWN_TIMEOUT_SECONDS",
                unsigned(self.shutdown_timeout_seconds),
            ),
        ] {
            if seconds.is_none_or(|seconds| seconds > MAX_DURATION_SECONDS) {
                return Err(ConfigError(format!("{name} must be at most 100 years")));
            }
        }
        Ok(())
    }

    /// Where the service is reached from outside: `public_url`, or `http://{host}:{port}`.
    /// Settings that are allowed but weaken the service, each with the reason; the server logs
    /// them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.profile == Profile::Production && self.public_url().starts_with("http://") {
            warnings.push(format!(
                "PUBLIC_URL {} is plain http in production: the console's cookies then cannot be \
                 Secure or __Host-, and browsers share cookies across the ports of a host, so a \
                 page served on another port of it can plant one (a forged console session or \
                 CSRF cookie); serve the service over https (TLS at the proxy) and set PUBLIC_URL \
                 to its https:// address",
                self.public_url()
            ));
        }
        warnings
    }

    /// Why the OpenID provider is off, if it is: relying parties verify its tokens with the
    /// published keys and find its endpoints from its issuer, so it needs an asymmetric key and
    /// an issuer that is the service's own URL.
    pub fn provider_off_reason(&self) -> Option<&'static str> {
        if self.jwt_algorithm == JwtAlgorithm::Hs256 {
            return Some("jwt_algorithm is HS256: relying parties need an asymmetric key");
        }
        let issuer = self.jwt_issuer.trim_end_matches('/');
        if issuer != self.public_url().trim_end_matches('/') {
            return Some("jwt_issuer is not equal to public_url");
        }
        let loopback = ["http://localhost", "http://127.0.0.1", "http://[::1]"]
            .iter()
            .any(|prefix| {
                issuer
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
            });
        if !issuer.starts_with("https://") && !loopback {
            return Some("jwt_issuer must be an https URL (or http on localhost)");
        }
        if !self.console_enabled {
            return Some("console_enabled is false: people sign in to applications through it");
        }
        None
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", self.host, self.port))
    }

    /// The CORS origins, parsed from their comma-separated form.
    pub fn cors_origins(&self) -> Vec<String> {
        split_list(&self.cors_allowed_origins)
    }

    /// The trusted proxies' addresses.
    ///
    /// # Errors
    /// When an entry is not an IP address.
    /// The management listener's address, if `/metrics` has one of its own.
    ///
    /// # Errors
    /// When `metrics_listen` is not an address and port.
    pub fn metrics_address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        match self.metrics_listen.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ConfigError(format!(
                    "METRICS_LISTEN must be an address and port, such as 127.0.0.1:9464, not \
                     {text:?}"
                ))
            }),
        }
    }

    pub fn trusted_proxy_addrs(&self) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        split_list(&self.trusted_proxies)
            .iter()
            .map(|entry| {
                entry.parse().map_err(|_| {
                    ConfigError(format!("TRUSTED_PROXIES: {entry:?} is not an IP address"))
                })
            })
            .collect()
    }

    /// The database URL; only production leaves it unset, and validation refuses that.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or("memory://")
    }
}

/// Reads a string even when the environment layer took it for a number (figment infers types
/// from values, so `SECRET_KEY=1234...` would otherwise arrive as an integer).
fn lenient_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Text(s) => s,
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Signed(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    })
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use figment::providers::Serialized;

    use super::*;

    fn with(profile: Profile, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        // Production's own file holds what production requires (the management listener);
        // the other profiles' files only relax, and these tests check the defaults.
        let mut figment = match profile {
            Profile::Production => Settings::defaults().merge(Toml::string(profile.builtin())),
            _ => Settings::defaults(),
        };
        for (key, value) in pairs {
            // As the environment layer would: numbers arrive as numbers.
            figment = match (value.parse::<i64>(), value.parse::<bool>()) {
                (Ok(number), _) => figment.merge(Serialized::default(key, number)),
                (_, Ok(flag)) => figment.merge(Serialized::default(key, flag)),
                _ => figment.merge(Serialized::default(key, value)),
            };
        }
        Settings::from_figment(profile, &figment)
    }

    #[test]
    fn signing_key_settings_refuse_bad_values() {
        for (name, algorithm) in [
            ("EdDSA", JwtAlgorithm::EdDsa),
            ("ES256", JwtAlgorithm::Es256),
            ("RS256", JwtAlgorithm::Rs256),
        ] {
            let ok = with(Profile::Development, &[("jwt_algorithm", name)]).unwrap();
            assert_eq!(ok.jwt_algorithm, algorithm);
            assert_eq!(algorithm.as_str(), name);
        }
        assert_eq!(
            with(Profile::Development, &[]).unwrap().jwt_algorithm,
            JwtAlgorithm::Hs256
        );
        for bad in [
            ("jwt_algorithm", "RS512"),
            ("jwt_algorithm", "none"),
            ("signing_key_rotation_days", "0"),
            ("signing_key_refresh_seconds", "0"),
            ("jwks_max_age", "-1"),
        ] {
            assert!(
                with(Profile::Development, &[bad]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_plain_http_public_url_in_production_is_warned_about_with_the_reason() {
        let base = [("database_url", "postgres://x/y"), ("secret_key", KEY)];
        let plain = with(
            Profile::Production,
            &[base[0], base[1], ("public_url", "http://auth.example.com")],
        )
        .unwrap();
        let warnings = plain.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("another port"), "{}", warnings[0]);
        // Unset, it is the bound http address: warned about too.
        assert_eq!(
            with(Profile::Production, &base).unwrap().warnings().len(),
            1
        );
        let tls = with(
            Profile::Production,
            &[base[0], base[1], ("public_url", "https://auth.example.com")],
        )
        .unwrap();
        assert!(tls.warnings().is_empty());
        assert!(
            with(Profile::Development, &[])
                .unwrap()
                .warnings()
                .is_empty()
        );
    }

    #[test]
    fn production_refuses_a_pyauth_cutover_more_than_a_day_ahead() {
        let base = [("database_url", "postgres://x/y"), ("secret_key", KEY)];
        let at = |delta: chrono::TimeDelta| (chrono::Utc::now() + delta).to_rfc3339();
        let soon = at(chrono::TimeDelta::hours(23));
        let late = at(chrono::TimeDelta::hours(25));
        let ok = with(
            Profile::Production,
            &[base[0], base[1], ("accept_pyauth_tokens_until", &soon)],
        );
        assert!(ok.unwrap().accept_pyauth_tokens_until.is_some());
        let err = with(
            Profile::Production,
            &[base[0], base[1], ("accept_pyauth_tokens_until", &late)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ACCEPT_PYAUTH_TOKENS_UNTIL") && !err.contains('\n'),
            "{err}"
        );
        assert!(
            with(
                Profile::Development,
                &[("accept_pyauth_tokens_until", &late)]
            )
            .is_ok()
        );
        assert!(
            with(
                Profile::Development,
                &[("accept_pyauth_tokens_until", "tomorrow")]
            )
            .is_err()
        );
        assert!(with(Profile::Development, &[("password_min_score", "5")]).is_err());
        for issuer in ["", "   ", "Acme\nCorp", &"x".repeat(65)] {
            assert!(
                with(Profile::Development, &[("totp_issuer", issuer)]).is_err(),
                "{issuer:?}"
            );
        }
        assert!(with(Profile::Development, &[("totp_issuer", "Acme: Staff")]).is_ok());
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_defaults_load_and_match_the_documented_values() {
        let s = with(Profile::Development, &[]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8000));
        assert_eq!(s.access_token_expire_minutes, 15);
        assert_eq!(s.bcrypt_cost, 12);
        assert_eq!(s.body_limit_bytes, 65536);
        assert_eq!(s.jwt_leeway_seconds, 30);
        assert_eq!(s.max_sessions_per_user, 100);
        assert_eq!(s.ipv6_prefix_length, 64);
        assert_eq!(
            (
                s.header_read_timeout_seconds,
                s.body_read_timeout_seconds,
                s.max_connections
            ),
            (10, 30, 10_000)
        );
    }

    #[test]
    fn production_names_what_is_missing() {
        let err = with(Profile::Production, &[("secret_key", KEY)]).unwrap_err();
        assert_eq!(err.0, "production requires DATABASE_URL to be set");
        let err = with(Profile::Production, &[("database_url", "postgres://x/y")]).unwrap_err();
        assert!(err.0.contains("SECRET_KEY"), "{}", err.0);
        let err = with(
            Profile::Production,
            &[
                ("database_url", "postgres://x/y"),
                ("secret_key", "too short"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.0, "SECRET_KEY must be at least 32 bytes");
        assert!(
            with(
                Profile::Production,
                &[("database_url", "postgres://x/y"), ("secret_key", KEY)]
            )
            .is_ok()
        );
    }

    #[test]
    fn production_refuses_a_weak_bcrypt_cost_and_any_cors_origin() {
        let base = [("database_url", "postgres://x/y"), ("secret_key", KEY)];
        let mut weak = base.to_vec();
        weak.push(("bcrypt_cost", "9"));
        assert!(
            with(Profile::Production, &weak)
                .unwrap_err()
                .0
                .contains("BCRYPT_COST")
        );
        let mut open = base.to_vec();
        open.push(("cors_allowed_origins", "*"));
        assert!(
            with(Profile::Production, &open)
                .unwrap_err()
                .0
                .contains("CORS")
        );
    }

    #[test]
    fn development_relaxes_only_the_per_address_limits() {
        let dev = Settings::from_figment(
            Profile::Development,
            &Settings::defaults().merge(Toml::string(Profile::Development.builtin())),
        )
        .unwrap();
        let prod = with(Profile::Development, &[]).unwrap();
        assert_eq!(dev.login_limit_per_ip, 10 * prod.login_limit_per_ip);
        assert_eq!(dev.register_limit_per_ip, 10 * prod.register_limit_per_ip);
        assert_eq!(
            dev.password_check_limit_per_ip,
            10 * prod.password_check_limit_per_ip
        );
        assert_eq!(dev.login_limit_per_account, prod.login_limit_per_account);
        assert_eq!(dev.login_free_failures, prod.login_free_failures);
    }

    #[test]
    fn meaningless_values_are_refused_naming_the_setting() {
        for (key, value, named) in [
            ("session_lookup_queries", "0", "SESSION_LOOKUP_QUERIES"),
            (
                "session_cache_max_entries",
                "0",
                "SESSION_CACHE_MAX_ENTRIES",
            ),
            ("session_cache_max_bytes", "0", "SESSION_CACHE_MAX_BYTES"),
            (
                "session_cache_max_age_seconds",
                "0",
                "SESSION_CACHE_MAX_AGE_SECONDS",
            ),
            (
                "rate_limit_window_seconds",
                "0",
                "RATE_LIMIT_WINDOW_SECONDS",
            ),
            (
                "login_failure_delay_max_seconds",
                "0",
                "LOGIN_FAILURE_DELAY_MAX_SECONDS",
            ),
            ("bcrypt_cost", "3", "BCRYPT_COST"),
            ("body_limit_bytes", "100", "BODY_LIMIT_BYTES"),
            (
                "access_token_expire_minutes",
                "0",
                "ACCESS_TOKEN_EXPIRE_MINUTES",
            ),
            ("jwt_leeway_seconds", "-1", "JWT_LEEWAY_SECONDS"),
            ("max_sessions_per_user", "0", "MAX_SESSIONS_PER_USER"),
            // Past a hundred years: these once passed, and panicked at start or at a login.
            (
                "access_token_expire_minutes",
                "1073741824",
                "ACCESS_TOKEN_EXPIRE_MINUTES",
            ),
            (
                "signing_key_refresh_seconds",
                "9223372036854775807",
                "SIGNING_KEY_REFRESH_SECONDS",
            ),
            ("audit_retention_days", "36501", "AUDIT_RETENTION_DAYS"),
            ("ipv6_prefix_length", "0", "IPV6_PREFIX_LENGTH"),
            ("ipv6_prefix_length", "129", "IPV6_PREFIX_LENGTH"),
            (
                "header_read_timeout_seconds",
                "0",
                "HEADER_READ_TIMEOUT_SECONDS",
            ),
            (
                "body_read_timeout_seconds",
                "0",
                "BODY_READ_TIMEOUT_SECONDS",
            ),
            ("max_connections", "0", "MAX_CONNECTIONS"),
            ("metrics_listen", "localhost:metrics", "METRICS_LISTEN"),
            ("shutdown_drain_seconds", "30", "SHUTDOWN_DRAIN_SECONDS"),
            ("mail_transport", "smtp", "SMTP_URL"),
            ("require_verified_email", "true", "MAIL_TRANSPORT"),
            (
                "password_reset_ttl_minutes",
                "0",
                "PASSWORD_RESET_TTL_MINUTES",
            ),
            ("mail_max_attempts", "0", "MAIL_MAX_ATTEMPTS"),
            (
                "reset_link_template",
                "https://x/reset",
                "RESET_LINK_TEMPLATE",
            ),
        ] {
            let err = with(Profile::Development, &[(key, value)]).unwrap_err();
            assert!(err.0.contains(named), "{key}={value}: {}", err.0);
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = with(Profile::Development, &[("secret_key", KEY)]).unwrap();
        assert!(!format!("{s:?}").contains(KEY));
    }

    #[test]
    fn lists_and_proxies_are_parsed() {
        let s = with(
            Profile::Development,
            &[
                (
                    "cors_allowed_origins",
                    " https://a.example , https://b.example,",
                ),
                ("trusted_proxies", "10.0.0.1, ::1"),
            ],
        )
        .unwrap();
        assert_eq!(s.cors_origins(), ["https://a.example", "https://b.example"]);
        assert_eq!(s.trusted_proxy_addrs().unwrap().len(), 2);
        assert!(with(Profile::Development, &[("trusted_proxies", "10.0.0.0/8")]).is_err());
    }
}

#[cfg(test)]
mod properties {
    use chrono::{DateTime, Datelike as _, TimeDelta, Utc};
    use figment::providers::Serialized;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{AuthPolicy, KeyPolicy};
    use crate::properties::config;

    /// Every setting that names a time span.
    const DURATIONS: [&str; 22] = [
        "access_token_expire_minutes",
        "password_reset_ttl_minutes",
        "email_verification_ttl_hours",
        "invitation_ttl_hours",
        "refresh_token_expire_days",
        "session_max_age_days",
        "signing_key_rotation_days",
        "audit_retention_days",
        "jwt_leeway_seconds",
        "id_token_ttl_seconds",
        "jwks_max_age",
        "rate_limit_window_seconds",
        "login_failure_delay_max_seconds",
        "mail_retry_base_seconds",
        "audit_fold_window_seconds",
        "signing_key_refresh_seconds",
        "database_timeout_seconds",
        "session_cache_max_age_seconds",
        "session_purge_interval_seconds",
        "header_read_timeout_seconds",
        "body_read_timeout_seconds",
        "shutdown_timeout_seconds",
    ];

    /// The spans the core decides by, as the settings become them at start.
    fn spans(settings: &Settings) -> Vec<TimeDelta> {
        let auth = AuthPolicy::from(settings);
        let keys = KeyPolicy::from(settings);
        let limits = &auth.limits;
        let mut spans = vec![
            auth.access_token_ttl,
            auth.leeway,
            auth.refresh_token_ttl,
            auth.session_max_age,
            auth.audit_retention,
            auth.audit_fold_window,
            auth.mail.reset_ttl,
            auth.mail.invitation_ttl,
            auth.mail.verification_ttl,
            auth.mail.retry_base,
            auth.provider.id_token_ttl,
            limits.max_delay,
            limits.login_per_ip.window,
            keys.rotation_period,
            keys.publication_delay,
            keys.verification_hold,
        ];
        spans.extend(
            [
                settings.database_timeout_seconds,
                settings.session_cache_max_age_seconds,
                settings.session_purge_interval_seconds,
                settings.header_read_timeout_seconds,
                settings.body_read_timeout_seconds,
                settings.shutdown_timeout_seconds,
            ]
            .map(|seconds| TimeDelta::seconds(i64::try_from(seconds).unwrap())),
        );
        spans
    }

    fn value() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            0i64..100_000,
            (0u32..64).prop_map(|bits| 1i64 << bits.min(62)),
        ]
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Whatever a time setting says, the settings are refused at load, naming it, or every
        /// deadline computed from it stays a date both databases hold.
        #[test]
        fn a_time_setting_is_refused_or_every_deadline_from_it_is_a_plain_date(
            key in 0..DURATIONS.len(),
            value in value(),
        ) {
            let figment = Settings::defaults().merge(Serialized::default(DURATIONS[key], value));
            let Ok(settings) = Settings::from_figment(Profile::Development, &figment) else {
                return Ok(());
            };
            let now = Utc::now();
            for span in spans(&settings) {
                for deadline in [now.checked_add_signed(span), now.checked_sub_signed(span)] {
                    let year = deadline.as_ref().map(DateTime::year);
                    prop_assert!(
                        year.is_some_and(|year| (1..10_000).contains(&year)),
                        "{}={}: {:?}", DURATIONS[key], value, deadline
                    );
                }
            }
        }

        /// Any text in any setting, as the environment would give it, is taken or refused:
        /// never a panic.
        #[test]
        fn any_text_in_any_setting_is_taken_or_refused(
            key in 0..KEYS.len(),
            text in prop_oneof![any::<String>(), "[0-9a-z:/.,\\[\\] -]{0,30}"],
        ) {
            let figment = Settings::defaults().merge(Serialized::default(KEYS[key], &text));
            if let Ok(settings) = Settings::from_figment(Profile::Development, &figment) {
                spans(&settings);
                settings.cors_origins();
                settings.provider_off_reason();
            }
        }

        #[test]
        fn a_list_reads_back_its_items_whatever_the_spacing(
            items in prop::collection::vec("[^,\\s]{1,10}", 0..6),
            spacing in "[ \t]{0,2}",
        ) {
            let list = items
                .iter()
                .map(|item| format!("{spacing}{item}{spacing}"))
                .collect::<Vec<_>>()
                .join(",");
            prop_assert_eq!(split_list(&format!("{list},")), items);
        }
    }
}

#[cfg(test)]
mod reference {
    use super::KEYS;

    /// The settings that docs/configuration.md's tables document: every `name` in the first
    /// cell of a row (one row may document several).
    fn documented() -> Vec<String> {
        let page = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        page.lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once(" |"))
            .flat_map(|(cell, _)| {
                format!("`{cell}")
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_configuration_page_documents_every_setting_and_no_other() {
        let documented = documented();
        let missing: Vec<_> = KEYS
            .iter()
            .filter(|key| !documented.iter().any(|d| d == *key))
            .collect();
        let unknown: Vec<_> = documented
            .iter()
            .filter(|d| !KEYS.contains(&d.as_str()))
            .collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/configuration.md misses {missing:?} and names settings that do not exist: \
             {unknown:?}"
        );
    }
}
