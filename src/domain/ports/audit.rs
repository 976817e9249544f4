//! The audit trail.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{AuditEvent, AuditQuery, BackendError, NewAuditEvent};

/// The audit trail: events recorded on their own (an account change records its events in its
/// own transaction), and searched.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Records an event that changes nothing else (a failed login).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError>;

    /// Records the failure `event` folded into the last one like it: when an event of the same
    /// kind and outcome, from the same client address and for the same user (or for none), was
    /// recorded at or after `since`, that one's `detail.count` goes up by one instead;
    /// otherwise `event` is recorded with a count of 1. Folds into one event are serialised
    /// (none is lost); callers that find none at the same moment may each record one.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Events matching `query`, newest first, at most `query.limit`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError>;
}
