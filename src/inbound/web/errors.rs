//! The one place where core errors become HTTP answers, with the `detail` texts clients of the
//! old service read.

use poem::http::StatusCode;

use super::problem::{CHALLENGE, CHALLENGE_INVALID_TOKEN, Failure, FieldError, Problem};
use crate::domain::service::{
    AdminError, AuthError, BearerError, ChangePasswordError, ClientError, EndSessionError,
    LoginError, MailRequestError, MfaError, PasskeyError, RedeemError, RefreshError, RegisterError,
    Throttled,
};
use crate::domain::{BackendError, PasswordError};

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECONDS: u64 = 1;
/// Mail or passkeys that are not configured stay so until an operator acts: retrying soon is
/// pointless.
const NOT_CONFIGURED_RETRY_AFTER_SECONDS: u64 = 3600;

pub const INVALID_CREDENTIALS: &str = "Could not validate credentials";

impl From<BackendError> for Problem {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::Unavailable(source) => {
                tracing::warn!(error = %source, "backend unavailable");
                Problem::unavailable("Service temporarily unavailable", RETRY_AFTER_SECONDS)
            }
            // The client sees an outage; the operator, an error to act on, since it lasts
            // until someone frees space or makes the database writable.
            BackendError::Storage(source) => {
                tracing::error!(
                    error = %source,
                    "the database cannot write: its disk is full, it is read-only, or its \
                     storage fails; writes answer 503 until an operator fixes it"
                );
                Problem::unavailable("Service temporarily unavailable", RETRY_AFTER_SECONDS)
            }
            BackendError::Overloaded => {
                Problem::unavailable("Server busy, retry shortly", RETRY_AFTER_SECONDS)
            }
            BackendError::Unexpected(source) => {
                tracing::error!(error = %source, source = ?source, "unexpected backend failure");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        }
    }
}

impl From<Throttled> for Problem {
    fn from(throttled: Throttled) -> Self {
        // Whole seconds, rounded up: a client that waits exactly this long gets through.
        let millis = throttled.retry_after.num_milliseconds().max(1);
        let seconds = u64::try_from((millis + 999) / 1000).unwrap_or(1);
        Self {
            retry_after: Some(seconds),
            ..Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too many attempts")
        }
    }
}

/// A 422 naming the password `field` and the rule of the core's policy it breaks, as the
/// shape checks at the edge do.
fn weak_password(field: &str, err: &PasswordError) -> Problem {
    Problem::validation(vec![FieldError {
        field: field.to_owned(),
        message: err.to_string(),
    }])
}

impl From<RegisterError> for Problem {
    fn from(err: RegisterError) -> Self {
        match err {
            RegisterError::EmailTaken => {
                Problem::new(StatusCode::BAD_REQUEST, "Email already registered")
            }
            RegisterError::WeakPassword(err) => weak_password("password", &err),
            RegisterError::Throttled(t) => t.into(),
            RegisterError::Backend(err) => err.into(),
        }
    }
}

impl From<LoginError> for Problem {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::InvalidCredentials => {
                Problem::unauthorized("Incorrect email or password", CHALLENGE)
            }
            LoginError::Inactive => Problem::unauthorized("Inactive user account", CHALLENGE),
            LoginError::Unverified => Problem::new(StatusCode::FORBIDDEN, "Email not verified"),
            // Only the token grant can meet it, and it answers in OAuth's terms.
            LoginError::SecondFactorRequired => {
                Problem::new(StatusCode::BAD_REQUEST, "mfa_required")
            }
            LoginError::Throttled(t) => t.into(),
            LoginError::Backend(err) => err.into(),
        }
    }
}

impl From<MfaError> for Problem {
    fn from(err: MfaError) -> Self {
        match err {
            MfaError::InvalidCode => Problem::new(StatusCode::BAD_REQUEST, "Invalid code"),
            MfaError::AlreadyEnabled => Problem::new(StatusCode::CONFLICT, "TOTP already enabled"),
            MfaError::NotEnabled => Problem::new(StatusCode::BAD_REQUEST, "TOTP not enabled"),
            MfaError::WrongPassword => Problem::unauthorized("Incorrect password", CHALLENGE),
            MfaError::Throttled(t) => t.into(),
            MfaError::Backend(err) => err.into(),
        }
    }
}

