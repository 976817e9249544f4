//! [`SessionRepository`] in the in-memory store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::store::{MemoryStore, StoredRefreshToken};
use crate::domain::ports::{CreateSessionError, Rotation, SessionRepository};
use crate::domain::{
    BackendError, ClientInfo, CookieHash, NewAuditEvent, NewRefreshToken, NewSession,
    RefreshTokenHash, RefreshTokenRecord, Session, SessionId, SessionKey, User, UserId,
};

#[async_trait]
impl SessionRepository for MemoryStore {
    async fn create_session(
        &self,
        new: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let session = Session {
            id: new.id,
            user_id: new.user_id,
            created_at: new.created_at,
            last_used_at: new.created_at,
            expires_at: new.expires_at,
            idle_expires_at: key.idle_expires_at(),
            ended_at: None,
            client: new.client,
            methods: new.methods,
            client_id: new.client_id.clone(),
        };
        let mut state = self.state()?;
        let current = state.users.get(&new.user_id).is_some_and(|user| {
            user.is_active && user.credential_version == new.credential_version
        });
        if !current {
            return Err(CreateSessionError::Stale);
        }
        if let Some(user) = state.users.get_mut(&new.user_id) {
            user.last_login_at = Some(new.created_at);
        }
        state.record(new.audit);
        if let Some(origin) = new.origin {
            state.origins.insert(session.id, origin);
        }
        state.sessions.insert(session.id, session.clone());
        let now = new.created_at;
        let mut live: Vec<&mut Session> = state
            .sessions
            .values_mut()
            .filter(|s| s.user_id == new.user_id && s.client_id == new.client_id && s.is_live(now))
            .collect();
        live.sort_by_key(|s| std::cmp::Reverse((s.last_used_at, s.created_at)));
        for beyond in live.into_iter().skip(new.live_limit as usize) {
            beyond.ended_at = Some(now);
        }
        match key {
            SessionKey::RefreshToken(refresh) => {
                state.refresh_tokens.insert(
                    refresh.hash,
                    StoredRefreshToken {
                        session_id: session.id,
                        expires_at: refresh.expires_at,
                        spent_at: None,
                    },
                );
            }
            SessionKey::Cookie(cookie) => {
                state.cookies.insert(cookie.hash, session.id);
            }
        }
        Ok(session)
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError> {
        let state = self.state()?;
        Ok(state.sessions.get(&id).and_then(|session| {
            let user = state.users.get(&session.user_id)?;
            Some((session.clone(), user.clone()))
        }))
    }

    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError> {
        let state = self.state()?;
        Ok(state.cookies.get(hash).and_then(|id| {
            let session = state.sessions.get(id)?;
            let user = state.users.get(&session.user_id)?;
            Some((session.clone(), user.clone()))
        }))
    }

    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if let Some(session) = state.sessions.get_mut(&id).filter(|s| s.ended_at.is_none()) {
            session.last_used_at = now;
            session.idle_expires_at = idle_expires_at;
        }
        Ok(())
    }

    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError> {
        let state = self.state()?;
        Ok(state.refresh_tokens.get(hash).and_then(|token| {
            let session = state.sessions.get(&token.session_id)?;
            let user = state.users.get(&session.user_id)?;
            Some(RefreshTokenRecord {
                expires_at: token.expires_at,
                spent_at: token.spent_at,
                session: session.clone(),
                user: user.clone(),
            })
        }))
    }

    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: ClientInfo,
    ) -> Result<Rotation, BackendError> {
        let mut state = self.state()?;
        let now = next.created_at;
        // One lock: the checks and the writes cannot be interleaved.
        if state
            .sessions
            .get(&next.session_id)
            .is_none_or(|s| s.ended_at.is_some())
        {
            return Ok(Rotation::SessionEnded);
        }
        match state.refresh_tokens.get_mut(presented) {
            Some(token) if token.spent_at.is_none() => token.spent_at = Some(now),
            _ => return Ok(Rotation::AlreadySpent),
        }
        if let Some(session) = state.sessions.get_mut(&next.session_id) {
            session.last_used_at = now;
            session.idle_expires_at = next.expires_at;
            session.client = client;
        }
        state.refresh_tokens.insert(
            next.hash,
            StoredRefreshToken {
                session_id: next.session_id,
                expires_at: next.expires_at,
                spent_at: None,
            },
        );
        Ok(Rotation::Rotated)
    }

    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError> {
        let state = self.state()?;
        let mut sessions: Vec<Session> = state
            .sessions
            .values()
            .filter(|s| s.user_id == user_id && s.client_id.is_none() && s.is_live(now))
            .cloned()
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        sessions.truncate(limit as usize);
        Ok(sessions)
    }

    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.sessions.get_mut(&id) {
            Some(session) if session.user_id == user_id && session.is_live(now) => {
                session.ended_at = Some(now);
                let dependent: Vec<SessionId> = state
                    .origins
                    .iter()
                    .filter(|(_, origin)| **origin == id)
                    .map(|(dependent, _)| *dependent)
                    .collect();
                for dependent in dependent {
                    if let Some(session) = state.sessions.get_mut(&dependent) {
                        session.ended_at.get_or_insert(now);
                    }
                }
                state.record(audit);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
