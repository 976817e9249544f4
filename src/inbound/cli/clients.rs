//! `portcullis clients`: register, list, delete the OpenID provider's clients, and rotate their
//! secrets.

use serde_json::json;

use super::args::ClientsCommand;
use super::{migrated_core, report};
use crate::config::Settings;
use crate::domain::oauth::{ClientId, ClientSettings, GrantType, Scopes};
use crate::domain::service::{Actor, ClientError, RegisteredClient};

pub(super) async fn run(command: ClientsCommand, settings: &Settings) -> anyhow::Result<()> {
    let core = migrated_core(settings).await?;
    let clients = &core.clients;
    match command {
        ClientsCommand::Create {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            public,
            first_party,
            json,
        } => {
            let settings = ClientSettings {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                public,
                first_party,
                scopes: Scopes::all(),
                grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            };
            let RegisteredClient { client, secret } = clients
                .create(settings, Actor::Operator)
                .await
                .map_err(explain)?;
            if json {
                println!("{}", report::client_json(&client, secret.as_deref()));
            } else {
                println!("client_id: {}", client.id);
                match secret {
                    Some(secret) => {
                        println!("client_secret: {secret}");
                        eprintln!("keep the secret now: it is not shown again");
                    }
                    None => println!("public client: no secret; it must use PKCE"),
                }
            }
        }
        ClientsCommand::List { json } => {
            print!("{}", report::clients(&clients.list().await?, json));
        }
        ClientsCommand::Delete { client_id } => {
            clients
                .delete(&ClientId(client_id.clone()), Actor::Operator)
                .await
                .map_err(explain)?;
            println!("deleted {client_id}: every grant and token issued to it ended");
        }
        ClientsCommand::RotateSecret { client_id, json } => {
            let rotated = clients
                .rotate_secret(&ClientId(client_id), Actor::Operator)
                .await
                .map_err(explain)?;
            let secret = rotated.secret.unwrap_or_default();
            if json {
                println!(
                    "{}",
                    json!({"client_id": rotated.client.id.as_str(), "client_secret": secret})
                );
            } else {
                println!("client_secret: {secret}");
                eprintln!(
                    "the old secret no longer works; keep this one now: it is not shown again"
                );
            }
        }
    }
    Ok(())
}

/// A refusal in the operator's words: the field and what is wrong with it.
fn explain(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::NotFound => anyhow::anyhow!("Client not found"),
        ClientError::Invalid(invalid) => anyhow::anyhow!("{}: {}", invalid.field, invalid.message),
        ClientError::Backend(err) => err.into(),
    }
}
