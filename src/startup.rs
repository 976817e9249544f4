//! The only place that knows every adapter: it picks them from the settings, builds the core
//! on them, and serves HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use poem::EndpointExt;
use rand::Rng as _;
use tokio::net::TcpListener;

use crate::config::{MailTransport, Profile, RateLimitStore, Secret, Settings};
use crate::domain::ports::{
    AuditLog, ChallengeRepository, FactorRepository, Housekeeping, ImportTarget, LinkTokens,
    MailOutbox, Mailer, PasskeyCeremonies, RateLimiter, SessionRepository, SigningKeyStore,
    UserRepository,
};
use crate::domain::service::{
    DeliveryOutcome, KeyPorts, LimitPolicy, MailPolicy, MfaPolicy, Ports, Quota, SigningKeys,
};
use crate::domain::{AuthPolicy, Core, KeyPolicy, PasswordPolicy};
use crate::inbound::console::guard::ConsoleSettings;
use crate::inbound::http::api::keys::Discovery;
use crate::inbound::http::client::TrustedProxies;
use crate::inbound::http::metrics::{self as http_metrics, MetricsExporter, Sampler};
use crate::inbound::http::middleware::SecurityHeaders;
use crate::inbound::http::server::{self as http_server, ConnectionLimits};
use crate::inbound::http::{self, HttpSettings};
use crate::outbound::Store;
use crate::outbound::bcrypt::{BcryptPasswordHasher, HashPoolLimits};
use crate::outbound::clock::SystemClock;
use crate::outbound::jwt::{JwtTokenIssuer, RingKeyForge};
use crate::outbound::mail::{LogMailer, MailTemplates, SmtpMailer};
use crate::outbound::memory::{MemoryRateLimiter, MemorySigningKeyStore, MemoryStore};
use crate::outbound::sea_orm::{
    self as db, DatabaseSettings, SeaOrmRateLimiter, SeaOrmSigningKeyStore, SeaOrmStore,
    invalidations,
};
use crate::outbound::session_cache::{CacheLimits, CachedSessions, SessionCache};
use crate::outbound::webauthn::WebauthnCeremonies;

/// The task that listens to the database's announcements.
pub type Feed = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the database announces to a server as it happens, and who hears it.
pub struct Announcements {
    /// The session cache the invalidations keep coherent; `None` with `session_cache = false`,
    /// and with `memory://`, whose lookups are already in memory.
    pub cache: Option<Arc<SessionCache>>,
    /// Woken when the signing-key table changed (PostgreSQL); elsewhere keys wait for the
    /// periodic refresh.
    pub keys_changed: Arc<tokio::sync::Notify>,
    /// The task that listens: it must run for the cache to be used. `None` when there is
    /// nothing to hear.
    pub feed: Option<Feed>,
}

/// The storage ports of the core, served by one store.
struct StoragePorts {
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    audit: Arc<dyn AuditLog>,
    links: Arc<dyn LinkTokens>,
    outbox: Arc<dyn MailOutbox>,
    housekeeping: Arc<dyn Housekeeping>,
    factors: Arc<dyn FactorRepository>,
    challenges: Arc<dyn ChallengeRepository>,
}

impl StoragePorts {
    fn of(store: Arc<impl Store>) -> Self {
        Self {
            users: store.clone(),
            sessions: store.clone(),
            audit: store.clone(),
            links: store.clone(),
            outbox: store.clone(),
            housekeeping: store.clone(),
            factors: store.clone(),
            challenges: store,
        }
    }

    /// The same ports, with session checks answered from `cache`.
    fn cached(self, cache: Arc<SessionCache>) -> Self {
        let cached = Arc::new(CachedSessions::new(self.users, self.sessions, cache));
        Self {
            users: cached.clone(),
            sessions: cached,
            ..self
        }
    }
}

/// Where users and sessions live, as chosen by `DATABASE_URL`.
pub enum Storage {
    /// `memory://`: this process only.
    Memory,
    /// `postgres://` or `sqlite:`.
    Database(sea_orm::DatabaseConnection),
}

