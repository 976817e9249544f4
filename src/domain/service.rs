//! The use cases, as methods of one [`AuthService`] over the ports.
//!
//! Split by theme: [`accounts`] (register, login, authenticate, authorise), [`sessions`]
//! (refresh, logout, list, end, change password) and [`admin`] (the operator's commands).
//! The signing keys' lifecycle is a use case of its own, [`SigningKeys`]: it shares no port
//! with the rest, and the token issuer it feeds is the one [`AuthService`] signs with.

mod accounts;
mod admin;
mod cookie_sessions;
mod email;
mod keys;
mod limits;
mod mfa;
mod passkeys;
mod sessions;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

pub use accounts::{AuthError, LoginError, RegisterError};
pub use admin::{Actor, AdminError, NewAccount};
pub use cookie_sessions::{CookieSession, CookieSignIn};
pub use email::{Delivery, DeliveryOutcome, MailPolicy, MailRequestError, RedeemError};
pub use keys::{KeyError, KeyPorts, Retired, Rotated, SigningKeys, UNKNOWN_KID_PAUSE};
pub use limits::{LimitError, LimitPolicy, Quota, Throttled, backoff_delay};
pub use mfa::{LoginStep, MfaError, MfaPolicy, PendingLogin, Proof, SecondFactor, TotpEnrolment};
pub use passkeys::{PasskeyError, user_handle};
pub use sessions::{ChangePasswordError, EndSessionError, RefreshError};

use super::mfa::AuthMethod;
use super::ports::{
    AccessClaims, AuditLog, ChallengeRepository, Clock, CreateSessionError, FactorRepository,
    Housekeeping, LinkTokens, MailOutbox, Mailer, PasskeyCeremonies, PasswordHasher, RateLimiter,
    SecretSealer, SessionRepository, TokenError, TokenIssuer, UserRepository,
};
use super::{
    AuditKind, BackendError, ClientInfo, Email, FullName, NewAuditEvent, NewRefreshToken,
    NewSession, Password, PasswordError, PasswordHash, PasswordPolicy, Session, SessionId,
    SessionKey, TokenPair, User,
};

/// Lifetimes and tolerances that the use cases enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// How long an access token is valid.
    pub access_token_ttl: TimeDelta,
    /// Clock skew tolerated when checking an access token's times.
    pub leeway: TimeDelta,
    /// How long one refresh token is valid; an idle session dies with it.
    pub refresh_token_ttl: TimeDelta,
    /// How long a session lives at most, however often it is refreshed.
    pub session_max_age: TimeDelta,
    /// Live sessions one user may hold; a new one ends the least recently used beyond it.
    pub max_sessions_per_user: u32,
    /// How long audit events are kept.
    pub audit_retention: TimeDelta,
    /// Failures of one kind from one client address (for one account, or for none) within this
    /// long are one event with a count; zero records each.
    pub audit_fold_window: TimeDelta,
    /// Abuse limits on login, registration and refresh.
    pub limits: LimitPolicy,
    /// Mail, its links and their tokens.
    pub mail: MailPolicy,
    /// The rules a new password must pass besides its shape.
    pub password: PasswordPolicy,
    /// Until when access tokens of the old service (pyauth) are accepted; `None`: never.
    pub pyauth_tokens_until: Option<DateTime<Utc>>,
    /// Second factors.
    pub mfa: MfaPolicy,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            access_token_ttl: TimeDelta::minutes(15),
            leeway: TimeDelta::seconds(30),
            refresh_token_ttl: TimeDelta::days(14),
            session_max_age: TimeDelta::days(90),
            max_sessions_per_user: 100,
            audit_retention: TimeDelta::days(365),
            audit_fold_window: TimeDelta::seconds(60),
            limits: LimitPolicy::default(),
            mail: MailPolicy::default(),
            password: PasswordPolicy::default(),
            pyauth_tokens_until: None,
            mfa: MfaPolicy::default(),
        }
    }
}

/// The ports the use cases run on.
#[derive(Clone)]
pub struct Ports {
    pub users: Arc<dyn UserRepository>,
    /// The storage ports below are served by the same store as `users`: an account change
    /// spans them.
    pub sessions: Arc<dyn SessionRepository>,
    pub audit: Arc<dyn AuditLog>,
    pub links: Arc<dyn LinkTokens>,
    pub outbox: Arc<dyn MailOutbox>,
    pub housekeeping: Arc<dyn Housekeeping>,
    pub factors: Arc<dyn FactorRepository>,
    pub challenges: Arc<dyn ChallengeRepository>,
    pub sealer: Arc<dyn SecretSealer>,
    pub hasher: Arc<dyn PasswordHasher>,
    pub tokens: Arc<dyn TokenIssuer>,
    pub clock: Arc<dyn Clock>,
    pub limiter: Arc<dyn RateLimiter>,
    /// `None`: no mail transport is configured, and the routes that send mail say so.
    pub mailer: Option<Arc<dyn Mailer>>,
    /// `None`: `public_url` names no host a passkey can be bound to, and the passkey routes
    /// say so.
    pub passkeys: Option<Arc<dyn PasskeyCeremonies>>,
    /// The signing keys' use cases, on the same token issuer as `tokens`: a token is signed
    /// only once they confirm the key may sign, and one naming a key not loaded yet is checked
    /// again after they reload.
    pub keys: Arc<SigningKeys>,
}

