//! Sessions (one per login) and the refresh tokens that keep them alive.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::mfa::AuthMethod;
use super::oauth::ClientId;
use super::secrets::{random_secret, sha256_hex};
use super::{User, UserId};

/// A session's id: random, so that knowing one id says nothing about any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub Uuid);

impl SessionId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a request came from, as recorded on a session. Both fields are informational only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// The longest user agent kept on a session, in characters.
const USER_AGENT_MAX_CHARS: usize = 512;

impl ClientInfo {
    /// Keeps what is safe to store and show back: control characters are dropped (PostgreSQL
    /// text cannot hold a NUL) and the user agent is cut to 512 characters.
    pub fn new(user_agent: Option<&str>, ip: Option<String>) -> Self {
        let user_agent = user_agent
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(USER_AGENT_MAX_CHARS)
                    .collect::<String>()
            })
            .filter(|ua| !ua.is_empty());
        Self { user_agent, ip }
    }
}

/// A login's session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// The absolute end, however often it is refreshed.
    pub expires_at: DateTime<Utc>,
    /// When the current refresh token expires: an idle session dies then.
    pub idle_expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub client: ClientInfo,
    /// How its user signed in; every access token of the session says so (`amr`).
    pub methods: Vec<AuthMethod>,
    /// The client a user signed in to through the OpenID provider; `None` for Portcullis's own
    /// sessions (API and console). A client's session is its grant's token family: its refresh
    /// tokens rotate as any session's do, and whatever ends a user's sessions ends it too.
    pub client_id: Option<ClientId>,
}

impl Session {
    /// Whether the session still grants access at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.ended_at.is_none() && now < self.expires_at && now < self.idle_expires_at
    }
}

/// A session about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub client: ClientInfo,
    pub methods: Vec<AuthMethod>,
    /// See [`Session::client_id`].
    pub client_id: Option<ClientId>,
    /// The session this one ends with: the console session a grant without `offline_access`
    /// was signed in with (OpenID Connect's sign-out ends both).
    pub origin: Option<SessionId>,
    /// The user's [`User::credential_version`](super::User) when the password was checked.
    pub credential_version: i64,
    /// Live sessions the user may hold: opening this one ends the least recently used ones
    /// beyond it.
    pub live_limit: u32,
    /// Recorded with the session (`login.succeeded`).
    pub audit: super::NewAuditEvent,
}

/// The SHA-256 of a refresh token, hex encoded: the only form that is ever stored.
///
/// A fast hash is enough here (unlike passwords): the token carries 256 random bits, so there is
/// nothing to guess.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefreshTokenHash(pub String);

impl RefreshTokenHash {
    /// The stored form of one of Portcullis's own refresh tokens.
    pub fn of(token: &str) -> Self {
        Self(sha256_hex(token))
    }

    /// The stored form of a relying party's refresh token, hashed apart from Portcullis's own so
    /// that a lookup of the one kind never finds the other. Release 0.2.0 knows no relying
    /// parties and looks `/auth/refresh` tokens up by their plain hash: beside a newer instance
    /// during a rolling upgrade, or after a roll-back, it would otherwise rotate a relying
    /// party's token into a session of its own, with first-party access tokens.
    pub fn of_client(token: &str) -> Self {
        Self(sha256_hex(&format!("relying-party:{token}")))
    }
}

