//! Passwords and tokens: hashing, signing and checking them, and sealing secrets at rest.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::mfa::AuthMethod;
use crate::domain::{BackendError, Password, PasswordHash, Role, SessionId, UserId};

/// Password hashing: slow on purpose, so adapters must keep it off the async workers.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    /// Hashes a policy-checked password with a fresh salt.
    ///
    /// # Errors
    /// [`BackendError::Overloaded`] when the hashing capacity is saturated;
    /// [`BackendError::Unexpected`] for anything else.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, BackendError>;

    /// Checks `candidate` against `hash`, in time independent of where they differ. A
    /// candidate the algorithm cannot take whole (too long, or holding a NUL) never matches:
    /// it is not truncated.
    ///
    /// # Errors
    /// As [`PasswordHasher::hash`]; a malformed stored hash is `Unexpected`.
    async fn verify(&self, candidate: &str, hash: &PasswordHash) -> Result<bool, BackendError>;

    /// Whether `hash` was made with other parameters than this hasher uses now (another bcrypt
    /// cost), so that a login that has just verified the password should store a fresh hash.
    /// A hash of another algorithm is not this hasher's to judge: `false`.
    fn needs_rehash(&self, hash: &PasswordHash) -> bool;
}

/// The claims of an access token that the core cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: UserId,
    pub role: Role,
    pub session_id: SessionId,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub token_id: String,
    /// How the session's user signed in (`amr`).
    pub methods: Vec<AuthMethod>,
}

/// The claims of an access token of the old service (pyauth): HS256 with the shared secret,
/// `sub`, `role` and `exp` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyauthClaims {
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
}

/// Why a presented token is not accepted by the issuer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, wrong algorithm, issuer or audience, malformed: not ours.
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The token names a key (this `kid`) the issuer has not loaded: another instance may have
    /// made it since this one last read the key table.
    #[error("token names a key this instance has not loaded")]
    UnknownKey(String),
    /// Signing failed: a key problem, not the caller's.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Signs and checks access tokens.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TokenIssuer: Send + Sync + 'static {
    /// Signs `claims` into a token string.
    ///
    /// # Errors
    /// [`TokenError::Backend`] when signing fails.
    fn issue(&self, claims: &AccessClaims) -> Result<String, TokenError>;

    /// Checks a token's algorithm, signature, issuer and audience and returns its claims.
    /// Expiry is left to the caller, who owns the clock.
    ///
    /// # Errors
    /// [`TokenError::UnknownKey`] for a token whose `kid` is not among the keys installed;
    /// [`TokenError::Rejected`] for any other token this issuer did not sign as it is.
    fn verify(&self, token: &str) -> Result<AccessClaims, TokenError>;

    /// Checks a token in the old service's shape: HS256 with the shared secret, `sub` and
    /// `exp`, and none of the claims Portcullis adds (`iss`, `aud`, `sid`). Expiry is left to
    /// the caller.
    ///
    /// # Errors
    /// [`TokenError::Rejected`] for anything else.
    fn verify_pyauth(&self, token: &str) -> Result<PyauthClaims, TokenError>;
}

/// Encrypts secrets the core must read back (TOTP secrets), so the database alone never
/// yields them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait SecretSealer: Send + Sync + 'static {
    /// Seals `plaintext`, bound to `bound_to`: it opens only with the same binding.
    ///
    /// # Errors
    /// [`BackendError`] when the random generator fails.
    fn seal(&self, plaintext: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError>;

    /// # Errors
    /// [`BackendError`] when `sealed` was not sealed with this key and binding.
    fn open(&self, sealed: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError>;
}
