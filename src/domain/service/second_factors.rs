//! The second factor of a login: TOTP enrolment and removal, recovery codes, and the second
//! step that turns a pending login into a session.
//!
//! A right password of an enrolled user does not clear the account's failure run (see
//! [`Accounts::login`]): only the second step does. So wrong codes add up across logins,
//! and whoever holds the password alone meets the failure delay like a password guesser.

use std::sync::Arc;

use super::credentials::{Credentials, login_session_error};
use super::notices::Mailing;
use super::opening::SessionOpener;
use super::second_step::{MfaError, Proof, SecondFactor, SecondStep, totp_binding};
use crate::domain::mfa::{
    AuthMethod, FactorRemoval, Factors, RecoveryCodes, TOTP_DESCRIBED, TotpCode, TotpSecret,
};
use crate::domain::ports::{Clock, FactorRepository, SecretSealer, UserRepository};
use crate::domain::{
    AccountChange, AuditKind, AuthPolicy, BackendError, ClientInfo, Condition, Edit, FactorChange,
    MailJob, NewAuditEvent, Principal, TokenPair, User, UserId,
};

/// A new TOTP secret, waiting for a first code.
#[derive(Debug)]
pub struct TotpEnrolment {
    pub secret: TotpSecret,
    /// The `otpauth://` URI for an app (and the console's QR code).
    pub uri: String,
}

/// TOTP, recovery codes, and the second step of a login.
pub struct SecondFactors {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) sealer: Arc<dyn SecretSealer>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) second_step: Arc<SecondStep>,
    pub(super) opener: Arc<SessionOpener>,
    pub(super) mailing: Arc<Mailing>,
}

