//! Counters of the abuse limits.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::BackendError;

/// One account's run of failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRecord {
    /// Consecutive failures, the latest included.
    pub count: u32,
    pub last_at: DateTime<Utc>,
}

/// Counters for abuse limits. Shared by every instance that uses the same adapter, so that a
/// database adapter gives a whole fleet one budget.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Adds one attempt to the counter `bucket` (created at zero, to be forgotten after
    /// `expires_at`) and returns its value, this attempt included. Atomic: of any number of
    /// concurrent increments, each sees a different value.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn increment(&self, bucket: &str, expires_at: DateTime<Utc>)
    -> Result<u32, BackendError>;

    /// The run of failures of `account`, if any.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn failures(&self, account: &str) -> Result<Option<FailureRecord>, BackendError>;

    /// Replaces the run of `account` with `next` if it is still `seen` (`None`: no run is
    /// stored), and says whether it did. Atomic: of any number of concurrent calls made with
    /// the same `seen`, at most one returns `true`. This is how a password attempt is admitted
    /// and counted in one step, before its hash starts, on every instance at once.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed.
    async fn swap_failures(
        &self,
        account: &str,
        seen: Option<FailureRecord>,
        next: FailureRecord,
    ) -> Result<bool, BackendError>;

    /// Records that an attempt admitted by [`RateLimiter::swap_failures`] failed at `now`:
    /// the run's last failure moves to `now` (the attempt itself was counted on admission).
    /// When the run was cleared meanwhile, a new run of one failure starts.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_failure(&self, account: &str, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Gives back an attempt that was admitted but never checked (the hash could not run):
    /// the run has one failure fewer, never fewer than none.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn release_attempt(&self, account: &str) -> Result<(), BackendError>;

    /// Forgets the failures of `account` (after a correct password).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn clear_failures(&self, account: &str) -> Result<(), BackendError>;

    /// Deletes counters whose window ended at or before `now`, and failure runs whose last
    /// failure is older than `forget_before`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), BackendError>;
}
