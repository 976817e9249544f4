//! Opening sessions: the session row, its first refresh token or cookie, and the access token.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::keys::{KeyError, SigningKeys};
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{
    AccessClaims, Clock, CreateSessionError, SessionRepository, TokenError, TokenIssuer,
};
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, NewAuditEvent, NewRefreshToken, NewSession,
    NewSessionCookie, Principal, Session, SessionId, SessionKey, TokenPair, User,
};

/// Opens sessions and signs their access tokens.
pub struct SessionOpener {
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) tokens: Arc<dyn TokenIssuer>,
    pub(super) keys: Arc<SigningKeys>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
}

impl SessionOpener {
    /// Opens a session for `user`, as read before its password was checked, and hands out its
    /// first pair of tokens.
    ///
    /// # Errors
    /// [`CreateSessionError::Stale`] when the user changed since it was read.
    pub(super) async fn start_session(
        &self,
        user: &User,
        client: ClientInfo,
        methods: Vec<AuthMethod>,
    ) -> Result<TokenPair, CreateSessionError> {
        let now = self.clock.now();
        let id = SessionId::random();
        let expires_at = now + self.policy.session_max_age;
        let refresh = self.next_refresh_token(id, expires_at, now);
        let refresh_token = refresh.secret.clone();
        let opened = SessionOpening {
            id,
            now,
            client,
            methods,
        };
        let session = self
            .open_session(user, opened, SessionKey::RefreshToken(refresh))
            .await?;
        let access_token = self.issue_access_token(user, &session, now).await?;
        Ok(self.token_pair(access_token, refresh_token))
    }

    /// Stores a session for `user` as `opened` says, held with `key`, recording the login
    /// with it.
    async fn open_session(
        &self,
        user: &User,
        opened: SessionOpening,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let SessionOpening {
            id,
            now,
            client,
            methods,
        } = opened;
        let amr: Vec<_> = methods.iter().map(|method| method.as_str()).collect();
        let audit = NewAuditEvent::new(AuditKind::LoginSucceeded, Some(user.id), &client, now)
            .with("session_id", id)
            .with("amr", amr.join(" "));
        let session = NewSession {
            id,
            user_id: user.id,
            created_at: now,
            expires_at: now + self.policy.session_max_age,
            audit,
            client,
            methods,
            client_id: None,
            origin: None,
            credential_version: user.credential_version,
            live_limit: self.policy.max_sessions_per_user,
        };
        self.sessions.create_session(session, key).await
    }

    /// A refresh token valid for its own lifetime, but never beyond the session's end.
    pub(super) fn next_refresh_token(
        &self,
        session_id: SessionId,
        session_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> NewRefreshToken {
        let expires_at = (now + self.policy.refresh_token_ttl).min(session_expires_at);
        NewRefreshToken::generate(session_id, now, expires_at)
    }

    /// Signs an access token of `session` for `user`, issued at `now`, once the key table
    /// confirms that the key in use may still sign.
    pub(super) async fn issue_access_token(
        &self,
        user: &User,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<String, BackendError> {
        self.keys
            .confirm_signing_key(now)
            .await
            .map_err(KeyError::into_backend)?;
        let claims = AccessClaims {
            user_id: user.id,
            role: user.role,
            session_id: session.id,
            issued_at: now,
            expires_at: now + self.policy.access_token_ttl,
            token_id: Uuid::new_v4().to_string(),
            methods: session.methods.clone(),
        };
        self.tokens.issue(&claims).map_err(|err| match err {
            TokenError::Backend(err) => err,
            rejected @ (TokenError::Rejected(_) | TokenError::UnknownKey(_)) => {
                BackendError::unexpected(rejected)
            }
        })
    }

    pub(super) fn token_pair(&self, access_token: String, refresh_token: String) -> TokenPair {
        TokenPair {
            access_token,
            expires_in_seconds: self.policy.access_token_ttl.num_seconds(),
            refresh_token,
        }
    }

    /// Opens a session held by a new cookie for `user`, who proved who they are by `methods`.
    pub(super) async fn open_cookie_session(
        &self,
        user: &User,
        client: ClientInfo,
        methods: Vec<AuthMethod>,
    ) -> Result<CookieSession, CreateSessionError> {
        let now = self.clock.now();
        let idle_end = (now + self.policy.refresh_token_ttl).min(now + self.policy.session_max_age);
        let cookie = NewSessionCookie::generate(idle_end);
        let secret = cookie.secret.clone();
        let opened = SessionOpening {
            id: SessionId::random(),
            now,
            client,
            methods,
        };
        let session = self
            .open_session(user, opened, SessionKey::Cookie(cookie))
            .await?;
        Ok(CookieSession { secret, session })
    }
}

/// A session opened by a browser sign-in.
#[derive(Debug)]
pub struct CookieSession {
    /// The cookie's value: handed to the browser once, stored only as a hash.
    pub secret: String,
    pub session: Session,
}

/// The record of `principal` ending session `id` at `now`, for `reason`.
pub(super) fn session_ended(
    principal: &Principal,
    id: SessionId,
    reason: &str,
    client: &ClientInfo,
    now: chrono::DateTime<chrono::Utc>,
) -> NewAuditEvent {
    NewAuditEvent::new(
        AuditKind::SessionEnded,
        Some(principal.user.id),
        client,
        now,
    )
    .with("session_id", id)
    .with("reason", reason)
}

/// A session about to be opened: its id, time, client, and how its user signed in.
pub(super) struct SessionOpening {
    id: SessionId,
    now: DateTime<Utc>,
    client: ClientInfo,
    methods: Vec<AuthMethod>,
}
