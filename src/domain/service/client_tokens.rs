//! What relying parties do with tokens: authenticate, exchange a code, refresh, ask for a
//! token of their own (client credentials), read the user's claims, revoke and introspect.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::keys::{KeyError, SigningKeys};
use super::limits::{Action, Guard, LimitError, Throttled};
use crate::domain::oauth::{
    ClientId, CodeHash, GrantType, OAuthClient, Scope, Scopes, pkce_verifies,
};
use crate::domain::ports::{
    ClientAccessClaims, ClientRepository, Clock, CreateSessionError, GrantRepository, IdClaims,
    ProviderTokens, Rotation, SessionRepository, TokenError, TokenSubject,
};
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, NewAuditEvent, NewRefreshToken, NewSession,
    RefreshTokenHash, Session, SessionId, SessionKey, User, UserId,
};

/// How a client proved who it is at the token, revocation or introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`.
    Basic { client_id: String, secret: String },
    /// `client_secret_post`.
    Post { client_id: String, secret: String },
    /// `none`: a public client names itself.
    Public { client_id: String },
}

impl ClientAuth {
    fn client_id(&self) -> &str {
        match self {
            Self::Basic { client_id, .. }
            | Self::Post { client_id, .. }
            | Self::Public { client_id } => client_id,
        }
    }
}

/// The token endpoint's errors (RFC 6749 section 5.2).
#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    #[error("OpenID provider needs an asymmetric signing key and a URL issuer")]
    Off,
    /// 401; `basic` when the client authenticated with Basic (`WWW-Authenticate: Basic`).
    #[error("client authentication failed")]
    InvalidClient { basic: bool },
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error("this client may not use this grant type")]
    UnauthorizedClient,
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidScope(String),
    #[error(transparent)]
    Throttled(Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<LimitError> for TokenEndpointError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::Throttled(t) => Self::Throttled(t),
            LimitError::Backend(b) => Self::Backend(b),
        }
    }
}

/// What the token endpoint hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTokenSet {
    pub access_token: String,
    pub expires_in_seconds: i64,
    pub scopes: Scopes,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// The claims the userinfo endpoint answers with, by scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub subject: UserId,
    pub name: Option<String>,
    pub email: Option<(String, bool)>,
}

/// Why a bearer token is refused at the userinfo endpoint (RFC 6750 section 3.1).
#[derive(Debug, thiserror::Error)]
pub enum BearerError {
    #[error("OpenID provider needs an asymmetric signing key and a URL issuer")]
    Off,
    #[error("the access token is not valid")]
    InvalidToken,
    #[error("the access token lacks the openid scope")]
    InsufficientScope,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What introspection says of an active token (RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub subject: String,
    pub client_id: ClientId,
    pub scopes: Scopes,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `Bearer` for an access token, `refresh_token` for a refresh token.
    pub token_type: &'static str,
}

/// The token endpoint and what surrounds it.
pub struct ClientTokens {
    pub(super) clients: Arc<dyn ClientRepository>,
    pub(super) grants: Arc<dyn GrantRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) tokens: Arc<dyn ProviderTokens>,
    pub(super) keys: Arc<SigningKeys>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
}

impl ClientTokens {
    /// The `iss` of the provider's tokens.
    pub fn issuer(&self) -> &str {
        &self.policy.provider.issuer
    }

    /// The client an ID token presented back as a hint was issued to, if this provider signed
    /// it (expired or not).
    pub fn hinted_client(&self, hint: &str) -> Option<ClientId> {
        self.tokens
            .read_id_token_hint(hint)
            .ok()
            .map(|hint| hint.client_id)
    }

