//! Deleting what has expired.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::BackendError;

/// Deletes what nobody can use any more.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Housekeeping: Send + Sync + 'static {
    /// Deletes sessions that are no longer live at `now`, refresh and link tokens past their
    /// expiry, pending second steps, WebAuthn ceremonies, authorization codes and revoked
    /// access tokens past theirs, delivered mail kept long enough, and audit events older than
    /// `audit_before`.
    /// Returns how many sessions were deleted.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError>;
}
