//! The only place that knows every adapter: it picks them from the settings, builds the core
//! on them, and serves HTTP. Storage, the policies, the signing secret and the background
//! tasks each have a module here.

mod policies;
mod signing_secret;
mod storage;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::TimeDelta;
use poem::EndpointExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{MailTransport, Settings};
use crate::domain::ports::{Mailer, PasskeyCeremonies};
use crate::domain::service::{KeyPorts, Ports, SigningKeys};
use crate::domain::{AuthPolicy, Core, KeyPolicy, PasswordPolicy};
use crate::inbound::console::guard::ConsoleSettings;
use crate::inbound::http::api::keys::Discovery;
use crate::inbound::http::middleware::SecurityHeaders;
use crate::inbound::http::server::{self as http_server, ConnectionLimits, Draining};
use crate::inbound::http::{self, HttpSettings};
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::metrics::{self as http_metrics, MetricsExporter, Sampler};
use crate::outbound::bcrypt::{BcryptPasswordHasher, HashPoolLimits};
use crate::outbound::clock::SystemClock;
use crate::outbound::jwt::{JwtTokenIssuer, RingKeyForge};
use crate::outbound::mail::{LogMailer, MailTemplates, SmtpMailer};
pub use crate::outbound::sea_orm::SchemaState;
use crate::outbound::session_cache::SessionCache;
use crate::outbound::webauthn::WebauthnCeremonies;
pub use storage::{Announcements, Feed, Storage};
pub use tasks::shutdown_signal;
use tasks::{
    MAIL_POLL, deliver_mail_periodically, purge_periodically, refresh_keys_periodically, stopped,
};

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
    let secret = signing_secret::signing_secret(settings)?;
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
        KeyPolicy::from(settings),
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
    let policy = AuthPolicy::from(settings);
    let ports = Ports {
        users: stored.users,
        sessions: stored.sessions,
        audit: stored.audit,
        links: stored.links,
        outbox: stored.outbox,
        housekeeping: stored.housekeeping,
        factors: stored.factors,
        challenges: stored.challenges,
        clients: stored.clients,
        grants: stored.grants,
        sealer: issuer.sealer(),
        mailer: mailer(settings)?,
        passkeys: passkey_ceremonies(settings),
        hasher,
        tokens: issuer.clone(),
        provider_tokens: issuer,
        clock,
        limiter: storage.rate_limiter(settings),
        keys: Arc::clone(&keys),
    };
    Ok(Arc::new(Core::new(ports, policy, None)))
}

/// What the HTTP layer needs from the settings, for a server bound to `address`.
fn http_settings(
    settings: &Settings,
    address: SocketAddr,
    metrics: MetricsExporter,
    metrics_on_api: bool,
) -> anyhow::Result<HttpSettings> {
    Ok(HttpSettings {
        body_limit_bytes: settings.body_limit_bytes,
        body_read_timeout: Duration::from_secs(settings.body_read_timeout_seconds),
        cors_origins: settings.cors_origins(),
        security_headers: SecurityHeaders::new(settings.hsts_max_age_seconds),
        trusted_proxies: TrustedProxies(settings.trusted_proxy_addrs()?),
        metrics,
        metrics_on_api,
        draining: Draining::default(),
        discovery: Discovery {
            issuer: settings.jwt_issuer.clone(),
            // Unset, it names the address actually bound (port 0 becomes a real port).
            public_url: settings
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{address}")),
            algorithm: settings.jwt_algorithm.as_str(),
            jwks_max_age: settings.jwks_max_age,
            provider: settings.provider_off_reason().is_none(),
        },
        console: settings
            .console_enabled
            .then(|| ConsoleSettings::new(settings.public_url.as_deref())),
    })
}

