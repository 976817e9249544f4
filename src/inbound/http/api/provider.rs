//! The OpenID provider's machine endpoints: token, userinfo, revocation and introspection.
//! The browser's endpoints (`/oauth/authorize`, `/oauth/logout`) are the console's.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use poem::Request;
use poem::http::header;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};
use serde::Deserialize;

use super::ApiTags;
use crate::domain::Core;
use crate::domain::oauth::OAuthClient;
use crate::domain::service::{ClientAuth, ClientTokenSet, TokenEndpointError};
use crate::inbound::http::oauth::TokenFailure;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::metrics::record_token_grant;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

/// The provider's token endpoint and what surrounds it.
pub struct ProviderApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

/// The body of `POST /oauth/token` (RFC 6749 sections 4.1.3, 4.4.2 and 6).
#[derive(Debug, Deserialize, Object)]
pub struct ProviderTokenForm {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    /// The PKCE verifier (RFC 7636).
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    /// Space-separated; at a refresh, no more than was granted.
    scope: Option<String>,
    /// `client_secret_post`, or a public client naming itself.
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The body of `POST /oauth/revoke` (RFC 7009) and `POST /oauth/introspect` (RFC 7662).
#[derive(Debug, Deserialize, Object)]
pub struct ClientTokenForm {
    token: Option<String>,
    /// `access_token` or `refresh_token`; a hint only, every kind is looked for.
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// What `POST /oauth/token` answers.
#[derive(Debug, Object)]
pub struct ProviderTokenResponse {
    /// An RFC 9068 JWT (`typ: at+jwt`) for the client's resource servers and `/oauth/userinfo`.
    access_token: String,
    /// Always `Bearer`.
    token_type: String,
    expires_in: i64,
    /// The scopes granted, space separated.
    scope: String,
    /// With scope `openid`, at the code exchange.
    #[oai(skip_serializing_if_is_none)]
    id_token: Option<String>,
    /// With scope `offline_access`: opaque, single use, rotated at every refresh.
    #[oai(skip_serializing_if_is_none)]
    refresh_token: Option<String>,
}

impl From<ClientTokenSet> for ProviderTokenResponse {
    fn from(set: ClientTokenSet) -> Self {
        Self {
            access_token: set.access_token,
            token_type: "Bearer".into(),
            expires_in: set.expires_in_seconds,
            scope: set.scopes.to_string(),
            id_token: set.id_token,
            refresh_token: set.refresh_token,
        }
    }
}

#[derive(ApiResponse)]
enum TokenIssued {
    /// The tokens.
    #[oai(status = 200)]
    Ok(
        Json<ProviderTokenResponse>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
}

/// The claims of the signed-in user (OpenID Connect Core section 5.3).
#[derive(Debug, Object)]
pub struct UserInfoResponse {
    /// The user id, as in the ID token.
    sub: String,
    /// With scope `profile`, when the user has a name.
    #[oai(skip_serializing_if_is_none)]
    name: Option<String>,
    /// With scope `email`.
    #[oai(skip_serializing_if_is_none)]
    email: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    email_verified: Option<bool>,
}

/// What introspection says of a token (RFC 7662 section 2.2).
#[derive(Debug, Object)]
pub struct IntrospectionResponse {
    active: bool,
    #[oai(skip_serializing_if_is_none)]
    sub: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    client_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    scope: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    exp: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    iat: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    iss: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    aud: Option<String>,
    /// `Bearer` for an access token, `refresh_token` for a refresh token.
    #[oai(skip_serializing_if_is_none)]
    token_type: Option<String>,
}

#[derive(ApiResponse)]
enum Revoked {
    /// Whatever the token was (RFC 7009 section 2.2).
    #[oai(status = 200)]
    Ok,
}

/// An access token issued to a client, for `/oauth/userinfo`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct ClientBearer(Bearer);

error_statuses!(
    /// Errors of `/oauth/userinfo`.
    UserInfoErrors:
        401 => "No token, or one that is not a live access token issued to a client (Portcullis's own tokens included)",
        403 => "The token lacks the openid scope",
        503 => "The provider is off, or the database does not answer"
);

impl ProviderApi {
    /// The client's credentials, from the Basic header or the body; one method only (RFC 6749
    /// section 2.3).
    fn client_auth(
        req: &Request,
        client_id: Option<String>,
        client_secret: Option<String>,
    ) -> Result<ClientAuth, TokenEndpointError> {
        let header = req.headers().get(header::AUTHORIZATION);
        match (header, client_id, client_secret) {
            (Some(value), None, None) => basic(value.to_str().unwrap_or_default()),
            (Some(_), _, _) => Err(TokenEndpointError::InvalidRequest(
                "use one client authentication method",
            )),
            (None, Some(client_id), Some(secret)) => Ok(ClientAuth::Post { client_id, secret }),
            (None, Some(client_id), None) => Ok(ClientAuth::Public { client_id }),
            (None, None, _) => Err(TokenEndpointError::InvalidClient { basic: false }),
        }
    }

