//! Abuse limits: attempts per client address and per account in fixed windows, and a growing
//! delay after repeated failed password checks of one account.
//!
//! Every check runs before any password hash is computed, so a refused request costs a few
//! counter updates, not a quarter of a second of CPU. A password check is admitted and counted
//! in one atomic step before its hash starts ([`AuthService::verify_password`]), so attempts
//! that arrive together cannot all slip past the delay while the first ones are still hashing.

use std::net::{IpAddr, Ipv6Addr};

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::AuthService;
use crate::domain::ports::FailureRecord;
use crate::domain::{BackendError, Email, PasswordHash, SessionId};

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
    /// Checks of a signed-in user's password (password change, and every later use case that
    /// asks for the current password); the account is the user.
    pub password_check_per_ip: Quota,
    pub password_check_per_account: Quota,
    /// Requests for mail (reset, verification, email change): one budget per address for all
    /// three; the account is the email for a reset and the user otherwise.
    pub mail_per_ip: Quota,
    pub mail_per_account: Quota,
    /// Messages to one address, whatever asked for them (a reset, a verification, an email
    /// change's link or notice, an admin's link, a security notice), by the address's
    /// look-alike key. Over it nothing more is sent there, and the request answers as usual.
    pub mail_per_recipient: Quota,
    /// Failed password checks of one account allowed before the delay starts.
    pub free_failures: u32,
    /// The delay after the first failure beyond the free ones; it doubles with each further one.
    pub first_delay: TimeDelta,
    /// The longest delay: the owner is never locked out for longer than this.
    pub max_delay: TimeDelta,
    /// A run of failures is forgotten this long after its last failure.
    pub failure_memory: TimeDelta,
    /// IPv6 clients are counted per network of this prefix length (a /64 is what one
    /// subscriber usually holds), so that one client cannot spread its attempts over the
    /// addresses it owns.
    pub ipv6_prefix_len: u8,
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
            password_check_per_ip: Quota::per_minute(30),
            password_check_per_account: Quota::per_minute(10),
            mail_per_ip: Quota::per_minute(10),
            mail_per_account: Quota::per_minute(3),
            mail_per_recipient: Quota::per_minute(3),
            free_failures: 5,
            first_delay: TimeDelta::seconds(1),
            max_delay: TimeDelta::minutes(15),
            failure_memory: TimeDelta::days(1),
            ipv6_prefix_len: 64,
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

/// Gives each error enum with `Throttled` and `Backend` variants its conversion from a
/// [`LimitError`], so use cases can `?` a limit check.
macro_rules! from_limit_error {
    ($($error:ty),+ $(,)?) => {$(
        impl From<LimitError> for $error {
            fn from(err: LimitError) -> Self {
                match err {
                    LimitError::Throttled(t) => Self::Throttled(t),
                    LimitError::Backend(b) => Self::Backend(b),
                }
            }
        }
    )+};
}

from_limit_error!(
    super::RegisterError,
    super::LoginError,
    super::RefreshError,
    super::ChangePasswordError,
    super::MailRequestError,
    super::MfaError,
    super::PasskeyError,
);

/// The limited actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Login,
    Register,
    Refresh,
    PasswordCheck,
    Mail,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::PasswordCheck => "password_check",
            Self::Mail => "mail",
        }
    }

    fn quotas(self, policy: &LimitPolicy) -> (Quota, Quota) {
        match self {
            Self::Login => (policy.login_per_ip, policy.login_per_account),
            Self::Register => (policy.register_per_ip, policy.register_per_account),
            Self::Refresh => (policy.refresh_per_ip, policy.refresh_per_account),
            Self::PasswordCheck => (
                policy.password_check_per_ip,
                policy.password_check_per_account,
            ),
            Self::Mail => (policy.mail_per_ip, policy.mail_per_account),
        }
    }
}

/// Admissions tried before a contended account's attempt is refused: each failed swap means
/// another attempt was admitted or refused meanwhile, so a handful always settles it.
const ADMISSION_TRIES: usize = 8;