impl From<PasskeyError> for Problem {
    fn from(err: PasskeyError) -> Self {
        match err {
            PasskeyError::InvalidResponse => {
                Problem::new(StatusCode::BAD_REQUEST, "Invalid passkey response")
            }
            PasskeyError::AlreadyRegistered => {
                Problem::new(StatusCode::CONFLICT, "Passkey already registered")
            }
            PasskeyError::NotFound => Problem::new(StatusCode::NOT_FOUND, "Passkey not found"),
            PasskeyError::TooMany => Problem::new(StatusCode::CONFLICT, "Too many passkeys"),
            PasskeyError::WrongPassword => Problem::unauthorized("Incorrect password", CHALLENGE),
            PasskeyError::InvalidCode => Problem::new(StatusCode::BAD_REQUEST, "Invalid code"),
            PasskeyError::NotConfigured => Problem::unavailable(
                "Passkeys are not configured: set public_url",
                NOT_CONFIGURED_RETRY_AFTER_SECONDS,
            ),
            PasskeyError::Login(err) => err.into(),
            PasskeyError::Throttled(t) => t.into(),
            PasskeyError::Backend(err) => err.into(),
        }
    }
}

impl From<AuthError> for Problem {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidToken => {
                Problem::unauthorized(INVALID_CREDENTIALS, CHALLENGE_INVALID_TOKEN)
            }
            AuthError::Inactive => Problem::unauthorized("Inactive user", CHALLENGE_INVALID_TOKEN),
            AuthError::Forbidden => Problem::new(StatusCode::FORBIDDEN, "Insufficient privileges"),
            AuthError::Backend(err) => err.into(),
        }
    }
}

impl From<RefreshError> for Problem {
    fn from(err: RefreshError) -> Self {
        match err {
            RefreshError::InvalidToken => {
                Problem::unauthorized("Invalid refresh token", CHALLENGE_INVALID_TOKEN)
            }
            RefreshError::Reused => Problem::unauthorized(
                "Refresh token reused; the session has been revoked",
                CHALLENGE_INVALID_TOKEN,
            ),
            RefreshError::Throttled(t) => t.into(),
            RefreshError::Backend(err) => err.into(),
        }
    }
}

impl From<EndSessionError> for Problem {
    fn from(err: EndSessionError) -> Self {
        match err {
            EndSessionError::NotFound => Problem::new(StatusCode::NOT_FOUND, "Session not found"),
            EndSessionError::Backend(err) => err.into(),
        }
    }
}

impl From<ChangePasswordError> for Problem {
    fn from(err: ChangePasswordError) -> Self {
        match err {
            ChangePasswordError::WrongPassword => {
                Problem::unauthorized("Incorrect password", CHALLENGE)
            }
            ChangePasswordError::WeakPassword(err) => weak_password("new_password", &err),
            ChangePasswordError::Throttled(t) => t.into(),
            ChangePasswordError::Backend(err) => err.into(),
        }
    }
}

impl From<MailRequestError> for Problem {
    fn from(err: MailRequestError) -> Self {
        match err {
            // The same for every address: nothing about the account shows.
            MailRequestError::NotConfigured => {
                Problem::unavailable("Mail is not configured", NOT_CONFIGURED_RETRY_AFTER_SECONDS)
            }
            MailRequestError::AlreadyVerified => {
                Problem::new(StatusCode::CONFLICT, "Email already verified")
            }
            MailRequestError::WrongPassword => {
                Problem::unauthorized("Incorrect password", CHALLENGE)
            }
            MailRequestError::Throttled(t) => t.into(),
            MailRequestError::Backend(err) => err.into(),
        }
    }
}

impl From<RedeemError> for Problem {
    fn from(err: RedeemError) -> Self {
        match err {
            RedeemError::InvalidToken => {
                Problem::new(StatusCode::BAD_REQUEST, "Invalid or expired token")
            }
            RedeemError::EmailTaken => {
                Problem::new(StatusCode::CONFLICT, "Email already registered")
            }
            RedeemError::WeakPassword(err) => weak_password("new_password", &err),
            RedeemError::Backend(err) => err.into(),
        }
    }
}

impl From<AdminError> for Problem {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::UnknownUser => Problem::new(StatusCode::NOT_FOUND, "User not found"),
            AdminError::EmailTaken => {
                Problem::new(StatusCode::BAD_REQUEST, "Email already registered")
            }
            AdminError::LastAdmin => {
                Problem::new(StatusCode::CONFLICT, "Would leave no active admin")
            }
            AdminError::MailNotConfigured => {
                Problem::unavailable("Mail is not configured", NOT_CONFIGURED_RETRY_AFTER_SECONDS)
            }
            AdminError::WeakPassword(err) => weak_password("password", &err),
            AdminError::Backend(err) => err.into(),
        }
    }
}