    async fn authenticated_client(
        &self,
        req: &Request,
        client_id: Option<String>,
        client_secret: Option<String>,
    ) -> Result<OAuthClient, TokenEndpointError> {
        // Off, every request hears so, before anything about its credentials.
        if !self.core.authorizations.enabled() {
            return Err(TokenEndpointError::Off);
        }
        let auth = Self::client_auth(req, client_id, client_secret)?;
        self.core
            .client_tokens
            .authenticate(&auth, &self.proxies.client_info(req))
            .await
    }

    async fn grant(
        &self,
        req: &Request,
        form: ProviderTokenForm,
    ) -> Result<ClientTokenSet, TokenEndpointError> {
        let client = self
            .authenticated_client(req, form.client_id, form.client_secret)
            .await?;
        let from = self.proxies.client_info(req);
        let tokens = &self.core.client_tokens;
        let required =
            |value: Option<String>, why| value.ok_or(TokenEndpointError::InvalidRequest(why));
        match form.grant_type.as_deref() {
            Some("authorization_code") => {
                let code = required(form.code, "code is required")?;
                let redirect_uri = required(form.redirect_uri, "redirect_uri is required")?;
                let verifier = required(form.code_verifier, "code_verifier is required (PKCE)")?;
                tokens
                    .exchange_code(&client, &code, &redirect_uri, &verifier, &from)
                    .await
            }
            Some("refresh_token") => {
                let token = required(form.refresh_token, "refresh_token is required")?;
                tokens
                    .refresh(&client, &token, form.scope.as_deref(), &from)
                    .await
            }
            Some("client_credentials") => {
                tokens
                    .client_credentials(&client, form.scope.as_deref())
                    .await
            }
            None => Err(TokenEndpointError::InvalidRequest("grant_type is required")),
            Some(_) => Err(TokenEndpointError::UnsupportedGrantType),
        }
    }
}

/// `client_secret_basic`: both halves are form-encoded before base64 (RFC 6749 section 2.3.1).
fn basic(value: &str) -> Result<ClientAuth, TokenEndpointError> {
    let invalid = TokenEndpointError::InvalidClient { basic: true };
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or(TokenEndpointError::InvalidClient { basic: false })?;
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| invalid)?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| TokenEndpointError::InvalidClient { basic: true })?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or(TokenEndpointError::InvalidClient { basic: true })?;
    let form_decoded = |part: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={part}"))
            .ok()
            .and_then(|mut pairs| pairs.pop())
            .map(|(_, value)| value)
            .ok_or(TokenEndpointError::InvalidClient { basic: true })
    };
    Ok(ClientAuth::Basic {
        client_id: form_decoded(id)?,
        secret: form_decoded(secret)?,
    })
}

fn no_store() -> (String, String) {
    ("no-store".into(), "no-cache".into())
}

#[OpenApi(tag = "ApiTags::Provider")]
impl ProviderApi {
    /// The token endpoint
    ///
    /// The authorization code (with the PKCE verifier), refresh-token rotation, and client
    /// credentials. Clients authenticate with `client_secret_basic` or `client_secret_post`;
    /// public clients send their `client_id` alone. A code is single use: presented again, it
    /// is refused and every token issued from it is revoked.
    #[oai(path = "/oauth/token", method = "post")]
    async fn token(
        &self,
        req: &Request,
        form: Form<ProviderTokenForm>,
    ) -> Result<TokenIssued, TokenFailure> {
        let grant_type = form.0.grant_type.clone();
        let result = self.grant(req, form.0).await;
        record_token_grant(grant_type.as_deref(), &result);
        let (cache, pragma) = no_store();
        Ok(TokenIssued::Ok(Json(result?.into()), cache, pragma))
    }

    /// The signed-in user's claims
    ///
    /// For an access token issued to a client with scope `openid`: `sub`, and `name`, `email`
    /// and `email_verified` as the scopes allow.
    #[oai(path = "/oauth/userinfo", method = "get")]
    async fn userinfo(
        &self,
        auth: ClientBearer,
    ) -> Result<Json<UserInfoResponse>, Failure<UserInfoErrors>> {
        self.claims(&auth.0.token).await
    }

