//! The second factor: TOTP enrolment and removal, and the second step of a login.

use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use crate::domain::Core;
use crate::domain::service::{Proof, SecondFactor};
use crate::inbound::http::dto::{
    CurrentPasswordRequest, MfaVerifyRequest, RecoveryCodesResponse, TokenResponse,
    TotpConfirmRequest, TotpEnrolmentResponse, TotpRemovalRequest,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::schema::ExactlyOne;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

error_statuses!(
    /// Errors of `POST /auth/mfa/totp`.
    EnrolErrors:
        401 => "No valid token, or the password is wrong",
        409 => "TOTP already enabled",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "No current_password, or malformed JSON",
        429 => "Too many attempts from this address or for this user, or the account's failure delay is running",
        503 => "The service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/mfa/totp/confirm`.
    ConfirmErrors:
        400 => "Invalid code (wrong, malformed, or no enrolment is pending)",
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        409 => "TOTP already enabled",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "No code, or malformed JSON",
        429 => "Too many attempts from this address or for this user",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `DELETE /auth/mfa/totp`.
    DisableErrors:
        400 => "Invalid code, or TOTP not enabled",
        401 => "No valid token, or the password is wrong",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Neither or both of code and password, or malformed JSON",
        429 => "Too many attempts from this address or for this user, or the account's failure delay is running",
        503 => "The service is overloaded or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/mfa/verify`.
    VerifyErrors:
        400 => "Invalid code: a wrong, replayed or malformed code or recovery code, or a spent, expired or unknown mfa_token",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Neither or both of code and recovery_code, or malformed JSON",
        429 => "Too many attempts from this address or for this account, or the account is serving a delay after repeated failures",
        503 => "The database does not answer"
);

#[derive(ApiResponse)]
enum Removed {
    /// The factor and its recovery codes are gone.
    #[oai(status = 204)]
    NoContent,
}

pub struct MfaApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Mfa")]
impl MfaApi {
    /// Start a TOTP enrolment
    ///
    /// With the account's password, asked again: an access token alone adds no way in. A new
    /// secret and its `otpauth://` URI, for an authenticator app. It is not active until a
    /// code confirms it; a second call before that replaces it.
    #[oai(path = "/auth/mfa/totp", method = "post")]
    async fn enrol(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<CurrentPasswordRequest>,
    ) -> Result<Json<TotpEnrolmentResponse>, Failure<EnrolErrors>> {
        let enrolment = self
            .core
            .factors
            .begin_totp(
                auth.principal(),
                Proof::Password(&body.0.current_password),
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(Json(TotpEnrolmentResponse {
            secret: enrolment.secret.base32(),
            otpauth_uri: enrolment.uri,
        }))
    }

    /// Confirm the TOTP enrolment
    ///
    /// A current code of the new secret activates it, and answers ten single-use recovery
    /// codes: they are shown this once.
    #[oai(path = "/auth/mfa/totp/confirm", method = "post")]
    async fn confirm(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<TotpConfirmRequest>,
    ) -> Result<Json<RecoveryCodesResponse>, Failure<ConfirmErrors>> {
        let recovery_codes = self
            .core
            .factors
            .confirm_totp(
                auth.principal(),
                &body.0.code,
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(Json(RecoveryCodesResponse { recovery_codes }))
    }

    /// Remove the TOTP factor
    ///
    /// With a current code or the account's password; the recovery codes go with it.
    #[oai(path = "/auth/mfa/totp", method = "delete")]
    async fn disable(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<ExactlyOne<TotpRemovalRequest>>,
    ) -> Result<Removed, Failure<DisableErrors>> {
        let request = body.0.0;
        let proof = match (&request.code, &request.password) {
            (Some(code), None) => Proof::Code(code),
            (None, Some(password)) => Proof::Password(password),
            _ => return Err(Problem::exactly_one_of("code", "password").into()),
        };
        self.core
            .factors
            .disable_totp(auth.principal(), proof, &self.proxies.client_info(req))
            .await?;
        Ok(Removed::NoContent)
    }

    /// Complete a login with a second factor
    ///
    /// The `mfa_token` of the login's first step with a TOTP code or a recovery code. A wrong
    /// code counts as a failed login of the account; the fifth spends the `mfa_token`.
    #[oai(path = "/auth/mfa/verify", method = "post")]
    async fn verify(
        &self,
        req: &Request,
        body: JsonBody<ExactlyOne<MfaVerifyRequest>>,
    ) -> Result<Json<TokenResponse>, Failure<VerifyErrors>> {
        let request = body.0.0;
        let proof = match (&request.code, &request.recovery_code) {
            (Some(code), None) => SecondFactor::Code(code),
            (None, Some(code)) => SecondFactor::RecoveryCode(code),
            _ => return Err(Problem::exactly_one_of("code", "recovery_code").into()),
        };
        let pair = self
            .core
            .factors
            .complete_login(&request.mfa_token, proof, self.proxies.client_info(req))
            .await?;
        Ok(Json(pair.into()))
    }
}
