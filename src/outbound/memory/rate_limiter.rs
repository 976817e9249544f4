//! [`RateLimiter`] in mutex-guarded maps.
//!
//! Not governor: the port counts attempts in fixed windows, so that this adapter and the
//! database one agree to the request; governor's GCRA answers yes or no without a count.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::BackendError;
use crate::domain::ports::{FailureRecord, RateLimiter};

#[derive(Default)]
struct State {
    counters: HashMap<String, (u32, DateTime<Utc>)>,
    failures: HashMap<String, FailureRecord>,
}

/// [`RateLimiter`] for one process.
#[derive(Default)]
pub struct MemoryRateLimiter {
    state: Mutex<State>,
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        self.state
            .lock()
            .map_err(|_| BackendError::unexpected("rate limiter state poisoned"))
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn increment(
        &self,
        bucket: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<u32, BackendError> {
        let mut state = self.state()?;
        let entry = state
            .counters
            .entry(bucket.to_owned())
            .or_insert((0, expires_at));
        entry.0 = entry.0.saturating_add(1);
        Ok(entry.0)
    }

    async fn failures(&self, account: &str) -> Result<Option<FailureRecord>, BackendError> {
        Ok(self.state()?.failures.get(account).copied())
    }

    async fn swap_failures(
        &self,
        account: &str,
        seen: Option<FailureRecord>,
        next: FailureRecord,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        if state.failures.get(account).copied() != seen {
            return Ok(false);
        }
        state.failures.insert(account.to_owned(), next);
        Ok(true)
    }

    async fn record_failure(&self, account: &str, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.state()?
            .failures
            .entry(account.to_owned())
            .or_insert(FailureRecord {
                count: 1,
                last_at: now,
            })
            .last_at = now;
        Ok(())
    }

    async fn release_attempt(&self, account: &str) -> Result<(), BackendError> {
        if let Some(run) = self.state()?.failures.get_mut(account) {
            run.count = run.count.saturating_sub(1);
        }
        Ok(())
    }

    async fn clear_failures(&self, account: &str) -> Result<(), BackendError> {
        self.state()?.failures.remove(account);
        Ok(())
    }

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        state
            .counters
            .retain(|_, (_, expires_at)| *expires_at > now);
        state.failures.retain(|_, run| run.last_at >= forget_before);
        Ok(())
    }
}
