//! Account changes as data: every effect of a write to one account, decided by the core and
//! described as one value, which a store applies atomically (one transaction, or one lock) or
//! not at all.
//!
//! The rules live where the change is built (the use cases); a store only makes the change
//! atomic, checks the conditions it carries, and says which one failed. So what a password
//! reset does is written once, here in the core, and unit-tested with a mock that records the
//! change; the SQL and memory stores apply whatever they are given. The session cache forgets
//! the account after every change it sees applied.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::mfa::{FactorRemoval, Passkey, RecoveryCodeHash};
use super::{
    Email, FullName, LinkTokenHash, LinkTokenKind, MailJob, NewAuditEvent, PasswordHash, Role,
    SessionId, User, UserChanges, UserId,
};

/// What must hold when a change is applied, checked in its transaction (with the account's
/// row locked) before anything of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The user is active at this credential version: no password change, reset or
    /// deactivation came in between.
    Current { credential_version: i64 },
    /// This one-time link token of the user is unspent; the change spends it.
    SpendsToken(LinkTokenHash),
    /// The user's address is still this one (a link proves only the address it was sent to).
    AddressIs(String),
    /// The factors added while the address was unverified, with an enrolment never confirmed,
    /// are exactly these.
    UnverifiedFactorsAre(FactorRemoval),
    /// The stored password hash is still this one (a rehash must not undo a new password).
    PasswordHashIs(PasswordHash),
    /// The pending TOTP secret is still this one, unconfirmed.
    PendingTotpIs(Vec<u8>),
    /// The user holds passkey `id`.
    HoldsPasskey(Uuid),
    /// The user has a second factor to remove (TOTP, recovery codes, or, with `passkeys`, a
    /// passkey).
    HasFactors { passkeys: bool },
    /// When the user is an active admin before the change, an active admin is left after it.
    /// Decided by the store for every change at once, however many race (the last-admin rule).
    LeavesAnActiveAdmin,
}

/// One effect of a change, applied in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    SetPasswordHash(PasswordHash),
    /// Ends what the old credentials allowed: sessions opening with the old version fail.
    BumpCredentialVersion,
    SetEmailVerified(bool),
    /// The new address, if nobody holds it (the unique index decides).
    SetEmail(Email),
    SetRole(Role),
    SetActive(bool),
    SetFullName(Option<FullName>),
    /// The account's `updated_at` becomes the change's time.
    Touch,
    /// Ends every open session of the user but `keep`.
    EndSessions {
        keep: Option<SessionId>,
    },
    /// Spends every unspent link token of the user of these kinds.
    SpendTokens(Vec<LinkTokenKind>),
    /// Removes the TOTP factor (confirmed or pending) with its recovery codes, and passkeys.
    RemoveFactors(FactorRemoval),
    /// Removes every passkey of the user.
    RemoveAllPasskeys,
    /// Confirms the pending TOTP factor: `step` is its last used one, `recovery` replaces the
    /// recovery codes.
    ConfirmTotp {
        step: i64,
        recovery: Vec<RecoveryCodeHash>,
        added_unverified: bool,
    },
    /// Stores a new passkey of the user, if its credential id is nobody's yet.
    AddPasskey(Passkey),
    /// Deletes the user with everything of theirs but their audit events.
    Delete,
}

/// Every effect of one write to one account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountChange {
    pub user: UserId,
    /// When it happens: the time of every timestamp it writes.
    pub at: DateTime<Utc>,
    pub conditions: Vec<Condition>,
    pub edits: Vec<Edit>,
    /// Recorded with the change, in its transaction.
    pub audit: Vec<NewAuditEvent>,
    /// Queued with the change, in its transaction.
    pub mail: Vec<MailJob>,
}

impl AccountChange {
    /// A change of `user` at `at` that does nothing yet.
    pub fn of(user: UserId, at: DateTime<Utc>) -> Self {
        Self {
            user,
            at,
            conditions: Vec::new(),
            edits: Vec::new(),
            audit: Vec::new(),
            mail: Vec::new(),
        }
    }

