//! The audit trail: who did what to which account, when, from where, and whether it worked.
//!
//! An event is written by the repository in the same transaction as the change it records, so
//! the trail has neither a change without its event nor an event without its change. `detail`
//! never holds a password, a token or a hash.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{ClientInfo, UserId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    UserRegistered,
    LoginSucceeded,
    LoginFailed,
    SessionEnded,
    SessionRefreshReused,
    PasswordChanged,
    PasswordResetRequested,
    PasswordReset,
    EmailVerified,
    EmailChanged,
    UserCreated,
    UserUpdated,
    UserDeleted,
    AdminSessionsEnded,
    /// A signing key was made: the first, or the next of a rotation.
    KeyPublished,
    /// A signing key was retired by an operator.
    KeyRetired,
    /// A run of `portcullis import pyauth` wrote users.
    UsersImported,
    /// A TOTP factor was confirmed (and recovery codes issued).
    TotpEnabled,
    /// A TOTP factor was removed by its user.
    TotpDisabled,
    /// A wrong code at the second step of a login.
    MfaFailed,
    /// A recovery code was spent at the second step of a login.
    RecoveryCodeUsed,
    /// Every second factor of a user was removed by an operator.
    MfaReset,
    PasskeyAdded,
    PasskeyRemoved,
    /// An OpenID client was registered, changed, deleted, or given a new secret by an admin.
    ClientCreated,
    ClientUpdated,
    ClientDeleted,
    ClientSecretRotated,
    /// A user allowed a client scopes it did not hold (the consent page, or a first-party
    /// client's first sign-in).
    GrantCreated,
    /// A user revoked a client's access.
    GrantRevoked,
    /// An authorization code was presented again: the tokens issued from it were revoked.
    OAuthCodeReused,
}

impl AuditKind {
    pub const ALL: [Self; 31] = [
        Self::UserRegistered,
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::SessionEnded,
        Self::SessionRefreshReused,
        Self::PasswordChanged,
        Self::PasswordResetRequested,
        Self::PasswordReset,
        Self::EmailVerified,
        Self::EmailChanged,
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::AdminSessionsEnded,
        Self::KeyPublished,
        Self::KeyRetired,
        Self::UsersImported,
        Self::TotpEnabled,
        Self::TotpDisabled,
        Self::MfaFailed,
        Self::RecoveryCodeUsed,
        Self::MfaReset,
        Self::PasskeyAdded,
        Self::PasskeyRemoved,
        Self::ClientCreated,
        Self::ClientUpdated,
        Self::ClientDeleted,
        Self::ClientSecretRotated,
        Self::GrantCreated,
        Self::GrantRevoked,
        Self::OAuthCodeReused,
    ];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRegistered => "user.registered",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::SessionEnded => "session.ended",
            Self::SessionRefreshReused => "session.refresh_reused",
            Self::PasswordChanged => "password.changed",
            Self::PasswordResetRequested => "password.reset_requested",
            Self::PasswordReset => "password.reset",
            Self::EmailVerified => "email.verified",
            Self::EmailChanged => "email.changed",
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UserDeleted => "user.deleted",
            Self::AdminSessionsEnded => "admin.sessions_ended",
            Self::KeyPublished => "key.published",
            Self::KeyRetired => "key.retired",
            Self::UsersImported => "users.imported",
            Self::TotpEnabled => "mfa.totp_enabled",
            Self::TotpDisabled => "mfa.totp_disabled",
            Self::MfaFailed => "mfa.failed",
            Self::RecoveryCodeUsed => "mfa.recovery_code_used",
            Self::MfaReset => "mfa.reset",
            Self::PasskeyAdded => "passkey.added",
            Self::PasskeyRemoved => "passkey.removed",
            Self::ClientCreated => "client.created",
            Self::ClientUpdated => "client.updated",
            Self::ClientDeleted => "client.deleted",
            Self::ClientSecretRotated => "client.secret_rotated",
            Self::GrantCreated => "grant.created",
            Self::GrantRevoked => "grant.revoked",
            Self::OAuthCodeReused => "oauth.code_reused",
        }
    }

    /// The kind of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// The longest user agent an event keeps, in characters: a header of kilobytes, sent with
/// every failed attempt, would otherwise grow the trail by as much.
pub const AUDIT_USER_AGENT_MAX_CHARS: usize = 256;

/// The `detail` key of a folded failure's count (see `UserRepository::record_folded`).
pub const FOLDED_COUNT: &str = "count";

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    pub at: DateTime<Utc>,
    pub kind: AuditKind,
    pub success: bool,
    /// The account concerned. For an event recorded with a new user, `None` means that user.
    pub user_id: Option<UserId>,
    /// Who acted, when not the user themself (an admin).
    pub actor_id: Option<UserId>,
    pub client: ClientInfo,
    pub detail: BTreeMap<String, String>,
}

impl NewAuditEvent {
    /// A successful `kind` of `user_id`, at `at`, from `client`.
    pub fn new(
        kind: AuditKind,
        user_id: Option<UserId>,
        client: &ClientInfo,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            at,
            kind,
            success: true,
            user_id,
            actor_id: None,
            client: ClientInfo::default(),
            detail: BTreeMap::new(),
        }
        .from_client(client)
    }

    /// The same event, from `client`, its user agent cut to [`AUDIT_USER_AGENT_MAX_CHARS`].
    pub fn from_client(mut self, client: &ClientInfo) -> Self {
        self.client = ClientInfo {
            ip: client.ip.clone(),
            user_agent: client
                .user_agent
                .as_ref()
                .map(|agent| agent.chars().take(AUDIT_USER_AGENT_MAX_CHARS).collect()),
        };
        self
    }

    /// Whether it is a failure a client address caused: the kind of event the trail folds.
    pub fn is_foldable(&self) -> bool {
        !self.success && self.client.ip.is_some()
    }

    /// The same event, failed.
    pub fn failed(mut self) -> Self {
        self.success = false;
        self
    }

    /// The same event, done by `actor`.
    pub fn by(mut self, actor: UserId) -> Self {
        self.actor_id = Some(actor);
        self
    }

    /// The same event, with `key: value` in its detail.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.detail.insert(key.to_owned(), value.to_string());
        self
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub event: NewAuditEvent,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub user_id: Option<UserId>,
    pub actor_id: Option<UserId>,
    pub kind: Option<AuditKind>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only events older than this one (keyset pagination).
    pub before: Option<i64>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_name_of_api_md_and_parses_back() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AuditKind::LoginFailed.as_str(), "login.failed");
        assert_eq!(AuditKind::parse("login.nope"), None);
    }
}
