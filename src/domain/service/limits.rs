//! Abuse limits: attempts per client address and per account in fixed windows, and a growing
//! delay after repeated failed password checks of one account.
//!
//! Every check runs before any password hash is computed, so a refused request costs a few
//! counter updates, not a quarter of a second of CPU. A password check is admitted and counted
//! in one atomic step before its hash starts ([`Credentials::verify_password`]), so attempts
//! that arrive together cannot all slip past the delay while the first ones are still hashing.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use crate::domain::ports::{Clock, RateLimiter};
use crate::domain::{BackendError, Email};

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
    /// The OpenID provider's token endpoint; the account is the client, whose wrong secrets
    /// count like any other attempt.
    pub token_per_ip: Quota,
    pub token_per_client: Quota,
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
            token_per_ip: Quota::per_minute(120),
            token_per_client: Quota::per_minute(600),
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
    ClientToken,
    PasswordCheck,
    Mail,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::ClientToken => "client_token",
            Self::PasswordCheck => "password_check",
            Self::Mail => "mail",
        }
    }

    fn quotas(self, policy: &LimitPolicy) -> (Quota, Quota) {
        match self {
            Self::Login => (policy.login_per_ip, policy.login_per_account),
            Self::Register => (policy.register_per_ip, policy.register_per_account),
            Self::Refresh => (policy.refresh_per_ip, policy.refresh_per_account),
            Self::ClientToken => (policy.token_per_ip, policy.token_per_client),
            Self::PasswordCheck => (
                policy.password_check_per_ip,
                policy.password_check_per_account,
            ),
            Self::Mail => (policy.mail_per_ip, policy.mail_per_account),
        }
    }
}

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

/// The abuse limits: attempts per client address and per account, and the mail budgets.
pub struct Guard {
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) limits: LimitPolicy,
}

impl Guard {
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
}

#[cfg(test)]
mod tests;
