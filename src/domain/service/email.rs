//! Proving an address, recovering a password, moving an account to another address, and the
//! delivery of the mail these need.
//!
//! The routes that ask for mail only queue a job (after the same checks for every address) and
//! answer; [`AuthService::deliver_mail`], run by a worker, turns jobs into mail. Tokens are
//! drawn at delivery, so no plaintext token ever waits in storage.

use chrono::TimeDelta;

use super::AuthService;
use super::limits::{Action, Throttled, subject_key};
use crate::domain::mfa::{FactorRemoval, TOTP_DESCRIBED};
use crate::domain::ports::MailError;
use crate::domain::{
    AccountChange, Applied, AuditKind, BackendError, ClientInfo, Condition, Edit, Email,
    EmailTokenHash, EmailTokenKind, FactorChange, Mail, MailJob, MailKind, NewAuditEvent,
    NewEmailToken, Password, PasswordError, Principal, QueuedMail, Refusal, User,
};

/// The longest token worth looking up: ours are 43 characters.
const MAX_TOKEN_LEN: usize = 128;
/// Attempts at a reset whose factors to remove keep changing under it.
const RESET_ATTEMPTS: usize = 3;
/// Jobs one worker claims at a time.
const CLAIM_BATCH: u32 = 16;
/// How long a claimed job is the claimer's: far longer than one delivery may take.
const CLAIM_LEASE: TimeDelta = TimeDelta::minutes(5);
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: TimeDelta = TimeDelta::hours(1);

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

/// Why a link's token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Unknown, spent, expired, of another kind, or its user changed: one answer for all.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new address of an email change was taken meanwhile.
    #[error("email already registered")]
    EmailTaken,
    /// The new password of a reset breaks the rules (nothing is spent then).
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What became of one job, for the worker's metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The job's name: `password_reset`, `verification`, `invitation`, `email_change` or
    /// `factor_notice`.
    pub job: &'static str,
    pub outcome: DeliveryOutcome,
    /// From queueing to this outcome.
    pub waited: TimeDelta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Every mail of the job was handed over.
    Sent,
    /// Nothing to send: an unknown or inactive account, a verified address, a user gone.
    Dropped,
    /// A mail failed; the job is due again later.
    Retrying,
    /// A mail failed for good, or too often; the job is kept as failed.
    Failed,
}

fn job_name(job: &MailJob) -> &'static str {
    match job {
        MailJob::PasswordReset { .. } => "password_reset",
        MailJob::Verification { .. } => "verification",
        MailJob::Invitation { .. } => "invitation",
        MailJob::EmailChange { .. } => "email_change",
        MailJob::FactorNotice { .. } => "factor_notice",
    }
}

impl AuthService {
    /// Whether mail can be sent at all.
    pub fn mail_configured(&self) -> bool {
        self.mailer.is_some()
    }

