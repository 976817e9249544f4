//! [`SessionRepository`] with [`SessionCache`] in front of `find_session`, and
//! [`UserRepository`] whose account changes drop what they made stale: the local half of the
//! cache's coherence ([`CachedGrants`](super::CachedGrants) does the same for the OpenID
//! provider's writes). The other storage ports need no decorator: nothing they write is cached.
//!
//! Each write that ends a session or changes a user drops what it made stale once the inner
//! repository has returned, whatever it returned (a timeout may come after a commit), so the
//! request that made the write never answers before this instance has forgotten the old state.
//! Other instances hear of it from the storage's invalidation feed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Invalidation, Lookup, SessionCache};
use crate::domain::ports::{
    CreateSessionError, CreateUserError, Rotation, SessionRepository, UserRepository,
};
use crate::domain::{
    AccountChange, Applied, BackendError, ClientInfo, CookieHash, Email, NewAuditEvent,
    NewRefreshToken, NewSession, NewUser, RefreshTokenHash, RefreshTokenRecord, Session, SessionId,
    SessionKey, User, UserId, UserQuery,
};

/// The decorator; see the module documentation.
pub struct CachedSessions {
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    cache: Arc<SessionCache>,
}

impl CachedSessions {
    /// The decorator over `users` and `sessions`, which must be served by one store.
    pub fn new(
        users: Arc<dyn UserRepository>,
        sessions: Arc<dyn SessionRepository>,
        cache: Arc<SessionCache>,
    ) -> Self {
        Self {
            users,
            sessions,
            cache,
        }
    }

    /// Returns `result` after dropping what the write behind it made stale.
    fn invalidated<T>(&self, what: Invalidation, result: T) -> T {
        self.cache.invalidate(what);
        result
    }
}

#[async_trait]
impl UserRepository for CachedSessions {
    // Writes that end sessions or change a user.

    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError> {
        let user = change.user;
        let result = self.users.apply(change).await;
        self.invalidated(Invalidation::User(user), result)
    }

    // Reads, and writes that change no session check: a refresh or a console page view moves
    // a session's idle end on, which a cached entry (ending at the old one) never outlives.

    async fn ping(&self) -> Result<(), BackendError> {
        self.users.ping().await
    }

    async fn create_user(&self, user: NewUser) -> Result<User, CreateUserError> {
        self.users.create_user(user).await
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError> {
        self.users.find_user_by_email(email).await
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError> {
        self.users.find_user_by_id(id).await
    }

    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError> {
        self.users.find_pyauth_user(pyauth_id).await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        self.users.list_users(query).await
    }
}

#[async_trait]
impl SessionRepository for CachedSessions {
    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError> {
        match self.cache.lookup(id) {
            Lookup::Hit(found) => Ok(Some(found.as_ref().clone())),
            Lookup::Miss(ticket) => {
                let found = self.sessions.find_session(id).await?;
                if let Some((session, user)) = &found {
                    self.cache.fill(ticket, session, user);
                }
                Ok(found)
            }
            Lookup::Bypass => self.sessions.find_session(id).await,
        }
    }

    /// Also a user change: the last login moves, and sessions beyond the limit end.
    async fn create_session(
        &self,
        session: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let user = session.user_id;
        let result = self.sessions.create_session(session, key).await;
        self.invalidated(Invalidation::User(user), result)
    }

    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let result = self.sessions.end_session(user_id, id, now, audit).await;
        // The user's, not the session's: the sessions that end with it go too.
        self.invalidated(Invalidation::User(user_id), result)
    }

    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError> {
        self.sessions.find_cookie_session(hash).await
    }

    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.sessions.touch_session(id, now, idle_expires_at).await
    }

    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError> {
        self.sessions.find_refresh_token(hash).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: ClientInfo,
    ) -> Result<Rotation, BackendError> {
        self.sessions
            .rotate_refresh_token(presented, next, client)
            .await
    }

    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError> {
        self.sessions.list_live_sessions(user_id, now, limit).await
    }
}
