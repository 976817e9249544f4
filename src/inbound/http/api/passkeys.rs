//! Passkeys (WebAuthn): adding them, signing in with one, listing and removing them.
//!
//! The options and the browser's answers are WebAuthn's own JSON: the options go to
//! `navigator.credentials.create` / `.get` as they are, and the `PublicKeyCredential` the
//! browser returns comes back as it is (its `toJSON()`), to the matching `finish` route.

use std::sync::Arc;

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use serde_json::Value;
use uuid::Uuid;

use super::ApiTags;
use crate::domain::Core;
use crate::domain::mfa::passkey_name;
use crate::domain::service::Proof;
use crate::inbound::http::dto::{
    FactorProofRequest, PasskeyResponse, RenamePasskeyRequest, TokenResponse,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::schema::{Authentication, ExactlyOne, PasskeyAnswer, Registration};
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, Problem, error_statuses};

error_statuses!(
    /// Errors of `POST /auth/passkeys/register/start`.
    RegisterStartErrors:
        400 => "Invalid code: a wrong, replayed or malformed code or recovery code",
        401 => "No valid token, or the password is wrong",
        409 => "Too many passkeys: the caller holds 20",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Neither or both of current_password and code, or malformed JSON",
        429 => "Too many attempts from this address or for this user, or the account's failure delay is running",
        503 => "Passkeys are not configured (public_url), the service is overloaded, or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/passkeys/register/finish`.
    RegisterFinishErrors:
        400 => "Invalid passkey response: malformed, for an unknown, spent or expired ceremony, another user's, or not verified",
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        409 => "Passkey already registered, or too many passkeys (20)",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "A name over 64 characters or with control characters, or malformed JSON",
        503 => "Passkeys are not configured (public_url), or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/passkeys/login/start`.
    LoginStartErrors:
        413 => "A body was sent, and it is too large",
        429 => "Too many attempts from this address",
        503 => "Passkeys are not configured (public_url), or the database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/passkeys/login/finish`.
    LoginFinishErrors:
        400 => "Invalid passkey response: malformed, for an unknown, spent or expired ceremony, with an unknown passkey, or not verified",
        401 => "Inactive user account",
        403 => "The address is not verified, and require_verified_email is set",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed JSON",
        429 => "Too many attempts for this account",
        503 => "Passkeys are not configured (public_url), or the database does not answer"
);

error_statuses!(
    /// Errors of `GET /auth/passkeys`.
    ListErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `PATCH /auth/passkeys/{id}`.
    RenameErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        404 => "The caller has no passkey with this id",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "No name, an empty one, one over 64 characters or with control characters, or malformed JSON",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `DELETE /auth/passkeys/{id}`.
    RemoveErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        404 => "The caller has no passkey with this id",
        413 => "A body was sent, and it is too large",
        503 => "The database does not answer"
);

#[derive(ApiResponse)]
enum Added {
    /// The new passkey.
    #[oai(status = 201)]
    Created(Json<PasskeyResponse>),
}

#[derive(ApiResponse)]
enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

/// WebAuthn options, as JSON for the browser.
fn options(json: &str) -> Result<Json<Value>, Problem> {
    serde_json::from_str(json)
        .map(Json)
        .map_err(|err| crate::domain::BackendError::unexpected(err).into())
}

/// The credential of a `finish` body: the `PublicKeyCredential` itself, or wrapped as
/// `{"credential": ..., "name": ...}`; and the name given, if any.
fn credential_and_name(body: Value) -> Result<(String, Option<String>), Problem> {
    let (credential, name) = match body {
        Value::Object(mut fields) => {
            let name = fields.remove("name");
            let credential = match fields.remove("credential") {
                Some(credential) => credential,
                None => Value::Object(fields),
            };
            (credential, name)
        }
        other => (other, None),
    };
    let name = match name {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            passkey_name(&name).map_err(|message| Problem::invalid_field("name", message))?
        }
        Some(_) => return Err(Problem::invalid_field("name", "must be a string")),
    };
    Ok((credential.to_string(), name))
}

