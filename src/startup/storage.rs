//! Where users and sessions live, as `DATABASE_URL` says: the store behind the core's storage
//! ports, the signing-key store, the limit counters, and what the database announces.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::{RateLimitStore, Settings};
use crate::domain::ports::{
    AuditLog, ChallengeRepository, ClientRepository, FactorRepository, GrantRepository,
    Housekeeping, ImportTarget, LinkTokens, MailOutbox, RateLimiter, SessionRepository,
    SigningKeyStore, UserRepository,
};
use crate::inbound::web::metrics::Sampler;
use crate::outbound::Store;
use crate::outbound::memory::{MemoryRateLimiter, MemorySigningKeyStore, MemoryStore};
use crate::outbound::sea_orm::{
    self as db, Backup, BackupError, DatabaseSettings, SchemaState, SeaOrmRateLimiter,
    SeaOrmSigningKeyStore, SeaOrmStore, invalidations,
};
use crate::outbound::session_cache::{CacheLimits, CachedGrants, CachedSessions, SessionCache};

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
pub(super) struct StoragePorts {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) audit: Arc<dyn AuditLog>,
    pub(super) links: Arc<dyn LinkTokens>,
    pub(super) outbox: Arc<dyn MailOutbox>,
    pub(super) housekeeping: Arc<dyn Housekeeping>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) challenges: Arc<dyn ChallengeRepository>,
    pub(super) clients: Arc<dyn ClientRepository>,
    pub(super) grants: Arc<dyn GrantRepository>,
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
            challenges: store.clone(),
            clients: store.clone(),
            grants: store,
        }
    }

    /// The same ports, with session checks answered from `cache`.
    fn cached(self, cache: Arc<SessionCache>) -> Self {
        let grants = Arc::new(CachedGrants::new(self.clients, self.grants, cache.clone()));
        let cached = Arc::new(CachedSessions::new(self.users, self.sessions, cache));
        Self {
            users: cached.clone(),
            sessions: cached,
            clients: grants.clone(),
            grants,
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

    /// Applies pending migrations. A database that a newer release has migrated already is
    /// used as it is, with a warning naming the migrations this release does not know: an
    /// older instance restarting in the middle of a rolling upgrade keeps serving.
    ///
    /// # Errors
    /// When a migration fails, or the database's history and this release's diverged.
    pub async fn migrate(&self) -> anyhow::Result<SchemaState> {
        let Self::Database(db) = self else {
            return Ok(SchemaState::Current);
        };
        let state = db::migrate_up(db).await.context("migrations failed")?;
        if let SchemaState::Ahead(versions) = &state {
            tracing::warn!(
                unknown = %versions.join(", "),
                "a newer release has migrated the database; this one runs on it, as the \
                 migration policy allows (docs/operations.md, \"Upgrades\")"
            );
        }
        Ok(state)
    }

    /// The storage ports, all served by one store; users and sessions behind `cache`, if any.
    pub(super) fn ports(
        &self,
        settings: &Settings,
        cache: Option<Arc<SessionCache>>,
    ) -> StoragePorts {
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

    /// Copies the database into the file `to` while it serves (SQLite's online backup), replacing
    /// an existing `to` only when `replace` is set.
    ///
    /// # Errors
    /// [`BackupError::InMemory`] for `memory://`, [`BackupError::PostgreSql`] for PostgreSQL
    /// (its own tools back it up), and whatever stops the copy.
    pub async fn backup(&self, to: &Path, replace: bool) -> Result<Backup, BackupError> {
        match self {
            Self::Memory => Err(BackupError::InMemory),
            Self::Database(db) => db::backup(db, to, replace).await,
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

    pub(super) fn key_store(&self, settings: &Settings) -> Arc<dyn SigningKeyStore> {
        match self {
            Self::Memory => Arc::new(MemorySigningKeyStore::new()),
            Self::Database(db) => Arc::new(SeaOrmSigningKeyStore::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
            )),
        }
    }

    pub(super) fn rate_limiter(&self, settings: &Settings) -> Arc<dyn RateLimiter> {
        match (self, settings.rate_limit_store) {
            (Self::Database(db), RateLimitStore::Database) => Arc::new(SeaOrmRateLimiter::new(
                db.clone(),
                Duration::from_secs(settings.database_timeout_seconds),
            )),
            _ => Arc::new(MemoryRateLimiter::new()),
        }
    }

    /// Sets the pool gauges; called when metrics are scraped.
    pub(super) fn pool_sampler(&self) -> Sampler {
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
