//! Password reset, address verification and address change: the routes of the mail flows.
//!
//! The routes that ask for mail answer before any is sent, in the same status, body and time
//! whatever the address; the routes that take a link's token answer one 400 for every token
//! that does not work.

use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use crate::domain::{Core, Email, Password};
use crate::inbound::http::dto::{
    ChangeEmailRequest, ForgotPasswordRequest, LinkTokenRequest, MessageResponse,
    ResetPasswordRequest, UserResponse,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, FieldErrors, error_statuses};

/// The answer to every well-formed `forgot`: the same whether or not the address is known.
pub const FORGOT_ANSWER: &str = "If the address is registered, a reset link has been sent";

error_statuses!(
    /// Errors of `POST /auth/password/forgot`.
    ForgotErrors:
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed email or JSON",
        429 => "Too many requests for mail from this address or for this email",
        503 => "Mail is not configured, or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/password/reset`.
    ResetErrors:
        400 => "Invalid or expired token: unknown, spent, expired, or of another kind",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "The new password breaks the policy, or malformed JSON",
        503 => "The service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/verify/request`.
    VerifyRequestErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        409 => "Email already verified",
        413 => "A body was sent, and it is too large",
        429 => "Too many requests for mail from this address or for this user",
        503 => "Mail is not configured, or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/verify`.
    VerifyErrors:
        400 => "Invalid or expired token",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed JSON",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/email`.
    ChangeEmailErrors:
        401 => "No valid token, or the current password is wrong",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed new_email or JSON",
        429 => "Too many requests for mail or password checks, or the account's failure delay is running",
        503 => "Mail is not configured, or the service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/email/confirm`.
    ConfirmEmailErrors:
        400 => "Invalid or expired token",
        409 => "Email already registered: the new address was taken meanwhile",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed JSON",
        503 => "The database does not answer"
);

#[derive(ApiResponse)]
enum Accepted {
    /// Accepted: the mail is on its way (or, for an unknown address, nothing is, and nobody
    /// can tell).
    #[oai(status = 202)]
    Accepted(Json<MessageResponse>),
}

#[derive(ApiResponse)]
enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

pub struct RecoveryApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Email")]
impl RecoveryApi {
    /// Forgot password
    ///
    /// Queues a reset link for the account at this address. Every well-formed address gets
    /// the same answer at the same speed, registered or not; the link goes to the address on
    /// the account.
    #[oai(path = "/auth/password/forgot", method = "post")]
    async fn forgot(
        &self,
        req: &Request,
        body: JsonBody<ForgotPasswordRequest>,
    ) -> Result<Accepted, Failure<ForgotErrors>> {
        let mut fields = FieldErrors::default();
        let email = fields.check("email", Email::parse(&body.0.email));
        let email = fields.finish(email)?;
        self.core
            .recovery
            .forgot_password(email, &self.proxies.client_info(req))
            .await?;
        Ok(accepted(FORGOT_ANSWER))
    }

    /// Reset password
    ///
    /// Sets a new password with the token of a reset link. Every session of the user ends,
    /// every other reset link stops working, a pending email change is cancelled, and the
    /// address counts as verified.
    #[oai(path = "/auth/password/reset", method = "post")]
    async fn reset(
        &self,
        req: &Request,
        body: JsonBody<ResetPasswordRequest>,
    ) -> Result<Done, Failure<ResetErrors>> {
        let request = body.0;
        let mut fields = FieldErrors::default();
        let password = fields.check("new_password", Password::parse(&request.new_password));
        let password = fields.finish(password)?;
        self.core
            .recovery
            .reset_password(&request.token, password, &self.proxies.client_info(req))
            .await?;
        Ok(Done::NoContent)
    }

    /// Ask for a verification link
    ///
    /// Queues a link that proves the caller's address.
    #[oai(path = "/auth/verify/request", method = "post")]
    async fn request_verification(
        &self,
        req: &Request,
        auth: Authenticated,
    ) -> Result<Accepted, Failure<VerifyRequestErrors>> {
        self.core
            .recovery
            .request_verification(auth.principal(), &self.proxies.client_info(req))
            .await?;
        Ok(accepted("Verification email sent"))
    }

    /// Verify email
    ///
    /// Marks the address verified with the token of a verification link.
    #[oai(path = "/auth/verify", method = "post")]
    async fn verify(
        &self,
        body: JsonBody<LinkTokenRequest>,
    ) -> Result<Json<UserResponse>, Failure<VerifyErrors>> {
        let user = self.core.recovery.verify_email(&body.0.token).await?;
        let factors = self.core.factors.factors(user.id).await?;
        Ok(Json(UserResponse::new(user, factors)))
    }

    /// Change email
    ///
    /// With the current password: a confirmation link goes to the new address and a notice to
    /// the old one. Nothing changes until the link is used. When the new address belongs to
    /// someone else, its owner gets a notice instead of a link, and the answer is the same.
    #[oai(path = "/auth/email", method = "post")]
    async fn change_email(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<ChangeEmailRequest>,
    ) -> Result<Accepted, Failure<ChangeEmailErrors>> {
        let request = body.0;
        let mut fields = FieldErrors::default();
        let new_email = fields.check("new_email", Email::parse(&request.new_email));
        let new_email = fields.finish(new_email)?;
        self.core
            .recovery
            .request_email_change(
                auth.principal(),
                new_email,
                &request.current_password,
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(accepted("Confirmation sent to the new address"))
    }

    /// Confirm email change
    ///
    /// Moves the account to the address the link was sent to, verified. Every session of the
    /// user ends except the one that asked for the change.
    #[oai(path = "/auth/email/confirm", method = "post")]
    async fn confirm_email(
        &self,
        body: JsonBody<LinkTokenRequest>,
    ) -> Result<Json<UserResponse>, Failure<ConfirmEmailErrors>> {
        let user = self
            .core
            .recovery
            .confirm_email_change(&body.0.token)
            .await?;
        let factors = self.core.factors.factors(user.id).await?;
        Ok(Json(UserResponse::new(user, factors)))
    }
}

fn accepted(message: &str) -> Accepted {
    Accepted::Accepted(Json(MessageResponse::new(message)))
}
