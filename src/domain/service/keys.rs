//! The signing keys' use cases: the first key, scheduled rotation, the operator's rotation and
//! retirement, and keeping the token issuer's keys in step with the shared key table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::ports::{AuditLog, Clock, KeyForge, KeyRing, SigningKeyStore, Timer};
use crate::domain::{
    AuditKind, BackendError, ClientInfo, KeyAlgorithm, KeyChange, KeyMove, KeyPolicy, KeySet,
    KeyState, NewAuditEvent, SigningKey,
};

/// Attempts at a change that another instance keeps beating us to.
const ATTEMPTS: usize = 3;

/// The least time between two reloads set off by tokens naming a `kid` this instance does not
/// know, so that made-up `kid`s cannot make an instance hammer the database.
pub const UNKNOWN_KID_PAUSE: TimeDelta = TimeDelta::seconds(1);

/// The ports the key use cases run on.
#[derive(Clone)]
pub struct KeyPorts {
    pub store: Arc<dyn SigningKeyStore>,
    pub forge: Arc<dyn KeyForge>,
    pub ring: Arc<dyn KeyRing>,
    pub clock: Arc<dyn Clock>,
    /// Paces the reloads for unknown `kid`s.
    pub timer: Arc<dyn Timer>,
    /// Where key events are recorded: the audit trail.
    pub audit: Arc<dyn AuditLog>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("there is no signing key {0}")]
    UnknownKey(String),
    #[error("no asymmetric key signs (jwt_algorithm is HS256)")]
    NoCurrentKey,
    #[error("the key table kept changing while this ran; run it again")]
    Contended,
    /// The key table lets no key sign now, even as just read.
    #[error("no signing key may sign now")]
    NoSigningKey,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl KeyError {
    /// The error as a failure of storage, for use cases that only need a key to sign or verify
    /// with: anything but an outage is unexpected there.
    pub fn into_backend(self) -> BackendError {
        match self {
            Self::Backend(err) => err,
            other => BackendError::unexpected(other),
        }
    }
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// A new key is published and signs from its `activates_at`.
    Scheduled(SigningKey),
    /// A rotation was already under way; this is its key.
    AlreadyScheduled(SigningKey),
    /// The new key signs now; key sets cached by resource servers do not know it yet.
    Immediately(SigningKey),
}

/// What `retire` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// The key is retired; when it was the signing key, `replacement` signs from now on.
    Done { replacement: Option<SigningKey> },
    /// It was retired already.
    Already,
}

/// The key use cases. One per process, shared.
pub struct SigningKeys {
    store: Arc<dyn SigningKeyStore>,
    forge: Arc<dyn KeyForge>,
    ring: Arc<dyn KeyRing>,
    clock: Arc<dyn Clock>,
    audit: Arc<dyn AuditLog>,
    policy: KeyPolicy,
    /// The configured algorithm; `None` when HS256 signs.
    algorithm: Option<KeyAlgorithm>,
    token_ttl: TimeDelta,
    /// The public keys (JWK objects) as last installed, for the JWKS.
    published: RwLock<Arc<[String]>>,
    /// The key table as last installed.
    installed: RwLock<KeySet>,
    timer: Arc<dyn Timer>,
    /// Loads of the key table begun so far (each takes the next number) ...
    loads_begun: AtomicU64,
    /// ... and the highest number of a load installed: a load installed with a number above
    /// what was begun when a caller asked is newer than anything the caller has seen.
    loads_installed: AtomicU64,
    /// Makes the reloads for unknown `kid`s one at a time, and holds when the last one began.
    unknown_kid_reload: futures_util::lock::Mutex<Option<DateTime<Utc>>>,
}

impl SigningKeys {
    pub fn new(
        ports: KeyPorts,
        policy: KeyPolicy,
        algorithm: Option<KeyAlgorithm>,
        token_ttl: TimeDelta,
    ) -> Self {
        Self {
            store: ports.store,
            forge: ports.forge,
            ring: ports.ring,
            clock: ports.clock,
            audit: ports.audit,
            policy,
            algorithm,
            token_ttl,
            published: RwLock::new(Arc::from([])),
            installed: RwLock::default(),
            timer: ports.timer,
            loads_begun: AtomicU64::new(0),
            loads_installed: AtomicU64::new(0),
            unknown_kid_reload: futures_util::lock::Mutex::new(None),
        }
    }

