//! Demo routes that need a token, one of them an admin's.

use std::sync::Arc;

use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use crate::domain::{Core, Role};
use crate::inbound::http::dto::ProtectedResponse;
use crate::inbound::http::security::Authenticated;
use crate::inbound::web::problem::{Failure, error_statuses};

error_statuses!(
    /// Errors of `GET /protected/user`.
    UserRouteErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        503 => "The database does not answer"
);

error_statuses!(
    /// Errors of `GET /protected/admin`.
    AdminRouteErrors:
        401 => "No token, or a token that is invalid, expired, revoked or of an inactive user",
        403 => "The caller is not an admin",
        503 => "The database does not answer"
);

pub struct ProtectedApi {
    pub core: Arc<Core>,
}

#[OpenApi(tag = "ApiTags::Protected")]
impl ProtectedApi {
    /// For any signed-in user
    #[oai(path = "/protected/user", method = "get")]
    async fn user(
        &self,
        auth: Authenticated,
    ) -> Result<Json<ProtectedResponse>, Failure<UserRouteErrors>> {
        let principal = auth.principal();
        Ok(Json(ProtectedResponse::new(
            format!(
                "Hello {}, this is a protected endpoint for users",
                principal.user.email
            ),
            &principal.user,
        )))
    }

    /// For admins only
    #[oai(path = "/protected/admin", method = "get")]
    async fn admin(
        &self,
        auth: Authenticated,
    ) -> Result<Json<ProtectedResponse>, Failure<AdminRouteErrors>> {
        let principal = auth.principal();
        self.core.accounts.authorize(principal, Role::Admin)?;
        Ok(Json(ProtectedResponse::new(
            format!(
                "Hello admin {}, this is an admin-only endpoint",
                principal.user.email
            ),
            &principal.user,
        )))
    }
}
