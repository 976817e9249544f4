//! What a resource server needs to verify access tokens on its own: the public keys (JWKS) and
//! the discovery documents that point at them.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::types::ParseFromJSON as _;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::domain::service::SigningKeys;

pub struct KeysApi {
    pub keys: Arc<SigningKeys>,
    pub discovery: Discovery,
}

/// The settings the documents are built from.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `jwt_issuer`: what the tokens carry as `iss`.
    pub issuer: String,
    /// `public_url`, without a trailing slash.
    pub public_url: String,
    /// The JOSE name of the configured access-token algorithm.
    pub algorithm: &'static str,
    /// `jwks_max_age`, seconds.
    pub jwks_max_age: i64,
}

/// A public key (RFC 7517): OKP for Ed25519 (RFC 8037), EC for P-256.
#[derive(Debug, Clone, Object)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
    /// EC keys only.
    #[oai(skip_serializing_if_is_none)]
    y: Option<String>,
    kid: String,
    alg: String,
    #[oai(rename = "use")]
    usage: String,
}

/// A JWK Set (RFC 7517, section 5).
#[derive(Debug, Clone, Object)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(ApiResponse)]
enum JwksResponse {
    /// The keys that are published: the next one, the current one and the previous one.
    #[oai(status = 200)]
    Ok(Json<JwkSet>, #[oai(header = "Cache-Control")] String),
}

/// Authorization server metadata (RFC 8414).
#[derive(Debug, Clone, Object)]
struct ServerMetadata {
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    grant_types_supported: Vec<String>,
    token_endpoint_auth_methods_supported: Vec<String>,
    response_types_supported: Vec<String>,
    id_token_signing_alg_values_supported: Vec<String>,
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&v| v.to_owned()).collect()
}

impl KeysApi {
    fn metadata(&self) -> Json<ServerMetadata> {
        let base = &self.discovery.public_url;
        Json(ServerMetadata {
            issuer: self.discovery.issuer.clone(),
            jwks_uri: format!("{base}/.well-known/jwks.json"),
            token_endpoint: format!("{base}/auth/token"),
            grant_types_supported: strings(&["password", "refresh_token"]),
            token_endpoint_auth_methods_supported: strings(&["none"]),
            response_types_supported: strings(&["token"]),
            id_token_signing_alg_values_supported: strings(&[self.discovery.algorithm]),
        })
    }
}

#[OpenApi(tag = "ApiTags::Keys")]
impl KeysApi {
    /// The public signing keys (JWKS)
    ///
    /// Verify access tokens with the key whose `kid` the token's header names, at that key's
    /// `alg` only. Keys are published before they sign and stay published until their last
    /// token has expired; when a token names a `kid` your cached copy lacks, fetch this again.
    /// With `jwt_algorithm = HS256` the set is empty.
    #[oai(path = "/.well-known/jwks.json", method = "get")]
    async fn jwks(&self) -> JwksResponse {
        let keys = self
            .keys
            .published()
            .iter()
            .filter_map(|jwk| {
                let value = serde_json::from_str(jwk).ok();
                Jwk::parse_from_json(value).ok()
            })
            .collect();
        JwksResponse::Ok(
            Json(JwkSet { keys }),
            format!("public, max-age={}", self.discovery.jwks_max_age),
        )
    }

    /// Authorization server metadata (RFC 8414)
    ///
    /// Where the keys and the token endpoint are. Portcullis issues tokens by the password and
    /// refresh-token grants only: it is not an OpenID provider for authorization-code flows.
    #[oai(path = "/.well-known/oauth-authorization-server", method = "get")]
    async fn oauth_metadata(&self) -> Json<ServerMetadata> {
        self.metadata()
    }

    /// The same metadata, where OpenID Connect libraries look for it
    #[oai(path = "/.well-known/openid-configuration", method = "get")]
    async fn openid_configuration(&self) -> Json<ServerMetadata> {
        self.metadata()
    }
}
