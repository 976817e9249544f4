//! Abuse limits: attempts per client address and per account in fixed windows, and a growing
//! delay after repeated failed logins of one account.
//!
//! Every check runs before any password hash is computed, so a refused request costs a few
//! counter updates, not a quarter of a second of CPU.

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::AuthService;
use crate::domain::BackendError;

/// At most `max` attempts per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max: u32,
    pub window: TimeDelta,
}

impl Quota {
    pub fn per_minute(max: u32) -> Self {
        Self {
            max,
            window: TimeDelta::minutes(1),
        }
    }
}

/// The limits the use cases enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPolicy {
    pub enabled: bool,
    /// Login and the OAuth2 token endpoint share these.
    pub login_per_ip: Quota,
    pub login_per_account: Quota,
    pub register_per_ip: Quota,
    pub register_per_account: Quota,
    pub refresh_per_ip: Quota,
    pub refresh_per_account: Quota,
    /// Failed logins of one account allowed before the delay starts.
    pub free_failures: u32,
    /// The delay after the first failure beyond the free ones; it doubles with each further one.
    pub first_delay: TimeDelta,
    /// The longest delay: the owner is never locked out for longer than this.
    pub max_delay: TimeDelta,
    /// A run of failures is forgotten this long after its last failure.
    pub failure_memory: TimeDelta,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_ip: Quota::per_minute(60),
            login_per_account: Quota::per_minute(20),
            register_per_ip: Quota::per_minute(30),
            register_per_account: Quota::per_minute(10),
            refresh_per_ip: Quota::per_minute(120),
            refresh_per_account: Quota::per_minute(60),
            free_failures: 5,
            first_delay: TimeDelta::seconds(1),
            max_delay: TimeDelta::minutes(15),
            failure_memory: TimeDelta::days(1),
        }
    }
}

/// A request refused by an abuse limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many attempts; retry in {} s", retry_after.num_seconds())]
pub struct Throttled {
    /// How long until the same request could pass.
    pub retry_after: TimeDelta,
}

/// Why a limit check did not let a request through.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The limited actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Login,
    Register,
    Refresh,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
        }
    }

    fn quotas(self, policy: &LimitPolicy) -> (Quota, Quota) {
        match self {
            Self::Login => (policy.login_per_ip, policy.login_per_account),
            Self::Register => (policy.register_per_ip, policy.register_per_account),
            Self::Refresh => (policy.refresh_per_ip, policy.refresh_per_account),
        }
    }
}

