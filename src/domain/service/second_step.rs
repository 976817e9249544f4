//! The second step of a sign-in: which factors a user holds, the pending challenge, and the
//! check of a TOTP or recovery code.

use std::sync::Arc;

use chrono::TimeDelta;

use super::credentials::{Credentials, LoginError};
use super::limits::{Action, Guard, Throttled};
use crate::domain::mfa::{
    AuthMethod, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge, RecoveryCodeHash, TotpCode,
    TotpSecret,
};
use crate::domain::ports::{
    AuditLog, ChallengeRepository, Clock, FactorRepository, SecretSealer, UserRepository,
};
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, NewAuditEvent, Principal, User, UserId,
};

/// The second step of a sign-in, and the proofs a signed-in user gives again.
pub struct SecondStep {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) challenges: Arc<dyn ChallengeRepository>,
    pub(super) audit: Arc<dyn AuditLog>,
    pub(super) sealer: Arc<dyn SecretSealer>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
    pub(super) credentials: Arc<Credentials>,
}

impl SecondStep {
    /// Which second factors `user` has.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn factors(&self, user: UserId) -> Result<Factors, BackendError> {
        self.factors.factors(user).await
    }

    /// After a right password: for a user with a TOTP factor, stores a pending login and
    /// returns it; for anyone else, clears the account's failure run (the proof is complete)
    /// and returns `None`, for the caller to open the session.
    pub(super) async fn second_step_owed(
        &self,
        user: &User,
    ) -> Result<Option<PendingLogin>, BackendError> {
        if !self.factors.factors(user.id).await?.totp {
            self.credentials.clear_failures(user.email.key()).await?;
            return Ok(None);
        }
        let challenge = NewMfaChallenge::generate(
            user.id,
            user.credential_version,
            self.clock.now(),
            self.policy.mfa.challenge_ttl,
        );
        let mfa_token = challenge.secret.clone();
        self.challenges.store_mfa_challenge(challenge).await?;
        Ok(Some(PendingLogin {
            mfa_token,
            methods: vec!["totp", "recovery_code"],
        }))
    }

    /// The checks of a second step, in order: the pending login, its user, the limits, the
    /// code; then the pending login is spent. Returns the user to open a session for, and how
    /// they proved it.
    pub(super) async fn check_second_factor(
        &self,
        mfa_token: &str,
        proof: SecondFactor<'_>,
        client: &ClientInfo,
    ) -> Result<(User, AuthMethod), MfaError> {
        let hash = MfaTokenHash::of(mfa_token);
        let now = self.clock.now();
        let challenge = self
            .challenges
            .find_mfa_challenge(&hash)
            .await?
            .filter(|challenge| challenge.is_open(now))
            .ok_or(MfaError::InvalidCode)?;
        let user = self.challenged_user(&challenge).await?;
        let account = user.email.key();
        self.guard
            .throttle(Action::Login, client.ip.as_deref(), Some(account))
            .await?;
        self.credentials.admit_check(account).await?;
        let Some(method) = self.check_proof(&user, proof).await? else {
            self.credentials.record_wrong(account).await?;
            self.challenges
                .fail_mfa_challenge(&hash, self.policy.mfa.max_failures, now)
                .await?;
            let failed =
                NewAuditEvent::new(AuditKind::MfaFailed, Some(user.id), client, now).failed();
            self.credentials.record_failure(failed).await?;
            return Err(MfaError::InvalidCode);
        };
        if !self.challenges.spend_mfa_challenge(&hash, now).await? {
            return Err(MfaError::InvalidCode);
        }
        self.credentials.clear_failures(account).await?;
        Ok((user, method))
    }

    /// The user of a pending login, as long as nothing changed since the password step.
    async fn challenged_user(&self, challenge: &MfaChallenge) -> Result<User, MfaError> {
        self.users
            .find_user_by_id(challenge.user_id)
            .await?
            .filter(|user| {
                user.is_active && user.credential_version == challenge.credential_version
            })
            .ok_or(MfaError::InvalidCode)
    }

    /// Whether `proof` is right for `user`, spending what it uses (the code's step, the
    /// recovery code). `None` for a wrong one.
    async fn check_proof(
        &self,
        user: &User,
        proof: SecondFactor<'_>,
    ) -> Result<Option<AuthMethod>, BackendError> {
        match proof {
            SecondFactor::Code(code) => Ok(self
                .use_totp_code(user.id, code)
                .await?
                .then_some(AuthMethod::Otp)),
            SecondFactor::RecoveryCode(code) => {
                let Some(hash) = RecoveryCodeHash::of_typed(code) else {
                    return Ok(None);
                };
                let now = self.clock.now();
                if !self
                    .factors
                    .spend_recovery_code(user.id, &hash, now)
                    .await?
                {
                    return Ok(None);
                }
                let used = NewAuditEvent::new(
                    AuditKind::RecoveryCodeUsed,
                    Some(user.id),
                    &ClientInfo::default(),
                    now,
                );
                self.audit.record_audit(used).await?;
                Ok(Some(AuthMethod::RecoveryCode))
            }
        }
    }

    /// Whether `code` is a current code of `user`'s confirmed factor not used before, and
    /// if so, marks its step used.
    async fn use_totp_code(&self, user: UserId, code: &str) -> Result<bool, BackendError> {
        let Some(code) = TotpCode::parse(code) else {
            return Ok(false);
        };
        let Some(factor) = self
            .factors
            .find_totp(user)
            .await?
            .filter(|factor| factor.confirmed_at.is_some())
        else {
            return Ok(false);
        };
        let secret = self.open_secret(user, &factor.sealed_secret)?;
        let Some(step) = secret.matching_step(&code, self.clock.now()) else {
            return Ok(false);
        };
        if factor.last_step.is_some_and(|last| step <= last) {
            return Ok(false);
        }
        self.factors.use_totp_step(user, step).await
    }

    pub(super) fn open_secret(
        &self,
        user: UserId,
        sealed: &[u8],
    ) -> Result<TotpSecret, BackendError> {
        self.sealer
            .open(sealed, &totp_binding(user))
            .map(TotpSecret::from_bytes)
    }

    /// Checks the proof a signed-in caller gives again before a change that adds or removes a
    /// way into the account: the password, through the re-check path of a password change
    /// (its limits, the account's failure run, the session ended after repeated wrong ones),
    /// or a current TOTP code or an unused recovery code (the same limits and failure run;
    /// either is spent). A stolen access token alone cannot pass it.
    ///
    /// # Errors
    /// [`MfaError::WrongPassword`]; [`MfaError::InvalidCode`] for a wrong, replayed or
    /// malformed code; [`MfaError::Throttled`].
    pub(super) async fn prove(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<(), MfaError> {
        let user = &principal.user;
        match proof {
            Proof::Password(password) => {
                if !self
                    .credentials
                    .recheck_password(principal, password, client)
                    .await?
                {
                    return Err(MfaError::WrongPassword);
                }
            }
            Proof::Code(code) => {
                self.credentials.throttle_recheck(user, client).await?;
                self.credentials.admit_check(user.email.key()).await?;
                let offered = if TotpCode::parse(code).is_some() {
                    SecondFactor::Code(code)
                } else {
                    SecondFactor::RecoveryCode(code)
                };
                if self.check_proof(user, offered).await?.is_none() {
                    self.credentials.record_wrong(user.email.key()).await?;
                    return Err(MfaError::InvalidCode);
                }
                self.credentials.clear_failures(user.email.key()).await?;
            }
        }
        Ok(())
    }
}