    /// The public keys resource servers verify with, as JWK objects.
    pub fn published(&self) -> Arc<[String]> {
        Arc::clone(&self.published.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes sure a key of the configured algorithm signs, then loads the keys. A deployment's
    /// first key (or the first after a change of algorithm) signs at once: no resource server
    /// can have cached a key set that lacks it. Returns the key it created, if any.
    ///
    /// # Errors
    /// [`KeyError::Contended`] when other instances keep changing the table; backend failures.
    pub async fn start(&self) -> Result<Option<SigningKey>, KeyError> {
        let created = self.ensure_signing_key().await?;
        self.refresh().await?;
        Ok(created)
    }

    async fn ensure_signing_key(&self) -> Result<Option<SigningKey>, KeyError> {
        let Some(algorithm) = self.algorithm else {
            return Ok(None);
        };
        for _ in 0..ATTEMPTS {
            let keys = self.load().await?;
            if keys.current().is_some_and(|key| key.algorithm == algorithm) {
                return Ok(None);
            }
            let now = self.clock.now();
            let mut moves = Vec::new();
            if let Some(current) = keys.current() {
                moves.push(KeyMove::demote(current, now, self.policy.verification_hold));
            }
            // A rotation of the old algorithm would otherwise take over from the new key.
            if let Some(next) = keys.next() {
                moves.push(KeyMove::retire(next, now));
            }
            let key = self.generate(algorithm, KeyState::Current, now, now)?;
            let change = KeyChange {
                moves,
                insert: Some(key.clone()),
            };
            if self.store.apply_key_change(&change).await? {
                self.record_published(&key, "first key of the configured algorithm")
                    .await;
                return Ok(Some(key));
            }
        }
        Err(KeyError::Contended)
    }

    /// Records that `key` was made (or, promoted early, signs), and why. The key change is
    /// made already: a failure to record is logged, not returned.
    async fn record_published(&self, key: &SigningKey, reason: &str) {
        let event = NewAuditEvent::new(
            AuditKind::KeyPublished,
            None,
            &ClientInfo::default(),
            self.clock.now(),
        )
        .with("kid", &key.kid)
        .with("algorithm", key.algorithm)
        .with("signs_from", key.activates_at.to_rfc3339())
        .with("reason", reason);
        self.record(event).await;
    }

    async fn record(&self, event: NewAuditEvent) {
        if let Err(err) = self.audit.record_audit(event).await {
            tracing::warn!(error = %err, "could not record a signing key event");
        }
    }

    /// Makes the moves that are due (a rotation to publish, a key to promote, a key to retire;
    /// whichever instance gets there first makes each), then hands the key table as it now is
    /// to the token issuer. Every instance runs it every few seconds.
    ///
    /// # Errors
    /// Backend failures, and a key the issuer cannot open; the keys in use stay as they were.
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let load = self.loads_begun.fetch_add(1, Ordering::SeqCst) + 1;
        let mut keys = self.load().await?;
        let now = self.clock.now();
        let moves = keys.due_moves(now, &self.policy);
        let insert = match keys.rotation_due(now, &self.policy) {
            Some((algorithm, activates_at)) => {
                Some(self.generate(algorithm, KeyState::Next, now, activates_at)?)
            }
            None => None,
        };
        if !moves.is_empty() || insert.is_some() {
            let change = KeyChange { moves, insert };
            if self.store.apply_key_change(&change).await?
                && let Some(key) = &change.insert
            {
                tracing::info!(kid = %key.kid, signs_from = %key.activates_at, "published the next signing key");
                self.record_published(key, "scheduled rotation").await;
            }
            keys = self.load().await?;
        }
        self.install(&keys)?;
        self.loads_installed.fetch_max(load, Ordering::SeqCst);
        Ok(())
    }

    /// Reloads the keys after a token named `kid`, which this instance has not loaded
    /// (another instance may have just made it), and returns once keys that include it, or
    /// that were read after this call, are in use: the caller then verifies the token again.
    /// Reloads of this kind run one at a time and at most once per [`UNKNOWN_KID_PAUSE`]; a
    /// caller within the pause waits for its end, and every caller waiting meanwhile is served
    /// by the one reload that follows (or by any other that began after it asked: the periodic
    /// one, or one the database announced).
    ///
    /// # Errors
    /// As [`SigningKeys::refresh`].
    pub async fn reload_for_unknown_kid(&self, kid: &str) -> Result<(), KeyError> {
        let asked = self.loads_begun.load(Ordering::SeqCst);
        let served = || {
            self.loads_installed.load(Ordering::SeqCst) > asked
                || self
                    .installed
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .find(kid)
                    .is_some()
        };
        let mut last = self.unknown_kid_reload.lock().await;
        if served() {
            return Ok(());
        }
        if let Some(began) = *last {
            let wait = began + UNKNOWN_KID_PAUSE - self.clock.now();
            if wait > TimeDelta::zero() {
                self.timer.sleep(wait).await;
                if served() {
                    return Ok(());
                }
            }
        }
        *last = Some(self.clock.now());
        self.refresh().await
    }

    /// Makes sure the key that signs a token issued at `at` is one the key table still lets
    /// sign, reloading the keys first when it is not (an operator retired it, or moved signing
    /// on with `rotate --now`, from another process): once those commands have returned, no
    /// instance signs with the old key. One lookup by primary key per token; none while
    /// HS256 signs.
    ///
    /// # Errors
    /// [`KeyError::NoSigningKey`] when, even after a reload, no key may sign; backend failures.
    pub async fn confirm_signing_key(&self, at: DateTime<Utc>) -> Result<(), KeyError> {
        let Some(kid) = self.ring.signing_kid(at) else {
            return Ok(());
        };
        if self.may_sign(&kid, at).await? {
            return Ok(());
        }
        tracing::info!(
            kid,
            "the signing key was moved on elsewhere; reloading the keys"
        );
        self.refresh().await?;
        match self.ring.signing_kid(at) {
            Some(kid) if !self.may_sign(&kid, at).await? => Err(KeyError::NoSigningKey),
            _ => Ok(()),
        }
    }

    async fn may_sign(&self, kid: &str, at: DateTime<Utc>) -> Result<bool, BackendError> {
        Ok(self
            .store
            .find_key(kid)
            .await?
            .is_some_and(|key| key.may_sign_at(at)))
    }

    fn install(&self, keys: &KeySet) -> Result<(), KeyError> {
        let hs256 = keys.hs256_acceptance(self.algorithm.is_none(), self.token_ttl);
        self.ring.install(keys, hs256)?;
        let published: Arc<[String]> = keys.published().map(|k| k.public_jwk.clone()).collect();
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = published;
        *self.installed.write().unwrap_or_else(|e| e.into_inner()) = keys.clone();
        Ok(())
    }

    /// Every key, retired ones included, oldest first.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn list(&self) -> Result<Vec<SigningKey>, KeyError> {
        Ok(self.store.list_keys().await?)
    }

