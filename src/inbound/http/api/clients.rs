//! The OpenID provider's clients, registered and changed by admins.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::ApiTags;
use super::admin::admin_caller;
use crate::domain::oauth::{ClientId, ClientSettings, GrantType, OAuthClient, Scope, Scopes};
use crate::domain::service::{Actor, RegisteredClient};
use crate::domain::{Core, Principal};
use crate::inbound::http::dto::not_null;
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, FieldErrors, Problem, error_statuses};

error_statuses!(
    /// Errors of `GET /admin/clients`.
    ListClientsErrors:
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `POST /admin/clients`.
    CreateClientErrors:
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "A bad field, named in errors (a refused redirect URI is quoted)",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of the routes of one client.
    ClientErrors:
        401 => "No valid token",
        403 => "Insufficient privileges: the caller is not an admin",
        404 => "Client not found",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "A bad field, named in errors",
        503 => "The database does not answer"
);

/// A registered client.
#[derive(Debug, Object)]
pub struct OAuthClientResponse {
    client_id: String,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    /// A public client (a browser or native application) has no secret and must use PKCE.
    public: bool,
    /// A first-party client is not shown the consent page.
    first_party: bool,
    scopes: Vec<String>,
    grant_types: Vec<String>,
    created_at: DateTime<Utc>,
    /// Shown once, at creation or rotation, for a confidential client; only its hash is kept.
    #[oai(skip_serializing_if_is_none)]
    client_secret: Option<String>,
}

impl OAuthClientResponse {
    pub fn new(client: OAuthClient, secret: Option<String>) -> Self {
        let settings = client.settings;
        Self {
            client_id: client.id.to_string(),
            name: settings.name,
            redirect_uris: settings.redirect_uris,
            post_logout_redirect_uris: settings.post_logout_redirect_uris,
            public: settings.public,
            first_party: settings.first_party,
            scopes: settings
                .scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
            grant_types: settings
                .grant_types
                .iter()
                .map(|grant| grant.as_str().to_owned())
                .collect(),
            created_at: client.created_at,
            client_secret: secret,
        }
    }
}

impl From<RegisteredClient> for OAuthClientResponse {
    fn from(registered: RegisteredClient) -> Self {
        Self::new(registered.client, registered.secret)
    }
}

/// `{"items": [...]}`.
#[derive(Debug, Object)]
pub struct OAuthClientList {
    items: Vec<OAuthClientResponse>,
}

/// A client to register.
#[derive(Debug, Deserialize, Object)]
pub struct CreateClientRequest {
    name: String,
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    first_party: Option<bool>,
    /// Default: all four (`openid`, `profile`, `email`, `offline_access`).
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// Default: `authorization_code` and `refresh_token`.
    #[serde(default)]
    grant_types: Option<Vec<String>>,
}

/// What to change of a client: any field of the create body; `null` is refused.
#[derive(Debug, Deserialize, Object)]
pub struct UpdateClientRequest {
    #[serde(default, deserialize_with = "not_null")]
    name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    redirect_uris: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    post_logout_redirect_uris: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    public: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    first_party: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    grant_types: Option<Vec<String>>,
}

/// A client's new secret.
#[derive(Debug, Object)]
pub struct ClientSecretResponse {
    client_id: String,
    client_secret: String,
}

#[derive(ApiResponse)]
enum Created {
    /// The client, with its secret when it is confidential.
    #[oai(status = 201)]
    Created(Json<OAuthClientResponse>),
}

#[derive(ApiResponse)]
enum Deleted {
    /// The client, and every grant and token issued to it, are gone.
    #[oai(status = 204)]
    NoContent,
}

/// Scope names, each known.
fn parse_scopes(fields: &mut FieldErrors, names: Option<Vec<String>>) -> Option<Scopes> {
    let names = names?;
    let parsed: Option<Vec<Scope>> = names.iter().map(|name| Scope::parse(name)).collect();
    fields.check(
        "scopes",
        parsed
            .map(Scopes::of)
            .ok_or("must each be openid, profile, email or offline_access"),
    )
}

/// Grant type names, each known.
fn parse_grants(fields: &mut FieldErrors, names: Option<Vec<String>>) -> Option<Vec<GrantType>> {
    let names = names?;
    let parsed: Option<Vec<GrantType>> = names.iter().map(|name| GrantType::parse(name)).collect();
    fields.check(
        "grant_types",
        parsed.ok_or("must each be authorization_code, refresh_token or client_credentials"),
    )
}

pub struct ClientsApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

