//! Registration, login (JSON and OAuth2 form) and the caller's account.

use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::ApiTags;
use crate::domain::mfa::Factors;
use crate::domain::service::LoginError;
use crate::domain::{Core, Email, FullName, Password};
use crate::inbound::http::dto::{
    LoginRequest, LoginResponse, RegisterRequest, TokenResponse, UserResponse,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::oauth::TokenFailure;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::metrics::record_login;
use crate::inbound::web::problem::{Failure, FieldErrors, error_statuses};

error_statuses!(
    /// Errors of `POST /auth/register`.
    RegisterErrors:
        400 => "Email already registered",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Invalid email, password under 8 characters or over 72 bytes, full_name over 255 characters, or malformed JSON",
        429 => "Too many attempts from this address or for this email",
        503 => "The service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/login`.
    LoginErrors:
        401 => "Incorrect email or password; or, after a correct password, an inactive account",
        403 => "After a correct password: the address is not verified, and require_verified_email is set",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed JSON or email",
        429 => "Too many attempts from this address or for this account, or the account is serving a delay after repeated failures",
        503 => "The service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `GET /auth/me`.
    MeErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        503 => "The database does not answer"
);

#[derive(ApiResponse)]
enum Registered {
    /// The new user, with role `user`.
    #[oai(status = 201)]
    Created(Json<UserResponse>),
}

/// The OAuth2 password grant (RFC 6749 section 4.3), as Swagger UI's Authorize dialog sends it.
#[derive(Debug, Deserialize, Object)]
struct TokenForm {
    /// Must be `password`.
    grant_type: Option<String>,
    /// The email address.
    username: Option<String>,
    password: Option<String>,
    /// Accepted and ignored.
    scope: Option<String>,
}

pub struct AuthApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Register
    ///
    /// Creates a user with role `user`. Emails are unique without regard to case.
    #[oai(path = "/auth/register", method = "post")]
    async fn register(
        &self,
        req: &Request,
        body: JsonBody<RegisterRequest>,
    ) -> Result<Registered, Failure<RegisterErrors>> {
        let request = body.0;
        let mut fields = FieldErrors::default();
        let email = fields.check("email", Email::parse(&request.email));
        let password = fields.check("password", Password::parse(&request.password));
        let full_name = request
            .full_name
            .map(|name| fields.check("full_name", FullName::parse(&name)));
        let (email, password, full_name) = fields.finish(
            email
                .zip(password)
                .zip(full_name.map_or(Some(None), |n| n.map(Some)))
                .map(|((e, p), n)| (e, p, n)),
        )?;
        let user = self
            .core
            .accounts
            .register(email, password, full_name, &self.proxies.client_info(req))
            .await?;
        Ok(Registered::Created(Json(UserResponse::new(
            user,
            Factors::default(),
        ))))
    }

    /// Log in
    ///
    /// Checks the password and opens a session: an access token and a refresh token. For a
    /// user with a second factor, a right password answers `mfa_required` and an `mfa_token`
    /// instead, for `POST /auth/mfa/verify`.
    #[oai(path = "/auth/login", method = "post")]
    async fn login(
        &self,
        req: &Request,
        body: JsonBody<LoginRequest>,
    ) -> Result<Json<LoginResponse>, Failure<LoginErrors>> {
        let request = body.0;
        let mut fields = FieldErrors::default();
        let email = fields.check("email", Email::parse(&request.email));
        let email = fields.finish(email)?;
        let result = self
            .core
            .accounts
            .login(&email, &request.password, self.proxies.client_info(req))
            .await;
        record_login(&result);
        Ok(Json(result?.into()))
    }

    /// Log in with the OAuth2 password grant
    ///
    /// The form of RFC 6749 section 4.3 (`grant_type=password&username=EMAIL&password=...`);
    /// this is what the Authorize button of the documentation uses. The grant has no second
    /// step: for a user with a second factor, the right password answers `invalid_grant` with
    /// `error_description` `mfa_required` (a wrong one answers as for anyone).
    #[oai(path = "/auth/token", method = "post")]
    async fn token(
        &self,
        req: &Request,
        form: Form<TokenForm>,
    ) -> Result<Json<TokenResponse>, TokenFailure> {
        let form = form.0;
        match form.grant_type.as_deref() {
            Some("password") => {}
            None => {
                return Err(TokenFailure::oauth(
                    "invalid_request",
                    "grant_type is required",
                ));
            }
            Some(_) => {
                return Err(TokenFailure::oauth(
                    "unsupported_grant_type",
                    "only the password grant is supported",
                ));
            }
        }
        let (Some(username), Some(password)) = (form.username, form.password) else {
            return Err(TokenFailure::oauth(
                "invalid_request",
                "username and password are required",
            ));
        };
        let invalid_grant = || TokenFailure::oauth("invalid_grant", "Incorrect email or password");
        let email = Email::parse(&username).map_err(|_| invalid_grant())?;
        let result = self
            .core
            .accounts
            .login_without_second_step(&email, &password, self.proxies.client_info(req))
            .await;
        record_login(&result);
        match result {
            Ok(pair) => Ok(Json(pair.into())),
            Err(LoginError::InvalidCredentials) => Err(invalid_grant()),
            Err(LoginError::Inactive) => Err(TokenFailure::oauth(
                "invalid_grant",
                "Inactive user account",
            )),
            Err(LoginError::Unverified) => {
                Err(TokenFailure::oauth("invalid_grant", "Email not verified"))
            }
            Err(LoginError::SecondFactorRequired) => {
                Err(TokenFailure::oauth("invalid_grant", "mfa_required"))
            }
            Err(err @ LoginError::Throttled(_)) => Err(err.into()),
            Err(LoginError::Backend(err)) => Err(err.into()),
        }
    }

    /// The caller
    #[oai(path = "/auth/me", method = "get")]
    async fn me(&self, auth: Authenticated) -> Result<Json<UserResponse>, Failure<MeErrors>> {
        let user = auth.principal().user.clone();
        let factors = self.core.factors.factors(user.id).await?;
        Ok(Json(UserResponse::new(user, factors)))
    }
}
