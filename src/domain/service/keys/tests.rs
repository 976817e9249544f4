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
