//! Mail the service sends, the jobs that lead to it, and the one-time tokens its links carry.
//!
//! A request never sends mail. It queues a [`MailJob`] in the same transaction as what the job
//! announces, and answers; the delivery worker later turns the job into [`Mail`] (looking up
//! the account, drawing a token) and hands it to the `Mailer`. So an answer costs the same
//! whether or not an address is registered, and a token exists only as its hash in storage and
//! in the one mail that carries it.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use super::secrets::{random_secret, sha256_hex};
use super::{ClientInfo, Email, SessionId, User, UserId};

/// What a mail says; each kind has a template of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// A link to choose a new password.
    PasswordReset,
    /// A link to choose the first password of an account an admin created.
    Invitation,
    /// A link that proves the address.
    Verification,
    /// A link, sent to the new address, that moves the account there.
    EmailChange,
    /// To the old address: a change to another one was asked for.
    EmailChangeNotice,
    /// To the owner of an address someone tried to move another account to.
    EmailInUse,
    /// To the account's address: a second factor was added.
    FactorAdded,
    /// To the account's address: a second factor was removed.
    FactorRemoved,
    /// To the account's address, after a password reset: the factors added while the address
    /// was unverified were removed.
    FactorsRemovedByReset,
    /// The operator's test message.
    Test,
}

impl MailKind {
    /// The template's and the metrics' name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "reset",
            Self::Invitation => "invitation",
            Self::Verification => "verify",
            Self::EmailChange => "email_change",
            Self::EmailChangeNotice => "email_change_notice",
            Self::EmailInUse => "email_in_use",
            Self::FactorAdded => "factor_added",
            Self::FactorRemoved => "factor_removed",
            Self::FactorsRemovedByReset => "factors_removed_by_reset",
            Self::Test => "test",
        }
    }
}

/// Work for the delivery worker.
#[derive(Debug, Clone, PartialEq)]
pub enum MailJob {
    /// Someone asked to reset the password of the account at `email`, as typed: registered or
    /// not, the request was queued the same way. `requested_by`: the client of a `forgot`,
    /// recorded with `password.reset_requested` when the link goes to a registered address;
    /// `None` when the request is on record already (an admin's).
    PasswordReset {
        email: Email,
        requested_by: Option<ClientInfo>,
    },
    /// The user's address is to be proved.
    Verification { user_id: UserId },
    /// An admin created the user without a password: a set-password link.
    Invitation { user_id: UserId },
    /// The user asked, from session `keep` (`None`: a token of the old service, which has no
    /// session), to move the account to `new_email`.
    EmailChange {
        user_id: UserId,
        new_email: Email,
        keep: Option<SessionId>,
    },
    /// Second factors of the user were added or removed: the account's address hears of it,
    /// naming each (`factors`, as [`crate::domain::mfa::Passkey::described`] names them).
    FactorNotice {
        user_id: UserId,
        change: FactorChange,
        factors: Vec<String>,
    },
}

/// What a [`MailJob::FactorNotice`] announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorChange {
    Added,
    Removed,
    /// Removed by a password reset: they were added while the address was unverified.
    RemovedByReset,
}

impl FactorChange {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::RemovedByReset => "removed_by_reset",
        }
    }

    /// The change of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Added, Self::Removed, Self::RemovedByReset]
            .into_iter()
            .find(|change| change.as_str() == name)
    }

    /// The mail that announces it.
    pub fn mail_kind(self) -> MailKind {
        match self {
            Self::Added => MailKind::FactorAdded,
            Self::Removed => MailKind::FactorRemoved,
            Self::RemovedByReset => MailKind::FactorsRemovedByReset,
        }
    }
}

/// A queued job as the worker claims it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMail {
    pub id: i64,
    pub job: MailJob,
    /// Delivery attempts made before this one.
    pub attempts: u32,
    pub queued_at: DateTime<Utc>,
}

/// How many jobs wait, and how many gave up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    pub pending: u64,
    pub failed: u64,
}

/// A message for the `Mailer` to compose from its template and deliver.
#[derive(Clone, PartialEq)]
pub struct Mail {
    pub kind: MailKind,
    pub to: String,
    /// The link to follow; it carries a token, so it is never logged by the core.
    pub link: Option<String>,
    /// The address an email change goes to (for the notice to the old one).
    pub new_email: Option<String>,
    /// How long the link works.
    pub valid_for: Option<TimeDelta>,
    /// The second factors a notice names, as one line.
    pub factors: Option<String>,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("kind", &self.kind)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// What a one-time token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTokenKind {
    PasswordReset,
    Verification,
    EmailChange,
}

impl EmailTokenKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::Verification => "verification",
            Self::EmailChange => "email_change",
        }
    }

    /// The kind of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::PasswordReset, Self::Verification, Self::EmailChange]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// The SHA-256 of a link's token, hex encoded: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailTokenHash(pub String);