impl SecondFactors {
    /// Which second factors user `id` holds.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn factors(&self, id: UserId) -> Result<Factors, BackendError> {
        self.second_step.factors(id).await
    }

    /// The second step of a login: checks a code or a recovery code against the pending login
    /// `mfa_token`, and opens the session. A wrong code is a failed login of the account
    /// (limits, failure delay) and does not spend the pending login until the
    /// `max_failures`th; success spends it.
    ///
    /// # Errors
    /// [`MfaError::InvalidCode`] for a wrong, replayed or malformed code, and for a spent,
    /// expired or unknown `mfa_token` (or one whose user changed since);
    /// [`MfaError::Throttled`] over a limit or during the failure delay.
    pub async fn complete_login(
        &self,
        mfa_token: &str,
        proof: SecondFactor<'_>,
        client: ClientInfo,
    ) -> Result<TokenPair, MfaError> {
        let (user, method) = self
            .second_step
            .check_second_factor(mfa_token, proof, &client)
            .await?;
        self.opener
            .start_session(&user, client, vec![AuthMethod::Password, method])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// Starts a TOTP enrolment for the caller: a new secret, stored sealed and unconfirmed
    /// (replacing an unconfirmed one), to be confirmed by a first code. The caller proves
    /// themselves again first (see `SecondStep::prove`): an access token alone adds no way
    /// in.
    ///
    /// # Errors
    /// [`MfaError::AlreadyEnabled`] when the caller has a confirmed factor;
    /// [`MfaError::WrongPassword`] and the other failures of `SecondStep::prove`.
    pub async fn begin_totp(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<TotpEnrolment, MfaError> {
        let user = &principal.user;
        let enabled = self
            .factors
            .find_totp(user.id)
            .await?
            .is_some_and(|factor| factor.confirmed_at.is_some());
        if enabled {
            return Err(MfaError::AlreadyEnabled);
        }
        self.second_step.prove(principal, proof, client).await?;
        let secret = TotpSecret::generate();
        let sealed = self
            .sealer
            .seal(secret.as_bytes(), &totp_binding(user.id))?;
        if !self
            .factors
            .store_pending_totp(user.id, sealed, self.clock.now())
            .await?
        {
            return Err(MfaError::AlreadyEnabled);
        }
        let uri = secret.otpauth_uri(&self.policy.mfa.issuer, user.email.as_str());
        Ok(TotpEnrolment { secret, uri })
    }

    /// Confirms the caller's pending TOTP secret with a current code, and hands out ten new
    /// recovery codes (their hashes replace any earlier ones).
    ///
    /// # Errors
    /// [`MfaError::InvalidCode`] for a wrong or malformed code, or when no enrolment is
    /// pending; [`MfaError::AlreadyEnabled`] when it is confirmed already.
    pub async fn confirm_totp(
        &self,
        principal: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Vec<String>, MfaError> {
        let user = &principal.user;
        self.credentials.throttle_recheck(user, client).await?;
        let factor = self
            .factors
            .find_totp(user.id)
            .await?
            .ok_or(MfaError::InvalidCode)?;
        if factor.confirmed_at.is_some() {
            return Err(MfaError::AlreadyEnabled);
        }
        let code = TotpCode::parse(code).ok_or(MfaError::InvalidCode)?;
        let secret = self
            .second_step
            .open_secret(user.id, &factor.sealed_secret)?;
        let step = secret
            .matching_step(&code, self.clock.now())
            .ok_or(MfaError::InvalidCode)?;
        let recovery = RecoveryCodes::generate();
        let (audit, notice) = self
            .totp_moved(user, AuditKind::TotpEnabled, FactorChange::Added, client)
            .await?;
        // As a reset is, on the credential version: the factor is confirmed before a reset
        // (which then sees it) or not at all.
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::Current {
                credential_version: user.credential_version,
            })
            .when(Condition::PendingTotpIs(factor.sealed_secret))
            .then(Edit::ConfirmTotp {
                step,
                recovery: recovery.hashes,
                added_unverified: !user.email_verified,
            })
            .recording(audit)
            .mailing(notice);
        if !self.users.apply(change).await?.kept() {
            // A second enrolment replaced the secret, another confirmation won, or the
            // password was reset or changed meanwhile.
            return Err(MfaError::InvalidCode);
        }
        Ok(recovery.codes)
    }

    /// Removes the caller's TOTP factor and recovery codes, on a current code, a recovery code
    /// or the password (see `SecondStep::prove`).
    ///
    /// # Errors
    /// [`MfaError::NotEnabled`] without a confirmed factor; [`MfaError::InvalidCode`] for a
    /// wrong code; [`MfaError::WrongPassword`]; [`MfaError::Throttled`].
    pub async fn disable_totp(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<(), MfaError> {
        let user = &principal.user;
        let enabled = self
            .factors
            .find_totp(user.id)
            .await?
            .is_some_and(|factor| factor.confirmed_at.is_some());
        if !enabled {
            return Err(MfaError::NotEnabled);
        }
        self.second_step.prove(principal, proof, client).await?;
        let (audit, notice) = self
            .totp_moved(user, AuditKind::TotpDisabled, FactorChange::Removed, client)
            .await?;
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::HasFactors { passkeys: false })
            .then(Edit::RemoveFactors(FactorRemoval {
                totp: true,
                passkeys: Vec::new(),
            }))
            .recording(audit)
            .mailing(notice);
        self.users.apply(change).await?;
        Ok(())
    }

    /// The audit event and the owner's notice of TOTP being turned on or off.
    async fn totp_moved(
        &self,
        user: &User,
        kind: AuditKind,
        change: FactorChange,
        client: &ClientInfo,
    ) -> Result<(NewAuditEvent, Option<MailJob>), BackendError> {
        let audit = NewAuditEvent::new(kind, Some(user.id), client, self.clock.now());
        let notice = self
            .mailing
            .factor_notice(
                user,
                change,
                vec![TOTP_DESCRIBED.into()],
                client.ip.as_deref(),
            )
            .await?;
        Ok((audit, notice))
    }
}

#[cfg(test)]
mod tests;
