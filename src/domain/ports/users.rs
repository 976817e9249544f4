//! Storage of users: their reads, and the one write path of an account.

use async_trait::async_trait;

use crate::domain::change::{AccountChange, Applied};
use crate::domain::{BackendError, Email, NewUser, User, UserId, UserQuery};

/// Users: created, read, listed, and changed only by [`AccountChange`]s.
///
/// An account change may end the user's sessions, spend their link tokens, touch their second
/// factors, record events and queue mail: the store that serves this port serves those ports
/// too, so that [`UserRepository::apply`] makes all of it one transaction.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    /// Checks that storage answers, for readiness probes.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when it does not, within the adapter's timeout.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Stores a new user and returns it with its id, and records `user.audit` (whose
    /// `user_id`, when `None`, becomes the new id); with `send_verification`, queues a
    /// [`MailJob::Verification`](crate::domain::MailJob::Verification) for it; all in one transaction.
    ///
    /// # Errors
    /// [`CreateUserError::EmailTaken`] when a user with the same normalised email exists, also
    /// when a concurrent insert wins the race (the unique index decides, not a prior read);
    /// [`CreateUserError::Backend`] otherwise.
    async fn create_user(&self, user: NewUser) -> Result<User, CreateUserError>;

    /// Finds a user by normalised email.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown email is `Ok(None)`.
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError>;

    /// Finds a user by id.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown id is `Ok(None)`.
    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError>;

    /// Finds the user that `portcullis import pyauth` made from pyauth's row `pyauth_id`: an
    /// imported user holding that id. A user who registered here is never it, whatever their
    /// id, and neither is a row the import skipped or never saw.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; no such user is `Ok(None)`.
    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError>;

    /// Applies `change` to its account all or nothing: in one transaction (or under one lock)
    /// that first locks the account, checks every condition, then makes every edit in order,
    /// records its events and queues its mail. The store decides nothing else: what a change
    /// does is the core's.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed. A condition that does not
    /// hold (or an address or credential someone else holds) is `Ok(Applied::Refused)`.
    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError>;

    /// Users matching `query`, newest first (by id, descending), at most `query.limit`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError>;
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Backend(#[from] BackendError),
}
