//! The poem-openapi APIs, one module per tag. Handlers are thin: parse the DTO into domain
//! types, call one use case, turn its result into a response.

pub mod admin;
pub mod auth;
pub mod clients;
pub mod grants;
pub mod keys;
pub mod mfa;
pub mod passkeys;
pub mod protected;
pub mod provider;
pub mod public;
pub mod recovery;
pub mod sessions;

use poem_openapi::Tags;

/// The groups of the documentation.
#[derive(Tags)]
pub enum ApiTags {
    /// Liveness, readiness and a public demo route.
    Public,
    /// Registration, login and the caller's account.
    Auth,
    /// Password reset, email verification and email change: the flows that send mail.
    Email,
    /// Second factors: TOTP with recovery codes, the second step of a login, and passkeys.
    Mfa,
    /// Refresh tokens, logout, the caller's sessions, password change.
    Sessions,
    /// Demo routes that need a token.
    Protected,
    /// Users and the audit trail, for admins.
    Admin,
    /// The public keys and discovery documents, for services that verify tokens.
    Keys,
    /// The OpenID provider's token, userinfo, revocation and introspection endpoints, for the
    /// applications that sign people in with Portcullis.
    Provider,
}
