//! Errors of the OAuth2 token endpoints (`/auth/token`, and the provider's `/oauth/token`,
//! `/oauth/revoke`, `/oauth/introspect`), in the form of RFC 6749 section 5.2.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use crate::domain::BackendError;
use crate::domain::service::{LoginError, TokenEndpointError};
use crate::inbound::web::errors::PROVIDER_OFF;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

/// The error body of RFC 6749 section 5.2. `detail` repeats the description for clients that
/// read problem documents.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_grant` or `unsupported_grant_type`.
    pub error: String,
    pub error_description: String,
    pub detail: String,
}

error_statuses!(
    /// The token endpoint's answers that are not OAuth errors.
    TokenProblems:
        415 => "The body is not application/x-www-form-urlencoded",
        429 => "Too many attempts from this address or for this account",
        503 => "The service is overloaded or the database does not answer"
);

/// Why a token endpoint gave no token.
pub enum TokenFailure {
    /// 400 with an RFC 6749 error code.
    OAuth {
        error: &'static str,
        description: String,
    },
    /// 401 `invalid_client`; with `WWW-Authenticate: Basic` when the client tried Basic
    /// (RFC 6749 section 5.2).
    InvalidClient {
        basic: bool,
    },
    Problem(Problem),
}

impl TokenFailure {
    pub fn oauth(error: &'static str, description: impl Into<String>) -> Self {
        Self::OAuth {
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for TokenFailure {
    fn into_response(self) -> Response {
        match self {
            Self::OAuth { error, description } => {
                oauth_error(StatusCode::BAD_REQUEST, error, description)
            }
            Self::InvalidClient { basic } => {
                let mut response = oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed".into(),
                );
                if basic {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"portcullis\""),
                    );
                }
                response
            }
            Self::Problem(problem) => poem::error::ResponseError::as_response(&problem),
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: String) -> Response {
    let body = OAuthErrorBody {
        error: error.to_owned(),
        detail: description.clone(),
        error_description: description,
    };
    let mut response = Response::builder()
        .status(status)
        .content_type("application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl From<TokenFailure> for poem::Error {
    fn from(failure: TokenFailure) -> Self {
        match failure {
            TokenFailure::Problem(problem) => problem.into(),
            oauth => poem::Error::from_response(oauth.into_response()),
        }
    }
}

impl From<TokenEndpointError> for TokenFailure {
    fn from(err: TokenEndpointError) -> Self {
        let oauth = |error, description: &str| Self::oauth(error, description);
        match err {
            TokenEndpointError::Off => {
                Self::Problem(Problem::new(StatusCode::SERVICE_UNAVAILABLE, PROVIDER_OFF))
            }
            TokenEndpointError::InvalidClient { basic } => Self::InvalidClient { basic },
            TokenEndpointError::InvalidRequest(why) => oauth("invalid_request", why),
            TokenEndpointError::InvalidGrant(why) => oauth("invalid_grant", why),
            TokenEndpointError::UnauthorizedClient => oauth(
                "unauthorized_client",
                "this client may not use this grant type",
            ),
            TokenEndpointError::UnsupportedGrantType => {
                oauth("unsupported_grant_type", "unsupported grant_type")
            }
            TokenEndpointError::InvalidScope(why) => oauth("invalid_scope", &why),
            TokenEndpointError::Throttled(throttled) => Self::Problem(throttled.into()),
            TokenEndpointError::Backend(err) => Self::Problem(err.into()),
        }
    }
}

impl From<LoginError> for TokenFailure {
    fn from(err: LoginError) -> Self {
        Self::Problem(err.into())
    }
}

impl From<BackendError> for TokenFailure {
    fn from(err: BackendError) -> Self {
        Self::Problem(err.into())
    }
}

impl ApiResponse for TokenFailure {
    fn meta() -> MetaResponses {
        let oauth = |status, description| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: OAuthErrorBody::schema_ref(),
            }],
            headers: Vec::new(),
        };
        let mut responses = vec![
            oauth(
                400,
                "An OAuth error: invalid_request, invalid_grant, unauthorized_client, unsupported_grant_type or invalid_scope",
            ),
            oauth(
                401,
                "invalid_client: the client's authentication failed (OpenID provider endpoints)",
            ),
        ];
        responses.extend(Failure::<TokenProblems>::meta().responses);
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        OAuthErrorBody::register(registry);
        Failure::<TokenProblems>::register(registry);
    }
}
