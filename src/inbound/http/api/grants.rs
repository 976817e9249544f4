//! The applications a user has let sign them in (the OpenID provider's grants), with
//! revocation.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem::http::StatusCode;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::domain::Core;
use crate::domain::oauth::{ClientId, GrantView};
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

error_statuses!(
    /// Errors of `GET /auth/grants`.
    GrantsErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `DELETE /auth/grants/{client_id}`.
    RevokeGrantErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        404 => "The caller has granted this client nothing",
        503 => "The database does not answer"
);

/// An application the caller has let sign them in.
#[derive(Debug, Object)]
pub struct GrantResponse {
    client_id: String,
    client_name: String,
    /// What it may do, as OpenID scopes.
    scopes: Vec<String>,
    granted_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<GrantView> for GrantResponse {
    fn from(view: GrantView) -> Self {
        Self {
            client_id: view.consent.client_id.to_string(),
            client_name: view.client_name,
            scopes: view
                .consent
                .scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
            granted_at: view.consent.granted_at,
            last_used_at: view.consent.last_used_at,
        }
    }
}

#[derive(ApiResponse)]
enum Revoked {
    /// The consent and every token of the grant ended.
    #[oai(status = 204)]
    NoContent,
}

pub struct GrantsApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Sessions")]
impl GrantsApi {
    /// The applications the caller has granted access
    #[oai(path = "/auth/grants", method = "get")]
    async fn grants(
        &self,
        auth: Authenticated,
    ) -> Result<Json<Vec<GrantResponse>>, Failure<GrantsErrors>> {
        let grants = self
            .core
            .authorizations
            .grants(auth.principal().user.id)
            .await?;
        Ok(Json(grants.into_iter().map(GrantResponse::from).collect()))
    }

    /// Revoke an application's access
    ///
    /// Ends the consent and every token issued to that application for the caller.
    #[oai(path = "/auth/grants/:client_id", method = "delete")]
    async fn revoke(
        &self,
        req: &Request,
        auth: Authenticated,
        client_id: Path<String>,
    ) -> Result<Revoked, Failure<RevokeGrantErrors>> {
        let revoked = self
            .core
            .authorizations
            .revoke_grant(
                auth.principal(),
                &ClientId(client_id.0),
                &self.proxies.client_info(req),
            )
            .await?;
        if !revoked {
            return Err(Problem::new(StatusCode::NOT_FOUND, "Grant not found").into());
        }
        Ok(Revoked::NoContent)
    }
}
