//! Time: what it is, and waiting.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The time, as a port, so that expiry can be tested without waiting.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Waiting, as a port: the core paces work (reloads of the keys) without a runtime of its own.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Timer: Send + Sync + 'static {
    /// Completes once `duration` has passed (at once for zero or less).
    async fn sleep(&self, duration: chrono::TimeDelta);
}
