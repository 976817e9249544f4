//! Proving an address, recovering a password, moving an account to another address, and the
//! delivery of the mail these need.
//!
//! The routes that ask for mail only queue a job (after the same checks for every address) and
//! answer; [`MailDelivery::deliver_mail`], run by a worker, turns jobs into mail. Tokens are
//! drawn at delivery, so no plaintext token ever waits in storage.

use std::sync::Arc;

use chrono::TimeDelta;

use super::credentials::Credentials;
use super::limits::{Action, Guard, LimitPolicy, Throttled, subject_key};
use super::links::{Links, RedeemError};
use super::notices::Mailing;
use crate::domain::mfa::{FactorRemoval, TOTP_DESCRIBED};
use crate::domain::ports::{
    Clock, FactorRepository, MailOutbox, PasswordHasher, RateLimiter, UserRepository,
};
use crate::domain::{
    AccountChange, Applied, AuditKind, BackendError, ClientInfo, Condition, Edit, Email,
    FactorChange, LinkTokenHash, LinkTokenKind, MailJob, NewAuditEvent, Password, Principal,
    Refusal, User,
};

/// Attempts at a reset whose factors to remove keep changing under it.
const RESET_ATTEMPTS: usize = 3;

/// How mail and its links behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailPolicy {
    /// Where the service is reached from outside; `{public_url}` in the link templates.
    pub public_url: String,
    /// Link templates, with `{public_url}` and `{token}`.
    pub reset_link: String,
    pub verify_link: String,
    pub email_change_link: String,
    pub reset_ttl: TimeDelta,
    /// For the set-password link of a user an admin created.
    pub invitation_ttl: TimeDelta,
    /// For verification and email-change links.
    pub verification_ttl: TimeDelta,
    /// Refuse logins of unverified addresses (after the right password).
    pub require_verified: bool,
    /// Send a verification link on registration.
    pub verify_on_register: bool,
    /// Attempts at delivering one job before it is given up.
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles with each further one.
    pub retry_base: TimeDelta,
}

impl Default for MailPolicy {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8000".into(),
            reset_link: "{public_url}/console/reset?token={token}".into(),
            verify_link: "{public_url}/console/verify?token={token}".into(),
            email_change_link: "{public_url}/console/email?token={token}".into(),
            reset_ttl: TimeDelta::minutes(30),
            invitation_ttl: TimeDelta::hours(72),
            verification_ttl: TimeDelta::hours(24),
            require_verified: false,
            verify_on_register: true,
            max_attempts: 8,
            retry_base: TimeDelta::seconds(30),
        }
    }
}

/// Why a request for mail (reset, verification, email change) was refused. Each route answers
/// only the variants it can meet.
#[derive(Debug, thiserror::Error)]
pub enum MailRequestError {
    /// No mail transport is configured: the same answer for every address.
    #[error("mail is not configured")]
    NotConfigured,
    #[error("email already verified")]
    AlreadyVerified,
    #[error("current password is incorrect")]
    WrongPassword,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Getting back in and proving an address: reset, verification, email change.
pub struct Recovery {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) outbox: Arc<dyn MailOutbox>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) hasher: Arc<dyn PasswordHasher>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) limits: LimitPolicy,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) guard: Arc<Guard>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) mailing: Arc<Mailing>,
    pub(super) links: Arc<Links>,
}

impl Recovery {
    fn require_mail(&self) -> Result<(), MailRequestError> {
        if self.mailing.mail_configured() {
            Ok(())
        } else {
            Err(MailRequestError::NotConfigured)
        }
    }

    /// Queues a reset link for the account at `email`. Registered, unregistered, inactive or
    /// unverified: the same checks, the same writes, the same answer; over the address's mail
    /// budget, the same answer and nothing queued.
    ///
    /// # Errors
    /// [`MailRequestError::NotConfigured`] without a transport; `Throttled` over the mail
    /// limits of the client address or of the email.
    pub async fn forgot_password(
        &self,
        email: Email,
        client: &ClientInfo,
    ) -> Result<(), MailRequestError> {
        self.require_mail()?;
        self.guard
            .throttle(Action::Mail, client.ip.as_deref(), Some(email.key()))
            .await?;
        if self.guard.within_mail_budget(&[&email], None).await? {
            let job = MailJob::PasswordReset {
                email,
                requested_by: Some(client.clone()),
            };
            self.outbox.enqueue_mail(job, self.clock.now()).await?;
        }
        Ok(())
    }

