//! Storage of second factors, and of the sign-in steps in progress.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::mfa::{
    Ceremony, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge, Passkey, RecoveryCodeHash,
    TotpFactor,
};
use crate::domain::{BackendError, UserId};

/// Second factors: the TOTP factor with its recovery codes, and passkeys. They are added and
/// removed by account changes ([`UserRepository::apply`](super::UserRepository::apply)).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait FactorRepository: Send + Sync + 'static {
    /// Which factors user `id` has.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn factors(&self, id: UserId) -> Result<Factors, BackendError>;

    /// User `id`'s TOTP factor, confirmed or not.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_totp(&self, id: UserId) -> Result<Option<TotpFactor>, BackendError>;

    /// Stores `sealed_secret` as user `id`'s unconfirmed TOTP secret, replacing an unconfirmed
    /// one. `Ok(false)`, with nothing changed, when a confirmed one exists.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_pending_totp(
        &self,
        id: UserId,
        sealed_secret: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// Records that a code of `step` was accepted for user `id`'s confirmed factor, if no code
    /// of this step or a later one was: a conditional update, so of two uses of one code
    /// exactly one returns `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn use_totp_step(&self, id: UserId, step: i64) -> Result<bool, BackendError>;

    /// Spends one unused recovery code of user `id` at `now`; `false` when there is none with
    /// this hash (or it is spent). Of two concurrent uses exactly one returns `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn spend_recovery_code(
        &self,
        id: UserId,
        hash: &RecoveryCodeHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// User `id`'s passkeys, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_passkeys(&self, id: UserId) -> Result<Vec<Passkey>, BackendError>;

    /// The passkey with WebAuthn credential id `credential_id`, whoever holds it.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>, BackendError>;

    /// Records a sign-in with passkey `id` at `now`, storing its `credential` when the
    /// authenticator moved its counter or backup state.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn touch_passkey(
        &self,
        id: uuid::Uuid,
        credential: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Names passkey `id` of user `user_id` `name`; `false` when the user has no such passkey
    /// (someone else's is not touched).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: uuid::Uuid,
        name: &str,
    ) -> Result<bool, BackendError>;
}

/// What a sign-in or a passkey registration holds between two requests: the pending second
/// step of a login, and WebAuthn ceremonies.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ChallengeRepository: Send + Sync + 'static {
    /// Stores a pending second step of a login.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), BackendError>;

    /// Loads a challenge, spent or not.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
    ) -> Result<Option<MfaChallenge>, BackendError>;

    /// Counts a wrong code against a challenge, and spends it at `now` when that makes
    /// `max_failures`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn fail_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        max_failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Spends an unspent challenge at `now`: of two concurrent spends exactly one returns
    /// `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn spend_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// Stores a WebAuthn ceremony until it is finished or expires, and deletes the ceremonies
    /// that expired by `now`: sign-in starts need no account, so abandoned ones must not wait
    /// for the periodic purge (one indexed delete, by expiry).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_ceremony(
        &self,
        ceremony: Ceremony,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Takes the ceremony of `challenge`: deletes it and returns it, so that it finishes at
    /// most once, unless it expired by `now` (it is deleted then too).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn take_ceremony(
        &self,
        challenge: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>, BackendError>;
}
