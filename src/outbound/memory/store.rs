//! The in-memory store: every storage port on one mutex-guarded state, so that an account
//! change is applied under one lock (`changes.rs`), a job queued with a user is there for the
//! worker (`outbox.rs`), and a user's sessions (`sessions.rs`), second factors (`factors.rs`)
//! and OpenID grants (`oauth_state.rs`) go with the user. [`UserRepository`], [`AuditLog`] and
//! [`Housekeeping`] are here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::factor_state::FactorState;
use super::oauth_state::OAuthState;
use crate::domain::ports::{AuditLog, CreateUserError, Housekeeping, UserRepository};
use crate::domain::{
    AccountChange, Applied, AuditEvent, AuditQuery, BackendError, CookieHash, Email, FOLDED_COUNT,
    LinkTokenHash, LinkTokenKind, MailJob, NewAuditEvent, NewLinkToken, NewUser, RefreshTokenHash,
    Role, Session, SessionId, User, UserId, UserQuery,
};

#[derive(Default)]
pub(super) struct State {
    pub(super) next_id: i64,
    pub(super) users: HashMap<UserId, User>,
    pub(super) by_email: HashMap<String, UserId>,
    pub(super) sessions: HashMap<SessionId, Session>,
    /// A session's origin: the session it ends with (`NewSession::origin`).
    pub(super) origins: HashMap<SessionId, SessionId>,
    pub(super) cookies: HashMap<CookieHash, SessionId>,
    pub(super) refresh_tokens: HashMap<RefreshTokenHash, StoredRefreshToken>,
    pub(super) email_tokens: HashMap<LinkTokenHash, NewLinkToken>,
    pub(super) spent_email_tokens: HashMap<LinkTokenHash, DateTime<Utc>>,
    pub(super) next_mail_id: i64,
    pub(super) outbox: BTreeMap<i64, StoredMail>,
    pub(super) audit: BTreeMap<i64, NewAuditEvent>,
    pub(super) factors: FactorState,
    pub(super) oauth: OAuthState,
}

pub(super) struct StoredMail {
    pub(super) job: MailJob,
    pub(super) queued_at: DateTime<Utc>,
    pub(super) attempts: u32,
    pub(super) due_at: DateTime<Utc>,
    pub(super) claimed_until: Option<DateTime<Utc>>,
    pub(super) state: MailState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MailState {
    Pending,
    Sent,
    Failed,
}

pub(super) struct StoredRefreshToken {
    pub(super) session_id: SessionId,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) spent_at: Option<DateTime<Utc>>,
}

impl State {
    pub(super) fn record(&mut self, event: NewAuditEvent) {
        let id = self.audit.keys().next_back().map_or(1, |last| last + 1);
        self.audit.insert(id, event);
    }

    /// Active admins other than `id`.
    pub(super) fn other_admins(&self, id: UserId) -> usize {
        self.users
            .values()
            .filter(|u| u.id != id && u.role == Role::Admin && u.is_active)
            .count()
    }

    pub(super) fn enqueue(&mut self, job: MailJob, now: DateTime<Utc>) {
        self.next_mail_id += 1;
        self.outbox.insert(
            self.next_mail_id,
            StoredMail {
                job,
                queued_at: now,
                attempts: 0,
                due_at: now,
                claimed_until: None,
                state: MailState::Pending,
            },
        );
    }

    /// Spends every unspent token of `user_id` of one of `kinds`.
    pub(super) fn spend_tokens(
        &mut self,
        user_id: UserId,
        kinds: &[LinkTokenKind],
        now: DateTime<Utc>,
    ) {
        let State {
            email_tokens,
            spent_email_tokens,
            ..
        } = self;
        for (hash, token) in email_tokens.iter() {
            if token.user_id == user_id && kinds.contains(&token.kind) {
                spent_email_tokens.entry(hash.clone()).or_insert(now);
            }
        }
    }

    /// Spends `token` if it is unspent and of `user_id`; says whether it did.
    pub(super) fn spend(
        &mut self,
        token: &LinkTokenHash,
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> bool {
        let ours = self
            .email_tokens
            .get(token)
            .is_some_and(|t| t.user_id == user_id);
        if !ours || self.spent_email_tokens.contains_key(token) {
            return false;
        }
        self.spent_email_tokens.insert(token.clone(), now);
        true
    }

    /// The user holding the address of look-alike key `key`.
    pub(super) fn owner_of(&self, key: &str) -> Option<UserId> {
        self.by_email.get(key).copied()
    }

    /// Moves user `id` from the address key `old` to `new`.
    pub(super) fn rekey(&mut self, old: &str, new: String, id: UserId) {
        self.by_email.remove(old);
        self.by_email.insert(new, id);
    }

    /// Whether `token` is unspent and of `user_id`.
    pub(super) fn unspent(&self, token: &LinkTokenHash, user_id: UserId) -> bool {
        self.email_tokens
            .get(token)
            .is_some_and(|t| t.user_id == user_id)
            && !self.spent_email_tokens.contains_key(token)
    }

    /// Deletes user `id` with everything of theirs but their audit events, as the database's
    /// ON DELETE CASCADE does.
    pub(super) fn delete(&mut self, id: UserId) {
        let Some(user) = self.users.remove(&id) else {
            return;
        };
        self.by_email.remove(user.email.key());
        self.sessions.retain(|_, s| s.user_id != id);
        self.forget_orphaned_keys();
        self.email_tokens.retain(|_, t| t.user_id != id);
        self.factors.forget_user(id);
        self.oauth.forget_user(id);
    }

    /// Forgets the refresh tokens and cookies of sessions no longer stored, as the database's
    /// ON DELETE CASCADE does.
    pub(super) fn forget_orphaned_keys(&mut self) {
        let Self {
            sessions,
            refresh_tokens,
            cookies,
            origins,
            ..
        } = self;
        refresh_tokens.retain(|_, t| sessions.contains_key(&t.session_id));
        cookies.retain(|_, session| sessions.contains_key(session));
        origins.retain(|session, _| sessions.contains_key(session));
    }

    pub(super) fn end_sessions(
        &mut self,
        user_id: UserId,
        keep: Option<SessionId>,
        now: DateTime<Utc>,
    ) {
        for session in self.sessions.values_mut() {
            if session.user_id == user_id && Some(session.id) != keep && session.ended_at.is_none()
            {
                session.ended_at = Some(now);
            }
        }
    }
}

/// How long delivered and given-up mail stays, from when it was queued.
const SENT_MAIL_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// Every storage port in mutex-guarded maps.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn state(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        // A poisoned lock means a panic mid-update: the state may be inconsistent.
        self.state
            .lock()
            .map_err(|_| BackendError::unexpected("in-memory state poisoned"))
    }
}

