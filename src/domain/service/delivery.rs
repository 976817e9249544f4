//! Delivering the outbox: claiming due jobs, composing each mail, settling it.

use std::sync::Arc;

use chrono::TimeDelta;

use super::links::Links;
use crate::domain::ports::{Clock, MailError, MailOutbox, Mailer, UserRepository};
use crate::domain::{
    AuthPolicy, BackendError, Email, LinkTokenKind, Mail, MailJob, MailKind, NewLinkToken,
    QueuedMail, User, UserId,
};

/// The mail worker's use cases.
pub struct MailDelivery {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) outbox: Arc<dyn MailOutbox>,
    pub(super) mailer: Option<Arc<dyn Mailer>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) links: Arc<Links>,
}

impl MailDelivery {
    /// Whether a mail transport is configured.
    pub fn mail_configured(&self) -> bool {
        self.mailer.is_some()
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
                    .map(|client| self.links.reset_requested(&user).from_client(client));
                // To the address on the account, never to the look-alike that was typed.
                let (link, ttl) = self
                    .links
                    .issue_link(LinkTokenKind::PasswordReset, &user, audit)
                    .await?;
                Ok(vec![link_mail(MailKind::PasswordReset, &user, link, ttl)])
            }
            MailJob::Invitation { user_id } => {
                let Some(user) = self.active_user(*user_id, |_| true).await? else {
                    return Ok(Vec::new());
                };
                // A reset token that lives longer: the account waits for its first password.
                let token = NewLinkToken::generate(
                    LinkTokenKind::PasswordReset,
                    &user,
                    self.clock.now(),
                    self.policy.mail.invitation_ttl,
                );
                let (link, ttl) = self
                    .links
                    .issue_token(token, Some(self.links.reset_requested(&user)))
                    .await?;
                Ok(vec![link_mail(MailKind::Invitation, &user, link, ttl)])
            }
            MailJob::Verification { user_id } => {
                let Some(user) = self
                    .active_user(*user_id, |user| !user.email_verified)
                    .await?
                else {
                    return Ok(Vec::new());
                };
                let (link, ttl) = self
                    .links
                    .issue_link(LinkTokenKind::Verification, &user, None)
                    .await?;
                Ok(vec![link_mail(MailKind::Verification, &user, link, ttl)])
            }
            MailJob::EmailChange {
                user_id,
                new_email,
                keep,
            } => {
                let Some(user) = self
                    .active_user(*user_id, |user| user.email != *new_email)
                    .await?
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
                let mut token = NewLinkToken::generate(
                    LinkTokenKind::EmailChange,
                    &user,
                    self.clock.now(),
                    self.policy.mail.verification_ttl,
                );
                token.new_email = Some(new_email.clone());
                token.keep_session = *keep;
                let (link, ttl) = self.links.issue_token(token, None).await?;
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
                let Some(user) = self.active_user(*user_id, |_| true).await? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Mail {
                    factors: Some(factors.join(", ")),
                    ..notice_mail(change.mail_kind(), &user)
                }])
            }
        }
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

    /// The user a job is for, if still active and `still_wanted` holds: a job queued before a
    /// deactivation, a verification or a move sends nothing.
    async fn active_user(
        &self,
        id: UserId,
        still_wanted: impl FnOnce(&User) -> bool,
    ) -> Result<Option<User>, BackendError> {
        Ok(self
            .users
            .find_user_by_id(id)
            .await?
            .filter(|user| user.is_active && still_wanted(user)))
    }
}

/// How long a claimed job is the claimer's: far longer than one delivery may take.
const CLAIM_LEASE: TimeDelta = TimeDelta::minutes(5);

/// Jobs one worker claims at a time.
const CLAIM_BATCH: u32 = 16;

fn job_name(job: &MailJob) -> &'static str {
    match job {
        MailJob::PasswordReset { .. } => "password_reset",
        MailJob::Verification { .. } => "verification",
        MailJob::Invitation { .. } => "invitation",
        MailJob::EmailChange { .. } => "email_change",
        MailJob::FactorNotice { .. } => "factor_notice",
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

fn link_mail(kind: MailKind, user: &User, link: String, ttl: TimeDelta) -> Mail {
    Mail {
        link: Some(link),
        valid_for: Some(ttl),
        ..notice_mail(kind, user)
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

/// The longest wait between two attempts.
const MAX_RETRY_DELAY: TimeDelta = TimeDelta::hours(1);

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

#[cfg(test)]
mod tests;
