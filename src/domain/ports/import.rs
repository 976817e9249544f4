//! The pyauth import: its source and its target.

use async_trait::async_trait;

use crate::domain::import::{ImportError, ImportPlan, SourceUser, TargetUser};
use crate::domain::{BackendError, NewAuditEvent};

/// pyauth's database, read-only.
#[async_trait]
pub trait ImportSource: Send + Sync {
    /// Every row of pyauth's `users` table, by id.
    ///
    /// # Errors
    /// [`ImportError::Source`] when it cannot be reached or is not pyauth's schema.
    async fn pyauth_users(&self) -> Result<Vec<SourceUser>, ImportError>;
}

/// The store users are imported into.
#[async_trait]
pub trait ImportTarget: Send + Sync {
    /// Every user, as far as an import cares.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn import_snapshot(&self) -> Result<Vec<TargetUser>, BackendError>;

    /// Writes `plan`'s inserts (with their ids, marked imported) and updates, and records
    /// `audit`, in one transaction, moves the id sequence past the largest id, and reports
    /// progress in users written so far. `audit.at` is the time of the writes.
    ///
    /// # Errors
    /// [`ImportError::TargetChanged`] when a write meets a user that was not in the snapshot;
    /// nothing is written then.
    async fn apply_import(
        &self,
        plan: &ImportPlan,
        audit: NewAuditEvent,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<(), ImportError>;
}