/// A counter key that names neither the address nor the email it counts.
pub(super) fn subject_key(kind: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("{kind}\u{0}{subject}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The network a client address is counted as: an IPv4 address (an IPv4-mapped IPv6 one
/// included) is itself; an IPv6 address is its network of `prefix_len` bits. Anything that is
/// not an IP address is counted as it is.
pub(super) fn address_subject(ip: &str, prefix_len: u8) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let bits = u32::from(prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                let network = Ipv6Addr::from(u128::from(v6) & mask);
                format!("{network}/{bits}")
            }
        },
        Err(_) => ip.to_owned(),
    }
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
    /// either quota is spent.
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
            let network = address_subject(ip, self.limits.ipv6_prefix_len);
            self.count(action, "ip", &network, per_ip, now).await?;
        }
        if let Some(account) = account {
            self.count(action, "account", account, per_account, now)
                .await?;
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
        let (count, ends) = self
            .increment(action.name(), kind, subject, quota, now)
            .await?;
        if count > quota.max {
            return Err(Throttled {
                retry_after: ends - now,
            }
            .into());
        }
        Ok(())
    }

    /// Adds one to the counter of `subject` (of `kind`) for `name` in the window of `quota`
    /// that holds `now`; returns the count and when the window ends.
    async fn increment(
        &self,
        name: &str,
        kind: &str,
        subject: &str,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<(u32, DateTime<Utc>), BackendError> {
        let window = quota.window.num_seconds().max(1);
        let start = now.timestamp().div_euclid(window) * window;
        let ends = DateTime::<Utc>::from_timestamp(start + window, 0).unwrap_or(now);
        let bucket = format!("{name}:{}:{start}", subject_key(kind, subject));
        Ok((self.limiter.increment(&bucket, ends).await?, ends))
    }

    /// Counts the messages a request is about to queue, one to each of `recipients`, against
    /// each recipient's budget (every route that mails an address shares it), and, with `ip`,
    /// one against the client address's mail budget (the routes that exist to send mail
    /// counted it already, with a 429 over it). `false` when any budget is spent: the caller
    /// then queues nothing and answers as it would have, so the answer tells nothing.
    pub(super) async fn within_mail_budget(
        &self,
        recipients: &[&Email],
        ip: Option<&str>,
    ) -> Result<bool, BackendError> {
        if !self.limits.enabled {
            return Ok(true);
        }
        let now = self.clock.now();
        if let Some(ip) = ip {
            let network = address_subject(ip, self.limits.ipv6_prefix_len);
            let quota = self.limits.mail_per_ip;
            let (count, _) = self
                .increment(Action::Mail.name(), "ip", &network, quota, now)
                .await?;
            if count > quota.max {
                return Ok(false);
            }
        }
        for recipient in recipients {
            let quota = self.limits.mail_per_recipient;
            let (count, _) = self
                .increment("mail_to", "recipient", recipient.key(), quota, now)
                .await?;
            if count > quota.max {
                tracing::info!("a message was not queued: its recipient's mail budget is spent");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The one way the core checks a password: within `account`'s failure run (the
    /// normalised email, shared by login, the token grant, the second step of a login and
    /// every signed-in re-check).
    ///
    /// The attempt is admitted and counted as a failure in one atomic swap before the hash
    /// starts, so however many attempts arrive at once, at most `free_failures + 1` hashes
    /// start before the first delay, on every instance together. When the hash ends, a wrong
    /// password dates the failure, and a hash that could not run gives the attempt back. A
    /// right password leaves the run as it is: the caller clears it
    /// ([`AuthService::clear_failures`]) once the whole proof is in, which for a user with a
    /// second factor is only after the code.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] while the account serves a delay (nothing is hashed then);
    /// [`LimitError::Backend`] from the limiter or the hasher.
    pub(super) async fn verify_password(
        &self,
        account: &str,
        candidate: &str,
        hash: &PasswordHash,
    ) -> Result<bool, LimitError> {
        self.admit_check(account).await?;
        let verdict = self.hasher.verify(candidate, hash).await;
        match verdict {
            Ok(true) => {}
            Ok(false) => self.record_wrong(account).await?,
            Err(_) if self.limits.enabled => {
                self.limiter
                    .release_attempt(&subject_key("failures", account))
                    .await?;
            }
            Err(_) => {}
        }
        Ok(verdict?)
    }

    /// Admits one check of a secret of `account` (a password, a code) into its failure run,
    /// counting it as a failure until it proves right, unless the run owes a delay.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] during the delay.
    pub(super) async fn admit_check(&self, account: &str) -> Result<(), LimitError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.admit_attempt(&subject_key("failures", account)).await
    }

    /// Dates the failure of a check admitted by [`AuthService::admit_check`] that proved
    /// wrong.
    pub(super) async fn record_wrong(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.limiter
            .record_failure(&subject_key("failures", account), self.clock.now())
            .await
    }

    /// Forgets `account`'s failure run: the account's owner has proved who they are.
    pub(super) async fn clear_failures(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.limiter
            .clear_failures(&subject_key("failures", account))
            .await
    }

    /// Admits one password attempt for the run `key`, counting it, unless the run owes a
    /// delay.
    async fn admit_attempt(&self, key: &str) -> Result<(), LimitError> {
        for _ in 0..ADMISSION_TRIES {
            let seen = self.limiter.failures(key).await?;
            let now = self.clock.now();
            let live = seen.filter(|run| run.last_at >= now - self.limits.failure_memory);
            if let Some(run) = live
                && let Some(delay) = backoff_delay(&self.limits, run.count)
                && now < run.last_at + delay
            {
                return Err(Throttled {
                    retry_after: run.last_at + delay - now,
                }
                .into());
            }
            let next = FailureRecord {
                count: live.map_or(1, |run| run.count.saturating_add(1)),
                last_at: now,
            };
            if self.limiter.swap_failures(key, seen, next).await? {
                return Ok(());
            }
        }
        // Another attempt won every swap: the account is under a burst, which is what the
        // delay is for.
        Err(Throttled {
            retry_after: self.limits.first_delay,
        }
        .into())
    }

    /// Counts a wrong password given by the signed-in session `session`, and returns how many
    /// it has given (none while the limits are off).
    pub(super) async fn wrong_rechecks(&self, session: SessionId) -> Result<u32, BackendError> {
        if !self.limits.enabled {
            return Ok(0);
        }
        let forget_at = self.clock.now() + self.limits.failure_memory;
        let bucket = format!(
            "password_check_failures:{}",
            subject_key("session", &session.to_string())
        );
        self.limiter.increment(&bucket, forget_at).await
    }

    /// Counts one re-check by the signed-in `user` (a password or a code asked again) from
    /// `client`; refuses it over the re-check quotas.
    pub(super) async fn throttle_recheck(
        &self,
        user: &crate::domain::User,
        client: &crate::domain::ClientInfo,
    ) -> Result<(), LimitError> {
        self.throttle(
            Action::PasswordCheck,
            client.ip.as_deref(),
            Some(&user.id.to_string()),
        )
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

    /// A limiter under every quota, whose account has the failure run `run`; every swap
    /// succeeds.
    fn limiter_with_run(run: Option<FailureRecord>) -> MockRateLimiter {
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().returning(move |_| Ok(run));
        limiter.expect_swap_failures().returning(|_, _, _| Ok(true));
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
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
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
            .with(always(), eq(now))
            .times(1)
            .returning(|_, _| Ok(()));
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
        m.sessions
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
            .returning(|_, _| Ok(()));
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
        limiter.expect_record_failure().returning(|_, _| Ok(()));
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
        m.sessions
            .expect_find_refresh_token()
            .returning(move |_| Ok(Some(record.clone())));
        m.sessions
            .expect_end_session()
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let err = m.service().refresh("replayed", client()).await.unwrap_err();
        assert!(
            matches!(err, crate::domain::service::RefreshError::Reused),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_attempt_is_admitted_and_counted_before_its_hash_starts() {
        let mut m = Mocks::new();
        let now = m.now;
        let seen = FailureRecord {
            count: 3,
            last_at: now - TimeDelta::minutes(1),
        };
        let mut seq = mockall::Sequence::new();
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter
            .expect_failures()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(seen)));
        limiter
            .expect_swap_failures()
            .with(
                always(),
                eq(Some(seen)),
                eq(FailureRecord {
                    count: 4,
                    last_at: now,
                }),
            )
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok(true));
        m.hasher
            .expect_verify()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(false));
        limiter
            .expect_record_failure()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        let err = m
            .service()
            .login(&email(), "wrong", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn an_attempt_that_loses_the_swap_reads_again_and_meets_the_delay_the_winner_started() {
        // Five failures: the sixth attempt is free, but a concurrent one takes it first.
        let mut m = Mocks::new();
        let now = m.now;
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().times(2).returning(move |_| {
            let count = if reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                5
            } else {
                6
            };
            Ok(Some(FailureRecord {
                count,
                last_at: now,
            }))
        });
        limiter
            .expect_swap_failures()
            .times(1)
            .returning(|_, _, _| Ok(false));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher.expect_verify().never();
        let err = m
            .service()
            .login(&email(), "guess", client())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LoginError::Throttled(t) if t.retry_after == TimeDelta::seconds(1)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_hash_that_could_not_run_gives_its_attempt_back() {
        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(None);
        limiter
            .expect_release_attempt()
            .times(1)
            .returning(|_| Ok(()));
        limiter.expect_record_failure().never();
        limiter.expect_clear_failures().never();
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher
            .expect_verify()
            .returning(|_, _| Err(BackendError::Overloaded));
        let err = m
            .service()
            .login(&email(), "guess", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::Backend(BackendError::Overloaded)));
    }

    #[tokio::test]
    async fn a_contended_account_is_refused_rather_than_retried_forever() {
        let mut m = Mocks::new();
        let mut limiter = limiter_with_run(None);
        limiter.checkpoint();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().returning(|_| Ok(None));
        limiter
            .expect_swap_failures()
            .times(ADMISSION_TRIES)
            .returning(|_, _, _| Ok(false));
        m.limiter = Some(limiter);
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher.expect_verify().never();
        let err = m
            .service()
            .login(&email(), "guess", client())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::Throttled(_)), "{err:?}");
    }

    #[test]
    fn ipv6_clients_are_counted_per_network_and_ipv4_per_address() {
        assert_eq!(address_subject("203.0.113.5", 64), "203.0.113.5");
        assert_eq!(address_subject("::ffff:203.0.113.5", 64), "203.0.113.5");
        let a = address_subject("2001:db8:1:2:aaaa::1", 64);
        let b = address_subject("2001:db8:1:2:ffff:ffff:ffff:ffff", 64);
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, address_subject("2001:db8:1:3::1", 64));
        assert_ne!(
            address_subject("2001:db8::1", 128),
            address_subject("2001:db8::2", 128)
        );
        assert_eq!(
            address_subject("2001:db8:1:2::1", 48),
            address_subject("2001:db8:1:ffff::1", 48)
        );
        assert_eq!(address_subject("unix-socket", 64), "unix-socket");
    }

    #[tokio::test]
    async fn two_addresses_of_one_ipv6_network_share_a_budget() {
        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        let buckets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&buckets);
        limiter.expect_increment().returning(move |bucket, _| {
            seen.lock().unwrap().push(bucket.to_owned());
            Ok(1)
        });
        m.limiter = Some(limiter);
        m.hasher
            .expect_hash()
            .returning(|_| Ok(crate::domain::PasswordHash::new("h".into())));
        m.users
            .expect_create_user()
            .returning(|_| Ok(user(1, Role::User, true)));
        let service = m.service();
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:dead:beef::9"] {
            service
                .register(
                    Email::parse(&format!("u{}@example.com", ip.len())).unwrap(),
                    Password::parse("long enough").unwrap(),
                    None,
                    &ClientInfo::new(None, Some(ip.into())),
                )
                .await
                .unwrap();
        }
        let buckets = buckets.lock().unwrap();
        // Per address, then per account, for each registration.
        assert_eq!(buckets[0], buckets[2]);
        assert_ne!(buckets[1], buckets[3]);
    }
}
