//! The security schemes: a bearer JWT, and the OAuth2 password flow that Swagger UI's
//! Authorize button speaks. Both carry the same access token; a protected route accepts either.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::domain::{Core, Principal};
use crate::inbound::web::problem::Problem;

/// `Authorization: Bearer <access token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(Principal);

/// The same token, obtained with the OAuth2 password flow at `/auth/token`.
#[derive(SecurityScheme)]
#[oai(
    ty = "oauth2",
    flows(password(token_url = "/auth/token")),
    checker = "authenticate"
)]
pub struct OAuth2Password(Principal);

/// The caller of a protected route, authenticated by either scheme.
#[derive(SecurityScheme)]
pub enum Authenticated {
    Bearer(BearerAuth),
    OAuth2(OAuth2Password),
}

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        match self {
            Self::Bearer(BearerAuth(principal)) | Self::OAuth2(OAuth2Password(principal)) => {
                principal
            }
        }
    }
}

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let core = req.data::<Arc<Core>>().ok_or_else(|| {
        poem::Error::from_string(
            "auth service missing",
            poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })?;
    core.accounts
        .authenticate(&bearer.token)
        .await
        .map_err(|err| Problem::from(err).into())
}
