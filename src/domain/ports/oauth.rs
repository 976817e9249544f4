//! The OpenID provider's ports: registered clients, consents and codes, and the tokens signed
//! for relying parties.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::TokenError;
use crate::domain::mfa::AuthMethod;
use crate::domain::oauth::{
    AuthorizationCode, ClientId, CodeHash, Consent, GrantView, OAuthClient, Scopes,
};
use crate::domain::{BackendError, KeyAlgorithm, NewAuditEvent, SessionId, UserId};

/// Registered clients.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ClientRepository: Send + Sync + 'static {
    /// Stores a new client, recording `audit` in the same transaction.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing was stored.
    async fn create_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<(), BackendError>;

    /// # Errors
    /// [`BackendError`] when storage fails; an unknown id is `Ok(None)`.
    async fn find_client(&self, id: &ClientId) -> Result<Option<OAuthClient>, BackendError>;

    /// Every client, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_clients(&self) -> Result<Vec<OAuthClient>, BackendError>;

    /// Replaces the settings and secret of the stored client with `client.id` by `client`'s,
    /// recording `audit` with them. `false`, changing nothing, when there is no such client.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing changed.
    async fn update_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError>;

    /// Deletes a client, its consents, its codes and every session (so every refresh token)
    /// issued to it, recording `audit` with it. `false` when there is no such client.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing changed.
    async fn delete_client(
        &self,
        id: &ClientId,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError>;
}

/// What users allowed, the codes in flight, and the access tokens revoked before their end.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait GrantRepository: Send + Sync + 'static {
    /// The consent `user_id` gave `client_id`, if any.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
    ) -> Result<Option<Consent>, BackendError>;

    /// Stores `consent` in place of the user's earlier one for the client, recording `audit`
    /// (`grant.created`) with it when there is one.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing changed.
    async fn save_consent(
        &self,
        consent: &Consent,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError>;

    /// Records that the user's consent to the client was used at `at`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn touch_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// The user's consents with their clients' names, most recently granted first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_consents(&self, user_id: UserId) -> Result<Vec<GrantView>, BackendError>;

    /// Deletes the user's consent to the client and ends, at `now`, every session of that user
    /// issued to that client, recording `audit` with it. `false`, changing nothing, when the
    /// user had not consented to the client.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing changed.
    async fn revoke_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError>;

    /// Stores a new code.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_code(&self, code: &AuthorizationCode) -> Result<(), BackendError>;

    /// A code by its hash, spent or not.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_code(&self, hash: &CodeHash) -> Result<Option<AuthorizationCode>, BackendError>;

    /// Spends a code at `now`, recording the session its exchange opened, if it is not spent
    /// yet: of two concurrent exchanges exactly one gets `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; nothing changed.
    async fn spend_code(
        &self,
        hash: &CodeHash,
        issued: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// Refuses the access token `token_id` from now until `expires_at`, its own end.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn revoke_access_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Whether the access token `token_id` was revoked.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn is_access_token_revoked(&self, token_id: &str) -> Result<bool, BackendError>;
}

/// Whom a client's access token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSubject {
    /// A user, through one of the client's sessions.
    User {
        user_id: UserId,
        session_id: SessionId,
    },
    /// The client itself (the client credentials grant).
    Client,
}

/// The claims of an access token issued to a client (RFC 9068).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccessClaims {
    pub subject: TokenSubject,
    pub client_id: ClientId,
    pub scopes: Scopes,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub token_id: String,
}

/// The claims of an ID token (OpenID Connect Core section 2) besides those of the scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    pub user_id: UserId,
    pub client_id: ClientId,
    /// The client's session: the grant the tokens belong to.
    pub session_id: SessionId,
    pub nonce: Option<String>,
    pub auth_time: DateTime<Utc>,
    pub methods: Vec<AuthMethod>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `name`, with scope `profile`.
    pub name: Option<String>,
    /// `email` and `email_verified`, with scope `email`.
    pub email: Option<(String, bool)>,
}

/// Who an ID token presented back (as `id_token_hint`) was issued to and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenHint {
    pub user_id: UserId,
    pub client_id: ClientId,
}

/// Signs and checks the tokens of relying parties, with the asymmetric key that signs
/// Portcullis's own tokens.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait ProviderTokens: Send + Sync + 'static {
    /// The algorithm of the asymmetric keys; `None` while HS256 signs, which a relying party
    /// could not verify without the shared secret: the provider is off then.
    fn provider_algorithm(&self) -> Option<KeyAlgorithm>;

    /// Signs an access token for a client (header `typ: at+jwt`, `aud` the client id).
    ///
    /// # Errors
    /// [`TokenError::Backend`] when signing fails.
    fn issue_client_access(&self, claims: &ClientAccessClaims) -> Result<String, TokenError>;

    /// Signs an ID token that goes with `access_token` (its `at_hash`).
    ///
    /// # Errors
    /// [`TokenError::Backend`] when signing fails.
    fn issue_id_token(&self, claims: &IdClaims, access_token: &str) -> Result<String, TokenError>;

    /// Checks an access token issued to a client: its key and algorithm, `typ: at+jwt`, the
    /// issuer; expiry is left to the caller. Portcullis's own access tokens are rejected.
    ///
    /// # Errors
    /// [`TokenError::UnknownKey`] for a `kid` not loaded; [`TokenError::Rejected`] otherwise.
    fn verify_client_access(&self, token: &str) -> Result<ClientAccessClaims, TokenError>;

    /// Reads an ID token this issuer signed, presented back as a logout hint. Its expiry is
    /// not checked (OpenID Connect RP-Initiated Logout 1.0, section 2).
    ///
    /// # Errors
    /// [`TokenError::Rejected`] for anything this issuer did not sign as an ID token.
    fn read_id_token_hint(&self, token: &str) -> Result<IdTokenHint, TokenError>;
}
