//! What a resource server needs to verify access tokens on its own: the public keys (JWKS) and
//! the discovery documents that point at them.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::types::ParseFromJSON as _;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::domain::oauth::Scope;
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
    /// Whether the OpenID provider is on: the documents then name its endpoints.
    pub provider: bool,
}

/// A public key (RFC 7517): OKP for Ed25519 (RFC 8037), EC for P-256, RSA (RFC 7518, section
/// 6.3.1).
#[derive(Debug, Clone, Object)]
struct Jwk {
    kty: String,
    /// OKP and EC keys.
    #[oai(skip_serializing_if_is_none)]
    crv: Option<String>,
    /// OKP and EC keys.
    #[oai(skip_serializing_if_is_none)]
    x: Option<String>,
    /// RSA keys only: the modulus.
    #[oai(skip_serializing_if_is_none)]
    n: Option<String>,
    /// RSA keys only: the public exponent.
    #[oai(skip_serializing_if_is_none)]
    e: Option<String>,
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

/// Authorization server metadata (RFC 8414), and OpenID Provider metadata (OpenID Connect
/// Discovery 1.0) when the provider is on.
#[derive(Debug, Clone, Object)]
struct ServerMetadata {
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    grant_types_supported: Vec<String>,
    token_endpoint_auth_methods_supported: Vec<String>,
    response_types_supported: Vec<String>,
    id_token_signing_alg_values_supported: Vec<String>,
    #[oai(flatten)]
    provider: Option<ProviderMetadata>,
}

/// What the OpenID provider adds to the metadata.
#[derive(Debug, Clone, Object)]
struct ProviderMetadata {
    authorization_endpoint: String,
    userinfo_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    end_session_endpoint: String,
    scopes_supported: Vec<String>,
    response_modes_supported: Vec<String>,
    code_challenge_methods_supported: Vec<String>,
    subject_types_supported: Vec<String>,
    claims_supported: Vec<String>,
    revocation_endpoint_auth_methods_supported: Vec<String>,
    introspection_endpoint_auth_methods_supported: Vec<String>,
    authorization_response_iss_parameter_supported: bool,
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&v| v.to_owned()).collect()
}

impl KeysApi {
    fn metadata(&self) -> Json<ServerMetadata> {
        let base = &self.discovery.public_url;
        let mut metadata = ServerMetadata {
            issuer: self.discovery.issuer.clone(),
            jwks_uri: format!("{base}/.well-known/jwks.json"),
            token_endpoint: format!("{base}/auth/token"),
            grant_types_supported: strings(&["password", "refresh_token"]),
            token_endpoint_auth_methods_supported: strings(&["none"]),
            response_types_supported: strings(&["token"]),
            id_token_signing_alg_values_supported: strings(&[self.discovery.algorithm]),
            provider: None,
        };
        if self.discovery.provider {
            let client_auth = ["client_secret_basic", "client_secret_post", "none"];
            metadata.token_endpoint = format!("{base}/oauth/token");
            metadata.grant_types_supported =
                strings(&["authorization_code", "refresh_token", "client_credentials"]);
            metadata.token_endpoint_auth_methods_supported = strings(&client_auth);
            metadata.response_types_supported = strings(&["code"]);
            metadata.provider = Some(ProviderMetadata {
                authorization_endpoint: format!("{base}/oauth/authorize"),
                userinfo_endpoint: format!("{base}/oauth/userinfo"),
                revocation_endpoint: format!("{base}/oauth/revoke"),
                introspection_endpoint: format!("{base}/oauth/introspect"),
                end_session_endpoint: format!("{base}/oauth/logout"),
                scopes_supported: Scope::ALL
                    .iter()
                    .map(|scope| scope.as_str().to_owned())
                    .collect(),
                response_modes_supported: strings(&["query"]),
                code_challenge_methods_supported: strings(&["S256"]),
                subject_types_supported: strings(&["public"]),
                claims_supported: strings(&[
                    "iss",
                    "sub",
                    "aud",
                    "azp",
                    "exp",
                    "iat",
                    "auth_time",
                    "nonce",
                    "amr",
                    "sid",
                    "at_hash",
                    "name",
                    "email",
                    "email_verified",
                ]),
                revocation_endpoint_auth_methods_supported: strings(&client_auth),
                introspection_endpoint_auth_methods_supported: strings(&[
                    "client_secret_basic",
                    "client_secret_post",
                ]),
                authorization_response_iss_parameter_supported: true,
            });
        }
        Json(metadata)
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
    /// Where the keys and the token endpoint are. With the OpenID provider on (an asymmetric
    /// `jwt_algorithm`, and `jwt_issuer` equal to `public_url`), the provider's endpoints too;
    /// otherwise the password and refresh-token grants of `/auth/token` only.
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
