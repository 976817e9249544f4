//! Proving an address, recovering a password, moving an account to another address, and the
//! delivery of the mail these need.
//!
//! The routes that ask for mail only queue a job (after the same checks for every address) and
//! answer; [`AuthService::deliver_mail`], run by a worker, turns jobs into mail. Tokens are
//! drawn at delivery, so no plaintext token ever waits in storage.

use chrono::TimeDelta;

use super::AuthService;
use super::limits::{Action, LimitError, Throttled, subject_key};
use crate::domain::ports::{CreateUserError, MailError};
use crate::domain::{
    BackendError, ClientInfo, Email, EmailTokenHash, EmailTokenKind, Mail, MailJob, MailKind,
    NewEmailToken, Password, Principal, QueuedMail, User,
};

/// The longest token worth looking up: ours are 43 characters.
const MAX_TOKEN_LEN: usize = 128;
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

impl From<LimitError> for MailRequestError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::Throttled(t) => Self::Throttled(t),
            LimitError::Backend(b) => Self::Backend(b),
        }
    }
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
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What became of one job, for the worker's metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The job's name: `password_reset`, `verification` or `email_change`.
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
        MailJob::EmailChange { .. } => "email_change",
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
    /// unverified: the same checks, the same one write, the same answer.
    ///
    /// # Errors
    /// [`MailRequestError::NotConfigured`] without a transport; `Throttled` over the mail
    /// limits of the address or of the email.
    pub async fn forgot_password(
        &self,
        email: Email,
        client: &ClientInfo,
    ) -> Result<(), MailRequestError> {
        self.require_mail()?;
        self.throttle(Action::Mail, client.ip.as_deref(), Some(email.key()))
            .await?;
        self.users
            .enqueue_mail(MailJob::PasswordReset { email }, self.clock.now())
            .await?;
        Ok(())
    }

    /// Sets a new password with a reset link's token. Every session of the user ends, every
    /// other reset token and any pending email change are spent, the address counts as
    /// verified, and the account's failure delay is cleared.
    ///
    /// # Errors
    /// [`RedeemError::InvalidToken`] for a token that is unknown, spent, expired, of another
    /// kind, or whose user was deactivated or changed since.
    pub async fn reset_password(&self, token: &str, new: Password) -> Result<(), RedeemError> {
        let record = self
            .usable_token(token, EmailTokenKind::PasswordReset)
            .await?;
        let hash = self.hasher.hash(&new).await?;
        let reset = self
            .users
            .reset_password(
                &EmailTokenHash::of(token),
                &record.user,
                hash,
                self.clock.now(),
            )
            .await?;
        if !reset {
            return Err(RedeemError::InvalidToken);
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
        self.users
            .enqueue_mail(MailJob::Verification { user_id }, self.clock.now())
            .await?;
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
        self.users
            .verify_email(
                &EmailTokenHash::of(token),
                record.user.id,
                &record.email,
                self.clock.now(),
            )
            .await?
            .ok_or(RedeemError::InvalidToken)
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
        let job = MailJob::EmailChange {
            user_id,
            new_email,
            keep: principal.session_id,
        };
        self.users.enqueue_mail(job, self.clock.now()).await?;
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
        self.users
            .change_email(
                &EmailTokenHash::of(token),
                &record.user,
                &new_email,
                record.keep_session,
                self.clock.now(),
            )
            .await
            .map_err(|err| match err {
                CreateUserError::EmailTaken => RedeemError::EmailTaken,
                CreateUserError::Backend(err) => RedeemError::Backend(err),
            })?
            .ok_or(RedeemError::InvalidToken)
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
            .issue_link(EmailTokenKind::PasswordReset, &user)
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
        self.users
            .find_email_token(&EmailTokenHash::of(token))
            .await?
            .filter(|record| record.usable_for(kind, self.clock.now()))
            .ok_or(RedeemError::InvalidToken)
    }

    /// Stores a fresh token of `kind` for `user` and returns its link and lifetime.
    async fn issue_link(
        &self,
        kind: EmailTokenKind,
        user: &User,
    ) -> Result<(String, TimeDelta), BackendError> {
        self.issue_token(NewEmailToken::generate(
            kind,
            user,
            self.clock.now(),
            self.ttl_of(kind),
        ))
        .await
    }

    async fn issue_token(&self, token: NewEmailToken) -> Result<(String, TimeDelta), BackendError> {
        let policy = &self.policy.mail;
        let template = match token.kind {
            EmailTokenKind::PasswordReset => &policy.reset_link,
            EmailTokenKind::Verification => &policy.verify_link,
            EmailTokenKind::EmailChange => &policy.email_change_link,
        };
        let link = crate::domain::mail::link(template, &policy.public_url, &token.secret);
        let ttl = token.expires_at - token.created_at;
        self.users.store_email_token(token).await?;
        Ok((link, ttl))
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
            MailJob::PasswordReset { email } => {
                let Some(user) = self
                    .users
                    .find_user_by_email(email)
                    .await?
                    .filter(|user| user.is_active)
                else {
                    return Ok(Vec::new());
                };
                // To the address on the account, never to the look-alike that was typed.
                let (link, ttl) = self
                    .issue_link(EmailTokenKind::PasswordReset, &user)
                    .await?;
                Ok(vec![link_mail(MailKind::PasswordReset, &user, link, ttl)])
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
                let (link, ttl) = self.issue_link(EmailTokenKind::Verification, &user).await?;
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
                    kind: MailKind::EmailChangeNotice,
                    to: user.email.as_str().to_owned(),
                    link: None,
                    new_email: Some(new_email.as_str().to_owned()),
                    valid_for: None,
                };
                if let Some(owner) = self.users.find_user_by_email(new_email).await? {
                    let in_use = Mail {
                        kind: MailKind::EmailInUse,
                        to: owner.email.as_str().to_owned(),
                        link: None,
                        new_email: None,
                        valid_for: None,
                    };
                    return Ok(vec![notice, in_use]);
                }
                let mut token = NewEmailToken::generate(
                    EmailTokenKind::EmailChange,
                    &user,
                    self.clock.now(),
                    self.policy.mail.verification_ttl,
                );
                token.new_email = Some(new_email.clone());
                token.keep_session = Some(*keep);
                let (link, ttl) = self.issue_token(token).await?;
                let confirm = Mail {
                    kind: MailKind::EmailChange,
                    to: new_email.as_str().to_owned(),
                    link: Some(link),
                    new_email: None,
                    valid_for: Some(ttl),
                };
                Ok(vec![notice, confirm])
            }
        }
    }
}

fn link_mail(kind: MailKind, user: &User, link: String, ttl: TimeDelta) -> Mail {
    Mail {
        kind,
        to: user.email.as_str().to_owned(),
        link: Some(link),
        new_email: None,
        valid_for: Some(ttl),
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
