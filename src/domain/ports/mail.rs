//! Mail: the outbox, the one-time tokens its links carry, and the transport.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    BackendError, LinkTokenHash, LinkTokenRecord, Mail, MailJob, NewAuditEvent, NewLinkToken,
    OutboxDepth, QueuedMail,
};

/// The one-time tokens of mailed links (password reset, verification, email change): stored as
/// hashes, found by hash; an account change spends them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait LinkTokens: Send + Sync + 'static {
    /// Stores a one-time token (its hash only), with `audit` when given.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_email_token(
        &self,
        token: NewLinkToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError>;

    /// Loads a one-time token, spent or not, with its user.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_email_token(
        &self,
        hash: &LinkTokenHash,
    ) -> Result<Option<LinkTokenRecord>, BackendError>;
}

/// The mail outbox: jobs queued (on their own, or with an account change in its transaction),
/// then claimed and settled by the delivery worker.
///
/// With several instances on one database, a job is claimed by one of them at a time.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MailOutbox: Send + Sync + 'static {
    /// Queues `job` for the delivery worker, queued at `now`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing was queued.
    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Claims up to `limit` jobs that are due at `now` and not claimed by anyone, for `lease`:
    /// no other claim returns them until the lease ends, so a worker that dies mid-delivery
    /// leaves its jobs to the next one.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, BackendError>;

    /// Marks a claimed job done at `now`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn finish_mail(&self, id: i64, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Puts a claimed job back, due again at `retry_at`, with `attempts` made and the last
    /// `error`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn retry_mail(
        &self,
        id: i64,
        attempts: u32,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), BackendError>;

    /// Gives a claimed job up after `attempts`, keeping it with its last `error` for the
    /// operator.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn fail_mail(&self, id: i64, attempts: u32, error: &str) -> Result<(), BackendError>;

    /// How many jobs wait, and how many were given up.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn mail_depth(&self) -> Result<OutboxDepth, BackendError>;
}

/// Why a mail was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth another try later: the server is down, busy, or answered 4xx.
    #[error("mail not delivered, will retry: {0}")]
    Transient(String),
    /// Refused for good (a 5xx answer, a malformed address): retrying cannot help.
    #[error("mail refused: {0}")]
    Rejected(String),
}

/// Composes a [`Mail`] from its template and delivers it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Delivers `mail` and returns the server's answer.
    ///
    /// # Errors
    /// [`MailError`] saying whether a retry can help.
    async fn send(&self, mail: &Mail) -> Result<String, MailError>;
}