    /// The signed-in user's claims (POST)
    #[oai(path = "/oauth/userinfo", method = "post")]
    async fn userinfo_post(
        &self,
        auth: ClientBearer,
    ) -> Result<Json<UserInfoResponse>, Failure<UserInfoErrors>> {
        self.claims(&auth.0.token).await
    }

    /// Revoke a token (RFC 7009)
    ///
    /// A refresh token ends its whole grant's tokens; an access token stops being accepted
    /// here. Any other value, another client's tokens included, is answered the same and left
    /// untouched.
    #[oai(path = "/oauth/revoke", method = "post")]
    async fn revoke(
        &self,
        req: &Request,
        form: Form<ClientTokenForm>,
    ) -> Result<Revoked, TokenFailure> {
        let form = form.0;
        let client = self
            .authenticated_client(req, form.client_id, form.client_secret)
            .await?;
        let Some(token) = form.token else {
            return Err(TokenFailure::oauth("invalid_request", "token is required"));
        };
        self.core
            .client_tokens
            .revoke(&client, &token, &self.proxies.client_info(req))
            .await?;
        Ok(Revoked::Ok)
    }

    /// Introspect a token (RFC 7662)
    ///
    /// For confidential clients, about tokens issued to them: `active` with the token's claims,
    /// or `{"active": false}` for anything else.
    #[oai(path = "/oauth/introspect", method = "post")]
    async fn introspect(
        &self,
        req: &Request,
        form: Form<ClientTokenForm>,
    ) -> Result<Json<IntrospectionResponse>, TokenFailure> {
        let form = form.0;
        let client = self
            .authenticated_client(req, form.client_id, form.client_secret)
            .await?;
        if client.settings.public {
            return Err(TokenFailure::InvalidClient { basic: false });
        }
        let Some(token) = form.token else {
            return Err(TokenFailure::oauth("invalid_request", "token is required"));
        };
        let found = self.core.client_tokens.introspect(&client, &token).await?;
        let issuer = self.core.client_tokens.issuer().to_owned();
        Ok(Json(match found {
            None => IntrospectionResponse {
                active: false,
                sub: None,
                client_id: None,
                scope: None,
                exp: None,
                iat: None,
                iss: None,
                aud: None,
                token_type: None,
            },
            Some(active) => IntrospectionResponse {
                active: true,
                sub: Some(active.subject),
                aud: Some(active.client_id.to_string()),
                client_id: Some(active.client_id.to_string()),
                scope: Some(active.scopes.to_string()),
                exp: Some(active.expires_at.timestamp()),
                iat: Some(active.issued_at.timestamp()),
                iss: Some(issuer),
                token_type: Some(active.token_type.to_owned()),
            },
        }))
    }
}

impl ProviderApi {
    async fn claims(&self, token: &str) -> Result<Json<UserInfoResponse>, Failure<UserInfoErrors>> {
        let info = self
            .core
            .client_tokens
            .userinfo(token)
            .await
            .map_err(Problem::from)?;
        let (email, email_verified) = info.email.unzip();
        Ok(Json(UserInfoResponse {
            sub: info.subject.to_string(),
            name: info.name,
            email,
            email_verified,
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::properties::config;

    fn credentials(auth: Result<ClientAuth, TokenEndpointError>) -> Option<(String, String)> {
        match auth {
            Ok(ClientAuth::Basic { client_id, secret }) => Some((client_id, secret)),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        /// RFC 6749 section 2.3.1: each half form-encoded, then `id:secret` in base64.
        #[test]
        fn basic_credentials_read_back_any_id_and_secret(id in any::<String>(), secret in any::<String>()) {
            let encode = |part: &str| serde_urlencoded::to_string([("v", part)]).unwrap()[2..].to_owned();
            let header = format!("Basic {}", STANDARD.encode(format!("{}:{}", encode(&id), encode(&secret))));
            prop_assert_eq!(credentials(basic(&header)), Some((id, secret)));
        }

        #[test]
        fn any_authorization_header_is_read_or_refused(
            header in prop_oneof![
                any::<String>(),
                "[Bb]asic [A-Za-z0-9+/=]{0,24}",
                "\\PC{0,16}".prop_map(|text| format!("Basic {}", STANDARD.encode(text))),
            ]
        ) {
            let _ = basic(&header);
        }
    }
}
