//! RFC 9457 problem documents: the one shape every error body takes.
//!
//! [`Problem`] is what handlers, extractors and middleware fail with; [`Failure`] is the same
//! thing typed for an operation, so that its OpenAPI entry lists exactly the errors it can
//! answer. [`into_problem_response`] is the last stop for any error poem or poem-openapi
//! raises on its own (bad JSON, wrong content type, unknown route, ...).

use std::marker::PhantomData;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry,
};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One failing input field of a 422.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize)]
pub struct FieldError {
    /// The field, as named in the request (`body` when the body as a whole is at fault).
    pub field: String,
    pub message: String,
}

/// An error body (RFC 9457).
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(rename = "Problem")]
pub struct ProblemDocument {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, for people (and for clients of the old service, which read it).
    pub detail: String,
    /// The failing fields; only on a 422.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// An HTTP error answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// `WWW-Authenticate` value, on a 401.
    pub challenge: Option<&'static str>,
    /// `Retry-After` seconds, on a 429 or 503.
    pub retry_after: Option<u64>,
}

/// The challenge of a 401 when no usable credentials came (RFC 6750 section 3).
pub const CHALLENGE: &str = "Bearer";
/// The challenge of a 401 when a token came and was rejected.
pub const CHALLENGE_INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: Vec::new(),
            challenge: None,
            retry_after: None,
        }
    }

    /// A 401 with its `WWW-Authenticate` challenge.
    pub fn unauthorized(detail: impl Into<String>, challenge: &'static str) -> Self {
        Self {
            challenge: Some(challenge),
            ..Self::new(StatusCode::UNAUTHORIZED, detail)
        }
    }

    /// A 422 listing the failing fields; its detail sums them up.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
        }
    }

    /// A 422 for one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// A 422 for a body that must hold exactly one of two fields.
    pub fn exactly_one_of(first: &str, second: &str) -> Self {
        Self::invalid_field(first, format!("give exactly one of {first} and {second}"))
    }

    /// A 503 that asks the client to come back after `seconds`.
    pub fn unavailable(detail: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
        }
    }

    pub fn document(&self) -> ProblemDocument {
        ProblemDocument {
            kind: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: (!self.errors.is_empty()).then(|| self.errors.clone()),
        }
    }
}

impl poem::error::ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_vec(&self.document()).unwrap_or_default();
        let mut response = Response::builder()
            .status(self.status)
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(body);
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Collects the failing fields of a request, to answer them all in one 422.
#[derive(Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Records `result`'s error against `field`, and passes its value on.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result
            .map_err(|err| {
                self.0.push(FieldError {
                    field: field.to_owned(),
                    message: err.to_string(),
                })
            })
            .ok()
    }

    /// `value` when no field failed; else the 422.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Problem> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(Problem::validation(self.0)),
        }
    }
}

/// Turns whatever error reached the edge of the app into a problem response.
pub fn into_problem_response(err: poem::Error) -> Response {
    use poem_openapi::error::{
        AuthorizationError, ContentTypeError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    };

    if let Some(problem) = err.downcast_ref::<Problem>() {
        return poem::error::ResponseError::as_response(problem);
    }
    if err.is_from_response() {
        // Already an answer of ours in its own shape (the OAuth token errors).
        return err.into_response();
    }
    let problem = if err.is::<AuthorizationError>() {
        Problem::unauthorized("Could not validate credentials", CHALLENGE)
    } else if err.is::<ContentTypeError>() {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported media type: {err}"),
        )
    } else if err.is::<ParsePathError>() {
        Problem::new(StatusCode::NOT_FOUND, "Not Found")
    } else if err.is::<ParseRequestPayloadError>() {
        Problem::validation(vec![FieldError {
            field: "body".into(),
            message: err.to_string(),
        }])
    } else if let Some(param) = err.downcast_ref::<ParseParamError>() {
        Problem::validation(vec![FieldError {
            field: param.name.to_owned(),
            message: param.reason.clone(),
        }])
    } else {
        let status = err.status();
        if status.is_server_error() {
            tracing::error!(error = %err, "request failed");
        }
        let detail = if status.is_server_error() {
            "Internal Server Error".to_owned()
        } else {
            status.canonical_reason().unwrap_or("Error").to_owned()
        };
        Problem::new(status, detail)
    };
    poem::error::ResponseError::as_response(&problem)
}

/// The error statuses one operation can answer, for its OpenAPI entry.
pub trait ErrorStatuses: Send + Sync + 'static {
    /// Each status with the description shown in the docs.
    const STATUSES: &'static [(u16, &'static str)];
}

/// An operation's error: a [`Problem`], documented with the statuses of `S`.
pub struct Failure<S>(pub Problem, PhantomData<S>);

impl<S> From<Problem> for Failure<S> {
    fn from(problem: Problem) -> Self {
        Self(problem, PhantomData)
    }
}

impl<S> From<Failure<S>> for poem::Error {
    fn from(failure: Failure<S>) -> Self {
        poem::Error::from(failure.0)
    }
}

impl<S: ErrorStatuses> IntoResponse for Failure<S> {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self.0)
    }
}

impl<S: ErrorStatuses> ApiResponse for Failure<S> {
    fn meta() -> MetaResponses {
        let header = |name: &str, description: &str| MetaHeader {
            name: name.to_owned(),
            description: Some(description.to_owned()),
            required: true,
            deprecated: false,
            schema: String::schema_ref(),
        };
        MetaResponses {
            responses: S::STATUSES
                .iter()
                .map(|&(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_CONTENT_TYPE,
                        schema: MetaSchemaRef::Reference("Problem".to_owned()),
                    }],
                    headers: match status {
                        401 => vec![header(
                            "WWW-Authenticate",
                            "The Bearer challenge (RFC 6750)",
                        )],
                        429 | 503 => vec![header("Retry-After", "Seconds to wait before retrying")],
                        _ => Vec::new(),
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ProblemDocument::register(registry);
    }
}

/// Declares a set of error statuses for [`Failure`].
macro_rules! error_statuses {
    ($(#[$doc:meta])* $name:ident: $($status:literal => $description:literal),+ $(,)?) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::inbound::web::problem::ErrorStatuses for $name {
            const STATUSES: &'static [(u16, &'static str)] = &[$(($status, $description)),+];
        }
    };
}
pub(crate) use error_statuses;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_renders_as_problem_json_with_its_headers() {
        let response = poem::error::ResponseError::as_response(&Problem::unauthorized(
            "Could not validate credentials",
            CHALLENGE_INVALID_TOKEN,
        ));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.content_type(), Some(PROBLEM_CONTENT_TYPE));
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
    }

    #[test]
    fn a_validation_problem_sums_up_its_fields() {
        let problem = Problem::validation(vec![
            FieldError {
                field: "email".into(),
                message: "bad".into(),
            },
            FieldError {
                field: "password".into(),
                message: "short".into(),
            },
        ]);
        assert_eq!(problem.detail, "email: bad; password: short");
        let doc = serde_json::to_value(problem.document()).unwrap();
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["title"], "Unprocessable Entity");
        assert_eq!(doc["status"], 422);
        assert_eq!(doc["errors"][1]["field"], "password");
    }

    #[test]
    fn framework_errors_become_problems() {
        let response = into_problem_response(poem::error::NotFoundError.into());
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.content_type(), Some(PROBLEM_CONTENT_TYPE));
        let response = into_problem_response(poem_openapi::error::AuthorizationError.into());
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
