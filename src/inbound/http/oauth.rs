//! Errors of the OAuth2 token endpoint, in the form of RFC 6749 section 5.2.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

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

/// Why `POST /auth/token` gave no token.
pub enum TokenFailure {
    /// 400 with an RFC 6749 error code.
    OAuth {
        error: &'static str,
        description: String,
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
                let body = OAuthErrorBody {
                    error: error.to_owned(),
                    detail: description.clone(),
                    error_description: description,
                };
                let mut response = Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .content_type("application/json")
                    .body(serde_json::to_vec(&body).unwrap_or_default());
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Self::Problem(problem) => poem::error::ResponseError::as_response(&problem),
        }
    }
}

impl From<TokenFailure> for poem::Error {
    fn from(failure: TokenFailure) -> Self {
        match failure {
            TokenFailure::Problem(problem) => problem.into(),
            oauth => poem::Error::from_response(oauth.into_response()),
        }
    }
}

impl<T: Into<Problem>> From<T> for TokenFailure {
    fn from(err: T) -> Self {
        Self::Problem(err.into())
    }
}

impl ApiResponse for TokenFailure {
    fn meta() -> MetaResponses {
        let mut responses = vec![MetaResponse {
            description: "An OAuth error: invalid_request, invalid_grant (wrong email or password, inactive user) or unsupported_grant_type",
            status: Some(400),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: OAuthErrorBody::schema_ref(),
            }],
            headers: Vec::new(),
        }];
        responses.extend(Failure::<TokenProblems>::meta().responses);
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        OAuthErrorBody::register(registry);
        Failure::<TokenProblems>::register(registry);
    }
}
