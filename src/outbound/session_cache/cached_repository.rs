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
use crate::domain::mfa::FactorRemoval;
use crate::domain::ports::{
    AdminWriteError, CreateSessionError, CreateUserError, ResetOutcome, Rotation, UserRepository,
};
use crate::domain::{
    AuditEvent, AuditQuery, BackendError, ClientInfo, CookieHash, Email, EmailTokenHash,
    EmailTokenRecord, MailJob, NewAuditEvent, NewEmailToken, NewRefreshToken, NewSession, NewUser,
    PasswordHash, RefreshTokenHash, RefreshTokenRecord, Session, SessionId, SessionKey, User,
    UserChanges, UserId, UserQuery,
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

    async fn update_user(
        &self,
        id: UserId,
        changes: UserChanges,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<Option<User>, AdminWriteError> {
        let result = self.inner.update_user(id, changes, now, audit).await;
        self.invalidated(Invalidation::User(id), result)
    }

    async fn delete_user(&self, id: UserId, audit: NewAuditEvent) -> Result<bool, AdminWriteError> {
        let result = self.inner.delete_user(id, audit).await;
        self.invalidated(Invalidation::User(id), result)
    }

    async fn end_all_sessions(
        &self,
        id: UserId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let result = self.inner.end_all_sessions(id, now, audit).await;
        self.invalidated(Invalidation::User(id), result)
    }

    async fn rehash_password(
        &self,
        id: UserId,
        old: &PasswordHash,
        new: PasswordHash,
    ) -> Result<bool, BackendError> {
        let result = self.inner.rehash_password(id, old, new).await;
        self.invalidated(Invalidation::User(id), result)
    }

    async fn set_password(
        &self,
        id: UserId,
        hash: PasswordHash,
        keep: Option<SessionId>,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<(), BackendError> {
        let result = self.inner.set_password(id, hash, keep, now, audit).await;
        self.invalidated(Invalidation::User(id), result)
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

    async fn reset_password(
        &self,
        token: &EmailTokenHash,
        user: &User,
        hash: PasswordHash,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
        removal: FactorRemoval,
        notice: Option<MailJob>,
    ) -> Result<ResetOutcome, BackendError> {
        let result = self
            .inner
            .reset_password(token, user, hash, now, audit, removal, notice)
            .await;
        self.invalidated(Invalidation::User(user.id), result)
    }

    async fn verify_email(
        &self,
        token: &EmailTokenHash,
        user_id: UserId,
        email: &str,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<Option<User>, BackendError> {
        let result = self
            .inner
            .verify_email(token, user_id, email, now, audit)
            .await;
        self.invalidated(Invalidation::User(user_id), result)
    }

    async fn change_email(
        &self,
        token: &EmailTokenHash,
        user: &User,
        new_email: &Email,
        keep: Option<SessionId>,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<Option<User>, CreateUserError> {
        let result = self
            .inner
            .change_email(token, user, new_email, keep, now, audit)
            .await;
        self.invalidated(Invalidation::User(user.id), result)
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

    async fn enqueue_mail(
        &self,
        job: MailJob,
        now: DateTime<Utc>,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        self.inner.enqueue_mail(job, now, audit).await
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
