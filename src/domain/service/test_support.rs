//! Mocks of every port, and fixtures, for the use-case tests.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::keys::{KeyPorts, SigningKeys};
use super::{AuthPolicy, Core, Ports};
use crate::domain::mfa::Factors;
use crate::domain::ports::{
    MockAuditLog, MockChallengeRepository, MockClientRepository, MockClock, MockFactorRepository,
    MockGrantRepository, MockHousekeeping, MockKeyForge, MockKeyRing, MockLinkTokens,
    MockMailOutbox, MockMailer, MockPasskeyCeremonies, MockPasswordHasher, MockProviderTokens,
    MockRateLimiter, MockSecretSealer, MockSessionRepository, MockSigningKeyStore, MockTimer,
    MockTokenIssuer, MockUserRepository,
};
use crate::domain::{ClientInfo, Email, PasswordHash, Role, Session, SessionId, User, UserId};

pub const DUMMY_HASH: &str = "dummy-hash";

pub struct Mocks {
    pub users: MockUserRepository,
    pub sessions: MockSessionRepository,
    pub audit: MockAuditLog,
    pub links: MockLinkTokens,
    pub outbox: MockMailOutbox,
    pub housekeeping: MockHousekeeping,
    pub factors: MockFactorRepository,
    pub challenges: MockChallengeRepository,
    pub clients: MockClientRepository,
    pub grants: MockGrantRepository,
    pub provider_tokens: MockProviderTokens,
    pub hasher: MockPasswordHasher,
    pub tokens: MockTokenIssuer,
    /// `None`: a limiter that lets everything through.
    pub limiter: Option<MockRateLimiter>,
    /// `None`: no mail transport configured.
    pub mailer: Option<MockMailer>,
    /// `None`: passkeys not configured.
    pub passkeys: Option<MockPasskeyCeremonies>,
    /// `None`: the service makes its own with the hasher.
    pub dummy_hash: Option<PasswordHash>,
    /// The key table and ring of the key use cases; `None`: HS256 signs, and the table is
    /// never read.
    pub keys: Option<(MockSigningKeyStore, MockKeyRing)>,
    pub policy: AuthPolicy,
    pub now: DateTime<Utc>,
}

impl Mocks {
    /// Mocks that expect nothing: each test states exactly the calls it allows.
    pub fn new() -> Self {
        Self {
            users: MockUserRepository::new(),
            sessions: MockSessionRepository::new(),
            audit: MockAuditLog::new(),
            links: MockLinkTokens::new(),
            outbox: MockMailOutbox::new(),
            housekeeping: MockHousekeeping::new(),
            factors: MockFactorRepository::new(),
            challenges: MockChallengeRepository::new(),
            clients: MockClientRepository::new(),
            grants: MockGrantRepository::new(),
            provider_tokens: MockProviderTokens::new(),
            hasher: MockPasswordHasher::new(),
            tokens: MockTokenIssuer::new(),
            limiter: None,
            mailer: None,
            passkeys: None,
            dummy_hash: Some(PasswordHash::new(DUMMY_HASH.into())),
            keys: None,
            policy: AuthPolicy::default(),
            now: now(),
        }
    }

    pub fn service(mut self) -> Core {
        // Audit writes of their own (failed logins) are allowed unless a test says more.
        self.audit.expect_record_audit().returning(|_| Ok(()));
        self.audit.expect_record_folded().returning(|_, _| Ok(()));
        // Stored hashes are of the configured cost unless a test says otherwise.
        self.hasher.expect_needs_rehash().returning(|_| false);
        // Users have no second factor unless a test says otherwise.
        self.factors
            .expect_factors()
            .returning(|_| Ok(Factors::default()));
        let mut clock = MockClock::new();
        let now = self.now;
        clock.expect_now().returning(move || now);
        let limiter = self.limiter.unwrap_or_else(|| {
            let mut open = MockRateLimiter::new();
            open.expect_increment().returning(|_, _| Ok(1));
            open.expect_failures().returning(|_| Ok(None));
            open.expect_swap_failures().returning(|_, _, _| Ok(true));
            open.expect_record_failure().returning(|_, _| Ok(()));
            open.expect_release_attempt().returning(|_| Ok(()));
            open.expect_clear_failures().returning(|_| Ok(()));
            open
        });
        let audit: Arc<dyn crate::domain::ports::AuditLog> = Arc::new(self.audit);
        let clock: Arc<MockClock> = Arc::new(clock);
        Core::new(
            Ports {
                keys: Arc::new(key_use_cases(self.keys, Arc::clone(&audit), clock.clone())),
                users: Arc::new(self.users),
                sessions: Arc::new(self.sessions),
                audit,
                links: Arc::new(self.links),
                outbox: Arc::new(self.outbox),
                housekeeping: Arc::new(self.housekeeping),
                factors: Arc::new(self.factors),
                challenges: Arc::new(self.challenges),
                clients: Arc::new(self.clients),
                grants: Arc::new(self.grants),
                provider_tokens: Arc::new(self.provider_tokens),
                sealer: Arc::new(sealer()),
                hasher: Arc::new(self.hasher),
                tokens: Arc::new(self.tokens),
                clock,
                limiter: Arc::new(limiter),
                mailer: self
                    .mailer
                    .map(|mailer| Arc::new(mailer) as Arc<dyn crate::domain::ports::Mailer>),
                passkeys: self.passkeys.map(|ceremonies| {
                    Arc::new(ceremonies) as Arc<dyn crate::domain::ports::PasskeyCeremonies>
                }),
            },
            self.policy,
            self.dummy_hash,
        )
    }
}

