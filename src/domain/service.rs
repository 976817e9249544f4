//! The use cases, one service per concern, over the ports each one needs; [`Core`] holds them
//! all, built once at start-up.
//!
//! Services (what the inbound adapters call): [`Accounts`] (register, sign in with a password,
//! check an access token), [`Sessions`] (refresh, log out, list and end sessions, change the
//! password), [`CookieSessions`] (the console's sessions), [`Recovery`] (reset, verification,
//! email change), [`MailDelivery`] (the mail worker), [`SecondFactors`] (TOTP, recovery codes,
//! the second step of a login), [`Passkeys`], [`Admin`] (the admin API and the operator),
//! [`Upkeep`] (readiness, purging) and [`SigningKeys`] (the key lifecycle).
//!
//! What several services share is a component of its own: the abuse limits (`limits.rs`), the
//! one path of every password check (`credentials.rs`), opening a session (`opening.rs`), the
//! second step's checks (`second_step.rs`), link tokens (`links.rs`) and the mail a use case may
//! send beside its purpose (`notices.rs`).

mod accounts;
mod admin;
mod authorization;
mod client_tokens;
mod clients;
mod cookie_sessions;
mod credentials;
mod delivery;
mod import;
mod keys;
mod limits;
mod links;
mod notices;
mod opening;
mod passkeys;
mod recovery;
mod second_factors;
mod second_step;
mod sessions;
mod upkeep;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

pub use accounts::LoginStep;
pub use accounts::{Accounts, AuthError, RegisterError};
pub use admin::{Actor, Admin, AdminError, NewAccount};
pub use authorization::{
    AuthorizationRequest, Authorizations, AuthorizeError, ClientRedirect, Decision, Prompt,
    ValidRequest,
};
pub use client_tokens::{
    BearerError, ClientAuth, ClientTokenSet, ClientTokens, Introspection, TokenEndpointError,
    UserInfo,
};
pub use clients::{ClientError, Clients, RegisteredClient};
pub use cookie_sessions::{CookieSessions, CookieSignIn};
use credentials::Credentials;
pub use credentials::LoginError;
pub use delivery::{Delivery, DeliveryOutcome, MailDelivery};
pub use import::import_users;
pub use keys::{KeyError, KeyPorts, Retired, Rotated, SigningKeys, UNKNOWN_KID_PAUSE};
use limits::Guard;
pub use limits::{LimitError, LimitPolicy, Quota, Throttled, backoff_delay};
use links::Links;
pub use links::RedeemError;
use notices::Mailing;
pub use opening::CookieSession;
use opening::SessionOpener;
pub use passkeys::{PasskeyError, Passkeys, user_handle};
pub use recovery::{MailPolicy, MailRequestError, Recovery};
pub use second_factors::{SecondFactors, TotpEnrolment};
use second_step::SecondStep;
pub use second_step::{MfaError, MfaPolicy, PendingLogin, Proof, SecondFactor};
pub use sessions::{ChangePasswordError, EndSessionError, RefreshError, Sessions};
pub use upkeep::Upkeep;

use super::ports::{
    AuditLog, ChallengeRepository, ClientRepository, Clock, FactorRepository, GrantRepository,
    Housekeeping, LinkTokens, MailOutbox, Mailer, PasskeyCeremonies, PasswordHasher,
    ProviderTokens, RateLimiter, SecretSealer, SessionRepository, TokenIssuer, UserRepository,
};
use super::{PasswordHash, PasswordPolicy};

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
    /// The OpenID provider.
    pub provider: ProviderPolicy,
}

/// The OpenID provider's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPolicy {
    /// Whether `/oauth/*` answers: only when an asymmetric key signs and the issuer is the
    /// service's own URL, so that relying parties can verify tokens and discover the rest.
    pub enabled: bool,
    /// The `iss` of every token, and of authorization responses (RFC 9207).
    pub issuer: String,
    /// How long an authorization code is accepted.
    pub code_ttl: TimeDelta,
    /// How long an ID token is valid.
    pub id_token_ttl: TimeDelta,
}

impl Default for ProviderPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            issuer: String::new(),
            code_ttl: TimeDelta::seconds(60),
            id_token_ttl: TimeDelta::seconds(300),
        }
    }
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
            provider: ProviderPolicy::default(),
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
    pub clients: Arc<dyn ClientRepository>,
    pub grants: Arc<dyn GrantRepository>,
    pub sealer: Arc<dyn SecretSealer>,
    pub hasher: Arc<dyn PasswordHasher>,
    pub tokens: Arc<dyn TokenIssuer>,
    /// The tokens of relying parties: the same keys as `tokens`.
    pub provider_tokens: Arc<dyn ProviderTokens>,
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

/// Every use case, grouped by what it serves, over the ports each group needs. Built once, at
/// start-up; cheap to share, since it holds only `Arc`s.
pub struct Core {
    pub accounts: Arc<Accounts>,
    pub sessions: Arc<Sessions>,
    pub cookies: Arc<CookieSessions>,
    pub recovery: Arc<Recovery>,
    pub delivery: Arc<MailDelivery>,
    pub factors: Arc<SecondFactors>,
    pub passkeys: Arc<Passkeys>,
    pub admin: Arc<Admin>,
    pub upkeep: Arc<Upkeep>,
    pub keys: Arc<SigningKeys>,
    /// The OpenID provider: its clients, the authorization endpoint, the token endpoint.
    pub clients: Arc<Clients>,
    pub authorizations: Arc<Authorizations>,
    pub client_tokens: Arc<ClientTokens>,
}