impl ClientsApi {
    fn admin<'a>(&self, auth: &'a Authenticated) -> Result<&'a Principal, Problem> {
        admin_caller(&self.core, auth)
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl ClientsApi {
    /// List the OpenID clients
    #[oai(path = "/admin/clients", method = "get")]
    async fn list(
        &self,
        auth: Authenticated,
    ) -> Result<Json<OAuthClientList>, Failure<ListClientsErrors>> {
        self.admin(&auth)?;
        let clients = self.core.clients.list().await?;
        Ok(Json(OAuthClientList {
            items: clients
                .into_iter()
                .map(|client| OAuthClientResponse::new(client, None))
                .collect(),
        }))
    }

    /// Register an OpenID client
    ///
    /// A confidential client's `client_secret` is in this answer and never again.
    #[oai(path = "/admin/clients", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<CreateClientRequest>,
    ) -> Result<Created, Failure<CreateClientErrors>> {
        let admin = self.admin(&auth)?;
        let body = body.0;
        let mut fields = FieldErrors::default();
        let scopes = parse_scopes(&mut fields, body.scopes);
        let grants = parse_grants(&mut fields, body.grant_types);
        let (scopes, grants) = fields.finish(Some((scopes, grants)))?;
        let settings = ClientSettings {
            name: body.name,
            redirect_uris: body.redirect_uris,
            post_logout_redirect_uris: body.post_logout_redirect_uris.unwrap_or_default(),
            public: body.public.unwrap_or(false),
            first_party: body.first_party.unwrap_or(false),
            scopes: scopes.unwrap_or_else(Scopes::all),
            grant_types: grants
                .unwrap_or_else(|| vec![GrantType::AuthorizationCode, GrantType::RefreshToken]),
        };
        let client = self.proxies.client_info(req);
        let registered = self
            .core
            .clients
            .create(settings, Actor::Admin(admin, &client))
            .await?;
        Ok(Created::Created(Json(registered.into())))
    }

    /// One OpenID client
    #[oai(path = "/admin/clients/:client_id", method = "get")]
    async fn get(
        &self,
        auth: Authenticated,
        client_id: Path<String>,
    ) -> Result<Json<OAuthClientResponse>, Failure<ClientErrors>> {
        self.admin(&auth)?;
        let client = self.core.clients.get(&ClientId(client_id.0)).await?;
        Ok(Json(OAuthClientResponse::new(client, None)))
    }

    /// Change an OpenID client
    ///
    /// Any field of the create body. A client made confidential gets a secret, in this answer.
    #[oai(path = "/admin/clients/:client_id", method = "patch")]
    async fn update(
        &self,
        req: &Request,
        auth: Authenticated,
        client_id: Path<String>,
        body: JsonBody<UpdateClientRequest>,
    ) -> Result<Json<OAuthClientResponse>, Failure<ClientErrors>> {
        let admin = self.admin(&auth)?;
        let body = body.0;
        let mut fields = FieldErrors::default();
        let scopes = parse_scopes(&mut fields, body.scopes);
        let grants = parse_grants(&mut fields, body.grant_types);
        let (scopes, grants) = fields.finish(Some((scopes, grants)))?;
        let client = self.proxies.client_info(req);
        let changed = self
            .core
            .clients
            .update(
                &ClientId(client_id.0),
                |settings| ClientSettings {
                    name: body.name.unwrap_or(settings.name),
                    redirect_uris: body.redirect_uris.unwrap_or(settings.redirect_uris),
                    post_logout_redirect_uris: body
                        .post_logout_redirect_uris
                        .unwrap_or(settings.post_logout_redirect_uris),
                    public: body.public.unwrap_or(settings.public),
                    first_party: body.first_party.unwrap_or(settings.first_party),
                    scopes: scopes.unwrap_or(settings.scopes),
                    grant_types: grants.unwrap_or(settings.grant_types),
                },
                Actor::Admin(admin, &client),
            )
            .await?;
        Ok(Json(changed.into()))
    }

    /// Delete an OpenID client
    ///
    /// Every grant and token issued to it ends.
    #[oai(path = "/admin/clients/:client_id", method = "delete")]
    async fn delete(
        &self,
        req: &Request,
        auth: Authenticated,
        client_id: Path<String>,
    ) -> Result<Deleted, Failure<ClientErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        self.core
            .clients
            .delete(&ClientId(client_id.0), Actor::Admin(admin, &client))
            .await?;
        Ok(Deleted::NoContent)
    }

    /// Rotate an OpenID client's secret
    ///
    /// The old secret stops working at once.
    #[oai(path = "/admin/clients/:client_id/secret", method = "post")]
    async fn rotate_secret(
        &self,
        req: &Request,
        auth: Authenticated,
        client_id: Path<String>,
    ) -> Result<Json<ClientSecretResponse>, Failure<ClientErrors>> {
        let admin = self.admin(&auth)?;
        let client = self.proxies.client_info(req);
        let rotated = self
            .core
            .clients
            .rotate_secret(&ClientId(client_id.0), Actor::Admin(admin, &client))
            .await?;
        Ok(Json(ClientSecretResponse {
            client_id: rotated.client.id.to_string(),
            client_secret: rotated.secret.unwrap_or_default(),
        }))
    }
}