pub struct PasskeysApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Mfa")]
impl PasskeysApi {
    /// Start adding a passkey
    ///
    /// With the account's password asked again (or, for a user with TOTP, a current code or a
    /// recovery code instead): an access token alone adds no way in. The options for
    /// `navigator.credentials.create()`; the ceremony must finish within five minutes.
    #[oai(path = "/auth/passkeys/register/start", method = "post")]
    async fn register_start(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<ExactlyOne<FactorProofRequest>>,
    ) -> Result<Json<Value>, Failure<RegisterStartErrors>> {
        let request = body.0.0;
        let proof = match (&request.current_password, &request.code) {
            (Some(password), None) => Proof::Password(password),
            (None, Some(code)) => Proof::Code(code),
            _ => return Err(Problem::exactly_one_of("current_password", "code").into()),
        };
        let json = self
            .core
            .passkeys
            .begin_passkey_registration(auth.principal(), proof, &self.proxies.client_info(req))
            .await?;
        Ok(options(&json)?)
    }

    /// Finish adding a passkey
    ///
    /// The browser's `PublicKeyCredential` as JSON, optionally with a `name` beside it (or as
    /// `{"credential": ..., "name": ...}`).
    #[oai(path = "/auth/passkeys/register/finish", method = "post")]
    async fn register_finish(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<PasskeyAnswer<Registration>>,
    ) -> Result<Added, Failure<RegisterFinishErrors>> {
        let (credential, name) = credential_and_name(body.0.json)?;
        let passkey = self
            .core
            .passkeys
            .finish_passkey_registration(
                auth.principal(),
                &credential,
                name,
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(Added::Created(Json(passkey.into())))
    }

    /// Start a sign-in with a passkey
    ///
    /// The options for `navigator.credentials.get()`: any passkey of this site will do.
    #[oai(path = "/auth/passkeys/login/start", method = "post")]
    async fn login_start(&self, req: &Request) -> Result<Json<Value>, Failure<LoginStartErrors>> {
        let json = self
            .core
            .passkeys
            .begin_passkey_login(&self.proxies.client_info(req))
            .await?;
        Ok(options(&json)?)
    }

    /// Finish a sign-in with a passkey
    ///
    /// The browser's `PublicKeyCredential` as JSON. A whole login: the session it opens
    /// needs no password and no code (`amr` `webauthn`).
    #[oai(path = "/auth/passkeys/login/finish", method = "post")]
    async fn login_finish(
        &self,
        req: &Request,
        body: JsonBody<PasskeyAnswer<Authentication>>,
    ) -> Result<Json<TokenResponse>, Failure<LoginFinishErrors>> {
        let (credential, _) = credential_and_name(body.0.json)?;
        let pair = self
            .core
            .passkeys
            .finish_passkey_login(&credential, self.proxies.client_info(req))
            .await?;
        Ok(Json(pair.into()))
    }

    /// The caller's passkeys
    #[oai(path = "/auth/passkeys", method = "get")]
    async fn list(
        &self,
        auth: Authenticated,
    ) -> Result<Json<Vec<PasskeyResponse>>, Failure<ListErrors>> {
        let passkeys = self
            .core
            .passkeys
            .passkeys(auth.principal().user.id)
            .await?;
        Ok(Json(
            passkeys.into_iter().map(PasskeyResponse::from).collect(),
        ))
    }

    /// Remove one of the caller's passkeys
    ///
    /// 404 for any id that is not one of the caller's passkeys.
    #[oai(path = "/auth/passkeys/:id", method = "delete")]
    async fn remove(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Done, Failure<RemoveErrors>> {
        let id = Uuid::parse_str(&id.0)
            .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "Passkey not found"))?;
        self.core
            .passkeys
            .remove_passkey(auth.principal(), id, &self.proxies.client_info(req))
            .await?;
        Ok(Done::NoContent)
    }

    /// Rename one of the caller's passkeys
    ///
    /// 404 for any id that is not one of the caller's passkeys.
    #[oai(path = "/auth/passkeys/:id", method = "patch")]
    async fn rename(
        &self,
        auth: Authenticated,
        id: Path<String>,
        body: JsonBody<RenamePasskeyRequest>,
    ) -> Result<Done, Failure<RenameErrors>> {
        let name = match passkey_name(&body.0.name) {
            Ok(Some(name)) => name,
            Ok(None) => return Err(Problem::invalid_field("name", "must not be empty").into()),
            Err(message) => return Err(Problem::invalid_field("name", message).into()),
        };
        let id = Uuid::parse_str(&id.0)
            .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "Passkey not found"))?;
        self.core
            .passkeys
            .rename_passkey(auth.principal(), id, &name)
            .await?;
        Ok(Done::NoContent)
    }
}