impl EmailTokenHash {
    pub fn of(token: &str) -> Self {
        Self(sha256_hex(token))
    }
}

/// A fresh token: the secret for the link, and what gets stored.
#[derive(Clone, PartialEq)]
pub struct NewEmailToken {
    /// Goes into one mail's link, never into storage.
    pub secret: String,
    pub hash: EmailTokenHash,
    pub kind: EmailTokenKind,
    pub user_id: UserId,
    /// The address the link is sent to: a verification proves this address only.
    pub email: String,
    /// For an email change: where the account moves.
    pub new_email: Option<Email>,
    /// For an email change: the session that asked, which survives it.
    pub keep_session: Option<SessionId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl NewEmailToken {
    /// Draws 256 random bits for `user_id`'s token of `kind`, valid for `ttl` from `now`.
    pub fn generate(kind: EmailTokenKind, user: &User, now: DateTime<Utc>, ttl: TimeDelta) -> Self {
        let secret = random_secret();
        Self {
            hash: EmailTokenHash::of(&secret),
            secret,
            kind,
            user_id: user.id,
            email: user.email.as_str().to_owned(),
            new_email: None,
            keep_session: None,
            created_at: now,
            expires_at: now + ttl,
        }
    }
}

impl fmt::Debug for NewEmailToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEmailToken")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored token with the user it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailTokenRecord {
    pub kind: EmailTokenKind,
    pub user: User,
    pub email: String,
    pub new_email: Option<Email>,
    pub keep_session: Option<SessionId>,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
}

impl EmailTokenRecord {
    /// Whether it may still be used for `kind` at `now`: the right kind, unspent, unexpired,
    /// its user active, and the link sent to the address the user still has.
    pub fn usable_for(&self, kind: EmailTokenKind, now: DateTime<Utc>) -> bool {
        self.kind == kind
            && self.spent_at.is_none()
            && now < self.expires_at
            && self.user.is_active
            && Email::from_trusted(self.email.clone()) == self.user.email
    }
}

/// A link from a template: `{public_url}` and `{token}` replaced.
pub fn link(template: &str, public_url: &str, token: &str) -> String {
    template
        .replace("{public_url}", public_url.trim_end_matches('/'))
        .replace("{token}", token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PasswordHash, Role};

    fn user(email: &str) -> User {
        User {
            id: UserId(1),
            email: Email::parse(email).unwrap(),
            full_name: None,
            role: Role::User,
            is_active: true,
            email_verified: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_login_at: None,
            password_hash: PasswordHash::new("h".into()),
            credential_version: 0,
        }
    }

    #[test]
    fn tokens_carry_256_random_bits_and_are_stored_only_as_their_hash() {
        let now = Utc::now();
        let owner = user("ann@example.com");
        let token = NewEmailToken::generate(
            EmailTokenKind::PasswordReset,
            &owner,
            now,
            TimeDelta::minutes(30),
        );
        assert_eq!(token.secret.len(), 43);
        assert_eq!(token.hash, EmailTokenHash::of(&token.secret));
        assert!(!format!("{token:?}").contains(&token.secret));
        assert_eq!(token.expires_at, now + TimeDelta::minutes(30));
    }

    #[test]
    fn a_token_is_usable_once_for_its_own_kind_until_it_expires() {
        let now = Utc::now();
        let record = EmailTokenRecord {
            kind: EmailTokenKind::Verification,
            user: user("ann@example.com"),
            email: "ann@example.com".into(),
            new_email: None,
            keep_session: None,
            expires_at: now + TimeDelta::hours(1),
            spent_at: None,
        };
        assert!(record.usable_for(EmailTokenKind::Verification, now));
        assert!(!record.usable_for(EmailTokenKind::PasswordReset, now));
        assert!(!record.usable_for(EmailTokenKind::Verification, now + TimeDelta::hours(1)));
        let spent = EmailTokenRecord {
            spent_at: Some(now),
            ..record.clone()
        };
        assert!(!spent.usable_for(EmailTokenKind::Verification, now));
        let moved = EmailTokenRecord {
            user: user("bob@example.com"),
            ..record.clone()
        };
        assert!(!moved.usable_for(EmailTokenKind::Verification, now));
        let mut inactive = record;
        inactive.user.is_active = false;
        assert!(!inactive.usable_for(EmailTokenKind::Verification, now));
    }

    #[test]
    fn links_fill_in_the_public_url_and_the_token() {
        assert_eq!(
            link(
                "{public_url}/console/reset?token={token}",
                "https://auth.example/",
                "abc"
            ),
            "https://auth.example/console/reset?token=abc"
        );
    }
}
