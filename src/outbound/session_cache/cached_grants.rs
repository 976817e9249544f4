//! [`ClientRepository`] and [`GrantRepository`] whose writes that end sessions drop them from
//! the cache at once: revoking a consent ends the user's sessions of that client, deleting a
//! client ends every session issued to it. Other instances hear of it from the storage's feed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Invalidation, SessionCache};
use crate::domain::oauth::{
    AuthorizationCode, ClientId, CodeHash, Consent, GrantView, OAuthClient,
};
use crate::domain::ports::{ClientRepository, GrantRepository};
use crate::domain::{BackendError, NewAuditEvent, SessionId, UserId};

/// The decorator; see the module documentation.
pub struct CachedGrants {
    clients: Arc<dyn ClientRepository>,
    grants: Arc<dyn GrantRepository>,
    cache: Arc<SessionCache>,
}

impl CachedGrants {
    pub fn new(
        clients: Arc<dyn ClientRepository>,
        grants: Arc<dyn GrantRepository>,
        cache: Arc<SessionCache>,
    ) -> Self {
        Self {
            clients,
            grants,
            cache,
        }
    }
}

#[async_trait]
impl ClientRepository for CachedGrants {
    async fn delete_client(
        &self,
        id: &ClientId,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let result = self.clients.delete_client(id, audit).await;
        // The client's sessions belong to any number of users: a rare write, so everything.
        self.cache.invalidate(Invalidation::Everything);
        result
    }

    async fn create_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<(), BackendError> {
        self.clients.create_client(client, audit).await
    }

    async fn find_client(&self, id: &ClientId) -> Result<Option<OAuthClient>, BackendError> {
        self.clients.find_client(id).await
    }

    async fn list_clients(&self) -> Result<Vec<OAuthClient>, BackendError> {
        self.clients.list_clients().await
    }

    async fn update_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        self.clients.update_client(client, audit).await
    }
}

#[async_trait]
impl GrantRepository for CachedGrants {
    async fn revoke_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let result = self
            .grants
            .revoke_consent(user_id, client_id, now, audit)
            .await;
        self.cache.invalidate(Invalidation::User(user_id));
        result
    }

    async fn find_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
    ) -> Result<Option<Consent>, BackendError> {
        self.grants.find_consent(user_id, client_id).await
    }

    async fn save_consent(
        &self,
        consent: &Consent,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        self.grants.save_consent(consent, audit).await
    }

    async fn touch_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.grants.touch_consent(user_id, client_id, at).await
    }

    async fn list_consents(&self, user_id: UserId) -> Result<Vec<GrantView>, BackendError> {
        self.grants.list_consents(user_id).await
    }

    async fn store_code(&self, code: &AuthorizationCode) -> Result<(), BackendError> {
        self.grants.store_code(code).await
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<AuthorizationCode>, BackendError> {
        self.grants.find_code(hash).await
    }

    async fn spend_code(
        &self,
        hash: &CodeHash,
        issued: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        self.grants.spend_code(hash, issued, now).await
    }

    async fn revoke_access_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.grants.revoke_access_token(token_id, expires_at).await
    }

    async fn is_access_token_revoked(&self, token_id: &str) -> Result<bool, BackendError> {
        self.grants.is_access_token_revoked(token_id).await
    }
}