impl Storage {
    /// Connects to the configured storage; migrations are separate ([`Storage::migrate`]).
    ///
    /// # Errors
    /// For an unsupported URL scheme or a database that does not answer.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let url = settings.database_url();
        if url == "memory://" {
            return Ok(Self::Memory);
        }
        if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            bail!("DATABASE_URL must start with postgres://, sqlite: or be memory://");
        }
        let db = db::connect(&DatabaseSettings {
            url: url.to_owned(),
            max_connections: settings.database_max_connections,
            connect_timeout: Duration::from_secs(settings.database_timeout_seconds),
        })
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
        Ok(Self::Database(db))
    }

    /// Applies pending migrations.
    ///
    /// # Errors
    /// When a migration fails.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        if let Self::Database(db) = self {
            db::migrate_up(db).await.context("migrations failed")?;
        }
        Ok(())
    }

    /// The storage ports, all served by one store; users and sessions behind `cache`, if any.
    fn ports(&self, settings: &Settings, cache: Option<Arc<SessionCache>>) -> StoragePorts {
        let ports = match self {
            Self::Memory => StoragePorts::of(Arc::new(MemoryStore::new())),
            Self::Database(db) => StoragePorts::of(Arc::new(SeaOrmStore::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
                settings.session_lookup_queries,
            ))),
        };
        match cache {
            Some(cache) => ports.cached(cache),
            None => ports,
        }
    }

    /// A server's session cache (if it keeps one) and the task that hears what the database
    /// announces.
    pub fn announcements(&self, settings: &Settings) -> Announcements {
        let keys_changed = Arc::new(tokio::sync::Notify::new());
        let Self::Database(db) = self else {
            return Announcements {
                cache: None,
                keys_changed,
                feed: None,
            };
        };
        let cache = settings.session_cache.then(|| {
            Arc::new(SessionCache::new(
                CacheLimits {
                    max_entries: settings.session_cache_max_entries,
                    max_bytes: settings.session_cache_max_bytes,
                    max_age: Duration::from_secs(settings.session_cache_max_age_seconds),
                },
                false,
            ))
        });
        let listen_url = settings.session_cache_listen_url.as_ref().map_or_else(
            || settings.database_url().to_owned(),
            |url| url.expose().to_owned(),
        );
        let feed = Box::pin(invalidations::feed(
            db.clone(),
            listen_url,
            invalidations::Listeners {
                cache: cache.clone(),
                keys_changed: Arc::clone(&keys_changed),
            },
            Duration::from_secs(settings.database_timeout_seconds),
        ));
        Announcements {
            cache,
            keys_changed,
            feed: Some(feed),
        }
    }

    /// The store an import writes into; `None` for `memory://`, which no other process sees.
    pub fn import_target(&self, settings: &Settings) -> Option<Arc<dyn ImportTarget>> {
        match self {
            Self::Memory => None,
            Self::Database(db) => Some(Arc::new(SeaOrmStore::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
                1,
            ))),
        }
    }

    fn key_store(&self, settings: &Settings) -> Arc<dyn SigningKeyStore> {
        match self {
            Self::Memory => Arc::new(MemorySigningKeyStore::new()),
            Self::Database(db) => Arc::new(SeaOrmSigningKeyStore::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
            )),
        }
    }

    fn rate_limiter(&self, settings: &Settings) -> Arc<dyn RateLimiter> {
        match (self, settings.rate_limit_store) {
            (Self::Database(db), RateLimitStore::Database) => Arc::new(SeaOrmRateLimiter::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
            )),
            _ => Arc::new(MemoryRateLimiter::new()),
        }
    }

    /// Sets the pool gauges; called when metrics are scraped.
    fn pool_sampler(&self) -> Sampler {
        match self {
            Self::Memory => Arc::new(|| {}),
            Self::Database(db) => {
                let db = db.clone();
                Arc::new(move || {
                    let (size, idle) = db::pool_usage(&db);
                    let in_use = (size as usize).saturating_sub(idle);
                    metrics::gauge!("portcullis_db_pool_connections", "state" => "idle")
                        .set(idle as f64);
                    metrics::gauge!("portcullis_db_pool_connections", "state" => "in_use")
                        .set(in_use as f64);
                })
            }
        }
    }
}