    fn require_mail(&self) -> Result<(), MailRequestError> {
        if self.mail_configured() {
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
        self.throttle(Action::Mail, client.ip.as_deref(), Some(email.key()))
            .await?;
        if self.within_mail_budget(&[&email], None).await? {
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
            .usable_token(token, EmailTokenKind::PasswordReset)
            .await?;
        let user = &record.user;
        self.check_new_password(&new, &user.email, user.full_name.as_ref())?;
        let hash = self.hasher.hash(&new).await?;
        let token = EmailTokenHash::of(token);
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
                    EmailTokenKind::PasswordReset,
                    EmailTokenKind::EmailChange,
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
        self.throttle(
            Action::Mail,
            client.ip.as_deref(),
            Some(&user_id.to_string()),
        )
        .await?;
        if self
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
            .usable_token(token, EmailTokenKind::Verification)
            .await?;
        let now = self.clock.now();
        // Only the address the link was sent to is proved by it.
        let change = AccountChange::of(record.user.id, now)
            .when(Condition::AddressIs(record.email))
            .when(Condition::SpendsToken(EmailTokenHash::of(token)))
            .then(Edit::SetEmailVerified(true))
            .then(Edit::Touch)
            .recording(self.event(AuditKind::EmailVerified, &record.user, now));
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
        self.throttle(
            Action::Mail,
            client.ip.as_deref(),
            Some(&user_id.to_string()),
        )
        .await?;
        if !self
            .recheck_password(principal, current_password, client)
            .await?
        {
            return Err(MailRequestError::WrongPassword);
        }
        // Both addresses hear of it (the link or the notice of an address in use, and the
        // notice to the old one): both budgets must allow it, or nothing goes.
        if !self
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
            .usable_token(token, EmailTokenKind::EmailChange)
            .await?;
        let new_email = record.new_email.ok_or(RedeemError::InvalidToken)?;
        let now = self.clock.now();
        let audit = self
            .event(AuditKind::EmailChanged, &record.user, now)
            .with("from", record.user.email.as_str())
            .with("to", new_email.as_str());
        let change = AccountChange::of(record.user.id, now)
            .when(Condition::Current {
                credential_version: record.user.credential_version,
            })
            .when(Condition::SpendsToken(EmailTokenHash::of(token)))
            .then(Edit::SetEmail(new_email))
            .then(Edit::SetEmailVerified(true))
            .then(Edit::BumpCredentialVersion)
            .then(Edit::Touch)
            .then(Edit::EndSessions {
                keep: record.keep_session,
            })
            .then(Edit::SpendTokens(vec![
                EmailTokenKind::Verification,
                EmailTokenKind::EmailChange,
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
            .issue_link(
                EmailTokenKind::PasswordReset,
                &user,
                Some(self.reset_requested(&user)),
            )
            .await?;
        Ok(link)
    }

    /// Sends the operator's test message to `to` at once, bypassing the outbox.
    ///
    /// # Errors
    /// [`MailError`] from the transport; `Rejected` when none is configured.
    pub async fn send_test_mail(&self, to: &Email) -> Result<String, MailError> {
        let mailer = self
            .mailer
            .as_ref()
            .ok_or_else(|| MailError::Rejected("mail is not configured".into()))?;
        mailer
            .send(&Mail {
                kind: MailKind::Test,
                to: to.as_str().to_owned(),
                link: None,
                new_email: None,
                valid_for: None,
                factors: None,
            })
            .await
    }

    async fn usable_token(
        &self,
        token: &str,
        kind: EmailTokenKind,
    ) -> Result<crate::domain::EmailTokenRecord, RedeemError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(RedeemError::InvalidToken);
        }
        self.links
            .find_email_token(&EmailTokenHash::of(token))
            .await?
            .filter(|record| record.usable_for(kind, self.clock.now()))
            .ok_or(RedeemError::InvalidToken)
    }

    /// Stores a fresh token of `kind` for `user`, recording `audit` with it when given, and
    /// returns its link and lifetime.
    async fn issue_link(
        &self,
        kind: EmailTokenKind,
        user: &User,
        audit: Option<NewAuditEvent>,
    ) -> Result<(String, TimeDelta), BackendError> {
        let token = NewEmailToken::generate(kind, user, self.clock.now(), self.ttl_of(kind));
        self.issue_token(token, audit).await
    }

    async fn issue_token(
        &self,
        token: NewEmailToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(String, TimeDelta), BackendError> {
        let policy = &self.policy.mail;
        let template = match token.kind {
            EmailTokenKind::PasswordReset => &policy.reset_link,
            EmailTokenKind::Verification => &policy.verify_link,
            EmailTokenKind::EmailChange => &policy.email_change_link,
        };
        let link = crate::domain::mail::link(template, &policy.public_url, &token.secret);
        let ttl = token.expires_at - token.created_at;
        self.links.store_email_token(token, audit).await?;
        Ok((link, ttl))
    }

    /// `kind` of `user` at `now`, by a link (no client of a request to name).
    fn event(
        &self,
        kind: AuditKind,
        user: &User,
        now: chrono::DateTime<chrono::Utc>,
    ) -> NewAuditEvent {
        NewAuditEvent::new(kind, Some(user.id), &ClientInfo::default(), now)
    }

    /// `password.reset_requested` for `user`, now, by nobody named yet.
    fn reset_requested(&self, user: &User) -> NewAuditEvent {
        self.event(AuditKind::PasswordResetRequested, user, self.clock.now())
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

    fn ttl_of(&self, kind: EmailTokenKind) -> TimeDelta {
        match kind {
            EmailTokenKind::PasswordReset => self.policy.mail.reset_ttl,
            EmailTokenKind::Verification | EmailTokenKind::EmailChange => {
                self.policy.mail.verification_ttl
            }
        }
    }

    /// How many mail jobs wait, and how many were given up.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn mail_depth(&self) -> Result<crate::domain::OutboxDepth, BackendError> {
        self.outbox.mail_depth().await
    }

    /// Delivers the jobs that are due: claims a batch, turns each into mail, hands it to the
    /// mailer, and settles it. Run periodically by every instance; a job is claimed by one.
    ///
    /// # Errors
    /// [`BackendError`] when the outbox cannot be read; a job's own failure is its outcome.
    pub async fn deliver_mail(&self) -> Result<Vec<Delivery>, BackendError> {
        let Some(mailer) = &self.mailer else {
            return Ok(Vec::new());
        };
        let now = self.clock.now();
        let claimed = self
            .outbox
            .claim_mail(now, CLAIM_LEASE, CLAIM_BATCH)
            .await?;
        let mut deliveries = Vec::with_capacity(claimed.len());
        for queued in claimed {
            deliveries.push(self.deliver_one(mailer.as_ref(), queued).await?);
        }
        Ok(deliveries)
    }

    async fn deliver_one(
        &self,
        mailer: &dyn crate::domain::ports::Mailer,
        queued: QueuedMail,
    ) -> Result<Delivery, BackendError> {
        let job = job_name(&queued.job);
        let outcome = match self.compose(&queued.job).await {
            Err(err) => {
                self.settle_failure(&queued, &MailError::Transient(err.to_string()))
                    .await?
            }
            Ok(mails) if mails.is_empty() => {
                self.outbox.finish_mail(queued.id, self.clock.now()).await?;
                DeliveryOutcome::Dropped
            }
            Ok(mails) => {
                let mut failure = None;
                for mail in &mails {
                    if let Err(err) = mailer.send(mail).await {
                        failure = Some(err);
                        break;
                    }
                }
                match failure {
                    None => {
                        self.outbox.finish_mail(queued.id, self.clock.now()).await?;
                        DeliveryOutcome::Sent
                    }
                    Some(err) => self.settle_failure(&queued, &err).await?,
                }
            }
        };
        Ok(Delivery {
            job,
            outcome,
            waited: self.clock.now() - queued.queued_at,
        })
    }

    /// Retries a failed job later, with a doubling wait, or gives it up.
    async fn settle_failure(
        &self,
        queued: &QueuedMail,
        err: &MailError,
    ) -> Result<DeliveryOutcome, BackendError> {
        let attempts = queued.attempts.saturating_add(1);
        let policy = &self.policy.mail;
        if matches!(err, MailError::Rejected(_)) || attempts >= policy.max_attempts {
            tracing::error!(mail_id = queued.id, job = job_name(&queued.job), attempts, error = %err, "mail given up");
            self.outbox
                .fail_mail(queued.id, attempts, &err.to_string())
                .await?;
            return Ok(DeliveryOutcome::Failed);
        }
        let retry_at = self.clock.now() + retry_delay(policy.retry_base, attempts);
        tracing::warn!(mail_id = queued.id, job = job_name(&queued.job), attempts, error = %err, "mail not delivered; will retry");
        self.outbox
            .retry_mail(queued.id, attempts, retry_at, &err.to_string())
            .await?;
        Ok(DeliveryOutcome::Retrying)
    }

    /// The mail a job amounts to now: none when there is nobody to write to.
    async fn compose(&self, job: &MailJob) -> Result<Vec<Mail>, BackendError> {
        match job {
            MailJob::PasswordReset {
                email,
                requested_by,
            } => {
                let Some(user) = self
                    .users
                    .find_user_by_email(email)
                    .await?
                    .filter(|user| user.is_active)
                else {
                    return Ok(Vec::new());
                };
                // Recorded here, not when asked, so that asking costs the same for every
                // address; an admin's request is on record already.
                let audit = requested_by
                    .as_ref()
                    .map(|client| self.reset_requested(&user).from_client(client));
                // To the address on the account, never to the look-alike that was typed.
                let (link, ttl) = self
                    .issue_link(EmailTokenKind::PasswordReset, &user, audit)
                    .await?;
                Ok(vec![link_mail(MailKind::PasswordReset, &user, link, ttl)])
            }
            MailJob::Invitation { user_id } => {
                let Some(user) = self
                    .users
                    .find_user_by_id(*user_id)
                    .await?
                    .filter(|user| user.is_active)
                else {
                    return Ok(Vec::new());
                };
                // A reset token that lives longer: the account waits for its first password.
                let token = NewEmailToken::generate(
                    EmailTokenKind::PasswordReset,
                    &user,
                    self.clock.now(),
                    self.policy.mail.invitation_ttl,
                );
                let (link, ttl) = self
                    .issue_token(token, Some(self.reset_requested(&user)))
                    .await?;
                Ok(vec![link_mail(MailKind::Invitation, &user, link, ttl)])
            }
            MailJob::Verification { user_id } => {
                let Some(user) = self
                    .users
                    .find_user_by_id(*user_id)
                    .await?
                    .filter(|user| user.is_active && !user.email_verified)
                else {
                    return Ok(Vec::new());
                };
                let (link, ttl) = self
                    .issue_link(EmailTokenKind::Verification, &user, None)
                    .await?;
                Ok(vec![link_mail(MailKind::Verification, &user, link, ttl)])
            }
            MailJob::EmailChange {
                user_id,
                new_email,
                keep,
            } => {
                let Some(user) = self
                    .users
                    .find_user_by_id(*user_id)
                    .await?
                    .filter(|user| user.is_active && user.email != *new_email)
                else {
                    return Ok(Vec::new());
                };
                let notice = Mail {
                    new_email: Some(new_email.as_str().to_owned()),
                    ..notice_mail(MailKind::EmailChangeNotice, &user)
                };
                if let Some(owner) = self.users.find_user_by_email(new_email).await? {
                    return Ok(vec![notice, notice_mail(MailKind::EmailInUse, &owner)]);
                }
                let mut token = NewEmailToken::generate(
                    EmailTokenKind::EmailChange,
                    &user,
                    self.clock.now(),
                    self.policy.mail.verification_ttl,
                );
                token.new_email = Some(new_email.clone());
                token.keep_session = *keep;
                let (link, ttl) = self.issue_token(token, None).await?;
                let confirm = Mail {
                    kind: MailKind::EmailChange,
                    to: new_email.as_str().to_owned(),
                    link: Some(link),
                    valid_for: Some(ttl),
                    ..notice_mail(MailKind::EmailChange, &user)
                };
                Ok(vec![notice, confirm])
            }
            MailJob::FactorNotice {
                user_id,
                change,
                factors,
            } => {
                let Some(user) = self
                    .users
                    .find_user_by_id(*user_id)
                    .await?
                    .filter(|user| user.is_active)
                else {
                    return Ok(Vec::new());
                };
                Ok(vec![Mail {
                    factors: Some(factors.join(", ")),
                    ..notice_mail(change.mail_kind(), &user)
                }])
            }
        }
    }
}

/// A mail of `kind` to `user`'s address, carrying nothing yet.
fn notice_mail(kind: MailKind, user: &User) -> Mail {
    Mail {
        kind,
        to: user.email.as_str().to_owned(),
        link: None,
        new_email: None,
        valid_for: None,
        factors: None,
    }
}

fn link_mail(kind: MailKind, user: &User, link: String, ttl: TimeDelta) -> Mail {
    Mail {
        link: Some(link),
        valid_for: Some(ttl),
        ..notice_mail(kind, user)
    }
}

/// `base * 2^(attempts - 1)`, at most an hour.
fn retry_delay(base: TimeDelta, attempts: u32) -> TimeDelta {
    let factor = 1i32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(i32::MAX);
    base.checked_mul(factor)
        .unwrap_or(MAX_RETRY_DELAY)
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use mockall::predicate::{always, eq};

    use super::super::test_support::{Mocks, session, user};
    use super::*;
    use crate::domain::mfa::FactorRemoval;
    use crate::domain::ports::MockMailer;
    use crate::domain::{EmailTokenRecord, PasswordHash, Role, SessionId, UserId};

    fn email(address: &str) -> Email {
        Email::parse(address).unwrap()
    }

    fn client() -> ClientInfo {
        ClientInfo::new(None, Some("203.0.113.7".into()))
    }

    /// Mocks with a mailer that accepts everything.
    fn with_mail() -> Mocks {
        let mut m = Mocks::new();
        let mut mailer = MockMailer::new();
        mailer.expect_send().returning(|_| Ok("250 OK".into()));
        m.mailer = Some(mailer);
        m
    }

    fn record(m: &Mocks, kind: EmailTokenKind) -> EmailTokenRecord {
        EmailTokenRecord {
            kind,
            user: user(5, Role::User, true),
            email: "user5@example.com".into(),
            new_email: None,
            keep_session: None,
            expires_at: m.now + TimeDelta::minutes(10),
            spent_at: None,
        }
    }

    fn principal() -> Principal {
        Principal {
            user: user(5, Role::User, true),
            session_id: Some(SessionId::random()),
        }
    }

    /// The user has no second factor.
    fn no_factors(m: &mut Mocks) {
        m.factors.expect_find_totp().returning(|_| Ok(None));
        m.factors
            .expect_list_passkeys()
            .returning(|_| Ok(Vec::new()));
    }

    #[tokio::test]
    async fn forgot_queues_one_job_for_any_address_and_looks_nothing_up() {
        let mut m = with_mail();
        m.users.expect_find_user_by_email().never();
        m.outbox
            .expect_enqueue_mail()
            .with(
                eq(MailJob::PasswordReset {
                    email: email("nobody@example.com"),
                    requested_by: Some(client()),
                }),
                always(),
            )
            .times(1)
            .returning(|_, _| Ok(()));
        m.service()
            .forgot_password(email("nobody@example.com"), &client())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_a_transport_forgot_is_refused_before_any_limit_or_write() {
        let mut m = Mocks::new();
        m.outbox.expect_enqueue_mail().never();
        let mut limiter = crate::domain::ports::MockRateLimiter::new();
        limiter.expect_increment().never();
        m.limiter = Some(limiter);
        let err = m
            .service()
            .forgot_password(email("ann@example.com"), &client())
            .await
            .unwrap_err();
        assert!(matches!(err, MailRequestError::NotConfigured));
    }

    #[tokio::test]
    async fn forgot_over_the_mail_limit_queues_nothing() {
        let mut m = with_mail();
        let mut limiter = crate::domain::ports::MockRateLimiter::new();
        limiter
            .expect_increment()
            .returning(|bucket, _| Ok(if bucket.starts_with("mail:") { 99 } else { 1 }));
        m.limiter = Some(limiter);
        m.outbox.expect_enqueue_mail().never();
        let err = m
            .service()
            .forgot_password(email("ann@example.com"), &client())
            .await
            .unwrap_err();
        assert!(matches!(err, MailRequestError::Throttled(_)));
    }

    #[tokio::test]
    async fn a_reset_token_is_refused_when_unknown_spent_expired_or_of_another_kind() {
        type Spoil = fn(&mut EmailTokenRecord, DateTime);
        type DateTime = chrono::DateTime<chrono::Utc>;
        let spoils: [(&str, Spoil); 5] = [
            ("another kind", |r, _| r.kind = EmailTokenKind::Verification),
            ("spent", |r, now| r.spent_at = Some(now)),
            ("expired", |r, now| r.expires_at = now),
            ("user deactivated", |r, _| r.user.is_active = false),
            ("address changed", |r, _| r.email = "old@example.com".into()),
        ];
        for (case, spoil) in spoils {
            let mut m = with_mail();
            let mut rec = record(&m, EmailTokenKind::PasswordReset);
            spoil(&mut rec, m.now);
            m.links
                .expect_find_email_token()
                .returning(move |_| Ok(Some(rec.clone())));
            m.hasher.expect_hash().never();
            m.users.expect_apply().never();
            let err = m
                .service()
                .reset_password("token", Password::parse("new password").unwrap(), &client())
                .await
                .unwrap_err();
            assert!(matches!(err, RedeemError::InvalidToken), "{case}");
        }
        let mut m = with_mail();
        m.links.expect_find_email_token().returning(|_| Ok(None));
        m.hasher.expect_hash().never();
        let err = m
            .service()
            .reset_password(
                "unknown",
                Password::parse("new password").unwrap(),
                &client(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RedeemError::InvalidToken));
        // Huge or empty tokens are not even looked up.
        let mut m = with_mail();
        m.links.expect_find_email_token().never();
        let service = m.service();
        for token in [String::new(), "x".repeat(129)] {
            assert!(matches!(
                service
                    .reset_password(&token, Password::parse("new password").unwrap(), &client())
                    .await,
                Err(RedeemError::InvalidToken)
            ));
        }
    }

    #[tokio::test]
    async fn a_reset_sets_the_password_atomically_and_clears_the_failure_delay() {
        let mut m = with_mail();
        let rec = record(&m, EmailTokenKind::PasswordReset);
        m.links
            .expect_find_email_token()
            .with(eq(EmailTokenHash::of("token")))
            .returning(move |_| Ok(Some(rec.clone())));
        m.hasher
            .expect_hash()
            .times(1)
            .returning(|_| Ok(PasswordHash::new("new-hash".into())));
        no_factors(&mut m);
        m.users
            .expect_apply()
            .withf(|change| {
                let [audit] = change.audit.as_slice() else {
                    return false;
                };
                change.user == UserId(5)
                    && change.conditions
                        == [
                            Condition::Current {
                                credential_version: 0,
                            },
                            Condition::SpendsToken(EmailTokenHash::of("token")),
                            Condition::UnverifiedFactorsAre(FactorRemoval::default()),
                        ]
                    && change.edits
                        == [
                            Edit::SetPasswordHash(PasswordHash::new("new-hash".into())),
                            Edit::BumpCredentialVersion,
                            Edit::Touch,
                            Edit::EndSessions { keep: None },
                            Edit::SetEmailVerified(true),
                            Edit::SpendTokens(vec![
                                EmailTokenKind::PasswordReset,
                                EmailTokenKind::EmailChange,
                            ]),
                            Edit::RemoveFactors(FactorRemoval::default()),
                        ]
                    && audit.kind == AuditKind::PasswordReset
                    && audit.client == client()
                    && change.mail.is_empty()
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        let mut limiter = crate::domain::ports::MockRateLimiter::new();
        limiter
            .expect_clear_failures()
            .withf(|key| {
                *key == super::super::limits::subject_key(
                    "failures",
                    email("user5@example.com").key(),
                )
            })
            .times(1)
            .returning(|_| Ok(()));
        m.limiter = Some(limiter);
        m.service()
            .reset_password("token", Password::parse("new password").unwrap(), &client())
            .await
            .unwrap();
    }

    /// A passkey of user 5 named `name`, added while the address was `unverified` or not.
    fn passkey(n: u128, name: &str, unverified: bool) -> crate::domain::mfa::Passkey {
        crate::domain::mfa::Passkey {
            id: uuid::Uuid::from_u128(n),
            user_id: UserId(5),
            name: name.into(),
            created_at: chrono::Utc::now(),
            last_used_at: None,
            credential_id: vec![u8::try_from(n).unwrap()],
            credential: String::new(),
            user_handle: uuid::Uuid::nil(),
            added_unverified: unverified,
        }
    }

    #[tokio::test]
    async fn a_reset_removes_what_was_added_before_the_address_was_proved_and_says_so() {
        let mut m = with_mail();
        let rec = record(&m, EmailTokenKind::PasswordReset);
        m.links
            .expect_find_email_token()
            .returning(move |_| Ok(Some(rec.clone())));
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("h".into())));
        m.factors.expect_find_totp().returning(|_| {
            Ok(Some(crate::domain::mfa::TotpFactor {
                user_id: UserId(5),
                sealed_secret: Vec::new(),
                confirmed_at: Some(chrono::Utc::now()),
                last_step: None,
                added_unverified: true,
            }))
        });
        m.factors.expect_list_passkeys().returning(|_| {
            Ok(vec![
                passkey(1, "Owner's", false),
                passkey(2, "Impostor's", true),
            ])
        });
        // The first attempt finds a factor added meanwhile; the second reads again.
        let mut seq = mockall::Sequence::new();
        m.users
            .expect_apply()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(Applied::Refused(Refusal::FactorsChanged)));
        m.users
            .expect_apply()
            .withf(|change| {
                let removed = "TOTP (authenticator app), passkey \"Impostor's\"";
                let removal = FactorRemoval {
                    totp: true,
                    passkeys: vec![uuid::Uuid::from_u128(2)],
                };
                let [audit] = change.audit.as_slice() else {
                    return false;
                };
                change
                    .conditions
                    .contains(&Condition::UnverifiedFactorsAre(removal.clone()))
                    && change.edits.last() == Some(&Edit::RemoveFactors(removal))
                    && audit.detail.get("factors_removed").map(String::as_str) == Some(removed)
                    && change.mail
                        == [MailJob::FactorNotice {
                            user_id: UserId(5),
                            change: FactorChange::RemovedByReset,
                            factors: vec![
                                "TOTP (authenticator app)".into(),
                                "passkey \"Impostor's\"".into(),
                            ],
                        }]
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        m.service()
            .reset_password("token", Password::parse("new password").unwrap(), &client())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn forgot_over_the_addresss_mail_budget_answers_as_usual_and_queues_nothing() {
        let mut m = with_mail();
        let mut limiter = crate::domain::ports::MockRateLimiter::new();
        limiter
            .expect_increment()
            .returning(|bucket, _| Ok(if bucket.starts_with("mail_to:") { 4 } else { 1 }));
        m.limiter = Some(limiter);
        m.outbox.expect_enqueue_mail().never();
        m.service()
            .forgot_password(email("ann@example.com"), &client())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_reset_that_loses_a_race_for_its_token_is_refused() {
        let mut m = with_mail();
        let rec = record(&m, EmailTokenKind::PasswordReset);
        m.links
            .expect_find_email_token()
            .returning(move |_| Ok(Some(rec.clone())));
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("h".into())));
        no_factors(&mut m);
        m.users
            .expect_apply()
            .returning(|_| Ok(Applied::Refused(Refusal::TokenSpent)));
        let err = m
            .service()
            .reset_password("token", Password::parse("new password").unwrap(), &client())
            .await
            .unwrap_err();
        assert!(matches!(err, RedeemError::InvalidToken));
    }

    #[tokio::test]
    async fn a_verified_address_needs_no_verification_mail() {
        let mut m = with_mail();
        m.outbox.expect_enqueue_mail().never();
        let mut verified = principal();
        verified.user.email_verified = true;
        let err = m
            .service()
            .request_verification(&verified, &client())
            .await
            .unwrap_err();
        assert!(matches!(err, MailRequestError::AlreadyVerified));
    }

    #[tokio::test]
    async fn an_email_change_with_a_wrong_password_queues_nothing() {
        let mut m = with_mail();
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        m.outbox.expect_enqueue_mail().never();
        let err = m
            .service()
            .request_email_change(&principal(), email("new@example.com"), "wrong", &client())
            .await
            .unwrap_err();
        assert!(matches!(err, MailRequestError::WrongPassword));
    }

    /// Mocks whose outbox hands out `job` once, and records how it was settled.
    fn delivering(job: MailJob, attempts: u32) -> Mocks {
        let mut m = Mocks::new();
        let queued_at = m.now;
        m.outbox
            .expect_claim_mail()
            .times(1)
            .returning(move |_, _, _| {
                Ok(vec![QueuedMail {
                    id: 1,
                    job: job.clone(),
                    attempts,
                    queued_at,
                }])
            });
        m
    }

    #[tokio::test]
    async fn a_reset_job_for_an_unknown_or_inactive_address_sends_nothing() {
        for found in [None, Some(user(5, Role::User, false))] {
            let mut m = delivering(
                MailJob::PasswordReset {
                    email: email("who@example.com"),
                    requested_by: Some(client()),
                },
                0,
            );
            m.users
                .expect_find_user_by_email()
                .returning(move |_| Ok(found.clone()));
            m.links.expect_store_email_token().never();
            let mut mailer = MockMailer::new();
            mailer.expect_send().never();
            m.mailer = Some(mailer);
            m.outbox
                .expect_finish_mail()
                .times(1)
                .returning(|_, _| Ok(()));
            let done = m.service().deliver_mail().await.unwrap();
            assert_eq!(done[0].outcome, DeliveryOutcome::Dropped);
        }
    }

    #[tokio::test]
    async fn a_reset_link_goes_to_the_address_on_the_account_not_the_look_alike_typed() {
        let mut m = delivering(
            MailJob::PasswordReset {
                email: email("us\u{435}r5@example.com"),
                requested_by: Some(client()),
            },
            0,
        );
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(5, Role::User, true))));
        let now = m.now;
        m.links
            .expect_store_email_token()
            .withf(move |t, audit| {
                t.kind == EmailTokenKind::PasswordReset
                    && t.user_id == UserId(5)
                    && t.expires_at == now + TimeDelta::minutes(30)
                    // The request is on record with its client, now that the address is known
                    // to be registered.
                    && audit.as_ref().is_some_and(|a| {
                        a.kind == AuditKind::PasswordResetRequested
                            && a.user_id == Some(UserId(5))
                            && a.client == client()
                    })
            })
            .times(1)
            .returning(|_, _| Ok(()));
        let mut mailer = MockMailer::new();
        mailer
            .expect_send()
            .withf(|mail| {
                mail.to == "user5@example.com"
                    && mail.kind == MailKind::PasswordReset
                    && mail.link.as_deref().is_some_and(|l| {
                        l.starts_with("http://127.0.0.1:8000/console/reset?token=") && l.len() > 43
                    })
            })
            .times(1)
            .returning(|_| Ok("250 OK".into()));
        m.mailer = Some(mailer);
        m.outbox
            .expect_finish_mail()
            .times(1)
            .returning(|_, _| Ok(()));
        let done = m.service().deliver_mail().await.unwrap();
        assert_eq!(done[0].outcome, DeliveryOutcome::Sent);
    }

    #[tokio::test]
    async fn a_failed_delivery_is_retried_later_and_given_up_after_the_limit() {
        for (attempts_before, rejected, expected) in [
            (0, false, DeliveryOutcome::Retrying),
            (7, false, DeliveryOutcome::Failed),
            (0, true, DeliveryOutcome::Failed),
        ] {
            let mut m = delivering(
                MailJob::Verification { user_id: UserId(5) },
                attempts_before,
            );
            m.users
                .expect_find_user_by_id()
                .returning(|_| Ok(Some(user(5, Role::User, true))));
            m.links.expect_store_email_token().returning(|_, _| Ok(()));
            let mut mailer = MockMailer::new();
            mailer.expect_send().returning(move |_| {
                Err(if rejected {
                    MailError::Rejected("550 no such user".into())
                } else {
                    MailError::Transient("connection refused".into())
                })
            });
            m.mailer = Some(mailer);
            let now = m.now;
            m.outbox
                .expect_retry_mail()
                .with(eq(1), eq(1), eq(now + TimeDelta::seconds(30)), always())
                .times(usize::from(expected == DeliveryOutcome::Retrying))
                .returning(|_, _, _, _| Ok(()));
            m.outbox
                .expect_fail_mail()
                .times(usize::from(expected == DeliveryOutcome::Failed))
                .returning(|_, _, _| Ok(()));
            let done = m.service().deliver_mail().await.unwrap();
            assert_eq!(done[0].outcome, expected, "{attempts_before} {rejected}");
        }
    }

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
        let base = TimeDelta::seconds(30);
        assert_eq!(retry_delay(base, 1), TimeDelta::seconds(30));
        assert_eq!(retry_delay(base, 2), TimeDelta::seconds(60));
        assert_eq!(retry_delay(base, 4), TimeDelta::seconds(240));
        assert_eq!(retry_delay(base, 30), MAX_RETRY_DELAY);
    }

    #[tokio::test]
    async fn a_change_to_a_taken_address_warns_its_owner_instead_of_sending_a_link() {
        let keep = SessionId::random();
        let mut m = delivering(
            MailJob::EmailChange {
                user_id: UserId(5),
                new_email: email("user6@example.com"),
                keep: Some(keep),
            },
            0,
        );
        m.users
            .expect_find_user_by_id()
            .returning(|_| Ok(Some(user(5, Role::User, true))));
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(6, Role::User, true))));
        m.links.expect_store_email_token().never();
        let mut mailer = MockMailer::new();
        let mut seq = mockall::Sequence::new();
        mailer
            .expect_send()
            .withf(|mail| {
                mail.kind == MailKind::EmailChangeNotice && mail.to == "user5@example.com"
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("250".into()));
        mailer
            .expect_send()
            .withf(|mail| {
                mail.kind == MailKind::EmailInUse
                    && mail.to == "user6@example.com"
                    && mail.link.is_none()
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok("250".into()));
        m.mailer = Some(mailer);
        m.outbox.expect_finish_mail().returning(|_, _| Ok(()));
        m.service().deliver_mail().await.unwrap();
    }

    #[tokio::test]
    async fn a_change_to_a_free_address_sends_its_link_there_bound_to_the_asking_session() {
        let keep = SessionId::random();
        let mut m = delivering(
            MailJob::EmailChange {
                user_id: UserId(5),
                new_email: email("fresh@example.com"),
                keep: Some(keep),
            },
            0,
        );
        m.users
            .expect_find_user_by_id()
            .returning(|_| Ok(Some(user(5, Role::User, true))));
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.links
            .expect_store_email_token()
            .withf(move |t, _| {
                t.kind == EmailTokenKind::EmailChange
                    && t.new_email == Some(email("fresh@example.com"))
                    && t.keep_session == Some(keep)
                    && t.email == "user5@example.com"
            })
            .times(1)
            .returning(|_, _| Ok(()));
        let mut mailer = MockMailer::new();
        mailer
            .expect_send()
            .withf(|mail| mail.kind == MailKind::EmailChangeNotice)
            .times(1)
            .returning(|_| Ok("250".into()));
        mailer
            .expect_send()
            .withf(|mail| mail.kind == MailKind::EmailChange && mail.to == "fresh@example.com")
            .times(1)
            .returning(|_| Ok("250".into()));
        m.mailer = Some(mailer);
        m.outbox.expect_finish_mail().returning(|_, _| Ok(()));
        m.service().deliver_mail().await.unwrap();
    }

    #[tokio::test]
    async fn an_unverified_login_is_refused_only_when_verification_is_required() {
        for required in [false, true] {
            let mut m = Mocks::new();
            m.policy.mail.require_verified = required;
            m.users
                .expect_find_user_by_email()
                .returning(|_| Ok(Some(user(5, Role::User, true))));
            m.hasher.expect_verify().returning(|_, _| Ok(true));
            m.sessions
                .expect_create_session()
                .returning(|s, _| Ok(session(s.id, 5)));
            m.tokens.expect_issue().returning(|_| Ok("t".into()));
            let result = m
                .service()
                .login(&email("user5@example.com"), "right", client())
                .await;
            assert_eq!(
                matches!(result, Err(crate::domain::service::LoginError::Unverified)),
                required
            );
        }
    }
}
