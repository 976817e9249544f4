//! [`UserRepository`] with [`SessionCache`] in front of `find_session`: the local half of the
//! cache's coherence.
//!
//! Each write that ends a session or changes a user drops what it made stale once the inner
//! repository has returned, whatever it returned (a timeout may come after a commit), so the
//! request that made the write never answers before this instance has forgotten the old state.
//! Other instances hear of it from the storage's invalidation feed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Invalidation, Lookup, SessionCache};
use crate::domain::ports::{CreateSessionError, CreateUserError, Rotation, UserRepository};
use crate::domain::{
    AccountChange, Applied, AuditEvent, AuditQuery, BackendError, ClientInfo, CookieHash, Email,
    EmailTokenHash, EmailTokenRecord, MailJob, NewAuditEvent, NewEmailToken, NewRefreshToken,
    NewSession, NewUser, RefreshTokenHash, RefreshTokenRecord, Session, SessionId, SessionKey,
    User, UserId, UserQuery,
};

/// The decorator; see the module documentation.
pub struct CachedSessions {
    inner: Arc<dyn UserRepository>,
    cache: Arc<SessionCache>,
}

impl CachedSessions {
    pub fn new(inner: Arc<dyn UserRepository>, cache: Arc<SessionCache>) -> Self {
        Self { inner, cache }
    }

    /// Returns `result` after dropping what the write behind it made stale.
    fn invalidated<T>(&self, what: Invalidation, result: T) -> T {
        self.cache.invalidate(what);
        result
    }
}

#[async_trait]
impl UserRepository for CachedSessions {
    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError> {
        match self.cache.lookup(id) {
            Lookup::Hit(found) => Ok(Some(found.as_ref().clone())),
            Lookup::Miss(ticket) => {
                let found = self.inner.find_session(id).await?;
                if let Some((session, user)) = &found {
                    self.cache.fill(ticket, session, user);
                }
                Ok(found)
            }
            Lookup::Bypass => self.inner.find_session(id).await,
        }
    }

    // Writes that end sessions or change a user.

    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError> {
        let user = change.user;
        let result = self.inner.apply(change).await;
        self.invalidated(Invalidation::User(user), result)
    }

    /// Also a user change: the last login moves, and sessions beyond the limit end.
    async fn create_session(
        &self,
        session: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let user = session.user_id;
        let result = self.inner.create_session(session, key).await;
        self.invalidated(Invalidation::User(user), result)
    }

    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let result = self.inner.end_session(user_id, id, now, audit).await;
        self.invalidated(Invalidation::Session(id), result)
    }

    // Reads, and writes that change no session check: a refresh or a console page view moves
    // a session's idle end on, which a cached entry (ending at the old one) never outlives.

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }

    async fn create_user(&self, user: NewUser) -> Result<User, CreateUserError> {
        self.inner.create_user(user).await
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError> {
        self.inner.find_user_by_email(email).await
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError> {
        self.inner.find_user_by_id(id).await
    }

    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError> {
        self.inner.find_pyauth_user(pyauth_id).await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        self.inner.list_users(query).await
    }

    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        self.inner.record_audit(event).await
    }

    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.inner.record_folded(event, since).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError> {
        self.inner.list_audit(query).await
    }

    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError> {
        self.inner.find_cookie_session(hash).await
    }

    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.inner.touch_session(id, now, idle_expires_at).await
    }

    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError> {
        self.inner.find_refresh_token(hash).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: ClientInfo,
    ) -> Result<Rotation, BackendError> {
        self.inner
            .rotate_refresh_token(presented, next, client)
            .await
    }

    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError> {
        self.inner.list_live_sessions(user_id, now, limit).await
    }

    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.inner.enqueue_mail(job, now).await
    }

    async fn store_email_token(
        &self,
        token: NewEmailToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        self.inner.store_email_token(token, audit).await
    }

    async fn find_email_token(
        &self,
        hash: &EmailTokenHash,
    ) -> Result<Option<EmailTokenRecord>, BackendError> {
        self.inner.find_email_token(hash).await
    }

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError> {
        self.inner.purge_expired(now, audit_before).await
    }
}
