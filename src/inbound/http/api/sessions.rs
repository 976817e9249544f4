//! Refresh, logout, the caller's sessions, password change.

use std::sync::Arc;

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use crate::domain::{Core, Password, SessionId};
use crate::inbound::http::dto::{
    ChangePasswordRequest, RefreshRequest, SessionResponse, TokenResponse,
};
use crate::inbound::http::json::JsonBody;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::problem::{Failure, FieldErrors, Problem, error_statuses};

error_statuses!(
    /// Errors of `POST /auth/refresh`.
    RefreshErrors:
        401 => "Unknown, expired or revoked refresh token; a spent one also revokes its session",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "Malformed JSON",
        429 => "Too many attempts from this address or for this account",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of routes that only need a token.
    TokenErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        413 => "A body was sent, and it is too large",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `DELETE /auth/sessions/{id}`.
    EndSessionErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        404 => "The caller has no live session with this id",
        413 => "A body was sent, and it is too large",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `POST /auth/password`.
    PasswordErrors:
        401 => "No valid token, or the current password is wrong",
        413 => "The body is too large",
        415 => "The body is not JSON",
        422 => "The new password breaks the policy, or malformed JSON",
        429 => "Too many attempts from this address or for this user, or the account's failure delay is running",
        503 => "The service is overloaded or the database does not answer"
);

#[derive(ApiResponse)]
enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

pub struct SessionsApi {
    pub core: Arc<Core>,
    pub proxies: TrustedProxies,
}

#[OpenApi(tag = "ApiTags::Sessions")]
impl SessionsApi {
    /// Refresh
    ///
    /// Spends the refresh token for a new pair. Presenting a spent token again ends the whole
    /// session it belongs to: that is the signature of a stolen token.
    #[oai(path = "/auth/refresh", method = "post")]
    async fn refresh(
        &self,
        req: &Request,
        body: JsonBody<RefreshRequest>,
    ) -> Result<Json<TokenResponse>, Failure<RefreshErrors>> {
        let pair = self
            .core
            .sessions
            .refresh(&body.0.refresh_token, self.proxies.client_info(req))
            .await?;
        Ok(Json(pair.into()))
    }

    /// Log out
    ///
    /// Ends the current session: its refresh token and access tokens stop working at once.
    #[oai(path = "/auth/logout", method = "post")]
    async fn logout(
        &self,
        req: &Request,
        auth: Authenticated,
    ) -> Result<Done, Failure<TokenErrors>> {
        self.core
            .sessions
            .logout(auth.principal(), &self.proxies.client_info(req))
            .await?;
        Ok(Done::NoContent)
    }

    /// The caller's sessions
    ///
    /// Live sessions, newest first; `current` marks the one of this request's token.
    #[oai(path = "/auth/sessions", method = "get")]
    async fn sessions(
        &self,
        auth: Authenticated,
    ) -> Result<Json<Vec<SessionResponse>>, Failure<TokenErrors>> {
        let principal = auth.principal();
        let sessions = self.core.sessions.list_sessions(principal).await?;
        Ok(Json(
            sessions
                .into_iter()
                .map(|s| SessionResponse::new(s, principal.session_id))
                .collect(),
        ))
    }

    /// End one of the caller's sessions
    ///
    /// 404 for any id that is not a live session of the caller's, so ids reveal nothing.
    #[oai(path = "/auth/sessions/:id", method = "delete")]
    async fn end_session(
        &self,
        req: &Request,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Done, Failure<EndSessionErrors>> {
        let id = Uuid::parse_str(&id.0)
            .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "Session not found"))?;
        self.core
            .sessions
            .end_session(
                auth.principal(),
                SessionId(id),
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(Done::NoContent)
    }

    /// Change password
    ///
    /// Checks the current password, applies the registration policy to the new one, and ends
    /// every other session of the caller. The check shares the account's failure delay with
    /// login and is limited per address and per user; five wrong passwords end the session.
    #[oai(path = "/auth/password", method = "post")]
    async fn change_password(
        &self,
        req: &Request,
        auth: Authenticated,
        body: JsonBody<ChangePasswordRequest>,
    ) -> Result<Done, Failure<PasswordErrors>> {
        let request = body.0;
        let mut fields = FieldErrors::default();
        let new = fields.check("new_password", Password::parse(&request.new_password));
        let new = fields.finish(new)?;
        self.core
            .sessions
            .change_password(
                auth.principal(),
                &request.current_password,
                new,
                &self.proxies.client_info(req),
            )
            .await?;
        Ok(Done::NoContent)
    }
}