/// A session about to be opened: its id, time, client, and how its user signed in.
struct SessionOpening {
    id: SessionId,
    now: DateTime<Utc>,
    client: ClientInfo,
    methods: Vec<AuthMethod>,
}

/// Every use case of the service. Cheap to share: it holds only `Arc`s and plain values.
pub struct AuthService {
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    audit: Arc<dyn AuditLog>,
    links: Arc<dyn LinkTokens>,
    outbox: Arc<dyn MailOutbox>,
    housekeeping: Arc<dyn Housekeeping>,
    factors: Arc<dyn FactorRepository>,
    challenges: Arc<dyn ChallengeRepository>,
    sealer: Arc<dyn SecretSealer>,
    hasher: Arc<dyn PasswordHasher>,
    tokens: Arc<dyn TokenIssuer>,
    clock: Arc<dyn Clock>,
    limiter: Arc<dyn RateLimiter>,
    mailer: Option<Arc<dyn Mailer>>,
    passkeys: Option<Arc<dyn PasskeyCeremonies>>,
    keys: Arc<SigningKeys>,
    policy: AuthPolicy,
    limits: LimitPolicy,
    /// Verified against when an email is unknown, so that a miss costs a full hash like a hit.
    /// Made once, at the hasher's cost, by [`AuthService::prepare`] or the first login; the
    /// lock makes every login that comes meanwhile, for a known email or not, wait for that one
    /// hash, so neither answers early.
    dummy_hash: futures_util::lock::Mutex<Option<PasswordHash>>,
}

impl AuthService {
    /// Builds the service. A `dummy_hash` given must come from the same hasher at the same cost
    /// as real hashes, or the timing of unknown emails differs; without one, the service makes
    /// its own (see [`AuthService::prepare`]), so that start-up does not wait for a hash.
    pub fn new(ports: Ports, policy: AuthPolicy, dummy_hash: Option<PasswordHash>) -> Self {
        Self {
            users: ports.users,
            sessions: ports.sessions,
            audit: ports.audit,
            links: ports.links,
            outbox: ports.outbox,
            housekeeping: ports.housekeeping,
            factors: ports.factors,
            challenges: ports.challenges,
            sealer: ports.sealer,
            hasher: ports.hasher,
            tokens: ports.tokens,
            clock: ports.clock,
            limiter: ports.limiter,
            mailer: ports.mailer,
            passkeys: ports.passkeys,
            keys: ports.keys,
            limits: policy.limits,
            policy,
            dummy_hash: futures_util::lock::Mutex::new(dummy_hash),
        }
    }

