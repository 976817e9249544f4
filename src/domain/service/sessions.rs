//! Refresh with rotation and reuse detection, logout, the session list, password change.

use std::sync::Arc;

use super::credentials::Credentials;
use super::limits::{Action, Guard, Throttled};
use super::opening::{SessionOpener, session_ended};
use crate::domain::ports::{Clock, PasswordHasher, Rotation, SessionRepository, UserRepository};
use crate::domain::{
    AccountChange, AuditKind, AuthPolicy, BackendError, ClientInfo, Condition, NewAuditEvent,
    Password, PasswordError, Principal, RefreshTokenHash, Session, SessionId, TokenPair,
};

/// Why a refresh was refused. Every variant answers 401 to the client.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, expired, or of an ended session or an inactive user.
    #[error("invalid refresh token")]
    InvalidToken,
    /// The token was spent already: someone holds a copy. Its whole session has been ended.
    #[error("refresh token reused; session revoked")]
    Reused,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why ending a session failed.
#[derive(Debug, thiserror::Error)]
pub enum EndSessionError {
    /// No live session of the caller has that id (whether or not someone else's does).
    #[error("session not found")]
    NotFound,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a password change failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangePasswordError {
    #[error("current password is incorrect")]
    WrongPassword,
    #[error("new password {0}")]
    WeakPassword(#[from] PasswordError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A signed-in user's sessions and password.
pub struct Sessions {
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) hasher: Arc<dyn PasswordHasher>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) opener: Arc<SessionOpener>,
}

impl Sessions {
    /// Spends a refresh token for a new pair (rotation). Presenting a spent token again ends
    /// the session it belongs to, since either the client or a thief holds a stolen copy
    /// (OAuth 2.0 Security BCP, section 4.14.2).
    ///
    /// # Errors
    /// [`RefreshError::Reused`] for a spent token (also when a concurrent refresh of the same
    /// token won the race), [`RefreshError::Throttled`] over a limit of the client's address or
    /// of the account, [`RefreshError::InvalidToken`] for anything else not acceptable.
    pub async fn refresh(
        &self,
        presented: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, RefreshError> {
        self.guard
            .throttle(Action::Refresh, client.ip.as_deref(), None)
            .await?;
        let hash = RefreshTokenHash::of(presented);
        let record = self
            .sessions
            .find_refresh_token(&hash)
            .await?
            .ok_or(RefreshError::InvalidToken)?;
        let now = self.clock.now();
        let session = &record.session;
        // A relying party's refresh token is redeemed at the provider's token endpoint only,
        // where its client is authenticated; here it is not ours to spend or to revoke.
        if session.client_id.is_some() {
            return Err(RefreshError::InvalidToken);
        }
        // Reuse is acted on before any per-account limit: a thief's replay must end the
        // session even while the account's refresh budget is spent.
        if record.spent_at.is_some() {
            return Err(self.revoke_for_reuse(session, &client).await);
        }
        let account = record.user.id.to_string();
        self.guard
            .throttle(Action::Refresh, None, Some(&account))
            .await?;
        if record.expires_at <= now || !session.is_live(now) || !record.user.is_active {
            return Err(RefreshError::InvalidToken);
        }
        let next = self
            .opener
            .next_refresh_token(session.id, session.expires_at, now);
        let refresh_token = next.secret.clone();
        match self
            .sessions
            .rotate_refresh_token(&hash, next, client.clone())
            .await?
        {
            Rotation::Rotated => {}
            Rotation::AlreadySpent => return Err(self.revoke_for_reuse(session, &client).await),
            Rotation::SessionEnded => return Err(RefreshError::InvalidToken),
        }
        let access_token = self
            .opener
            .issue_access_token(&record.user, session, now)
            .await?;
        Ok(self.opener.token_pair(access_token, refresh_token))
    }

    async fn revoke_for_reuse(&self, session: &Session, client: &ClientInfo) -> RefreshError {
        tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse detected; ending the session");
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::SessionRefreshReused,
            Some(session.user_id),
            client,
            now,
        )
        .with("session_id", session.id);
        match self
            .sessions
            .end_session(session.user_id, session.id, now, audit)
            .await
        {
            Ok(_) => RefreshError::Reused,
            Err(err) => RefreshError::Backend(err),
        }
    }

    /// Ends the caller's current session: its refresh token and access tokens stop working.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn logout(
        &self,
        principal: &Principal,
        client: &ClientInfo,
    ) -> Result<(), BackendError> {
        // A token of the old service belongs to no session: there is nothing to end.
        let Some(session_id) = principal.session_id else {
            return Ok(());
        };
        let audit = session_ended(principal, session_id, "logout", client, self.clock.now());
        self.sessions
            .end_session(principal.user.id, session_id, self.clock.now(), audit)
            .await?;
        Ok(())
    }

    /// The caller's live sessions, newest first; never more than `max_sessions_per_user`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn list_sessions(&self, principal: &Principal) -> Result<Vec<Session>, BackendError> {
        self.sessions
            .list_live_sessions(
                principal.user.id,
                self.clock.now(),
                self.policy.max_sessions_per_user,
            )
            .await
    }

    /// Ends one of the caller's own sessions.
    ///
    /// # Errors
    /// [`EndSessionError::NotFound`] when the caller has no live session with that id.
    pub async fn end_session(
        &self,
        principal: &Principal,
        id: SessionId,
        client: &ClientInfo,
    ) -> Result<(), EndSessionError> {
        let audit = session_ended(principal, id, "ended by the user", client, self.clock.now());
        if self
            .sessions
            .end_session(principal.user.id, id, self.clock.now(), audit)
            .await?
        {
            Ok(())
        } else {
            Err(EndSessionError::NotFound)
        }
    }

    /// Changes the caller's password after checking the current one, and ends every other
    /// session of theirs.
    ///
    /// # Errors
    /// [`ChangePasswordError::WrongPassword`] when `current` does not match;
    /// [`ChangePasswordError::Throttled`] over a limit or during the account's failure delay.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: &str,
        new: Password,
        client: &ClientInfo,
    ) -> Result<(), ChangePasswordError> {
        let user = &principal.user;
        self.credentials
            .check_new_password(&new, &user.email, user.full_name.as_ref())?;
        if !self
            .credentials
            .recheck_password(principal, current, client)
            .await?
        {
            return Err(ChangePasswordError::WrongPassword);
        }
        let hash = self.hasher.hash(&new).await?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::PasswordChanged,
            Some(principal.user.id),
            client,
            now,
        );
        // The password was checked against the hash this request read: a reset, another
        // change or a deactivation since makes it not the current one any more.
        let change = AccountChange::of(user.id, now)
            .when(Condition::Current {
                credential_version: user.credential_version,
            })
            .new_password(hash, principal.session_id)
            .recording(audit);
        if self.users.apply(change).await?.kept() {
            Ok(())
        } else {
            Err(ChangePasswordError::WrongPassword)
        }
    }
}

#[cfg(test)]
mod tests;