/// A counter key that names neither the address nor the email it counts.
fn subject_key(kind: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("{kind}\u{0}{subject}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The delay owed after `failures` consecutive failed logins.
pub fn backoff_delay(policy: &LimitPolicy, failures: u32) -> Option<TimeDelta> {
    let over = failures.checked_sub(policy.free_failures)?.checked_sub(1);
    let Some(doublings) = over else {
        // Exactly the free failures: the next one is still free.
        return None;
    };
    let factor = 1i32.checked_shl(doublings.min(30)).unwrap_or(i32::MAX);
    Some(
        policy
            .first_delay
            .checked_mul(factor)
            .unwrap_or(policy.max_delay)
            .min(policy.max_delay),
    )
}

impl AuthService {
    /// Counts one attempt of `action` from `ip` and, when known, for `account`; refuses it when
    /// either quota is spent, or when the account is serving a failure delay.
    pub(super) async fn throttle(
        &self,
        action: Action,
        ip: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), LimitError> {
        if !self.limits.enabled {
            return Ok(());
        }
        let now = self.clock.now();
        let (per_ip, per_account) = action.quotas(&self.limits);
        if let Some(ip) = ip {
            self.count(action, "ip", ip, per_ip, now).await?;
        }
        if let Some(account) = account {
            self.count(action, "account", account, per_account, now)
                .await?;
            if action == Action::Login {
                self.check_failure_delay(account, now).await?;
            }
        }
        Ok(())
    }

    async fn count(
        &self,
        action: Action,
        kind: &str,
        subject: &str,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<(), LimitError> {
        let window = quota.window.num_seconds().max(1);
        let start = now.timestamp().div_euclid(window) * window;
        let ends = DateTime::<Utc>::from_timestamp(start + window, 0).unwrap_or(now);
        let bucket = format!("{}:{}:{start}", action.name(), subject_key(kind, subject));
        let count = self.limiter.increment(&bucket, ends).await?;
        if count > quota.max {
            return Err(Throttled {
                retry_after: ends - now,
            }
            .into());
        }
        Ok(())
    }

    async fn check_failure_delay(
        &self,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LimitError> {
        let key = subject_key("failures", account);
        let Some(run) = self.limiter.failures(&key).await? else {
            return Ok(());
        };
        if run.last_at < now - self.limits.failure_memory {
            return Ok(());
        }
        match backoff_delay(&self.limits, run.count) {
            Some(delay) if now < run.last_at + delay => Err(Throttled {
                retry_after: run.last_at + delay - now,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Notes a failed login of `account`, lengthening its delay.
    pub(super) async fn note_failed_login(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        let now = self.clock.now();
        self.limiter
            .record_failure(
                &subject_key("failures", account),
                now,
                now - self.limits.failure_memory,
            )
            .await?;
        Ok(())
    }

    /// Notes a correct password for `account`: its delay is gone.
    pub(super) async fn note_good_password(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.limiter
            .clear_failures(&subject_key("failures", account))
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

#[cfg(test)]
mod tests {
    use mockall::predicate::{always, eq};

    use super::super::test_support::{Mocks, user};
    use super::*;
    use crate::domain::ports::{FailureRecord, MockRateLimiter};
    use crate::domain::service::{LoginError, RegisterError};
    use crate::domain::{ClientInfo, Email, Password, Role};

    fn client() -> ClientInfo {
        ClientInfo::new(None, Some("203.0.113.5".into()))
    }

    fn email() -> Email {
        Email::parse("target@example.com").unwrap()
    }

    /// A limiter under every quota, whose account has the failure run `run`.
    fn limiter_with_run(run: Option<FailureRecord>) -> MockRateLimiter {
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().returning(move |_| Ok(run));
        limiter
    }

    #[test]
    fn the_delay_starts_after_the_free_failures_doubles_and_is_capped() {
        let policy = LimitPolicy::default();
        let delays: Vec<Option<i64>> = (0..=20)
            .map(|n| backoff_delay(&policy, n).map(|d| d.num_seconds()))
            .collect();
        assert_eq!(&delays[..6], &[None; 6]);
        assert_eq!(
            &delays[6..11],
            &[Some(1), Some(2), Some(4), Some(8), Some(16)]
        );
        assert_eq!(delays[20], Some(900));
        assert_eq!(backoff_delay(&policy, u32::MAX), Some(policy.max_delay));
    }

    #[tokio::test]
    async fn a_spent_ip_quota_refuses_login_before_any_hash_with_the_window_rest() {
        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        // 12:00:00 exactly: the minute window ends in 60 s.
        limiter.expect_increment().times(1).returning(|_, _| Ok(61));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().never();
        m.hasher.expect_verify().never();
        let err = m
            .service()
            .login(&email(), "whatever1", client())
            .await
            .unwrap_err();
        match err {
            LoginError::Throttled(t) => assert_eq!(t.retry_after, TimeDelta::seconds(60)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn counters_are_keyed_by_action_subject_and_window_without_raw_values() {
        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        let now = m.now;
        limiter
            .expect_increment()
            .withf(move |bucket, ends| {
                bucket.starts_with("register:")
                    && bucket.ends_with(&format!(":{}", now.timestamp()))
                    && !bucket.contains("203.0.113.5")
                    && !bucket.contains("target@example.com")
                    && *ends == now + TimeDelta::minutes(1)
            })
            .times(2)
            .returning(|_, _| Ok(1));
        limiter.expect_failures().never();
        m.limiter = Some(limiter);
        m.hasher
            .expect_hash()
            .returning(|_| Ok(crate::domain::PasswordHash::new("h".into())));
        m.users
            .expect_create_user()
            .returning(|_| Ok(user(1, Role::User, true)));
        m.service()
            .register(
                email(),
                Password::parse("long enough").unwrap(),
                None,
                &client(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_account_serving_a_delay_is_refused_until_it_ends() {
        let mut m = Mocks::new();
        // Seven failures: a 2 s delay, the last failure 1 s ago.
        m.limiter = Some(limiter_with_run(Some(FailureRecord {
            count: 7,
            last_at: m.now - TimeDelta::seconds(1),
        })));
        m.hasher.expect_verify().never();
        let err = m
            .service()
            .login(&email(), "whatever1", client())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LoginError::Throttled(t) if t.retry_after == TimeDelta::seconds(1)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_password_lengthens_the_delay_and_a_right_one_clears_it() {
        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(None);
        let now = m.now;
        limiter
            .expect_record_failure()
            .with(always(), eq(now), eq(now - TimeDelta::days(1)))
            .times(1)
            .returning(|_, _, _| Ok(1));
        limiter.expect_clear_failures().never();
        m.limiter = Some(limiter);
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(1, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        let err = m
            .service()
            .login(&email(), "wrong", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));

        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(None);
        limiter.expect_record_failure().never();
        limiter
            .expect_clear_failures()
            .times(1)
            .returning(|_| Ok(()));
        m.limiter = Some(limiter);
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(1, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.users
            .expect_create_session()
            .returning(|s, _| Ok(super::super::test_support::session(s.id, 1)));
        m.tokens.expect_issue().returning(|_| Ok("t".into()));
        assert!(m.service().login(&email(), "right", client()).await.is_ok());
    }

    #[tokio::test]
    async fn an_unknown_email_counts_as_a_failure_too() {
        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(None);
        limiter
            .expect_record_failure()
            .times(1)
            .returning(|_, _, _| Ok(1));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        let err = m
            .service()
            .login(&email(), "x", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn registration_over_its_quota_is_refused_before_hashing() {
        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(31));
        m.limiter = Some(limiter);
        m.hasher.expect_hash().never();
        m.users.expect_create_user().never();
        let err = m
            .service()
            .register(
                email(),
                Password::parse("long enough").unwrap(),
                None,
                &client(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RegisterError::Throttled(_)));
    }

    #[tokio::test]
    async fn a_stale_failure_run_imposes_no_delay() {
        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(Some(FailureRecord {
            count: 30,
            last_at: m.now - TimeDelta::days(2),
        }));
        limiter.expect_record_failure().returning(|_, _, _| Ok(1));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher
            .expect_verify()
            .times(1)
            .returning(|_, _| Ok(false));
        let err = m
            .service()
            .login(&email(), "x", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn a_replayed_refresh_token_ends_its_session_even_over_the_account_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        // The address is under its quota; anything counted after it is far over.
        let calls = AtomicUsize::new(0);
        limiter.expect_increment().returning(move |_, _| {
            Ok(if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                1
            } else {
                999
            })
        });
        m.limiter = Some(limiter);
        let sid = crate::domain::SessionId::random();
        let record = crate::domain::RefreshTokenRecord {
            expires_at: m.now + TimeDelta::days(1),
            spent_at: Some(m.now - TimeDelta::minutes(1)),
            session: super::super::test_support::session(sid, 5),
            user: user(5, Role::User, true),
        };
        m.users
            .expect_find_refresh_token()
            .returning(move |_| Ok(Some(record.clone())));
        m.users
            .expect_end_session()
            .times(1)
            .returning(|_, _, _| Ok(true));
        let err = m.service().refresh("replayed", client()).await.unwrap_err();
        assert!(
            matches!(err, crate::domain::service::RefreshError::Reused),
            "{err:?}"
        );
    }
}