fn limit_policy(settings: &Settings) -> LimitPolicy {
    let quota = |max| Quota {
        max,
        window: TimeDelta::seconds(settings.rate_limit_window_seconds),
    };
    LimitPolicy {
        enabled: settings.rate_limits_enabled,
        login_per_ip: quota(settings.login_limit_per_ip),
        login_per_account: quota(settings.login_limit_per_account),
        register_per_ip: quota(settings.register_limit_per_ip),
        register_per_account: quota(settings.register_limit_per_account),
        refresh_per_ip: quota(settings.refresh_limit_per_ip),
        refresh_per_account: quota(settings.refresh_limit_per_account),
        password_check_per_ip: quota(settings.password_check_limit_per_ip),
        password_check_per_account: quota(settings.password_check_limit_per_account),
        mail_per_ip: quota(settings.mail_limit_per_ip),
        mail_per_account: quota(settings.mail_limit_per_account),
        mail_per_recipient: quota(settings.mail_limit_per_recipient),
        ipv6_prefix_len: settings.ipv6_prefix_length,
        free_failures: settings.login_free_failures,
        max_delay: TimeDelta::seconds(settings.login_failure_delay_max_seconds),
        ..LimitPolicy::default()
    }
}

fn mail_policy(settings: &Settings) -> MailPolicy {
    MailPolicy {
        public_url: settings.public_url(),
        reset_link: settings.reset_link_template.clone(),
        verify_link: settings.verify_link_template.clone(),
        email_change_link: settings.email_change_link_template.clone(),
        reset_ttl: TimeDelta::minutes(settings.password_reset_ttl_minutes),
        invitation_ttl: TimeDelta::hours(settings.invitation_ttl_hours),
        verification_ttl: TimeDelta::hours(settings.email_verification_ttl_hours),
        require_verified: settings.require_verified_email,
        verify_on_register: settings.verify_email_on_register,
        max_attempts: settings.mail_max_attempts,
        retry_base: TimeDelta::seconds(settings.mail_retry_base_seconds),
    }
}

