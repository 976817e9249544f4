//! Rows of the users and sessions tables as the core's values, and the `amr` values as a
//! column holds them.

use super::entities::{sessions, users};
use crate::domain::mfa::AuthMethod;
use crate::domain::oauth::ClientId;
use crate::domain::{
    BackendError, ClientInfo, Email, FullName, PasswordHash, Role, Session, SessionId, User, UserId,
};

pub(super) fn to_user(model: users::Model) -> Result<User, BackendError> {
    Ok(User {
        id: UserId(model.id),
        email: Email::from_trusted(model.email),
        full_name: model.full_name.map(FullName::from_trusted),
        role: model
            .role
            .parse::<Role>()
            .map_err(BackendError::unexpected)?,
        is_active: model.is_active,
        email_verified: model.email_verified,
        created_at: model.created_at,
        updated_at: model.updated_at,
        last_login_at: model.last_login_at,
        password_hash: PasswordHash::new(model.password_hash),
        credential_version: model.credential_version,
    })
}

pub(super) fn to_session(model: sessions::Model) -> Session {
    Session {
        id: SessionId(model.id),
        user_id: UserId(model.user_id),
        created_at: model.created_at,
        last_used_at: model.last_used_at,
        expires_at: model.expires_at,
        idle_expires_at: model.idle_expires_at,
        ended_at: model.ended_at,
        client: ClientInfo {
            user_agent: model.user_agent,
            ip: model.ip,
        },
        methods: to_methods(&model.methods),
        client_id: model.client_id.map(ClientId),
    }
}

/// `amr` values as a column holds them: space-separated.
pub(super) fn methods_column(methods: &[AuthMethod]) -> String {
    methods
        .iter()
        .map(|method| method.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `amr` values read back from a column: a word this version does not know (written by a
/// newer one) claims nothing.
pub(super) fn to_methods(column: &str) -> Vec<AuthMethod> {
    column
        .split_whitespace()
        .filter_map(AuthMethod::parse)
        .collect()
}
