//! [`UserRepository`] in a mutex-guarded map.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::ports::{CreateSessionError, CreateUserError, Rotation, UserRepository};
use crate::domain::{
    BackendError, ClientInfo, Email, NewRefreshToken, NewSession, NewUser, PasswordHash,
    RefreshTokenHash, RefreshTokenRecord, Role, Session, SessionId, User, UserId,
};

#[derive(Default)]
struct State {
    next_id: i64,
    users: HashMap<UserId, User>,
    by_email: HashMap<String, UserId>,
    sessions: HashMap<SessionId, Session>,
    refresh_tokens: HashMap<RefreshTokenHash, StoredRefreshToken>,
}

struct StoredRefreshToken {
    session_id: SessionId,
    expires_at: DateTime<Utc>,
    spent_at: Option<DateTime<Utc>>,
}

impl State {
    fn end_sessions(&mut self, user_id: UserId, keep: Option<SessionId>, now: DateTime<Utc>) {
        for session in self.sessions.values_mut() {
            if session.user_id == user_id && Some(session.id) != keep && session.ended_at.is_none()
            {
                session.ended_at = Some(now);
            }
        }
    }
}

/// [`UserRepository`] in a mutex-guarded map.
#[derive(Default)]
pub struct MemoryUserRepository {
    state: Mutex<State>,
}

impl MemoryUserRepository {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        // A poisoned lock means a panic mid-update: the state may be inconsistent.
        self.state
            .lock()
            .map_err(|_| BackendError::unexpected("in-memory state poisoned"))
    }
}

#[async_trait]
impl UserRepository for MemoryUserRepository {
    async fn ping(&self) -> Result<(), BackendError> {
        self.state().map(drop)
    }

    async fn create_user(&self, new: NewUser) -> Result<User, CreateUserError> {
        let mut state = self.state()?;
        if state.by_email.contains_key(new.email.key()) {
            return Err(CreateUserError::EmailTaken);
        }
        state.next_id += 1;
        let user = User {
            id: UserId(state.next_id),
            email: new.email,
            full_name: new.full_name,
            role: new.role,
            is_active: true,
            created_at: new.created_at,
            password_hash: new.password_hash,
            credential_version: 0,
        };
        state.by_email.insert(user.email.key().to_owned(), user.id);
        state.users.insert(user.id, user.clone());
        Ok(user)
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError> {
        let state = self.state()?;
        Ok(state
            .by_email
            .get(email.key())
            .and_then(|id| state.users.get(id))
            .cloned())
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError> {
        Ok(self.state()?.users.get(&id).cloned())
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<Option<User>, BackendError> {
        let mut state = self.state()?;
        Ok(state.users.get_mut(&id).map(|user| {
            user.role = role;
            user.clone()
        }))
    }

    async fn set_active(
        &self,
        id: UserId,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, BackendError> {
        let mut state = self.state()?;
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(None);
        };
        user.is_active = active;
        if !active {
            user.credential_version += 1;
        }
        let user = user.clone();
        if !active {
            state.end_sessions(id, None, now);
        }
        Ok(Some(user))
    }

    async fn set_password(
        &self,
        id: UserId,
        hash: PasswordHash,
        keep: Option<SessionId>,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if let Some(user) = state.users.get_mut(&id) {
            user.password_hash = hash;
            user.credential_version += 1;
            state.end_sessions(id, keep, now);
        }
        Ok(())
    }

    async fn create_session(
        &self,
        new: NewSession,
        refresh: NewRefreshToken,
    ) -> Result<Session, CreateSessionError> {
        let session = Session {
            id: new.id,
            user_id: new.user_id,
            created_at: new.created_at,
            last_used_at: new.created_at,
            expires_at: new.expires_at,
            idle_expires_at: refresh.expires_at,
            ended_at: None,
            client: new.client,
        };
        let mut state = self.state()?;
        let current = state.users.get(&new.user_id).is_some_and(|user| {
            user.is_active && user.credential_version == new.credential_version
        });
        if !current {
            return Err(CreateSessionError::Stale);
        }
        state.sessions.insert(session.id, session.clone());
        let now = new.created_at;
        let mut live: Vec<&mut Session> = state
            .sessions
            .values_mut()
            .filter(|s| s.user_id == new.user_id && s.is_live(now))
            .collect();
        live.sort_by_key(|s| std::cmp::Reverse((s.last_used_at, s.created_at)));
        for beyond in live.into_iter().skip(new.live_limit as usize) {
            beyond.ended_at = Some(now);
        }
        state.refresh_tokens.insert(
            refresh.hash,
            StoredRefreshToken {
                session_id: session.id,
                expires_at: refresh.expires_at,
                spent_at: None,
            },
        );
        Ok(session)
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError> {
        let state = self.state()?;
        Ok(state.sessions.get(&id).and_then(|session| {
            let user = state.users.get(&session.user_id)?;
            Some((session.clone(), user.clone()))
        }))
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
            .filter(|s| s.user_id == user_id && s.is_live(now))
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
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.sessions.get_mut(&id) {
            Some(session) if session.user_id == user_id && session.is_live(now) => {
                session.ended_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, BackendError> {
        let mut state = self.state()?;
        let before = state.sessions.len();
        state.sessions.retain(|_, s| s.is_live(now));
        let State {
            sessions,
            refresh_tokens,
            ..
        } = &mut *state;
        refresh_tokens.retain(|_, t| t.expires_at > now && sessions.contains_key(&t.session_id));
        Ok((before - state.sessions.len()) as u64)
    }
}