/// The configured mail transport, or `None` (with a warning) when there is none.
///
/// # Errors
/// When the templates or the SMTP settings cannot be used.
pub fn mailer(settings: &Settings) -> anyhow::Result<Option<Arc<dyn Mailer>>> {
    let Some(transport) = settings.mail_transport else {
        tracing::warn!(
            "mail is not configured (MAIL_TRANSPORT): password reset, email verification and \
             email change answer 503"
        );
        return Ok(None);
    };
    let templates =
        MailTemplates::load(settings.mail_templates_dir.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(Some(match transport {
        MailTransport::Log => Arc::new(LogMailer::new(templates)),
        MailTransport::Smtp => {
            let url = settings
                .smtp_url
                .as_ref()
                .context("MAIL_TRANSPORT=smtp needs SMTP_URL")?;
            Arc::new(
                SmtpMailer::new(url.expose(), &settings.mail_from, templates)
                    .map_err(anyhow::Error::msg)?,
            )
        }
    }))
}

/// The signing key: configured, or (development only) generated once and kept in the data
/// folder, or (test only) drawn afresh for this process.
fn signing_secret(settings: &Settings) -> anyhow::Result<Secret> {
    if let Some(secret) = &settings.secret_key {
        return Ok(secret.clone());
    }
    match settings.profile {
        Profile::Production => {
            bail!("production requires SECRET_KEY (at least 32 bytes) to be set")
        }
        Profile::Test => Ok(Secret::new(random_key())),
        Profile::Development => development_secret(&settings.data_dir),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn development_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("secret_key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if existing.len() >= crate::outbound::jwt::MIN_SECRET_BYTES {
            return Ok(Secret::new(existing));
        }
    }
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder
        .create(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = random_key();
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "SECRET_KEY is not set: generated a development signing key; set SECRET_KEY in production"
    );
    Ok(Secret::new(key))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

fn key_policy(settings: &Settings) -> KeyPolicy {
    let token_ttl = TimeDelta::minutes(settings.access_token_expire_minutes);
    let refresh = TimeDelta::seconds(settings.signing_key_refresh_seconds.cast_signed());
    KeyPolicy {
        rotation_period: TimeDelta::days(settings.signing_key_rotation_days),
        publication_delay: TimeDelta::seconds(settings.jwks_max_age) + token_ttl + refresh,
        verification_hold: token_ttl + TimeDelta::seconds(settings.jwt_leeway_seconds) + refresh,
    }
}

/// Builds the core on the adapters the settings name, and loads the signing keys (making the
/// first one when an asymmetric algorithm is configured and none of it exists).
///
/// # Errors
/// When a key, the database or the hasher cannot be set up.
pub async fn build(settings: &Settings, storage: &Storage) -> anyhow::Result<Arc<Core>> {
    build_with_cache(settings, storage, None).await
}

/// [`build`], with session checks answered from `cache` when given.
async fn build_with_cache(
    settings: &Settings,
    storage: &Storage,
    cache: Option<Arc<SessionCache>>,
) -> anyhow::Result<Arc<Core>> {
    let secret = signing_secret(settings)?;
    let algorithm = settings.jwt_algorithm.asymmetric();
    let issuer = Arc::new(
        JwtTokenIssuer::new(
            secret.expose().as_bytes(),
            algorithm,
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let clock = Arc::new(SystemClock);
    let stored = storage.ports(settings, cache);
    let keys = Arc::new(SigningKeys::new(
        KeyPorts {
            store: storage.key_store(settings),
            forge: Arc::new(RingKeyForge::new(issuer.sealer())),
            ring: issuer.clone(),
            clock: clock.clone(),
            timer: clock.clone(),
            audit: stored.audit.clone(),
        },
        key_policy(settings),
        algorithm,
        TimeDelta::minutes(settings.access_token_expire_minutes),
    ));
    if let Some(key) = keys.start().await.context("cannot load the signing keys")? {
        tracing::info!(kid = %key.kid, algorithm = %key.algorithm, "made a signing key; it signs from now on");
    }
    let workers = match settings.hash_workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let hasher = Arc::new(BcryptPasswordHasher::new(
        settings.bcrypt_cost,
        HashPoolLimits {
            workers,
            queue: settings.hash_queue,
        },
    ));
    PasswordPolicy::warm_up();
    let policy = AuthPolicy {
        access_token_ttl: TimeDelta::minutes(settings.access_token_expire_minutes),
        leeway: TimeDelta::seconds(settings.jwt_leeway_seconds),
        refresh_token_ttl: TimeDelta::days(settings.refresh_token_expire_days),
        session_max_age: TimeDelta::days(settings.session_max_age_days),
        max_sessions_per_user: settings.max_sessions_per_user,
        audit_retention: TimeDelta::days(settings.audit_retention_days),
        audit_fold_window: TimeDelta::seconds(settings.audit_fold_window_seconds),
        limits: limit_policy(settings),
        mail: mail_policy(settings),
        password: PasswordPolicy {
            min_score: settings.password_min_score,
        },
        pyauth_tokens_until: settings.accept_pyauth_tokens_until,
        mfa: MfaPolicy {
            issuer: settings.totp_issuer.clone(),
            ..MfaPolicy::default()
        },
    };
    let ports = Ports {
        users: stored.users,
        sessions: stored.sessions,
        audit: stored.audit,
        links: stored.links,
        outbox: stored.outbox,
        housekeeping: stored.housekeeping,
        factors: stored.factors,
        challenges: stored.challenges,
        sealer: issuer.sealer(),
        mailer: mailer(settings)?,
        passkeys: passkey_ceremonies(settings),
        hasher,
        tokens: issuer,
        clock,
        limiter: storage.rate_limiter(settings),
        keys: Arc::clone(&keys),
    };
    Ok(Arc::new(Core::new(ports, policy, None)))
}

/// WebAuthn for the relying party of `public_url`; `None` when its host cannot be one (an IP
/// address, as the default `127.0.0.1` is), and the passkey routes say so.
fn passkey_ceremonies(settings: &Settings) -> Option<Arc<dyn PasskeyCeremonies>> {
    match WebauthnCeremonies::new(&settings.public_url(), &settings.totp_issuer) {
        Ok(ceremonies) => Some(Arc::new(ceremonies)),
        Err(reason) => {
            tracing::info!(%reason, "passkeys are off");
            None
        }
    }
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    core: Arc<Core>,
    http: HttpSettings,
    key_refresh: Duration,
    connections: ConnectionLimits,
    purge_interval: Duration,
    shutdown_timeout: Duration,
    feed: Option<Feed>,
    keys_changed: Arc<tokio::sync::Notify>,
    session_cache: Option<Arc<SessionCache>>,
}

impl Application {
    /// Connects storage, applies migrations, builds the core and binds the listener.
    ///
    /// # Errors
    /// When any of those steps fails; the message says which.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        let storage = Storage::open(settings).await?;
        storage.migrate().await?;
        let Announcements {
            cache,
            keys_changed,
            feed,
        } = storage.announcements(settings);
        let core = build_with_cache(settings, &storage, cache.clone()).await?;
        let pool_sampler = storage.pool_sampler();
        let sampled = cache.clone();
        let sampler: Sampler = Arc::new(move || {
            pool_sampler();
            if let Some(cache) = &sampled {
                cache.record_metrics();
            }
        });
        let bind = format!("{}:{}", settings.host, settings.port);
        let listener = TcpListener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let address = listener
            .local_addr()
            .context("the listener has no address")?;
        Ok(Self {
            listener,
            address,
            core,
            key_refresh: Duration::from_secs(settings.signing_key_refresh_seconds),
            connections: ConnectionLimits {
                header_read_timeout: Duration::from_secs(settings.header_read_timeout_seconds),
                max_connections: settings.max_connections,
            },
            http: HttpSettings {
                body_limit_bytes: settings.body_limit_bytes,
                body_read_timeout: Duration::from_secs(settings.body_read_timeout_seconds),
                cors_origins: settings.cors_origins(),
                security_headers: SecurityHeaders {
                    hsts_max_age_seconds: settings.hsts_max_age_seconds,
                },
                trusted_proxies: TrustedProxies(settings.trusted_proxy_addrs()?),
                metrics: MetricsExporter::new(sampler),
                discovery: Discovery {
                    issuer: settings.jwt_issuer.clone(),
                    // Unset, it names the address actually bound (port 0 becomes a real port).
                    public_url: settings
                        .public_url
                        .clone()
                        .unwrap_or_else(|| format!("http://{address}")),
                    algorithm: settings.jwt_algorithm.as_str(),
                    jwks_max_age: settings.jwks_max_age,
                },
                console: settings
                    .console_enabled
                    .then(|| ConsoleSettings::new(settings.public_url.as_deref())),
            },
            purge_interval: Duration::from_secs(settings.session_purge_interval_seconds.max(1)),
            shutdown_timeout: Duration::from_secs(settings.shutdown_timeout_seconds),
            feed,
            keys_changed,
            session_cache: cache,
        })
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// This instance's session cache, if it has one: its counters, for whoever embeds the
    /// server (`/metrics` shows them too, but a process has one metrics registry).
    pub fn session_cache(&self) -> Option<Arc<SessionCache>> {
        self.session_cache.clone()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (within the
    /// configured timeout).
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let core = self.core;
        // Serving does not wait for the dummy hash (a bcrypt hash at full cost): it is made
        // beside, and a login that needs it first waits for it.
        let preparing = Arc::clone(&core);
        tokio::spawn(async move {
            if let Err(err) = preparing.accounts.prepare().await {
                tracing::warn!(error = %err, "the dummy hash could not be made yet; the first login of an unknown email makes it");
            }
        });
        let purge = tokio::spawn(purge_periodically(Arc::clone(&core), self.purge_interval));
        let upkeep = tokio::spawn(http_metrics::upkeep_periodically(Duration::from_secs(5)));
        let feed = self.feed.map(tokio::spawn);
        let delivery = tokio::spawn(deliver_mail_periodically(Arc::clone(&core), MAIL_POLL));
        let refresher = tokio::spawn(refresh_keys_periodically(
            Arc::clone(&core.keys),
            self.keys_changed,
            self.key_refresh,
        ));
        tracing::info!(address = %self.address, "listening");
        let keys = Arc::clone(&core.keys);
        let app = http::app(core, keys, self.http).map_to_response();
        let result = http_server::serve(
            self.listener,
            app,
            self.connections,
            shutdown,
            self.shutdown_timeout,
        )
        .await;
        purge.abort();
        upkeep.abort();
        delivery.abort();
        refresher.abort();
        if let Some(feed) = feed {
            feed.abort();
        }
        result
    }
}

async fn purge_periodically(core: Arc<Core>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match core.upkeep.purge_expired_sessions().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged dead sessions"),
            Err(err) => tracing::warn!(error = %err, "session purge failed; will retry"),
        }
        if let Err(err) = core.upkeep.purge_expired_limits().await {
            tracing::warn!(error = %err, "rate-limit purge failed; will retry");
        }
    }
}

/// Keeps this instance's keys in step with the key table: every `every`, and at once when the
/// database announces a change of the table. (A token naming a `kid` this instance does not
/// know sets off a reload of its own, in the core, paced by `UNKNOWN_KID_PAUSE`.)
async fn refresh_keys_periodically(
    keys: Arc<SigningKeys>,
    changed: Arc<tokio::sync::Notify>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate, and the keys were just loaded
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = changed.notified() => {}
        }
        let outcome = match keys.refresh().await {
            Ok(()) => "ok",
            Err(err) => {
                tracing::warn!(error = %err, "signing key refresh failed; will retry");
                "failed"
            }
        };
        metrics::counter!("portcullis_signing_key_refreshes_total", "outcome" => outcome)
            .increment(1);
        metrics::gauge!("portcullis_signing_keys_published").set(keys.published().len() as f64);
    }
}

/// How often each instance looks for mail to deliver.
const MAIL_POLL: Duration = Duration::from_millis(500);
/// How often the outbox depth is sampled for `/metrics`.
const MAIL_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Delivers queued mail every `every`, and records what became of it.
async fn deliver_mail_periodically(core: Arc<Core>, every: Duration) {
    if !core.delivery.mail_configured() {
        return;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = std::time::Instant::now() - MAIL_DEPTH_EVERY;
    loop {
        ticks.tick().await;
        match core.delivery.deliver_mail().await {
            Ok(deliveries) => {
                for delivery in deliveries {
                    let outcome = match delivery.outcome {
                        DeliveryOutcome::Sent => "sent",
                        DeliveryOutcome::Dropped => "dropped",
                        DeliveryOutcome::Retrying => "retrying",
                        DeliveryOutcome::Failed => "failed",
                    };
                    metrics::counter!("portcullis_mail_jobs_total", "job" => delivery.job, "outcome" => outcome)
                        .increment(1);
                    if delivery.outcome == DeliveryOutcome::Sent {
                        metrics::histogram!("portcullis_mail_delivery_seconds", "job" => delivery.job)
                            .record(delivery.waited.as_seconds_f64());
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "mail delivery failed; will retry"),
        }
        if sampled.elapsed() >= MAIL_DEPTH_EVERY {
            sampled = std::time::Instant::now();
            if let Ok(depth) = core.delivery.mail_depth().await {
                metrics::gauge!("portcullis_mail_outbox", "state" => "pending")
                    .set(depth.pending as f64);
                metrics::gauge!("portcullis_mail_outbox", "state" => "failed")
                    .set(depth.failed as f64);
            }
        }
    }
}

/// Completes on SIGTERM (what containers send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