    /// Sets a new password with a reset link's token, asked for by `client`. Every session of
    /// the user ends, every other reset token and any pending email change are spent, the
    /// address counts as verified, and the account's failure delay is cleared.
    ///
    /// The link proves the address, which nothing did before if it was unverified: whoever
    /// registered the address first (not its owner, perhaps) may have added second factors,
    /// and the owner taking the account back must not inherit them. So the second factors
    /// added while the address was unverified, and an enrolment never confirmed, are removed
    /// with the reset, and a mail to the address names each removed factor.
    ///
    /// # Errors
    /// [`RedeemError::InvalidToken`] for a token that is unknown, spent, expired, of another
    /// kind, or whose user was deactivated or changed since.
    pub async fn reset_password(
        &self,
        token: &str,
        new: Password,
        client: &ClientInfo,
    ) -> Result<(), RedeemError> {
        let record = self
            .links
            .usable_token(token, LinkTokenKind::PasswordReset)
            .await?;
        let user = &record.user;
        self.credentials
            .check_new_password(&new, &user.email, user.full_name.as_ref())?;
        let hash = self.hasher.hash(&new).await?;
        let token = LinkTokenHash::of(token);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (removal, removed) = self.factors_added_unverified(user).await?;
            let now = self.clock.now();
            let mut audit =
                NewAuditEvent::new(AuditKind::PasswordReset, Some(user.id), client, now);
            if !removed.is_empty() {
                audit = audit.with("factors_removed", removed.join(", "));
            }
            let notice = self
                .mailing
                .factor_notice(
                    user,
                    FactorChange::RemovedByReset,
                    removed,
                    client.ip.as_deref(),
                )
                .await?;
            let change = AccountChange::of(user.id, now)
                .when(Condition::Current {
                    credential_version: user.credential_version,
                })
                .when(Condition::SpendsToken(token.clone()))
                .when(Condition::UnverifiedFactorsAre(removal.clone()))
                .new_password(hash.clone(), None)
                .then(Edit::SetEmailVerified(true))
                .then(Edit::SpendTokens(vec![
                    LinkTokenKind::PasswordReset,
                    LinkTokenKind::EmailChange,
                ]))
                .then(Edit::RemoveFactors(removal))
                .recording(audit)
                .mailing(notice);
            match self.users.apply(change).await? {
                Applied::Refused(Refusal::FactorsChanged) if attempts < RESET_ATTEMPTS => {}
                Applied::Refused(Refusal::FactorsChanged) => {
                    return Err(BackendError::unexpected(
                        "the factors to remove kept changing during a reset",
                    )
                    .into());
                }
                Applied::Refused(_) => return Err(RedeemError::InvalidToken),
                Applied::Done(_) | Applied::Deleted => break,
            }
        }
        if self.limits.enabled {
            self.limiter
                .clear_failures(&subject_key("failures", record.user.email.key()))
                .await?;
        }
        Ok(())
    }

    /// Queues a verification link for the caller's address.
    ///
    /// # Errors
    /// [`MailRequestError::AlreadyVerified`]; `NotConfigured`; `Throttled`.
    pub async fn request_verification(
        &self,
        principal: &Principal,
        client: &ClientInfo,
    ) -> Result<(), MailRequestError> {
        self.require_mail()?;
        if principal.user.email_verified {
            return Err(MailRequestError::AlreadyVerified);
        }
        let user_id = principal.user.id;
        self.guard
            .throttle(
                Action::Mail,
                client.ip.as_deref(),
                Some(&user_id.to_string()),
            )
            .await?;
        if self
            .guard
            .within_mail_budget(&[&principal.user.email], None)
            .await?
        {
            self.outbox
                .enqueue_mail(MailJob::Verification { user_id }, self.clock.now())
                .await?;
        }
        Ok(())
    }

    /// Marks an address verified with its link's token.
    ///
    /// # Errors
    /// [`RedeemError::InvalidToken`] as for a reset.
    pub async fn verify_email(&self, token: &str) -> Result<User, RedeemError> {
        let record = self
            .links
            .usable_token(token, LinkTokenKind::Verification)
            .await?;
        let now = self.clock.now();
        // Only the address the link was sent to is proved by it.
        let change = AccountChange::of(record.user.id, now)
            .when(Condition::AddressIs(record.email))
            .when(Condition::SpendsToken(LinkTokenHash::of(token)))
            .then(Edit::SetEmailVerified(true))
            .then(Edit::Touch)
            .recording(
                self.links
                    .event(AuditKind::EmailVerified, &record.user, now),
            );
        self.users
            .apply(change)
            .await?
            .user()
            .map_err(|_| RedeemError::InvalidToken)
    }

    /// Asks, with the current password, to move the caller's account to `new_email`: a link
    /// goes to the new address and a notice to the old one.
    ///
    /// # Errors
    /// [`MailRequestError::WrongPassword`] (which counts in the account's failure run);
    /// `NotConfigured`; `Throttled`.
    pub async fn request_email_change(
        &self,
        principal: &Principal,
        new_email: Email,
        current_password: &str,
        client: &ClientInfo,
    ) -> Result<(), MailRequestError> {
        self.require_mail()?;
        let user_id = principal.user.id;
        self.guard
            .throttle(
                Action::Mail,
                client.ip.as_deref(),
                Some(&user_id.to_string()),
            )
            .await?;
        if !self
            .credentials
            .recheck_password(principal, current_password, client)
            .await?
        {
            return Err(MailRequestError::WrongPassword);
        }
        // Both addresses hear of it (the link or the notice of an address in use, and the
        // notice to the old one): both budgets must allow it, or nothing goes.
        if !self
            .guard
            .within_mail_budget(&[&new_email, &principal.user.email], None)
            .await?
        {
            return Ok(());
        }
        let job = MailJob::EmailChange {
            user_id,
            new_email,
            keep: principal.session_id,
        };
        self.outbox.enqueue_mail(job, self.clock.now()).await?;
        Ok(())
    }

    /// Moves an account to the address its link's token was sent to. Every session of the
    /// user ends but the one that asked.
    ///
    /// # Errors
    /// [`RedeemError::InvalidToken`] as for a reset; [`RedeemError::EmailTaken`] when the new
    /// address was registered meanwhile.
    pub async fn confirm_email_change(&self, token: &str) -> Result<User, RedeemError> {
        let record = self
            .links
            .usable_token(token, LinkTokenKind::EmailChange)
            .await?;
        let new_email = record.new_email.ok_or(RedeemError::InvalidToken)?;
        let now = self.clock.now();
        let audit = self
            .links
            .event(AuditKind::EmailChanged, &record.user, now)
            .with("from", record.user.email.as_str())
            .with("to", new_email.as_str());
        let change = AccountChange::of(record.user.id, now)
            .when(Condition::Current {
                credential_version: record.user.credential_version,
            })
            .when(Condition::SpendsToken(LinkTokenHash::of(token)))
            .then(Edit::SetEmail(new_email))
            .then(Edit::SetEmailVerified(true))
            .then(Edit::BumpCredentialVersion)
            .then(Edit::Touch)
            .then(Edit::EndSessions {
                keep: record.keep_session,
            })
            .then(Edit::SpendTokens(vec![
                LinkTokenKind::Verification,
                LinkTokenKind::EmailChange,
            ]))
            .recording(audit);
        self.users
            .apply(change)
            .await?
            .user()
            .map_err(|refusal| match refusal {
                Refusal::AddressTaken => RedeemError::EmailTaken,
                _ => RedeemError::InvalidToken,
            })
    }

    /// The operator's reset link for the user at `email`, for when mail is down.
    ///
    /// # Errors
    /// [`RedeemError::InvalidToken`] when nobody active has that address.
    pub async fn reset_link(&self, email: &Email) -> Result<String, RedeemError> {
        let user = self
            .users
            .find_user_by_email(email)
            .await?
            .filter(|user| user.is_active)
            .ok_or(RedeemError::InvalidToken)?;
        let (link, _) = self
            .links
            .issue_link(
                LinkTokenKind::PasswordReset,
                &user,
                Some(self.links.reset_requested(&user)),
            )
            .await?;
        Ok(link)
    }

    /// What a reset removes of `user`'s second factors: those added while the address was
    /// unverified, and an enrolment never confirmed; with how a notice names the factors.
    async fn factors_added_unverified(
        &self,
        user: &User,
    ) -> Result<(FactorRemoval, Vec<String>), BackendError> {
        let mut removal = FactorRemoval::default();
        let mut named = Vec::new();
        if let Some(totp) = self.factors.find_totp(user.id).await? {
            let confirmed = totp.confirmed_at.is_some();
            removal.totp = !confirmed || totp.added_unverified;
            if confirmed && totp.added_unverified {
                named.push(TOTP_DESCRIBED.to_owned());
            }
        }
        for passkey in self.factors.list_passkeys(user.id).await? {
            if passkey.added_unverified {
                named.push(passkey.described());
                removal.passkeys.push(passkey.id);
            }
        }
        Ok((removal, named))
    }
}

#[cfg(test)]
mod tests;