    /// Starts a rotation: a new key of the current one's algorithm, published now and signing
    /// after the publication delay; or, `immediately`, signing now (the pending `next` key, when
    /// there is one, since it is published already).
    ///
    /// # Errors
    /// [`KeyError::NoCurrentKey`] when no asymmetric key signs; [`KeyError::Contended`] when the
    /// table changed meanwhile; backend failures.
    pub async fn rotate(&self, immediately: bool) -> Result<Rotated, KeyError> {
        let keys = self.load().await?;
        let now = self.clock.now();
        let current = keys.current().ok_or(KeyError::NoCurrentKey)?;
        let hold = self.policy.verification_hold;
        let (change, rotated) = match (keys.next(), immediately) {
            (Some(next), false) => return Ok(Rotated::AlreadyScheduled(next.clone())),
            (None, false) => {
                let at = now + self.policy.publication_delay;
                let key = self.generate(current.algorithm, KeyState::Next, now, at)?;
                let change = KeyChange {
                    moves: Vec::new(),
                    insert: Some(key.clone()),
                };
                (change, Rotated::Scheduled(key))
            }
            (Some(next), true) => {
                let moves = vec![
                    KeyMove::demote(current, now, hold),
                    KeyMove::promote(next, now),
                ];
                let promoted = SigningKey {
                    state: KeyState::Current,
                    activates_at: now.min(next.activates_at),
                    ..next.clone()
                };
                let change = KeyChange {
                    moves,
                    insert: None,
                };
                (change, Rotated::Immediately(promoted))
            }
            (None, true) => {
                let key = self.generate(current.algorithm, KeyState::Current, now, now)?;
                let change = KeyChange {
                    moves: vec![KeyMove::demote(current, now, hold)],
                    insert: Some(key.clone()),
                };
                (change, Rotated::Immediately(key))
            }
        };
        self.apply(&change).await?;
        match &rotated {
            Rotated::Immediately(key) => {
                tracing::warn!(kid = %key.kid, "rotated signing keys: the new key signs at once");
                self.record_published(key, "rotation by an operator, signing at once")
                    .await;
            }
            Rotated::Scheduled(key) | Rotated::AlreadyScheduled(key) => {
                tracing::info!(kid = %key.kid, signs_from = %key.activates_at, "rotation started");
                self.record_published(key, "rotation by an operator").await;
            }
        }
        Ok(rotated)
    }

