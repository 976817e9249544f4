//! The security schemes: a bearer JWT, and the OAuth2 password flow that Swagger UI's
//! Authorize button speaks. Both carry the same access token; a protected route accepts either.

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::auth::Bearer;
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme};

use crate::domain::{Core, Principal};
use crate::inbound::web::problem::Problem;

/// `Authorization: Bearer <access token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(Principal);

/// The same token, obtained with the OAuth2 password flow at `/auth/token`.
// Declared for the OpenAPI document (Swagger UI's Authorize button): `Authenticated` checks
// the token once, as `BearerAuth`, so this scheme's own extraction never runs.
#[derive(SecurityScheme)]
#[oai(ty = "oauth2", flows(password(token_url = "/auth/token")))]
pub struct OAuth2Password(#[expect(dead_code, reason = "never extracted")] Bearer);

/// The caller of a protected route, authenticated by either scheme. Both carry the same token
/// in the same header, so it is checked once: poem-openapi's derived enum of schemes would check
/// a refused token again for the second one (twice the work, and against a slow database twice
/// `database_timeout_seconds`).
pub struct Authenticated(Principal);

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

impl<'a> ApiExtractor<'a> for Authenticated {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        BearerAuth::register(registry);
        OAuth2Password::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        [
            BearerAuth::security_schemes(),
            OAuth2Password::security_schemes(),
        ]
        .concat()
    }

    async fn from_request(
        req: &'a Request,
        body: &mut RequestBody,
        options: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let BearerAuth(principal) = BearerAuth::from_request(req, body, options).await?;
        Ok(Self(principal))
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
