//! Users, their roles and the values that describe them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::{Email, PasswordHash};

/// A user's numeric id, as the database assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a user may do. Stored and sent as `user` / `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is neither `user` nor `admin`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// The longest full name accepted, in characters.
const FULL_NAME_MAX_CHARS: usize = 255;

/// A display name: at most 255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

/// Why a full name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FullNameError {
    #[error("must be at most 255 characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl FullName {
    /// # Errors
    /// [`FullNameError`] when the name is too long or holds control characters (a NUL cannot
    /// even be stored in PostgreSQL text).
    pub fn parse(name: &str) -> Result<Self, FullNameError> {
        if name.chars().count() > FULL_NAME_MAX_CHARS {
            return Err(FullNameError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(FullNameError::ControlCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    /// Rebuilds a name that was validated before it was stored.
    pub fn from_trusted(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registered user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub full_name: Option<FullName>,
    pub role: Role,
    pub is_active: bool,
    /// Whether the user has proved the address, by a verification link or a reset link.
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last successful login, if any.
    pub last_login_at: Option<DateTime<Utc>>,
    pub password_hash: PasswordHash,
    /// Moves on with every change that must end what the old state allowed (a new password, a
    /// deactivation). A session opens only while it is still the version the login read, so a
    /// login that raced such a change opens nothing.
    pub credential_version: i64,
}

/// A user about to be stored; the repository assigns the id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub email: Email,
    pub full_name: Option<FullName>,
    pub role: Role,
    pub password_hash: PasswordHash,
    pub created_at: DateTime<Utc>,
    /// Queue a verification mail in the same transaction as the user.
    pub send_verification: bool,
    /// Recorded with the user (`user.registered` or `user.created`).
    pub audit: super::NewAuditEvent,
}

/// Which users to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Lower-cased literal text, found anywhere in the email or the full name.
    pub search: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub email_verified: Option<bool>,
    /// Only users with a smaller id (keyset pagination).
    pub before: Option<UserId>,
    pub limit: u32,
}

/// What an administrator changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    /// `Some(None)` clears the name.
    pub full_name: Option<Option<FullName>>,
    pub email_verified: Option<bool>,
}

impl UserChanges {
    /// Whether the change could leave fewer active admins.
    pub fn may_remove_an_admin(&self) -> bool {
        self.role == Some(Role::User) || self.is_active == Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_are_limited_to_255_characters_without_control_characters() {
        assert!(FullName::parse(&"é".repeat(255)).is_ok());
        assert_eq!(
            FullName::parse(&"a".repeat(256)),
            Err(FullNameError::TooLong)
        );
        assert_eq!(
            FullName::parse("a\u{0}b"),
            Err(FullNameError::ControlCharacter)
        );
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::User, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
