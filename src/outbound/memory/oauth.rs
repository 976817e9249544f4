//! [`ClientRepository`] and [`GrantRepository`] in the state of [`MemoryStore`], under its one
//! lock: a client's deletion and a revoked consent reach its sessions at once, as the database
//! adapter's transactions do.

use std::cmp::Reverse;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::store::{MemoryStore, State};
use crate::domain::oauth::{
    AuthorizationCode, ClientId, CodeHash, Consent, GrantView, OAuthClient,
};
use crate::domain::ports::{ClientRepository, GrantRepository};
use crate::domain::{BackendError, NewAuditEvent, SessionId, UserId};

/// What the database's foreign keys refuse: a row of a user or client that does not exist.
fn known(state: &State, user: UserId, client: &ClientId) -> Result<(), BackendError> {
    if !state.users.contains_key(&user) {
        return Err(BackendError::unexpected(format!("no user {}", user.0)));
    }
    if !state.oauth.clients.contains_key(client) {
        return Err(BackendError::unexpected(format!("no client {client}")));
    }
    Ok(())
}

#[async_trait]
impl ClientRepository for MemoryStore {
    async fn create_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if state.oauth.clients.contains_key(&client.id) {
            return Err(BackendError::unexpected(format!(
                "client {} exists",
                client.id
            )));
        }
        state
            .oauth
            .clients
            .insert(client.id.clone(), client.clone());
        state.record(audit);
        Ok(())
    }

    async fn find_client(&self, id: &ClientId) -> Result<Option<OAuthClient>, BackendError> {
        Ok(self.state()?.oauth.clients.get(id).cloned())
    }

    async fn list_clients(&self) -> Result<Vec<OAuthClient>, BackendError> {
        let mut clients: Vec<OAuthClient> = self.state()?.oauth.clients.values().cloned().collect();
        clients.sort_by_key(|client| (client.created_at, client.id.clone()));
        Ok(clients)
    }

    async fn update_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let Some(stored) = state.oauth.clients.get_mut(&client.id) else {
            return Ok(false);
        };
        stored.settings = client.settings.clone();
        stored.secret_hash = client.secret_hash.clone();
        state.record(audit);
        Ok(true)
    }

    async fn delete_client(
        &self,
        id: &ClientId,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        if state.oauth.clients.remove(id).is_none() {
            return Ok(false);
        }
        state.oauth.consents.retain(|(_, client), _| client != id);
        state.oauth.codes.retain(|_, code| code.client_id != *id);
        state
            .sessions
            .retain(|_, session| session.client_id.as_ref() != Some(id));
        state.forget_orphaned_keys();
        state.record(audit);
        Ok(true)
    }
}

#[async_trait]
impl GrantRepository for MemoryStore {
    async fn find_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
    ) -> Result<Option<Consent>, BackendError> {
        let state = self.state()?;
        Ok(state
            .oauth
            .consents
            .get(&(user_id, client_id.clone()))
            .cloned())
    }

    async fn save_consent(
        &self,
        consent: &Consent,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        known(&state, consent.user_id, &consent.client_id)?;
        state.oauth.consents.insert(
            (consent.user_id, consent.client_id.clone()),
            consent.clone(),
        );
        if let Some(audit) = audit {
            state.record(audit);
        }
        Ok(())
    }

    async fn touch_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if let Some(consent) = state.oauth.consents.get_mut(&(user_id, client_id.clone())) {
            consent.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn list_consents(&self, user_id: UserId) -> Result<Vec<GrantView>, BackendError> {
        let state = self.state()?;
        let oauth = &state.oauth;
        let mut grants: Vec<GrantView> = oauth
            .consents
            .values()
            .filter(|consent| consent.user_id == user_id)
            .filter_map(|consent| {
                Some(GrantView {
                    client_name: oauth.clients.get(&consent.client_id)?.settings.name.clone(),
                    consent: consent.clone(),
                })
            })
            .collect();
        grants.sort_by_key(|grant| {
            (
                Reverse(grant.consent.granted_at),
                grant.consent.client_id.clone(),
            )
        });
        Ok(grants)
    }

    async fn revoke_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        if state
            .oauth
            .consents
            .remove(&(user_id, client_id.clone()))
            .is_none()
        {
            return Ok(false);
        }
        state
            .sessions
            .values_mut()
            .filter(|session| {
                session.user_id == user_id
                    && session.client_id.as_ref() == Some(client_id)
                    && session.ended_at.is_none()
            })
            .for_each(|session| session.ended_at = Some(now));
        state.record(audit);
        Ok(true)
    }

    async fn store_code(&self, code: &AuthorizationCode) -> Result<(), BackendError> {
        let mut state = self.state()?;
        known(&state, code.user_id, &code.client_id)?;
        state.oauth.codes.insert(code.hash.clone(), code.clone());
        Ok(())
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<AuthorizationCode>, BackendError> {
        Ok(self.state()?.oauth.codes.get(hash).cloned())
    }

    async fn spend_code(
        &self,
        hash: &CodeHash,
        issued: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.oauth.codes.get_mut(hash) {
            Some(code) if code.spent_at.is_none() => {
                code.spent_at = Some(now);
                code.issued_session = Some(issued);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_access_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.state()?
            .oauth
            .revoked
            .entry(token_id.to_owned())
            .or_insert(expires_at);
        Ok(())
    }

    async fn is_access_token_revoked(&self, token_id: &str) -> Result<bool, BackendError> {
        Ok(self.state()?.oauth.revoked.contains_key(token_id))
    }
}