#[async_trait]
impl UserRepository for MemoryStore {
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
            email_verified: false,
            created_at: new.created_at,
            updated_at: new.created_at,
            last_login_at: None,
            password_hash: new.password_hash,
            credential_version: 0,
        };
        state.by_email.insert(user.email.key().to_owned(), user.id);
        state.users.insert(user.id, user.clone());
        let mut audit = new.audit;
        audit.user_id = audit.user_id.or(Some(user.id));
        state.record(audit);
        if new.send_verification {
            state.enqueue(MailJob::Verification { user_id: user.id }, new.created_at);
        }
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

    async fn find_pyauth_user(&self, _pyauth_id: i64) -> Result<Option<User>, BackendError> {
        // Nothing is ever imported into memory (it has no `ImportTarget`).
        Ok(None)
    }

    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError> {
        Ok(self.state()?.apply(change))
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        let state = self.state()?;
        let matches = |user: &User| {
            query.before.is_none_or(|before| user.id < before)
                && query.role.is_none_or(|role| user.role == role)
                && query
                    .is_active
                    .is_none_or(|active| user.is_active == active)
                && query
                    .email_verified
                    .is_none_or(|verified| user.email_verified == verified)
                && query.search.as_deref().is_none_or(|text| {
                    user.email.normalized().contains(text)
                        || user
                            .full_name
                            .as_ref()
                            .is_some_and(|n| n.as_str().to_lowercase().contains(text))
                })
        };
        let mut found: Vec<User> = state
            .users
            .values()
            .filter(|user| matches(user))
            .cloned()
            .collect();
        found.sort_by_key(|user| std::cmp::Reverse(user.id));
        found.truncate(query.limit as usize);
        Ok(found)
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        self.state()?.record(event);
        Ok(())
    }

    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        let folded_into = state.audit.values_mut().rev().find(|earlier| {
            earlier.at >= since
                && earlier.kind == event.kind
                && earlier.success == event.success
                && earlier.client.ip == event.client.ip
                && earlier.user_id == event.user_id
        });
        match folded_into {
            Some(earlier) => {
                let count = earlier
                    .detail
                    .get(FOLDED_COUNT)
                    .and_then(|count| count.parse::<u64>().ok())
                    .unwrap_or(1);
                earlier
                    .detail
                    .insert(FOLDED_COUNT.to_owned(), (count + 1).to_string());
            }
            None => state.record(event.with(FOLDED_COUNT, 1)),
        }
        Ok(())
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError> {
        let state = self.state()?;
        Ok(state
            .audit
            .iter()
            .rev()
            .filter(|(id, event)| {
                query.before.is_none_or(|before| **id < before)
                    && query.user_id.is_none_or(|user| event.user_id == Some(user))
                    && query
                        .actor_id
                        .is_none_or(|actor| event.actor_id == Some(actor))
                    && query.kind.is_none_or(|kind| event.kind == kind)
                    && query.since.is_none_or(|since| event.at >= since)
                    && query.until.is_none_or(|until| event.at <= until)
            })
            .take(query.limit as usize)
            .map(|(id, event)| AuditEvent {
                id: *id,
                event: event.clone(),
            })
            .collect())
    }
}

#[async_trait]
impl Housekeeping for MemoryStore {
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError> {
        let mut state = self.state()?;
        state.audit.retain(|_, event| event.at >= audit_before);
        let before = state.sessions.len();
        state.sessions.retain(|_, s| s.is_live(now));
        state.refresh_tokens.retain(|_, t| t.expires_at > now);
        state.forget_orphaned_keys();
        state.factors.purge(now);
        state.oauth.purge(now);
        let State {
            email_tokens,
            spent_email_tokens,
            outbox,
            ..
        } = &mut *state;
        email_tokens.retain(|_, t| t.expires_at > now);
        spent_email_tokens.retain(|hash, _| email_tokens.contains_key(hash));
        outbox.retain(|_, mail| {
            mail.state == MailState::Pending || mail.queued_at > now - SENT_MAIL_KEPT
        });
        Ok((before - state.sessions.len()) as u64)
    }
}
