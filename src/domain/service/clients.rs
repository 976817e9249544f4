//! The OpenID provider's clients, as admins register and change them (the admin API, the
//! console and the command line), each change audited.

use std::sync::Arc;

use super::admin::Actor;
use crate::domain::oauth::{
    ClientId, ClientSettings, ClientSettingsError, NewClientSecret, OAuthClient,
};
use crate::domain::ports::{ClientRepository, Clock};
use crate::domain::{AuditKind, BackendError, NewAuditEvent};

/// Why a client could not be registered or changed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Client not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] ClientSettingsError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A client with its secret in the clear: shown once, at creation or rotation.
#[derive(Debug)]
pub struct RegisteredClient {
    pub client: OAuthClient,
    /// `None` for a public client.
    pub secret: Option<String>,
}

/// The admins' use cases on clients.
pub struct Clients {
    pub(super) clients: Arc<dyn ClientRepository>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Clients {
    /// Registers a client; a confidential one gets a secret.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] naming the field that breaks a rule; `Backend`.
    pub async fn create(
        &self,
        settings: ClientSettings,
        actor: Actor<'_>,
    ) -> Result<RegisteredClient, ClientError> {
        settings.check()?;
        let settings = settings.normalised();
        let now = self.clock.now();
        let secret = (!settings.public).then(NewClientSecret::generate);
        let client = OAuthClient {
            id: ClientId::random(),
            secret_hash: secret.as_ref().map(|secret| secret.hash.clone()),
            settings,
            created_at: now,
        };
        let audit = client_event(actor, AuditKind::ClientCreated, &client, now);
        self.clients.create_client(&client, audit).await?;
        Ok(RegisteredClient {
            client,
            secret: secret.map(|secret| secret.secret),
        })
    }

    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn list(&self) -> Result<Vec<OAuthClient>, BackendError> {
        self.clients.list_clients().await
    }

    /// # Errors
    /// [`ClientError::NotFound`]; `Backend`.
    pub async fn get(&self, id: &ClientId) -> Result<OAuthClient, ClientError> {
        self.clients
            .find_client(id)
            .await?
            .ok_or(ClientError::NotFound)
    }

    /// Changes a client's settings as `change` says. A client made public loses its secret; one
    /// made confidential gets one, returned here.
    ///
    /// # Errors
    /// [`ClientError::NotFound`]; [`ClientError::Invalid`] naming the field; `Backend`.
    pub async fn update(
        &self,
        id: &ClientId,
        change: impl FnOnce(ClientSettings) -> ClientSettings,
        actor: Actor<'_>,
    ) -> Result<RegisteredClient, ClientError> {
        let mut client = self.get(id).await?;
        let settings = change(client.settings.clone());
        settings.check()?;
        client.settings = settings.normalised();
        let secret = match (client.settings.public, &client.secret_hash) {
            (true, _) => {
                client.secret_hash = None;
                None
            }
            (false, Some(_)) => None,
            (false, None) => {
                let secret = NewClientSecret::generate();
                client.secret_hash = Some(secret.hash);
                Some(secret.secret)
            }
        };
        let audit = client_event(actor, AuditKind::ClientUpdated, &client, self.clock.now());
        if !self.clients.update_client(&client, audit).await? {
            return Err(ClientError::NotFound);
        }
        Ok(RegisteredClient { client, secret })
    }

    /// Gives a confidential client a new secret; the old one stops working at once.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] (a public client has no secret to rotate:
    /// [`ClientError::Invalid`]); `Backend`.
    pub async fn rotate_secret(
        &self,
        id: &ClientId,
        actor: Actor<'_>,
    ) -> Result<RegisteredClient, ClientError> {
        let mut client = self.get(id).await?;
        if client.settings.public {
            return Err(ClientSettingsError {
                field: "public",
                message: "a public client has no secret".into(),
            }
            .into());
        }
        let secret = NewClientSecret::generate();
        client.secret_hash = Some(secret.hash);
        let audit = client_event(
            actor,
            AuditKind::ClientSecretRotated,
            &client,
            self.clock.now(),
        );
        if !self.clients.update_client(&client, audit).await? {
            return Err(ClientError::NotFound);
        }
        Ok(RegisteredClient {
            client,
            secret: Some(secret.secret),
        })
    }

    /// Deletes a client: every consent, code and token issued to it ends with it.
    ///
    /// # Errors
    /// [`ClientError::NotFound`]; `Backend`.
    pub async fn delete(&self, id: &ClientId, actor: Actor<'_>) -> Result<(), ClientError> {
        let client = self.get(id).await?;
        let audit = client_event(actor, AuditKind::ClientDeleted, &client, self.clock.now());
        if !self.clients.delete_client(id, audit).await? {
            return Err(ClientError::NotFound);
        }
        Ok(())
    }
}

/// `kind` of `client`, by `actor`.
fn client_event(
    actor: Actor<'_>,
    kind: AuditKind,
    client: &OAuthClient,
    at: chrono::DateTime<chrono::Utc>,
) -> NewAuditEvent {
    actor
        .event(kind, None, at)
        .with("client_id", &client.id)
        .with("name", &client.settings.name)
}

#[cfg(test)]
mod tests;