/// The key use cases on `keys`, or, without them, those of a service that signs with
/// HS256: they never touch the key table.
fn key_use_cases(
    keys: Option<(MockSigningKeyStore, MockKeyRing)>,
    audit: Arc<dyn crate::domain::ports::AuditLog>,
    clock: Arc<MockClock>,
) -> SigningKeys {
    let (store, ring) = keys.unwrap_or_else(|| {
        let mut ring = MockKeyRing::new();
        ring.expect_signing_kid().returning(|_| None);
        (MockSigningKeyStore::new(), ring)
    });
    SigningKeys::new(
        KeyPorts {
            store: Arc::new(store),
            forge: Arc::new(MockKeyForge::new()),
            ring: Arc::new(ring),
            clock,
            timer: Arc::new(MockTimer::new()),
            audit,
        },
        crate::domain::KeyPolicy {
            rotation_period: chrono::TimeDelta::days(90),
            publication_delay: chrono::TimeDelta::minutes(20),
            verification_hold: chrono::TimeDelta::minutes(20),
        },
        None,
        chrono::TimeDelta::minutes(15),
    )
}

/// A sealer whose sealed form is the binding, a NUL, then the plaintext: enough to see
/// that the core seals with the right binding and opens what it sealed.
pub fn sealer() -> MockSecretSealer {
    let mut sealer = MockSecretSealer::new();
    sealer.expect_seal().returning(|plain, bound| {
        let mut sealed = bound.as_bytes().to_vec();
        sealed.push(0);
        sealed.extend_from_slice(plain);
        Ok(sealed)
    });
    sealer.expect_open().returning(|sealed, bound| {
        let prefix = [bound.as_bytes(), &[0]].concat();
        sealed
            .strip_prefix(prefix.as_slice())
            .map(<[u8]>::to_vec)
            .ok_or_else(|| crate::domain::BackendError::unexpected("wrong binding"))
    });
    sealer
}

pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

pub fn user(id: i64, role: Role, is_active: bool) -> User {
    User {
        id: UserId(id),
        email: Email::parse(&format!("user{id}@example.com")).unwrap(),
        full_name: None,
        role,
        is_active,
        email_verified: false,
        created_at: now(),
        updated_at: now(),
        last_login_at: None,
        password_hash: PasswordHash::new(format!("hash-of-user-{id}")),
        credential_version: 0,
    }
}

pub fn session(id: SessionId, user_id: i64) -> Session {
    Session {
        id,
        user_id: UserId(user_id),
        created_at: now(),
        last_used_at: now(),
        expires_at: now() + chrono::TimeDelta::days(90),
        idle_expires_at: now() + chrono::TimeDelta::days(14),
        ended_at: None,
        client: ClientInfo::default(),
        methods: vec![crate::domain::mfa::AuthMethod::Password],
        client_id: None,
    }
}

/// A registered client: confidential (secret `"secret"`) unless `public`, allowed every scope
/// and the code and refresh grants, with one redirect URI.
pub fn oauth_client(public: bool) -> crate::domain::oauth::OAuthClient {
    use crate::domain::oauth::{ClientId, ClientSecretHash, ClientSettings, GrantType, Scopes};
    crate::domain::oauth::OAuthClient {
        id: ClientId("client-1".into()),
        settings: ClientSettings {
            name: "Wiki".into(),
            redirect_uris: vec!["https://wiki.example/cb".into()],
            post_logout_redirect_uris: vec!["https://wiki.example/bye".into()],
            public,
            first_party: false,
            scopes: Scopes::all(),
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        },
        secret_hash: (!public).then(|| ClientSecretHash::of("secret")),
        created_at: now(),
    }
}

/// A policy with the OpenID provider on, issuing as `https://auth.example`.
pub fn provider_policy() -> AuthPolicy {
    AuthPolicy {
        provider: super::ProviderPolicy {
            enabled: true,
            issuer: "https://auth.example".into(),
            ..super::ProviderPolicy::default()
        },
        ..AuthPolicy::default()
    }
}