    /// Retires `kid` at once: tokens it signed stop verifying on every instance at its next
    /// refresh. Retiring the signing key puts another in its place that signs now (the `next`
    /// key if there is one, else a new one).
    ///
    /// # Errors
    /// [`KeyError::UnknownKey`]; [`KeyError::Contended`] when the table changed meanwhile;
    /// backend failures.
    pub async fn retire(&self, kid: &str) -> Result<Retired, KeyError> {
        let keys = self.load().await?;
        let now = self.clock.now();
        let key = keys
            .find(kid)
            .ok_or_else(|| KeyError::UnknownKey(kid.to_owned()))?;
        let mut change = KeyChange {
            moves: vec![KeyMove::retire(key, now)],
            insert: None,
        };
        let replacement = match key.state {
            KeyState::Retired => return Ok(Retired::Already),
            KeyState::Next | KeyState::Previous => None,
            KeyState::Current => Some(match keys.next() {
                Some(next) => {
                    change.moves.push(KeyMove::promote(next, now));
                    SigningKey {
                        state: KeyState::Current,
                        activates_at: now.min(next.activates_at),
                        ..next.clone()
                    }
                }
                None => {
                    let algorithm = self.algorithm.unwrap_or(key.algorithm);
                    let fresh = self.generate(algorithm, KeyState::Current, now, now)?;
                    change.insert = Some(fresh.clone());
                    fresh
                }
            }),
        };
        self.apply(&change).await?;
        tracing::warn!(
            kid,
            replacement = replacement.as_ref().map(|key| key.kid.as_str()),
            "retired a signing key"
        );
        let mut event =
            NewAuditEvent::new(AuditKind::KeyRetired, None, &ClientInfo::default(), now)
                .with("kid", kid)
                .with("was", key.state);
        if let Some(replacement) = &replacement {
            event = event.with("replacement", &replacement.kid);
        }
        self.record(event).await;
        Ok(Retired::Done { replacement })
    }

    async fn apply(&self, change: &KeyChange) -> Result<(), KeyError> {
        if self.store.apply_key_change(change).await? {
            Ok(())
        } else {
            Err(KeyError::Contended)
        }
    }

    async fn load(&self) -> Result<KeySet, BackendError> {
        Ok(KeySet::new(self.store.list_keys().await?))
    }

    fn generate(
        &self,
        algorithm: KeyAlgorithm,
        state: KeyState,
        now: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    ) -> Result<SigningKey, BackendError> {
        let generated = self.forge.generate(algorithm)?;
        Ok(SigningKey::new(
            generated,
            algorithm,
            state,
            now,
            activates_at,
        ))
    }
}

#[cfg(test)]
mod tests;