    /// The change, on condition that `condition` holds.
    #[must_use]
    pub fn when(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// The change, with `edit` too.
    #[must_use]
    pub fn then(mut self, edit: Edit) -> Self {
        self.edits.push(edit);
        self
    }

    /// The change, recording `event`.
    #[must_use]
    pub fn recording(mut self, event: NewAuditEvent) -> Self {
        self.audit.push(event);
        self
    }

    /// The change, queueing `job` when there is one.
    #[must_use]
    pub fn mailing(mut self, job: Option<MailJob>) -> Self {
        self.mail.extend(job);
        self
    }

    /// The change an administrator or the operator makes to an account's record. A
    /// deactivation also moves the credential version on and ends every session, so nothing
    /// the account allowed outlives it; a change that could remove an admin is kept only if an
    /// active admin is left.
    pub fn update(user: UserId, at: DateTime<Utc>, changes: UserChanges) -> Self {
        let mut change = Self::of(user, at);
        if changes.may_remove_an_admin() {
            change = change.when(Condition::LeavesAnActiveAdmin);
        }
        change.edits.extend(
            [
                changes.role.map(Edit::SetRole),
                changes.is_active.map(Edit::SetActive),
                changes.email_verified.map(Edit::SetEmailVerified),
                changes.full_name.map(Edit::SetFullName),
                Some(Edit::Touch),
            ]
            .into_iter()
            .flatten(),
        );
        if changes.is_active == Some(false) {
            change = change
                .then(Edit::BumpCredentialVersion)
                .then(Edit::EndSessions { keep: None });
        }
        change
    }

    /// A new password: the hash, a new credential version, and every session of the user ends
    /// but `keep`.
    #[must_use]
    pub fn new_password(self, hash: PasswordHash, keep: Option<SessionId>) -> Self {
        self.then(Edit::SetPasswordHash(hash))
            .then(Edit::BumpCredentialVersion)
            .then(Edit::Touch)
            .then(Edit::EndSessions { keep })
    }
}

/// Which condition of a change did not hold; nothing of the change was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// There is no such user (any more).
    UnknownUser,
    /// [`Condition::Current`] failed.
    NotCurrent,
    /// [`Condition::SpendsToken`] failed: the token was spent (or is not the user's).
    TokenSpent,
    /// [`Condition::AddressIs`] failed.
    AddressChanged,
    /// [`Condition::UnverifiedFactorsAre`] failed.
    FactorsChanged,
    /// [`Condition::PasswordHashIs`] failed.
    PasswordChanged,
    /// [`Condition::PendingTotpIs`] failed.
    TotpChanged,
    /// [`Condition::HoldsPasskey`] failed.
    NoSuchPasskey,
    /// [`Condition::HasFactors`] failed.
    NothingToRemove,
    /// [`Condition::LeavesAnActiveAdmin`] failed.
    LastAdmin,
    /// [`Edit::SetEmail`]: somebody holds the address.
    AddressTaken,
    /// [`Edit::AddPasskey`]: the credential is registered already.
    CredentialTaken,
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Kept; the user as they are now.
    Done(User),
    /// Kept; the user is gone ([`Edit::Delete`]).
    Deleted,
    /// Nothing was kept.
    Refused(Refusal),
}

impl Applied {
    /// The user after a change that was kept, or the refusal.
    ///
    /// # Errors
    /// The [`Refusal`]; a deletion is refused as [`Refusal::UnknownUser`], since no user is
    /// left to return.
    pub fn user(self) -> Result<User, Refusal> {
        match self {
            Self::Done(user) => Ok(user),
            Self::Deleted => Err(Refusal::UnknownUser),
            Self::Refused(refusal) => Err(refusal),
        }
    }

    /// Whether the change was kept.
    pub fn kept(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}
