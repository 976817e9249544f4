//! The one-time tokens that mail links carry (password reset, address verification, address
//! change): drawn at random, stored only as their hash, usable once.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use super::secrets::{random_secret, sha256_hex};
use super::{Email, SessionId, User, UserId};

/// What a one-time token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTokenKind {
    PasswordReset,
    Verification,
    EmailChange,
}

impl LinkTokenKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::Verification => "verification",
            Self::EmailChange => "email_change",
        }
    }

    /// The kind of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::PasswordReset, Self::Verification, Self::EmailChange]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// The SHA-256 of a link's token, hex encoded: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkTokenHash(pub String);

impl LinkTokenHash {
    pub fn of(token: &str) -> Self {
        Self(sha256_hex(token))
    }
}

/// A fresh token: the secret for the link, and what gets stored.
#[derive(Clone, PartialEq)]
pub struct NewLinkToken {
    /// Goes into one mail's link, never into storage.
    pub secret: String,
    pub hash: LinkTokenHash,
    pub kind: LinkTokenKind,
    pub user_id: UserId,
    /// The address the link is sent to: a verification proves this address only.
    pub email: String,
    /// For an email change: where the account moves.
    pub new_email: Option<Email>,
    /// For an email change: the session that asked, which survives it.
    pub keep_session: Option<SessionId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl NewLinkToken {
    /// Draws 256 random bits for `user_id`'s token of `kind`, valid for `ttl` from `now`.
    pub fn generate(kind: LinkTokenKind, user: &User, now: DateTime<Utc>, ttl: TimeDelta) -> Self {
        let secret = random_secret();
        Self {
            hash: LinkTokenHash::of(&secret),
            secret,
            kind,
            user_id: user.id,
            email: user.email.as_str().to_owned(),
            new_email: None,
            keep_session: None,
            created_at: now,
            expires_at: now + ttl,
        }
    }
}

impl fmt::Debug for NewLinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewLinkToken")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored token with the user it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTokenRecord {
    pub kind: LinkTokenKind,
    pub user: User,
    pub email: String,
    pub new_email: Option<Email>,
    pub keep_session: Option<SessionId>,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
}

impl LinkTokenRecord {
    /// Whether it may still be used for `kind` at `now`: the right kind, unspent, unexpired,
    /// its user active, and the link sent to the address the user still has.
    pub fn usable_for(&self, kind: LinkTokenKind, now: DateTime<Utc>) -> bool {
        self.kind == kind
            && self.spent_at.is_none()
            && now < self.expires_at
            && self.user.is_active
            && Email::from_trusted(self.email.clone()) == self.user.email
    }
}

/// A link from a template: `{public_url}` and `{token}` replaced.
pub fn link(template: &str, public_url: &str, token: &str) -> String {
    template
        .replace("{public_url}", public_url.trim_end_matches('/'))
        .replace("{token}", token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PasswordHash, Role};

    fn user(email: &str) -> User {
        User {
            id: UserId(1),
            email: Email::parse(email).unwrap(),
            full_name: None,
            role: Role::User,
            is_active: true,
            email_verified: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_login_at: None,
            password_hash: PasswordHash::new("h".into()),
            credential_version: 0,
        }
    }

    #[test]
    fn tokens_carry_256_random_bits_and_are_stored_only_as_their_hash() {
        let now = Utc::now();
        let owner = user("ann@example.com");
        let token = NewLinkToken::generate(
            LinkTokenKind::PasswordReset,
            &owner,
            now,
            TimeDelta::minutes(30),
        );
        assert_eq!(token.secret.len(), 43);
        assert_eq!(token.hash, LinkTokenHash::of(&token.secret));
        assert!(!format!("{token:?}").contains(&token.secret));
        assert_eq!(token.expires_at, now + TimeDelta::minutes(30));
    }

    #[test]
    fn a_token_is_usable_once_for_its_own_kind_until_it_expires() {
        let now = Utc::now();
        let record = LinkTokenRecord {
            kind: LinkTokenKind::Verification,
            user: user("ann@example.com"),
            email: "ann@example.com".into(),
            new_email: None,
            keep_session: None,
            expires_at: now + TimeDelta::hours(1),
            spent_at: None,
        };
        assert!(record.usable_for(LinkTokenKind::Verification, now));
        assert!(!record.usable_for(LinkTokenKind::PasswordReset, now));
        assert!(!record.usable_for(LinkTokenKind::Verification, now + TimeDelta::hours(1)));
        let spent = LinkTokenRecord {
            spent_at: Some(now),
            ..record.clone()
        };
        assert!(!spent.usable_for(LinkTokenKind::Verification, now));
        let moved = LinkTokenRecord {
            user: user("bob@example.com"),
            ..record.clone()
        };
        assert!(!moved.usable_for(LinkTokenKind::Verification, now));
        let mut inactive = record;
        inactive.user.is_active = false;
        assert!(!inactive.usable_for(LinkTokenKind::Verification, now));
    }

    #[test]
    fn links_fill_in_the_public_url_and_the_token() {
        assert_eq!(
            link(
                "{public_url}/console/reset?token={token}",
                "https://auth.example/",
                "abc"
            ),
            "https://auth.example/console/reset?token=abc"
        );
    }
}
