//! Storage of sessions and their refresh tokens.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    BackendError, CookieHash, NewAuditEvent, NewRefreshToken, NewSession, RefreshTokenHash,
    RefreshTokenRecord, Session, SessionId, SessionKey, User, UserId,
};

/// Sessions, with their refresh tokens or console cookies.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SessionRepository: Send + Sync + 'static {
    /// Stores a new session with its key (its first refresh token, or the hash of its console
    /// cookie; the idle end is the key's), in one transaction, if the user is
    /// still active at `session.credential_version`; in the same transaction, sets the user's
    /// last login to `session.created_at`, records `session.audit`, and ends the user's least
    /// recently used live sessions of the same kind (the same `client_id`, or Portcullis's
    /// own) beyond `session.live_limit`.
    ///
    /// The version check and the insert must be atomic against an account change that moves the
    /// version on ([`UserRepository::apply`](super::UserRepository::apply)): a session is either refused, or stored before the
    /// change and ended by it.
    ///
    /// # Errors
    /// [`CreateSessionError::Stale`] when the user's version moved on, the user is inactive or
    /// gone; [`CreateSessionError::Backend`] when storage fails. Either way nothing was stored.
    async fn create_session(
        &self,
        session: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError>;

    /// Loads a session and its user in one indexed lookup: the check behind every
    /// authenticated request. Ended and expired sessions are returned too; the core decides.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown id is `Ok(None)`.
    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError>;

    /// Loads the session of a console cookie, with its user. Ended and expired sessions are
    /// returned too; the core decides.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError>;

    /// Records a use of a live session at `now` and moves its idle end to `idle_expires_at`;
    /// an ended session is left as it is.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Loads a refresh token, spent or not, with its session and user.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError>;

    /// Spends `presented` and stores `next` in its place, atomically: a conditional update
    /// marks `presented` spent only if it is not spent yet, so of two concurrent rotations of
    /// one token exactly one returns [`Rotation::Rotated`]. The session's last use, client and
    /// idle expiry (`next.expires_at`) are updated with it, by an update that requires the
    /// session not to be ended, so a rotation racing a password change, a deactivation or a
    /// logout either happens before it (and is ended by it) or changes nothing.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed.
    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: crate::domain::ClientInfo,
    ) -> Result<Rotation, BackendError>;

    /// Lists a user's own sessions (not those of OpenID clients, which the user sees as grants)
    /// that are live at `now`, newest first, at most `limit` of them.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError>;

    /// Ends one session of `user_id` at `now`, and the sessions that end with it (their
    /// `origin`), recording `audit` with it. Returns `false`,
    /// recording nothing, when no live session of that user has this id (someone else's
    /// session is not touched).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError>;
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CreateSessionError {
    /// The user changed since the password was checked (new password, deactivation), or is
    /// gone: the check no longer vouches for anything.
    #[error("the user changed while the session was being opened")]
    Stale,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a refresh-token rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Rotated,
    /// The token was spent already; nothing changed.
    AlreadySpent,
    /// The session has ended; nothing changed.
    SessionEnded,
}