/// The answer of every `/oauth` route while the provider is off: a setting, not a passing
/// fault, so no `Retry-After`.
pub const PROVIDER_OFF: &str = "OpenID provider needs an asymmetric signing key and a URL issuer";

/// The challenge of a 403 for a token without the scope a route needs (RFC 6750 section 3.1).
const CHALLENGE_INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\", scope=\"openid\"";

impl From<ClientError> for Problem {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::NotFound => Problem::new(StatusCode::NOT_FOUND, "Client not found"),
            ClientError::Invalid(invalid) => Problem::invalid_field(invalid.field, invalid.message),
            ClientError::Backend(err) => err.into(),
        }
    }
}

impl From<BearerError> for Problem {
    fn from(err: BearerError) -> Self {
        match err {
            BearerError::Off => Problem::new(StatusCode::SERVICE_UNAVAILABLE, PROVIDER_OFF),
            BearerError::InvalidToken => {
                Problem::unauthorized(INVALID_CREDENTIALS, CHALLENGE_INVALID_TOKEN)
            }
            BearerError::InsufficientScope => Problem {
                challenge: Some(CHALLENGE_INSUFFICIENT_SCOPE),
                ..Problem::new(StatusCode::FORBIDDEN, "Insufficient scope")
            },
            BearerError::Backend(err) => err.into(),
        }
    }
}

/// Lets handlers use `?` on core errors whatever their operation's [`Failure`] type.
macro_rules! into_failure {
    ($($error:ty),+) => {$(
        impl<S> From<$error> for Failure<S> {
            fn from(err: $error) -> Self {
                Problem::from(err).into()
            }
        }
    )+};
}

into_failure!(
    BackendError,
    MfaError,
    PasskeyError,
    RegisterError,
    LoginError,
    AuthError,
    RefreshError,
    EndSessionError,
    ChangePasswordError,
    MailRequestError,
    RedeemError,
    AdminError,
    ClientError,
    BearerError
);

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_detail(problem: Problem) -> (u16, String) {
        (problem.status.as_u16(), problem.detail)
    }

    #[test]
    fn each_core_error_maps_to_its_status_and_detail() {
        let cases: Vec<(Problem, u16, &str)> = vec![
            (
                RegisterError::EmailTaken.into(),
                400,
                "Email already registered",
            ),
            (
                LoginError::InvalidCredentials.into(),
                401,
                "Incorrect email or password",
            ),
            (LoginError::Inactive.into(), 401, "Inactive user account"),
            (
                AuthError::InvalidToken.into(),
                401,
                "Could not validate credentials",
            ),
            (AuthError::Inactive.into(), 401, "Inactive user"),
            (AuthError::Forbidden.into(), 403, "Insufficient privileges"),
            (EndSessionError::NotFound.into(), 404, "Session not found"),
            (
                ChangePasswordError::WrongPassword.into(),
                401,
                "Incorrect password",
            ),
            (
                BackendError::Overloaded.into(),
                503,
                "Server busy, retry shortly",
            ),
            (
                BackendError::Unavailable("db down".into()).into(),
                503,
                "Service temporarily unavailable",
            ),
            (
                BackendError::Storage("disk full".into()).into(),
                503,
                "Service temporarily unavailable",
            ),
            (
                BackendError::unexpected("secret internals").into(),
                500,
                "Internal Server Error",
            ),
        ];
        for (problem, status, detail) in cases {
            assert_eq!(status_and_detail(problem), (status, detail.to_owned()));
        }
    }

    #[test]
    fn every_401_carries_a_bearer_challenge_and_every_503_a_retry_after() {
        let unauthorized: Vec<Problem> = vec![
            LoginError::InvalidCredentials.into(),
            AuthError::InvalidToken.into(),
            RefreshError::Reused.into(),
            ChangePasswordError::WrongPassword.into(),
        ];
        for problem in unauthorized {
            assert!(problem.challenge.is_some_and(|c| c.starts_with("Bearer")));
        }
        let busy: Problem = BackendError::Overloaded.into();
        assert_eq!(busy.retry_after, Some(RETRY_AFTER_SECONDS));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let wait = |millis| {
            Problem::from(Throttled {
                retry_after: chrono::TimeDelta::milliseconds(millis),
            })
            .retry_after
        };
        assert_eq!(wait(1), Some(1));
        assert_eq!(wait(1000), Some(1));
        assert_eq!(wait(1001), Some(2));
        assert_eq!(wait(59_500), Some(60));
    }
}
