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
mod tests {
    //! The lifecycle run against a fake key table and a fake clock: several instances sharing
    //! one table, for months of simulated time.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::domain::ports::MockAuditLog;
    use crate::domain::{GeneratedKey, Hs256Acceptance};

    /// A key table with the adapters' constraints, counting the full reads.
    #[derive(Default)]
    struct Table(Mutex<KeySet>, std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl SigningKeyStore for Table {
        async fn list_keys(&self) -> Result<Vec<SigningKey>, BackendError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(self.0.lock().unwrap().keys().to_vec())
        }

        async fn find_key(&self, kid: &str) -> Result<Option<SigningKey>, BackendError> {
            Ok(self.0.lock().unwrap().find(kid).cloned())
        }

        async fn apply_key_change(&self, change: &KeyChange) -> Result<bool, BackendError> {
            Ok(self.0.lock().unwrap().apply(change))
        }
    }

    #[derive(Default)]
    struct Forge(Mutex<u32>);

    impl KeyForge for Forge {
        fn generate(&self, _: KeyAlgorithm) -> Result<GeneratedKey, BackendError> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            Ok(GeneratedKey {
                kid: format!("k{n}"),
                public_jwk: format!("{{\"kid\":\"k{n}\"}}"),
                sealed_private: Vec::new(),
            })
        }
    }

    /// What an instance's token issuer would hold.
    #[derive(Default)]
    struct Ring(Mutex<Option<(KeySet, Hs256Acceptance)>>);

    impl KeyRing for Ring {
        fn install(&self, keys: &KeySet, hs256: Hs256Acceptance) -> Result<(), BackendError> {
            *self.0.lock().unwrap() = Some((keys.clone(), hs256));
            Ok(())
        }

        fn signing_kid(&self, at: DateTime<Utc>) -> Option<String> {
            let installed = self.0.lock().unwrap();
            let (keys, _) = installed.as_ref()?;
            keys.signing_at(at).map(|key| key.kid.clone())
        }
    }

    impl Ring {
        fn keys(&self) -> KeySet {
            self.0.lock().unwrap().clone().unwrap().0
        }
    }

    struct FakeClock(Mutex<DateTime<Utc>>);

    impl Clock for FakeClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    impl FakeClock {
        fn advance(&self, by: TimeDelta) {
            *self.0.lock().unwrap() += by;
        }
    }

    /// Waiting moves the fake clock on, and is recorded.
    struct FakeTimer(Arc<FakeClock>, Mutex<Vec<TimeDelta>>);

    #[async_trait]
    impl Timer for FakeTimer {
        async fn sleep(&self, duration: TimeDelta) {
            self.1.lock().unwrap().push(duration);
            self.0.advance(duration);
        }
    }

    const TTL: TimeDelta = TimeDelta::minutes(15);
    const MAX_AGE: TimeDelta = TimeDelta::minutes(5);
    const REFRESH: TimeDelta = TimeDelta::seconds(30);

    fn policy() -> KeyPolicy {
        KeyPolicy {
            rotation_period: TimeDelta::hours(2),
            publication_delay: MAX_AGE + TTL + REFRESH,
            verification_hold: TTL + TimeDelta::seconds(30) + REFRESH,
        }
    }

    struct Fleet {
        table: Arc<Table>,
        clock: Arc<FakeClock>,
        timer: Arc<FakeTimer>,
        forge: Arc<Forge>,
        instances: Vec<(SigningKeys, Arc<Ring>)>,
        /// The events every instance recorded.
        trail: Arc<Mutex<Vec<NewAuditEvent>>>,
    }

    impl Fleet {
        fn new(size: usize, algorithm: Option<KeyAlgorithm>) -> Self {
            let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
            let clock = Arc::new(FakeClock(Mutex::new(start)));
            let mut fleet = Self {
                table: Arc::default(),
                timer: Arc::new(FakeTimer(Arc::clone(&clock), Mutex::default())),
                clock,
                forge: Arc::default(),
                instances: Vec::new(),
                trail: Arc::default(),
            };
            for _ in 0..size {
                fleet.add(algorithm);
            }
            fleet
        }

        fn add(&mut self, algorithm: Option<KeyAlgorithm>) {
            let ring = Arc::new(Ring::default());
            let mut audit = MockAuditLog::new();
            let trail = Arc::clone(&self.trail);
            audit.expect_record_audit().returning(move |event| {
                trail.lock().unwrap().push(event);
                Ok(())
            });
            let ports = KeyPorts {
                store: self.table.clone(),
                forge: self.forge.clone(),
                ring: ring.clone(),
                clock: self.clock.clone(),
                timer: self.timer.clone(),
                audit: Arc::new(audit),
            };
            let keys = SigningKeys::new(ports, policy(), algorithm, TTL);
            self.instances.push((keys, ring));
        }

        fn keys(&self, i: usize) -> &SigningKeys {
            &self.instances[i].0
        }

        fn ring(&self, i: usize) -> KeySet {
            self.instances[i].1.keys()
        }

        fn table(&self) -> KeySet {
            self.table.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn the_first_key_signs_at_once_and_only_one_instance_creates_it() {
        let fleet = Fleet::new(3, Some(KeyAlgorithm::EdDsa));
        let created = futures::future::join_all(fleet.instances.iter().map(|(k, _)| k.start()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(Option::is_some)
            .count();
        assert_eq!(created, 1);
        let table = fleet.table();
        assert_eq!(table.keys().len(), 1);
        let now = fleet.clock.now();
        for i in 0..3 {
            assert_eq!(fleet.ring(i).signing_at(now).unwrap().kid, "k1");
            assert_eq!(&*fleet.keys(i).published(), ["{\"kid\":\"k1\"}".to_owned()]);
        }
    }

    #[tokio::test]
    async fn once_retire_returns_no_instance_signs_with_the_key_even_before_it_hears() {
        let fleet = Fleet::new(2, Some(KeyAlgorithm::EdDsa));
        fleet.keys(0).start().await.unwrap();
        fleet.keys(1).start().await.unwrap();
        let now = fleet.clock.now();
        // Instance 1 retires the signing key; instance 0 has not refreshed since.
        let Retired::Done { replacement } = fleet.keys(1).retire("k1").await.unwrap() else {
            panic!("k1 was signing");
        };
        let replacement = replacement.unwrap().kid;
        assert_eq!(fleet.ring(0).signing_at(now).unwrap().kid, "k1");
        // Before it signs, instance 0 asks the table about the key it would use.
        fleet.keys(0).confirm_signing_key(now).await.unwrap();
        assert_eq!(fleet.ring(0).signing_at(now).unwrap().kid, replacement);
        assert!(
            fleet
                .ring(0)
                .find("k1")
                .is_none_or(|k| k.state == KeyState::Retired)
        );
        // A key the table still lets sign costs one lookup and no reload.
        let reads = fleet.table.1.load(Ordering::SeqCst);
        fleet.keys(0).confirm_signing_key(now).await.unwrap();
        assert_eq!(fleet.table.1.load(Ordering::SeqCst), reads);
    }

    #[tokio::test]
    async fn rotate_now_elsewhere_moves_signing_on_before_the_next_token() {
        let fleet = Fleet::new(2, Some(KeyAlgorithm::Es256));
        fleet.keys(0).start().await.unwrap();
        fleet.keys(1).start().await.unwrap();
        let Rotated::Immediately(key) = fleet.keys(1).rotate(true).await.unwrap() else {
            panic!("rotated at once");
        };
        let now = fleet.clock.now();
        fleet.keys(0).confirm_signing_key(now).await.unwrap();
        assert_eq!(fleet.ring(0).signing_at(now).unwrap().kid, key.kid);
    }

    #[tokio::test]
    async fn reloads_for_unknown_kids_are_paced_and_shared() {
        let fleet = Fleet::new(2, Some(KeyAlgorithm::EdDsa));
        fleet.keys(0).start().await.unwrap();
        let reads = || fleet.table.1.load(Ordering::SeqCst);
        let before = reads();
        // The first reload runs at once and brings a key made elsewhere since.
        fleet.keys(1).start().await.unwrap();
        fleet.keys(1).rotate(true).await.unwrap();
        let made = fleet.table().current().unwrap().kid.clone();
        fleet.keys(0).reload_for_unknown_kid(&made).await.unwrap();
        assert!(fleet.ring(0).find(&made).is_some());
        assert!(
            fleet.timer.1.lock().unwrap().is_empty(),
            "no wait the first time"
        );
        assert!(reads() > before);
        // A kid loaded meanwhile costs nothing more.
        let loaded = reads();
        fleet.keys(0).reload_for_unknown_kid(&made).await.unwrap();
        assert_eq!(reads(), loaded);
        // A made-up kid within the pause waits for its end, then reads again, once.
        fleet.clock.advance(TimeDelta::milliseconds(300));
        fleet
            .keys(0)
            .reload_for_unknown_kid("made-up")
            .await
            .unwrap();
        assert_eq!(
            *fleet.timer.1.lock().unwrap(),
            [TimeDelta::milliseconds(700)]
        );
        assert_eq!(reads(), loaded + 1);
        // Another made-up kid right after waits a whole pause: a flood of them reads the table
        // once a second.
        fleet
            .keys(0)
            .reload_for_unknown_kid("made-up too")
            .await
            .unwrap();
        assert_eq!(
            fleet.timer.1.lock().unwrap().last(),
            Some(&UNKNOWN_KID_PAUSE)
        );
        assert_eq!(reads(), loaded + 2);
    }

    #[tokio::test]
    async fn hs256_alone_makes_no_key_and_publishes_nothing() {
        let fleet = Fleet::new(1, None);
        assert_eq!(fleet.keys(0).start().await.unwrap(), None);
        assert!(fleet.table().keys().is_empty());
        assert!(fleet.keys(0).published().is_empty());
        assert!(matches!(
            fleet.keys(0).rotate(false).await,
            Err(KeyError::NoCurrentKey)
        ));
    }

    /// Two dozen rotations across three instances, each refreshing on its own schedule: every
    /// token any instance issues verifies on every instance for its whole life, and its key was
    /// in the published set at least one JWKS cache lifetime before the token was issued.
    #[tokio::test]
    async fn no_token_valid_at_any_moment_is_refused_and_no_cached_key_set_misses_a_kid() {
        let fleet = Fleet::new(3, Some(KeyAlgorithm::EdDsa));
        for (keys, _) in &fleet.instances {
            keys.start().await.unwrap();
        }
        let step = TimeDelta::seconds(10);
        let mut first_published: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut live: Vec<(String, DateTime<Utc>)> = Vec::new();
        let start = fleet.clock.now();
        let mut tick = 0u64;
        while fleet.clock.now() < start + TimeDelta::days(2) {
            let now = fleet.clock.now();
            // Each instance refreshes every 30 s, at its own offset.
            for (i, (keys, _)) in fleet.instances.iter().enumerate() {
                if tick % 3 == i as u64 {
                    keys.refresh().await.unwrap();
                }
            }
            for key in fleet.table().published() {
                first_published.entry(key.kid.clone()).or_insert(now);
            }
            let rings: Vec<KeySet> = (0..3).map(|i| fleet.ring(i)).collect();
            for ring in &rings {
                let signer = ring.signing_at(now).unwrap().kid.clone();
                let since = first_published[&signer];
                assert!(
                    since == start || now - since >= MAX_AGE,
                    "{signer} signs at {now}, published only since {since}"
                );
                live.push((signer, now + TTL));
            }
            live.retain(|(_, exp)| *exp + TimeDelta::seconds(30) >= now);
            for ring in &rings {
                for (kid, _) in &live {
                    let key = ring.find(kid).unwrap_or_else(|| panic!("{kid} unknown"));
                    assert!(key.state.is_published(), "{kid} refused at {now}");
                }
            }
            fleet.clock.advance(step);
            tick += 1;
        }
        let table = fleet.table();
        assert!(table.keys().len() >= 24, "{} keys", table.keys().len());
        assert_eq!(table.published().count(), 2, "{table:?}");
        assert_eq!(
            table
                .keys()
                .iter()
                .filter(|k| k.state == KeyState::Retired)
                .count(),
            table.keys().len() - 2
        );
    }

    #[tokio::test]
    async fn a_rotation_publishes_first_and_signs_after_the_delay() {
        let fleet = Fleet::new(1, Some(KeyAlgorithm::Es256));
        let keys = fleet.keys(0);
        keys.start().await.unwrap();
        let Rotated::Scheduled(next) = keys.rotate(false).await.unwrap() else {
            panic!("not scheduled")
        };
        assert_eq!(next.algorithm, KeyAlgorithm::Es256);
        assert_eq!(
            next.activates_at,
            fleet.clock.now() + policy().publication_delay
        );
        assert_eq!(
            keys.rotate(false).await.unwrap(),
            Rotated::AlreadyScheduled(next.clone())
        );
        keys.refresh().await.unwrap();
        assert_eq!(keys.published().len(), 2);
        assert_eq!(
            fleet.ring(0).signing_at(fleet.clock.now()).unwrap().kid,
            "k1"
        );
        fleet.clock.advance(policy().publication_delay);
        assert_eq!(
            fleet.ring(0).signing_at(fleet.clock.now()).unwrap().kid,
            "k2"
        );
        keys.refresh().await.unwrap();
        let table = fleet.table();
        assert_eq!(table.current().unwrap().kid, "k2");
        assert_eq!(table.find("k1").unwrap().state, KeyState::Previous);
        fleet.clock.advance(policy().verification_hold);
        keys.refresh().await.unwrap();
        assert_eq!(fleet.table().find("k1").unwrap().state, KeyState::Retired);
        assert_eq!(keys.published().len(), 1);
    }

    #[tokio::test]
    async fn rotating_now_promotes_the_published_next_key_or_makes_one() {
        let fleet = Fleet::new(1, Some(KeyAlgorithm::EdDsa));
        let keys = fleet.keys(0);
        keys.start().await.unwrap();
        let Rotated::Immediately(fresh) = keys.rotate(true).await.unwrap() else {
            panic!()
        };
        assert_eq!(fresh.kid, "k2");
        assert_eq!(fleet.table().current().unwrap().kid, "k2");
        assert_eq!(fleet.table().find("k1").unwrap().state, KeyState::Previous);
        keys.rotate(false).await.unwrap();
        let Rotated::Immediately(promoted) = keys.rotate(true).await.unwrap() else {
            panic!()
        };
        assert_eq!(promoted.kid, "k3");
        assert_eq!(promoted.activates_at, fleet.clock.now());
        let table = fleet.table();
        assert_eq!(table.current().unwrap().kid, "k3");
        assert_eq!(table.current().unwrap().activates_at, fleet.clock.now());
        assert!(table.next().is_none());
    }

    #[tokio::test]
    async fn retiring_stops_verification_everywhere_at_the_next_refresh() {
        let fleet = Fleet::new(2, Some(KeyAlgorithm::EdDsa));
        for (keys, _) in &fleet.instances {
            keys.start().await.unwrap();
        }
        let Retired::Done {
            replacement: Some(replacement),
        } = fleet.keys(0).retire("k1").await.unwrap()
        else {
            panic!("no replacement")
        };
        assert_eq!(replacement.state, KeyState::Current);
        assert_eq!(fleet.keys(0).retire("k1").await.unwrap(), Retired::Already);
        assert!(matches!(
            fleet.keys(0).retire("nope").await,
            Err(KeyError::UnknownKey(_))
        ));
        // The other instance still trusts k1 until it refreshes.
        assert!(fleet.ring(1).find("k1").unwrap().state.is_published());
        fleet.keys(1).refresh().await.unwrap();
        assert!(!fleet.ring(1).find("k1").unwrap().state.is_published());
        assert_eq!(
            fleet.ring(1).signing_at(fleet.clock.now()).unwrap().kid,
            replacement.kid
        );
        let trail = fleet.trail.lock().unwrap().clone();
        let retired = trail
            .iter()
            .find(|e| e.kind == AuditKind::KeyRetired)
            .unwrap();
        assert_eq!(retired.detail["kid"], "k1");
        assert_eq!(retired.detail["was"], "current");
        assert_eq!(retired.detail["replacement"], replacement.kid);
        assert_eq!(
            trail
                .iter()
                .filter(|e| e.kind == AuditKind::KeyPublished)
                .count(),
            1,
            "the first key, made once for two instances"
        );
        // Retiring a previous or next key needs no replacement.
        fleet.keys(0).rotate(false).await.unwrap();
        let next = fleet.table().next().unwrap().kid.clone();
        assert_eq!(
            fleet.keys(0).retire(&next).await.unwrap(),
            Retired::Done { replacement: None }
        );
    }

    #[tokio::test]
    async fn switching_from_hs256_bounds_hs256_and_switching_algorithm_signs_at_once() {
        let mut fleet = Fleet::new(1, Some(KeyAlgorithm::EdDsa));
        fleet.keys(0).start().await.unwrap();
        let switch = fleet.clock.now();
        let (_, hs256) = fleet.instances[0].1.0.lock().unwrap().clone().unwrap();
        assert_eq!(
            hs256,
            Hs256Acceptance::IssuedBefore {
                issued_before: switch,
                expiring_by: switch + TTL,
            }
        );
        fleet.keys(0).rotate(false).await.unwrap();
        fleet.clock.advance(TimeDelta::hours(1));
        fleet.add(Some(KeyAlgorithm::Es256));
        let created = fleet.keys(1).start().await.unwrap().unwrap();
        assert_eq!(created.algorithm, KeyAlgorithm::Es256);
        let table = fleet.table();
        assert_eq!(table.current().unwrap().kid, created.kid);
        assert_eq!(table.find("k1").unwrap().state, KeyState::Previous);
        // The pending EdDSA rotation must not take over from the new algorithm.
        assert_eq!(table.find("k2").unwrap().state, KeyState::Retired);
        let (_, hs256) = fleet.instances[1].1.0.lock().unwrap().clone().unwrap();
        assert!(
            matches!(hs256, Hs256Acceptance::IssuedBefore { issued_before, .. } if issued_before == switch)
        );
    }
}