    /// The client `auth` names, if it proves who it is: a confidential client by its secret
    /// (Basic or in the body), a public one by naming itself. Every attempt counts against the
    /// address's and the client's token budgets, wrong secrets included.
    ///
    /// # Errors
    /// [`TokenEndpointError::InvalidClient`], `Throttled`, `Backend`, `Off`.
    pub async fn authenticate(
        &self,
        auth: &ClientAuth,
        from: &ClientInfo,
    ) -> Result<OAuthClient, TokenEndpointError> {
        if !self.policy.provider.enabled {
            return Err(TokenEndpointError::Off);
        }
        let basic = matches!(auth, ClientAuth::Basic { .. });
        let invalid = TokenEndpointError::InvalidClient { basic };
        let client_id = auth.client_id();
        if client_id.is_empty() || client_id.len() > 64 {
            return Err(invalid);
        }
        self.guard
            .throttle(Action::ClientToken, from.ip.as_deref(), Some(client_id))
            .await?;
        let Some(client) = self
            .clients
            .find_client(&ClientId(client_id.to_owned()))
            .await?
        else {
            return Err(invalid);
        };
        let proven = match (auth, &client.secret_hash) {
            (ClientAuth::Public { .. }, None) => client.settings.public,
            (ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. }, Some(hash)) => {
                hash.matches(secret)
            }
            _ => false,
        };
        if !proven {
            return Err(invalid);
        }
        Ok(client)
    }

    /// Exchanges a code for tokens. The code must be this client's, unspent, live, sent with
    /// the same redirect URI and the verifier of its challenge; the console session it was
    /// issued in must still be live. A code presented a second time ends the tokens the first
    /// exchange issued.
    ///
    /// # Errors
    /// `InvalidGrant`, `UnauthorizedClient`, `Backend`.
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        from: &ClientInfo,
    ) -> Result<ClientTokenSet, TokenEndpointError> {
        if !client.allows(GrantType::AuthorizationCode) {
            return Err(TokenEndpointError::UnauthorizedClient);
        }
        let hash = CodeHash::of(code);
        let bad_code = TokenEndpointError::InvalidGrant("the code is invalid, expired or spent");
        let Some(record) = self.grants.find_code(&hash).await? else {
            return Err(bad_code);
        };
        if record.client_id != client.id {
            return Err(bad_code);
        }
        let now = self.clock.now();
        if record.spent_at.is_some() {
            self.revoke_replayed(record.user_id, &client.id, record.issued_session, from)
                .await?;
            return Err(bad_code);
        }
        if now >= record.expires_at
            || record.redirect_uri != redirect_uri
            || !pkce_verifies(verifier, &record.code_challenge)
        {
            return Err(bad_code);
        }
        let Some((signed_in, user)) = self.sessions.find_session(record.session_id).await? else {
            return Err(bad_code);
        };
        if !signed_in.is_live(now) || !user.is_active || user.id != record.user_id {
            return Err(bad_code);
        }
        // Without offline_access the grant ends with the sign-in it came from.
        let offline =
            record.scopes.contains(Scope::OfflineAccess) && client.allows(GrantType::RefreshToken);
        let origin = (!offline).then_some(signed_in.id);
        let session = self
            .open_client_session(&user, client, &record.methods, origin, from)
            .await?;
        if !self
            .grants
            .spend_code(&hash, session.session.id, now)
            .await?
        {
            // Another exchange of the same code won the race: neither keeps its tokens.
            self.revoke_replayed(user.id, &client.id, Some(session.session.id), from)
                .await?;
            let winner = self.grants.find_code(&hash).await?;
            self.revoke_replayed(
                user.id,
                &client.id,
                winner.and_then(|code| code.issued_session),
                from,
            )
            .await?;
            return Err(bad_code);
        }
        self.grants.touch_consent(user.id, &client.id, now).await?;
        let id_claims = record.scopes.contains(Scope::OpenId).then(|| IdClaims {
            user_id: user.id,
            client_id: client.id.clone(),
            session_id: session.session.id,
            nonce: record.nonce.clone(),
            auth_time: record.auth_time,
            methods: record.methods.clone(),
            issued_at: now,
            expires_at: now + self.policy.provider.id_token_ttl,
            name: None,
            email: None,
        });
        // The grant's refresh token goes to the client only with offline_access; a refresh may
        // narrow the access token's scopes later, but the grant keeps its refresh token.
        let refresh = session.refresh.filter(|_| offline);
        self.hand_out(
            client,
            &user,
            &session.session,
            &record.scopes,
            refresh,
            id_claims,
        )
        .await
    }

    /// Rotates a refresh token of this client's, with reuse detection: a spent token presented
    /// again ends its grant's session, so every token of that grant.
    ///
    /// # Errors
    /// `InvalidGrant`, `InvalidScope` (more than was granted), `UnauthorizedClient`, `Backend`.
    pub async fn refresh(
        &self,
        client: &OAuthClient,
        presented: &str,
        scope: Option<&str>,
        from: &ClientInfo,
    ) -> Result<ClientTokenSet, TokenEndpointError> {
        if !client.allows(GrantType::RefreshToken) {
            return Err(TokenEndpointError::UnauthorizedClient);
        }
        let bad_token = TokenEndpointError::InvalidGrant("the refresh token is invalid");
        let hash = RefreshTokenHash::of_client(presented);
        let Some(record) = self.sessions.find_refresh_token(&hash).await? else {
            return Err(bad_token);
        };
        let session = record.session;
        if session.client_id.as_ref() != Some(&client.id) {
            return Err(bad_token);
        }
        if record.spent_at.is_some() {
            self.end_for_reuse(&session, from).await?;
            return Err(bad_token);
        }
        let now = self.clock.now();
        let user = record.user;
        if record.expires_at <= now || !session.is_live(now) || !user.is_active {
            return Err(bad_token);
        }
        let Some(consent) = self.grants.find_consent(user.id, &client.id).await? else {
            return Err(bad_token);
        };
        let scopes = match scope {
            None => consent.scopes.clone(),
            Some(asked) => match Scopes::parse(asked) {
                Ok(asked) if consent.scopes.covers(&asked) => asked,
                _ => {
                    return Err(TokenEndpointError::InvalidScope(
                        "more than was granted".into(),
                    ));
                }
            },
        };
        let expires_at = (now + self.policy.refresh_token_ttl).min(session.expires_at);
        let next = NewRefreshToken::generate_for_client(session.id, now, expires_at);
        let refresh_token = next.secret.clone();
        match self
            .sessions
            .rotate_refresh_token(&hash, next, from.clone())
            .await?
        {
            Rotation::Rotated => {}
            Rotation::AlreadySpent => {
                self.end_for_reuse(&session, from).await?;
                return Err(bad_token);
            }
            Rotation::SessionEnded => return Err(bad_token),
        }
        self.grants.touch_consent(user.id, &client.id, now).await?;
        self.hand_out(client, &user, &session, &scopes, Some(refresh_token), None)
            .await
    }

    /// An access token of the client's own, for calls it makes on its own behalf.
    ///
    /// # Errors
    /// `UnauthorizedClient`, `InvalidScope`, `Backend`.
    pub async fn client_credentials(
        &self,
        client: &OAuthClient,
        scope: Option<&str>,
    ) -> Result<ClientTokenSet, TokenEndpointError> {
        if client.settings.public || !client.allows(GrantType::ClientCredentials) {
            return Err(TokenEndpointError::UnauthorizedClient);
        }
        let scopes = Scopes::parse(scope.unwrap_or_default()).map_err(|unknown| {
            TokenEndpointError::InvalidScope(format!("unknown scope {unknown:?}"))
        })?;
        // No scope of ours speaks for the client itself: each names something of a user's.
        if !scopes.is_empty() {
            return Err(TokenEndpointError::InvalidScope(
                "the client credentials grant carries no user scope".into(),
            ));
        }
        let now = self.clock.now();
        let claims = ClientAccessClaims {
            subject: TokenSubject::Client,
            client_id: client.id.clone(),
            scopes: scopes.clone(),
            issued_at: now,
            expires_at: now + self.policy.access_token_ttl,
            token_id: Uuid::new_v4().to_string(),
        };
        self.confirm_key(now).await?;
        let access_token = signed(self.tokens.issue_client_access(&claims))?;
        Ok(ClientTokenSet {
            access_token,
            expires_in_seconds: self.policy.access_token_ttl.num_seconds(),
            scopes,
            id_token: None,
            refresh_token: None,
        })
    }

    /// The signed-in user's claims, for an access token issued to a client with `openid`.
    ///
    /// # Errors
    /// `InvalidToken` (not a live client token of a user), `InsufficientScope`, `Backend`.
    pub async fn userinfo(&self, token: &str) -> Result<UserInfo, BearerError> {
        if !self.policy.provider.enabled {
            return Err(BearerError::Off);
        }
        let (claims, user) = self.live_access(token).await?;
        let user = user.ok_or(BearerError::InvalidToken)?;
        if !claims.scopes.contains(Scope::OpenId) {
            return Err(BearerError::InsufficientScope);
        }
        Ok(user_info(&user, &claims.scopes))
    }

    /// Revokes `token` if it is this client's: a refresh token ends its grant's session (so
    /// every token of it), an access token stops being accepted. Anything else, another
    /// client's tokens included, is left as it is (RFC 7009 answers the same either way).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn revoke(
        &self,
        client: &OAuthClient,
        token: &str,
        from: &ClientInfo,
    ) -> Result<(), BackendError> {
        if let Some(record) = self
            .sessions
            .find_refresh_token(&RefreshTokenHash::of_client(token))
            .await?
        {
            if record.session.client_id.as_ref() == Some(&client.id) {
                let now = self.clock.now();
                let audit = NewAuditEvent::new(
                    AuditKind::SessionEnded,
                    Some(record.session.user_id),
                    from,
                    now,
                )
                .with("session_id", record.session.id)
                .with("reason", "revoked")
                .with("client_id", &client.id);
                self.sessions
                    .end_session(record.session.user_id, record.session.id, now, audit)
                    .await?;
            }
            return Ok(());
        }
        if let Ok(claims) = self.tokens.verify_client_access(token)
            && claims.client_id == client.id
        {
            self.grants
                .revoke_access_token(&claims.token_id, claims.expires_at)
                .await?;
        }
        Ok(())
    }

    /// What a confidential client may learn of a token: active only when it is live and was
    /// issued to that client.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn introspect(
        &self,
        client: &OAuthClient,
        token: &str,
    ) -> Result<Option<Introspection>, BackendError> {
        let now = self.clock.now();
        if let Some(record) = self
            .sessions
            .find_refresh_token(&RefreshTokenHash::of_client(token))
            .await?
        {
            let session = &record.session;
            let live = record.spent_at.is_none()
                && record.expires_at > now
                && session.is_live(now)
                && record.user.is_active
                && session.client_id.as_ref() == Some(&client.id);
            if !live {
                return Ok(None);
            }
            let consent = self.grants.find_consent(record.user.id, &client.id).await?;
            return Ok(consent.map(|consent| Introspection {
                subject: record.user.id.to_string(),
                client_id: client.id.clone(),
                scopes: consent.scopes,
                issued_at: record.session.last_used_at,
                expires_at: record.expires_at,
                token_type: "refresh_token",
            }));
        }
        let (claims, _) = match self.live_access(token).await {
            Ok(found) => found,
            Err(BearerError::Backend(err)) => return Err(err),
            Err(_) => return Ok(None),
        };
        if claims.client_id != client.id {
            return Ok(None);
        }
        let subject = match &claims.subject {
            TokenSubject::User { user_id, .. } => user_id.to_string(),
            TokenSubject::Client => claims.client_id.to_string(),
        };
        Ok(Some(Introspection {
            subject,
            client_id: claims.client_id,
            scopes: claims.scopes,
            issued_at: claims.issued_at,
            expires_at: claims.expires_at,
            token_type: "Bearer",
        }))
    }

    /// A client access token's claims, if it is live now: signed by us, unexpired, not
    /// revoked, its client still registered, and for a user's token, its session live and the
    /// user active (returned with it).
    async fn live_access(
        &self,
        token: &str,
    ) -> Result<(ClientAccessClaims, Option<User>), BearerError> {
        let claims = match self.tokens.verify_client_access(token) {
            Ok(claims) => claims,
            Err(TokenError::UnknownKey(kid)) => {
                // Another instance may have made a key this one has not loaded yet.
                self.keys
                    .reload_for_unknown_kid(&kid)
                    .await
                    .map_err(KeyError::into_backend)?;
                self.tokens
                    .verify_client_access(token)
                    .map_err(|_| BearerError::InvalidToken)?
            }
            Err(TokenError::Backend(err)) => return Err(err.into()),
            Err(TokenError::Rejected(_)) => return Err(BearerError::InvalidToken),
        };
        let now = self.clock.now();
        let leeway = self.policy.leeway;
        if claims.expires_at + leeway <= now || claims.issued_at - leeway > now {
            return Err(BearerError::InvalidToken);
        }
        if self
            .grants
            .is_access_token_revoked(&claims.token_id)
            .await?
        {
            return Err(BearerError::InvalidToken);
        }
        match &claims.subject {
            TokenSubject::Client => {
                if self.clients.find_client(&claims.client_id).await?.is_none() {
                    return Err(BearerError::InvalidToken);
                }
                Ok((claims, None))
            }
            TokenSubject::User {
                user_id,
                session_id,
            } => {
                let (session, user) = self
                    .sessions
                    .find_session(*session_id)
                    .await?
                    .ok_or(BearerError::InvalidToken)?;
                let ours = session.client_id.as_ref() == Some(&claims.client_id)
                    && session.user_id == *user_id
                    && user.id == *user_id;
                if !ours || !session.is_live(now) || !user.is_active {
                    return Err(BearerError::InvalidToken);
                }
                Ok((claims, Some(user)))
            }
        }
    }

    /// Opens the session of a grant: the tokens' family, ended by whatever ends the user's
    /// sessions. It always gets a refresh token, handed out only with `offline_access`, so
    /// that its idle end is kept the same way as every other session's.
    async fn open_client_session(
        &self,
        user: &User,
        client: &OAuthClient,
        methods: &[crate::domain::mfa::AuthMethod],
        origin: Option<SessionId>,
        from: &ClientInfo,
    ) -> Result<OpenedGrant, TokenEndpointError> {
        let now = self.clock.now();
        let id = SessionId::random();
        let expires_at = now + self.policy.session_max_age;
        let refresh = NewRefreshToken::generate_for_client(
            id,
            now,
            (now + self.policy.refresh_token_ttl).min(expires_at),
        );
        let secret = refresh.secret.clone();
        let audit = NewAuditEvent::new(AuditKind::LoginSucceeded, Some(user.id), from, now)
            .with("session_id", id)
            .with("client_id", &client.id);
        let new = NewSession {
            id,
            user_id: user.id,
            created_at: now,
            expires_at,
            client: from.clone(),
            methods: methods.to_vec(),
            client_id: Some(client.id.clone()),
            origin,
            credential_version: user.credential_version,
            live_limit: self.policy.max_sessions_per_user,
            audit,
        };
        match self
            .sessions
            .create_session(new, SessionKey::RefreshToken(refresh))
            .await
        {
            Ok(session) => Ok(OpenedGrant {
                session,
                refresh: Some(secret),
            }),
            Err(CreateSessionError::Stale) => Err(TokenEndpointError::InvalidGrant(
                "the code is invalid, expired or spent",
            )),
            Err(CreateSessionError::Backend(err)) => Err(err.into()),
        }
    }

    /// Signs the tokens of a grant's session, handing out `refresh_token` with them.
    async fn hand_out(
        &self,
        client: &OAuthClient,
        user: &User,
        session: &Session,
        scopes: &Scopes,
        refresh_token: Option<String>,
        id_claims: Option<IdClaims>,
    ) -> Result<ClientTokenSet, TokenEndpointError> {
        let now = self.clock.now();
        self.confirm_key(now).await?;
        let claims = ClientAccessClaims {
            subject: TokenSubject::User {
                user_id: user.id,
                session_id: session.id,
            },
            client_id: client.id.clone(),
            scopes: scopes.clone(),
            issued_at: now,
            expires_at: now + self.policy.access_token_ttl,
            token_id: Uuid::new_v4().to_string(),
        };
        let access_token = signed(self.tokens.issue_client_access(&claims))?;
        let id_token = match id_claims {
            Some(id_claims) => {
                let info = user_info(user, scopes);
                let id_claims = IdClaims {
                    name: info.name,
                    email: info.email,
                    ..id_claims
                };
                Some(signed(
                    self.tokens.issue_id_token(&id_claims, &access_token),
                )?)
            }
            None => None,
        };
        Ok(ClientTokenSet {
            access_token,
            expires_in_seconds: self.policy.access_token_ttl.num_seconds(),
            scopes: scopes.clone(),
            id_token,
            refresh_token,
        })
    }

    async fn confirm_key(&self, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.keys
            .confirm_signing_key(now)
            .await
            .map_err(KeyError::into_backend)
    }

    /// A code came back after its exchange: the session that exchange opened ends.
    async fn revoke_replayed(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        issued: Option<SessionId>,
        from: &ClientInfo,
    ) -> Result<(), BackendError> {
        let now = self.clock.now();
        tracing::warn!(%client_id, user_id = %user_id, "an authorization code was presented again; revoking its tokens");
        let mut audit = NewAuditEvent::new(AuditKind::OAuthCodeReused, Some(user_id), from, now)
            .with("client_id", client_id);
        audit.success = false;
        let Some(session_id) = issued else {
            return Ok(());
        };
        self.sessions
            .end_session(
                user_id,
                session_id,
                now,
                audit.with("session_id", session_id),
            )
            .await
            .map(|_| ())
    }

    async fn end_for_reuse(
        &self,
        session: &Session,
        from: &ClientInfo,
    ) -> Result<(), BackendError> {
        tracing::warn!(session_id = %session.id, "a relying party's refresh token was reused; ending its grant's session");
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::SessionRefreshReused,
            Some(session.user_id),
            from,
            now,
        )
        .with("session_id", session.id);
        self.sessions
            .end_session(session.user_id, session.id, now, audit)
            .await
            .map(|_| ())
    }
}

/// A grant's session, just opened, with its first refresh token.
struct OpenedGrant {
    session: Session,
    refresh: Option<String>,
}

/// The user's claims that `scopes` allow.
fn user_info(user: &User, scopes: &Scopes) -> UserInfo {
    UserInfo {
        subject: user.id,
        name: scopes
            .contains(Scope::Profile)
            .then(|| user.full_name.as_ref().map(|name| name.as_str().to_owned()))
            .flatten(),
        email: scopes
            .contains(Scope::Email)
            .then(|| (user.email.as_str().to_owned(), user.email_verified)),
    }
}

/// A signed token, or why signing failed: never the caller's fault.
fn signed(result: Result<String, TokenError>) -> Result<String, BackendError> {
    result.map_err(|err| match err {
        TokenError::Backend(err) => err,
        other => BackendError::unexpected(other),
    })
}

#[cfg(test)]
mod tests;