/// A fresh refresh token: the secret for the client, and what gets stored.
#[derive(Clone, PartialEq)]
pub struct NewRefreshToken {
    /// Shown to the client once, never stored.
    pub secret: String,
    pub hash: RefreshTokenHash,
    pub session_id: SessionId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl NewRefreshToken {
    /// Draws 256 bits from a cryptographically secure generator seeded by the operating system.
    pub fn generate(
        session_id: SessionId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self::drawn(session_id, created_at, expires_at, RefreshTokenHash::of)
    }

    /// A relying party's refresh token, stored as [`RefreshTokenHash::of_client`] says.
    pub fn generate_for_client(
        session_id: SessionId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self::drawn(
            session_id,
            created_at,
            expires_at,
            RefreshTokenHash::of_client,
        )
    }

    fn drawn(
        session_id: SessionId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        stored: fn(&str) -> RefreshTokenHash,
    ) -> Self {
        let secret = random_secret();
        let hash = stored(&secret);
        Self {
            secret,
            hash,
            session_id,
            created_at,
            expires_at,
        }
    }
}

impl fmt::Debug for NewRefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRefreshToken")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a console session cookie, hex encoded: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CookieHash(pub String);

impl CookieHash {
    pub fn of(cookie: &str) -> Self {
        Self(sha256_hex(cookie))
    }
}

/// A fresh console session cookie: 256 random bits for the browser, and what gets stored.
/// Unlike a refresh token it is not rotated: the browser keeps it in an `HttpOnly` cookie,
/// where no page script can read it, and it is good for nothing but the console.
#[derive(Clone, PartialEq)]
pub struct NewSessionCookie {
    /// Set in the browser once, never stored.
    pub secret: String,
    pub hash: CookieHash,
    /// The idle end of the session; each use moves it on.
    pub expires_at: DateTime<Utc>,
}

impl NewSessionCookie {
    pub fn generate(expires_at: DateTime<Utc>) -> Self {
        let secret = random_secret();
        let hash = CookieHash::of(&secret);
        Self {
            secret,
            hash,
            expires_at,
        }
    }
}

impl fmt::Debug for NewSessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSessionCookie")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the client of a new session holds to use it: API clients a refresh token (with access
/// tokens), the console's browser a cookie.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionKey {
    RefreshToken(NewRefreshToken),
    Cookie(NewSessionCookie),
}

impl SessionKey {
    /// When the session dies if it is not used.
    pub fn idle_expires_at(&self) -> DateTime<Utc> {
        match self {
            Self::RefreshToken(token) => token.expires_at,
            Self::Cookie(cookie) => cookie.expires_at,
        }
    }
}

/// A stored refresh token with the session and user it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
    pub session: Session,
    pub user: User,
}

/// What a login or a refresh hands the client.
#[derive(Clone, PartialEq)]
pub struct TokenPair {
    pub access_token: String,
    pub expires_in_seconds: i64,
    pub refresh_token: String,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_in_seconds", &self.expires_in_seconds)
            .finish_non_exhaustive()
    }
}

/// An authenticated caller: the user as stored now, and the session their token belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user: User,
    /// `None` for a token of the old service (pyauth), accepted until the cutover deadline:
    /// it belongs to no session.
    pub session_id: Option<SessionId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_carry_256_random_bits_and_are_stored_only_as_their_hash() {
        let now = Utc::now();
        let a = NewRefreshToken::generate(SessionId::random(), now, now);
        let b = NewRefreshToken::generate(SessionId::random(), now, now);
        assert_eq!(a.secret.len(), 43, "32 bytes in unpadded base64url");
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, RefreshTokenHash::of(&a.secret));
        assert_eq!(a.hash.0.len(), 64);
        assert!(!a.hash.0.contains(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn session_cookies_carry_256_random_bits_and_are_stored_only_as_their_hash() {
        let now = Utc::now();
        let a = NewSessionCookie::generate(now);
        let b = NewSessionCookie::generate(now);
        assert_eq!(a.secret.len(), 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, CookieHash::of(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
        assert_eq!(SessionKey::Cookie(a).idle_expires_at(), now);
    }

    #[test]
    fn client_info_drops_control_characters_and_caps_the_user_agent() {
        let info = ClientInfo::new(Some(&format!("curl\u{0}/8{}", "x".repeat(600))), None);
        let ua = info.user_agent.unwrap();
        assert!(ua.starts_with("curl/8"));
        assert_eq!(ua.chars().count(), 512);
        assert_eq!(ClientInfo::new(Some("\u{7}"), None).user_agent, None);
    }
}