/// Second-factor settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaPolicy {
    /// The issuer authenticator apps show next to the account.
    pub issuer: String,
    /// How long the second step of a login may wait.
    pub challenge_ttl: TimeDelta,
    /// Wrong codes that spend a pending login.
    pub max_failures: u32,
    /// How long a WebAuthn ceremony may take.
    pub ceremony_ttl: TimeDelta,
}

/// A login waiting for its second step.
#[derive(Debug)]
pub struct PendingLogin {
    /// The opaque `mfa_token` that names it.
    pub mfa_token: String,
    /// The ways it can be completed (`totp`, `recovery_code`).
    pub methods: Vec<&'static str>,
}

/// The proof offered at the second step, or to remove a factor.
#[derive(Debug)]
pub enum SecondFactor<'a> {
    Code(&'a str),
    RecoveryCode(&'a str),
}

/// Why a second-factor use case failed.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// A wrong, replayed or malformed code or recovery code; for the second step of a login
    /// also a spent, expired or unknown `mfa_token`.
    #[error("invalid code")]
    InvalidCode,
    #[error("TOTP already enabled")]
    AlreadyEnabled,
    /// There is no TOTP factor to confirm or remove.
    #[error("TOTP not enabled")]
    NotEnabled,
    #[error("incorrect password")]
    WrongPassword,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a signed-in caller proves themselves with again (see `SecondStep::prove`).
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The account's password.
    Password(&'a str),
    /// A current TOTP code, or an unused recovery code.
    Code(&'a str),
}

/// The binding of a user's sealed TOTP secret: a sealed secret copied to another user's row
/// does not open.
pub(super) fn totp_binding(user: UserId) -> String {
    format!("totp-secret user:{user}")
}

impl Default for MfaPolicy {
    fn default() -> Self {
        Self {
            issuer: "Portcullis".into(),
            challenge_ttl: TimeDelta::minutes(5),
            max_failures: 5,
            ceremony_ttl: TimeDelta::minutes(5),
        }
    }
}

impl From<LoginError> for MfaError {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::Throttled(t) => Self::Throttled(t),
            LoginError::Backend(b) => Self::Backend(b),
            // The user changed since the password step: the challenge vouches for nothing.
            LoginError::InvalidCredentials
            | LoginError::Inactive
            | LoginError::Unverified
            | LoginError::SecondFactorRequired => Self::InvalidCode,
        }
    }
}
