//! Mail the service sends and the jobs that lead to it (the tokens its links carry are in
//! [`super::link_token`]).
//!
//! A request never sends mail. It queues a [`MailJob`] in the same transaction as what the job
//! announces, and answers; the delivery worker later turns the job into [`Mail`] (looking up
//! the account, drawing a token) and hands it to the `Mailer`. So an answer costs the same
//! whether or not an address is registered, and a token exists only as its hash in storage and
//! in the one mail that carries it.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use super::{ClientInfo, Email, SessionId, UserId};

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
