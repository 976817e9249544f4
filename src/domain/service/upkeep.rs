//! Upkeep: readiness, and purging what has expired.

use std::sync::Arc;

use super::limits::LimitPolicy;
use crate::domain::ports::{Clock, Housekeeping, RateLimiter, UserRepository};
use crate::domain::{AuthPolicy, BackendError};

/// Readiness and purging.
pub struct Upkeep {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) housekeeping: Arc<dyn Housekeeping>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) limits: LimitPolicy,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
}

impl Upkeep {
    /// Whether storage answers: the readiness check.
    ///
    /// # Errors
    /// [`BackendError`] from the repository.
    pub async fn ready(&self) -> Result<(), BackendError> {
        self.users.ping().await
    }

    /// Deletes dead sessions and expired refresh tokens; run periodically.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn purge_expired_sessions(&self) -> Result<u64, BackendError> {
        let now = self.clock.now();
        self.housekeeping
            .purge_expired(now, now - self.policy.audit_retention)
            .await
    }

    /// Deletes expired counters and forgotten failure runs; run periodically.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn purge_expired_limits(&self) -> Result<(), BackendError> {
        let now = self.clock.now();
        self.limiter
            .purge_expired(now, now - self.limits.failure_memory)
            .await
    }
}