/// The OpenAPI document and its ReDoc page, as a server with these settings serves them at
/// `/openapi.json` and `/redoc`; built on memory storage, so it needs no database.
///
/// # Errors
/// When the core cannot be built.
pub async fn openapi_documents(settings: &Settings) -> anyhow::Result<(String, String)> {
    let mut offline = settings.clone();
    offline.database_url = Some("memory://".to_owned());
    // A throwaway signing key: nothing is signed, and nothing is written to the data folder.
    offline.profile = crate::config::Profile::Test;
    let core = build(&offline, &Storage::Memory).await?;
    let address = SocketAddr::from(([127, 0, 0, 1], settings.port));
    let http = http_settings(
        &offline,
        address,
        MetricsExporter::new(Arc::new(|| {})),
        true,
    )?;
    Ok(http::documents(&core, &core.keys, &http))
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
    /// The management listener, when `/metrics` has one of its own.
    metrics_listener: Option<TcpListener>,
    core: Arc<Core>,
    http: HttpSettings,
    key_refresh: Duration,
    connections: ConnectionLimits,
    purge_interval: Duration,
    shutdown_timeout: Duration,
    shutdown_drain: Duration,
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
        match settings.provider_off_reason() {
            Some(reason) => tracing::info!(%reason, "the OpenID provider is off"),
            None => tracing::info!(issuer = %settings.jwt_issuer, "the OpenID provider is on"),
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
        let metrics_listener: Option<TcpListener> = match settings.metrics_address()? {
            Some(bind) => Some(
                TcpListener::bind(bind)
                    .await
                    .with_context(|| format!("cannot listen on {bind} (METRICS_LISTEN)"))?,
            ),
            None => None,
        };
        let metrics_on_api = metrics_listener.is_none();
        Ok(Self {
            listener,
            address,
            metrics_listener,
            core,
            key_refresh: Duration::from_secs(settings.signing_key_refresh_seconds),
            connections: ConnectionLimits {
                header_read_timeout: Duration::from_secs(settings.header_read_timeout_seconds),
                max_connections: settings.max_connections,
            },
            http: http_settings(
                settings,
                address,
                MetricsExporter::new(sampler),
                metrics_on_api,
            )?,
            purge_interval: Duration::from_secs(settings.session_purge_interval_seconds.max(1)),
            shutdown_timeout: Duration::from_secs(settings.shutdown_timeout_seconds),
            shutdown_drain: Duration::from_secs(settings.shutdown_drain_seconds),
            feed,
            keys_changed,
            session_cache: cache,
        })
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The management listener's address, when `/metrics` has one of its own.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// This instance's session cache, if it has one: its counters, for whoever embeds the
    /// server (`/metrics` shows them too, but a process has one metrics registry).
    pub fn session_cache(&self) -> Option<Arc<SessionCache>> {
        self.session_cache.clone()
    }

    /// Serves until `shutdown` completes, then stops in order: `/ready` answers 503 at once
    /// while the listener keeps accepting for the drain period (so load balancers take the
    /// instance out); then no connection is accepted, in-flight requests and the mail being
    /// sent finish, and background tasks stop, all within the shutdown timeout.
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
        let (stopping, stop) = watch::channel(false);
        let purge = tokio::spawn(purge_periodically(Arc::clone(&core), self.purge_interval));
        let upkeep = tokio::spawn(http_metrics::upkeep_periodically(Duration::from_secs(5)));
        let feed = self.feed.map(tokio::spawn);
        let delivery = tokio::spawn(deliver_mail_periodically(
            Arc::clone(&core),
            MAIL_POLL,
            stop.clone(),
        ));
        let refresher = tokio::spawn(refresh_keys_periodically(
            Arc::clone(&core.keys),
            self.keys_changed,
            self.key_refresh,
        ));
        let management = self.metrics_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "serving /metrics");
            tokio::spawn(http_server::serve(
                listener,
                http::management_app(self.http.metrics.clone()).map_to_response(),
                self.connections,
                stopped(stop.clone()),
                Duration::from_secs(1),
            ))
        });
        tracing::info!(address = %self.address, "listening");
        let draining = self.http.draining.clone();
        let drain = self.shutdown_drain;
        let signalled = Arc::new(std::sync::OnceLock::new());
        let at_signal = Arc::clone(&signalled);
        let told = async move {
            shutdown.await;
            let _ = at_signal.set(Instant::now());
            draining.begin();
            tracing::info!(
                seconds = drain.as_secs(),
                "draining: /ready answers 503, requests are still served"
            );
            tokio::time::sleep(drain).await;
        };
        let keys = Arc::clone(&core.keys);
        let app = http::app(core, keys, self.http).map_to_response();
        let result = http_server::serve(
            self.listener,
            app,
            self.connections,
            told,
            self.shutdown_timeout.saturating_sub(drain),
        )
        .await;
        // The mail worker finishes the message it is sending; the rest stop at once (each
        // of their writes is a transaction of its own, and all of them are rerun on start).
        stopping.send_replace(true);
        let deadline =
            signalled.get().copied().unwrap_or_else(Instant::now) + self.shutdown_timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery_abort = delivery.abort_handle();
        if tokio::time::timeout(left, delivery).await.is_err() {
            tracing::warn!(
                "the shutdown timeout is over; the mail being sent is left to the next start"
            );
            delivery_abort.abort();
        }
        purge.abort();
        upkeep.abort();
        refresher.abort();
        if let Some(feed) = feed {
            feed.abort();
        }
        if let Some(management) = management {
            // Told to stop with the rest; a scrape in flight gets its answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), management).await;
        }
        tracing::info!("stopped");
        result
    }
}