    /// Makes the dummy hash now, if it is not made yet: what a server does right after it
    /// starts serving, so that the first login finds it ready.
    ///
    /// # Errors
    /// [`BackendError`] from the hasher; the next login that needs the hash tries again.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        self.dummy_hash().await.map(drop)
    }

    /// The dummy hash: a random password hashed once, by the same hasher as real passwords.
    async fn dummy_hash(&self) -> Result<PasswordHash, BackendError> {
        let mut slot = self.dummy_hash.lock().await;
        if let Some(hash) = slot.as_ref() {
            return Ok(hash.clone());
        }
        let random = Password::parse(&Uuid::new_v4().simple().to_string())
            .map_err(BackendError::unexpected)?;
        let hash = self.hasher.hash(&random).await?;
        *slot = Some(hash.clone());
        Ok(hash)
    }

    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// The password rules that need the account (common passwords, the address itself, the
    /// strength score): the one check for every place a password is set.
    ///
    /// # Errors
    /// The [`PasswordError`] naming the rule that failed.
    pub fn check_new_password(
        &self,
        password: &Password,
        email: &Email,
        full_name: Option<&FullName>,
    ) -> Result<(), PasswordError> {
        self.policy.password.check(password, email, full_name)
    }

    /// Records a failure (a wrong password or code): one a client address caused is folded into
    /// the last one like it within the fold window, so that strangers' attempts cannot grow the
    /// trail by a row each, whether or not the limits are on.
    ///
    /// # Errors
    /// [`BackendError`] from the repository.
    pub(super) async fn record_failure(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        let window = self.policy.audit_fold_window;
        if !event.is_foldable() || window <= TimeDelta::zero() {
            return self.audit.record_audit(event).await;
        }
        let since = event.at - window;
        self.audit.record_folded(event, since).await
    }

    /// Whether storage answers: the readiness check.
    ///
    /// # Errors
    /// [`BackendError`] from the repository.
    pub async fn ready(&self) -> Result<(), BackendError> {
        self.users.ping().await
    }

    /// Opens a session for `user`, as read before its password was checked, and hands out its
    /// first pair of tokens.
    ///
    /// # Errors
    /// [`CreateSessionError::Stale`] when the user changed since it was read.
    async fn start_session(
        &self,
        user: &User,
        client: ClientInfo,
        methods: Vec<AuthMethod>,
    ) -> Result<TokenPair, CreateSessionError> {
        let now = self.clock.now();
        let id = SessionId::random();
        let expires_at = now + self.policy.session_max_age;
        let refresh = self.next_refresh_token(id, expires_at, now);
        let refresh_token = refresh.secret.clone();
        let opened = SessionOpening {
            id,
            now,
            client,
            methods,
        };
        let session = self
            .open_session(user, opened, SessionKey::RefreshToken(refresh))
            .await?;
        let access_token = self.issue_access_token(user, &session, now).await?;
        Ok(self.token_pair(access_token, refresh_token))
    }

    /// Stores a session for `user` as `opened` says, held with `key`, recording the login
    /// with it.
    async fn open_session(
        &self,
        user: &User,
        opened: SessionOpening,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let SessionOpening {
            id,
            now,
            client,
            methods,
        } = opened;
        let amr: Vec<_> = methods.iter().map(|method| method.as_str()).collect();
        let audit = NewAuditEvent::new(AuditKind::LoginSucceeded, Some(user.id), &client, now)
            .with("session_id", id)
            .with("amr", amr.join(" "));
        let session = NewSession {
            id,
            user_id: user.id,
            created_at: now,
            expires_at: now + self.policy.session_max_age,
            audit,
            client,
            methods,
            credential_version: user.credential_version,
            live_limit: self.policy.max_sessions_per_user,
        };
        self.sessions.create_session(session, key).await
    }

    /// A refresh token valid for its own lifetime, but never beyond the session's end.
    fn next_refresh_token(
        &self,
        session_id: SessionId,
        session_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> NewRefreshToken {
        let expires_at = (now + self.policy.refresh_token_ttl).min(session_expires_at);
        NewRefreshToken::generate(session_id, now, expires_at)
    }

    /// Signs an access token of `session` for `user`, issued at `now`, once the key table
    /// confirms that the key in use may still sign.
    async fn issue_access_token(
        &self,
        user: &User,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<String, BackendError> {
        self.keys
            .confirm_signing_key(now)
            .await
            .map_err(KeyError::into_backend)?;
        let claims = AccessClaims {
            user_id: user.id,
            role: user.role,
            session_id: session.id,
            issued_at: now,
            expires_at: now + self.policy.access_token_ttl,
            token_id: Uuid::new_v4().to_string(),
            methods: session.methods.clone(),
        };
        self.tokens.issue(&claims).map_err(|err| match err {
            TokenError::Backend(err) => err,
            rejected @ (TokenError::Rejected(_) | TokenError::UnknownKey(_)) => {
                BackendError::unexpected(rejected)
            }
        })
    }

    fn token_pair(&self, access_token: String, refresh_token: String) -> TokenPair {
        TokenPair {
            access_token,
            expires_in_seconds: self.policy.access_token_ttl.num_seconds(),
            refresh_token,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Mocks of every port, and fixtures, for the use-case tests.

    use std::sync::Arc;

    use chrono::{DateTime, TimeZone, Utc};

    use super::{AuthPolicy, AuthService, KeyPorts, Ports, SigningKeys};
    use crate::domain::mfa::Factors;
    use crate::domain::ports::{
        MockAuditLog, MockChallengeRepository, MockClock, MockFactorRepository, MockHousekeeping,
        MockKeyForge, MockKeyRing, MockLinkTokens, MockMailOutbox, MockMailer,
        MockPasskeyCeremonies, MockPasswordHasher, MockRateLimiter, MockSecretSealer,
        MockSessionRepository, MockSigningKeyStore, MockTimer, MockTokenIssuer, MockUserRepository,
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

        pub fn service(mut self) -> AuthService {
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
            AuthService::new(
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
        }
    }
}
