//! The real clock, and waiting on it.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::ports::{Clock, Timer};

/// The system's wall clock, and tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[async_trait]
impl Timer for SystemClock {
    async fn sleep(&self, duration: TimeDelta) {
        if let Ok(duration) = duration.to_std() {
            tokio::time::sleep(duration).await;
        }
    }
}