impl Core {
    /// Builds every use case on `ports`. A `dummy_hash` given must come from the same hasher at
    /// the same cost as real hashes, or the timing of unknown emails differs; without one, the
    /// first login makes it (or [`Accounts::prepare`] does, right after start-up), so that
    /// start-up does not wait for a hash.
    pub fn new(ports: Ports, policy: AuthPolicy, dummy_hash: Option<PasswordHash>) -> Self {
        let Ports {
            users,
            sessions,
            audit,
            links: link_tokens,
            outbox,
            housekeeping,
            factors,
            challenges,
            clients,
            grants,
            sealer,
            hasher,
            tokens,
            provider_tokens,
            clock,
            limiter,
            mailer,
            passkeys,
            keys,
        } = ports;
        let limits = policy.limits;
        let policy = Arc::new(policy);
        let guard = Arc::new(Guard {
            limiter: limiter.clone(),
            clock: clock.clone(),
            limits,
        });
        let credentials = Arc::new(Credentials {
            users: users.clone(),
            sessions: sessions.clone(),
            audit: audit.clone(),
            hasher: hasher.clone(),
            clock: clock.clone(),
            limiter: limiter.clone(),
            limits,
            policy: policy.clone(),
            guard: guard.clone(),
            dummy_hash: futures_util::lock::Mutex::new(dummy_hash),
        });
        let mailing = Arc::new(Mailing {
            mailer: mailer.clone(),
            guard: guard.clone(),
        });
        let opener = Arc::new(SessionOpener {
            sessions: sessions.clone(),
            tokens: tokens.clone(),
            keys: keys.clone(),
            clock: clock.clone(),
            policy: policy.clone(),
        });
        let second_step = Arc::new(SecondStep {
            users: users.clone(),
            factors: factors.clone(),
            challenges: challenges.clone(),
            audit: audit.clone(),
            sealer: sealer.clone(),
            clock: clock.clone(),
            policy: policy.clone(),
            guard: guard.clone(),
            credentials: credentials.clone(),
        });
        let links = Arc::new(Links {
            link_tokens,
            clock: clock.clone(),
            policy: policy.clone(),
        });
        let accounts = Arc::new(Accounts {
            users: users.clone(),
            sessions: sessions.clone(),
            tokens,
            keys: keys.clone(),
            clock: clock.clone(),
            hasher: hasher.clone(),
            policy: policy.clone(),
            guard: guard.clone(),
            credentials: credentials.clone(),
            mailing: mailing.clone(),
            opener: opener.clone(),
            second_step: second_step.clone(),
        });
        Self {
            clients: Arc::new(Clients {
                clients: clients.clone(),
                clock: clock.clone(),
            }),
            authorizations: Arc::new(Authorizations {
                clients: clients.clone(),
                grants: grants.clone(),
                sessions: sessions.clone(),
                clock: clock.clone(),
                policy: policy.clone(),
            }),
            client_tokens: Arc::new(ClientTokens {
                clients,
                grants,
                sessions: sessions.clone(),
                tokens: provider_tokens,
                keys: keys.clone(),
                clock: clock.clone(),
                policy: policy.clone(),
                guard: guard.clone(),
            }),
            sessions: Arc::new(Sessions {
                sessions: sessions.clone(),
                users: users.clone(),
                hasher: hasher.clone(),
                clock: clock.clone(),
                policy: policy.clone(),
                guard: guard.clone(),
                credentials: credentials.clone(),
                opener: opener.clone(),
            }),
            cookies: Arc::new(CookieSessions {
                sessions: sessions.clone(),
                clock: clock.clone(),
                policy: policy.clone(),
                credentials: credentials.clone(),
                opener: opener.clone(),
                second_step: second_step.clone(),
            }),
            recovery: Arc::new(Recovery {
                users: users.clone(),
                outbox: outbox.clone(),
                factors: factors.clone(),
                hasher,
                limiter: limiter.clone(),
                limits,
                clock: clock.clone(),
                guard: guard.clone(),
                credentials: credentials.clone(),
                mailing: mailing.clone(),
                links: links.clone(),
            }),
            delivery: Arc::new(MailDelivery {
                users: users.clone(),
                outbox: outbox.clone(),
                mailer,
                clock: clock.clone(),
                policy: policy.clone(),
                links,
            }),
            factors: Arc::new(SecondFactors {
                users: users.clone(),
                factors: factors.clone(),
                sealer,
                clock: clock.clone(),
                policy: policy.clone(),
                credentials: credentials.clone(),
                second_step: second_step.clone(),
                opener: opener.clone(),
                mailing: mailing.clone(),
            }),
            passkeys: Arc::new(Passkeys {
                users: users.clone(),
                factors: factors.clone(),
                challenges,
                passkeys,
                clock: clock.clone(),
                policy: policy.clone(),
                guard: guard.clone(),
                credentials: credentials.clone(),
                second_step,
                opener,
                mailing: mailing.clone(),
            }),
            admin: Arc::new(Admin {
                users: users.clone(),
                sessions,
                audit,
                factors,
                outbox,
                clock: clock.clone(),
                policy: policy.clone(),
                accounts: accounts.clone(),
                credentials,
                guard,
                mailing,
            }),
            upkeep: Arc::new(Upkeep {
                users,
                housekeeping,
                limiter,
                limits,
                clock,
                policy,
            }),
            accounts,
            keys,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support;
