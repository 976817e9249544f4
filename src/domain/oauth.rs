//! The OpenID provider's values: registered clients and the rules of their redirect URIs,
//! scopes, grant types, the consents users give, authorization codes and PKCE.

use std::fmt;

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq as _;

use super::mfa::AuthMethod;
use super::secrets::{random_secret, sha256_hex};
use super::{SessionId, UserId};

/// A client's public identifier: 128 random bits, unpadded base64url.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub String);

impl ClientId {
    pub fn random() -> Self {
        Self(random_secret()[..22].to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a relying party may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// An ID token, and `sub` at the userinfo endpoint.
    OpenId,
    /// `name`.
    Profile,
    /// `email` and `email_verified`.
    Email,
    /// A refresh token, so the application keeps access while the person is away.
    OfflineAccess,
}

impl Scope {
    pub const ALL: [Self; 4] = [
        Self::OpenId,
        Self::Profile,
        Self::Email,
        Self::OfflineAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenId => "openid",
            Self::Profile => "profile",
            Self::Email => "email",
            Self::OfflineAccess => "offline_access",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == value)
    }

    /// What granting it lets the application do, in plain words, for the consent page.
    pub fn explained(self) -> &'static str {
        match self {
            Self::OpenId => "Know that you are signed in, and your account's identifier",
            Self::Profile => "See your name",
            Self::Email => "See your email address and whether it is verified",
            Self::OfflineAccess => "Keep access while you are not using it, until you revoke it",
        }
    }
}

/// A set of scopes, kept in one order so that equal sets read the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Every scope there is.
    pub fn all() -> Self {
        Self(Scope::ALL.to_vec())
    }

    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut scopes: Vec<_> = scopes.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self(scopes)
    }

    /// Reads a space-separated list (RFC 6749 section 3.3).
    ///
    /// # Errors
    /// The first value that names no scope.
    pub fn parse(value: &str) -> Result<Self, String> {
        value
            .split(' ')
            .filter(|part| !part.is_empty())
            .map(|part| Scope::parse(part).ok_or_else(|| part.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::of)
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn covers(&self, other: &Self) -> bool {
        other.0.iter().all(|scope| self.contains(*scope))
    }

    pub fn union(&self, other: &Self) -> Self {
        Self::of(self.0.iter().chain(&other.0).copied())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// How a client obtains tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub const ALL: [Self; 3] = [
        Self::AuthorizationCode,
        Self::RefreshToken,
        Self::ClientCredentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|grant| grant.as_str() == value)
    }
}

/// Which list a redirect URI belongs to: the field an error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriList {
    Redirect,
    PostLogout,
}

impl UriList {
    pub fn field(self) -> &'static str {
        match self {
            Self::Redirect => "redirect_uris",
            Self::PostLogout => "post_logout_redirect_uris",
        }
    }
}

/// Why a client's settings were refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ClientSettingsError {
    pub field: &'static str,
    pub message: String,
}

impl ClientSettingsError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The longest redirect URI accepted, in bytes.
const MAX_URI_BYTES: usize = 2048;

/// Checks one redirect URI against the rules every client is held to: an exact string to
/// compare, `https`; `http` only on a loopback host; a private-use scheme (RFC 8252 section
/// 7.1) only for a public client; never a fragment, a wildcard, userinfo or whitespace.
///
/// # Errors
/// What is wrong, quoting the URI.
pub fn check_redirect_uri(
    uri: &str,
    public: bool,
    list: UriList,
) -> Result<(), ClientSettingsError> {
    let refuse = |why: &str| ClientSettingsError::new(list.field(), format!("{uri:?} {why}"));
    if uri.len() > MAX_URI_BYTES {
        return Err(refuse("is longer than 2048 bytes"));
    }
    if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse("holds whitespace or control characters"));
    }
    if uri.contains('#') {
        return Err(refuse("has a fragment"));
    }
    if uri.contains('*') {
        return Err(refuse("has a wildcard"));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(refuse("is not an absolute URI"));
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(refuse("is not an absolute URI"));
    }
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        // A private-use scheme is a reverse domain name (RFC 8252 section 7.1), never a
        // scheme a browser gives meaning to.
        if !public {
            return Err(refuse(
                "uses a private-use scheme, which only public clients may",
            ));
        }
        if !scheme.contains('.') || matches!(scheme.as_str(), "javascript" | "data" | "file") {
            return Err(refuse("uses a scheme that is not a reverse domain name"));
        }
        return Ok(());
    }
    let Some(after) = rest.strip_prefix("//") else {
        return Err(refuse("has no host"));
    };
    let authority = after.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(refuse("has userinfo"));
    }
    let host = host_of(authority).ok_or_else(|| refuse("has no valid host"))?;
    if scheme == "http" && !is_loopback(&host) {
        return Err(refuse(
            "uses http on a host that is not localhost, 127.0.0.1 or [::1]",
        ));
    }
    Ok(())
}

/// The host of an authority, lower-cased, with its port checked and dropped.
fn host_of(authority: &str) -> Option<String> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner.split_once(']')?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    valid.then(|| host.to_ascii_lowercase())
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Whether `presented` matches `registered`: the exact string, except that a public client's
/// loopback URI matches on any port (RFC 8252 section 7.3), since a native application
/// listens on whatever port it is given.
pub fn redirect_uri_matches(registered: &str, presented: &str, public: bool) -> bool {
    if registered == presented {
        return true;
    }
    if !public {
        return false;
    }
    match (loopback_parts(registered), loopback_parts(presented)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// An `http` loopback URI without its port: (host, path and query). The authority must be the
/// host alone or with a numeric port: anything else after the host (`127.0.0.1:@evil.example`,
/// where a browser reads `127.0.0.1:` as userinfo) leaves the loopback interface.
fn loopback_parts(uri: &str) -> Option<(&str, &str)> {
    let after = uri.strip_prefix("http://")?;
    let split = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, path) = after.split_at(split);
    let host_end = match authority.strip_prefix('[') {
        Some(_) => authority.find(']')? + 1,
        None => authority.find(':').unwrap_or(authority.len()),
    };
    let (host, port) = authority.split_at(host_end);
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        });
    (port_ok && is_loopback(host)).then_some((host, path))
}

/// What an admin sets on a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// A public client (a browser or native application) holds no secret.
    pub public: bool,
    /// A first-party client skips the consent page.
    pub first_party: bool,
    pub scopes: Scopes,
    pub grant_types: Vec<GrantType>,
}

/// The longest client name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// The most redirect URIs of one list.
const MAX_URIS: usize = 20;

impl ClientSettings {
    /// Checks every rule a client's settings must pass.
    ///
    /// # Errors
    /// The first rule broken, naming its field.
    pub fn check(&self) -> Result<(), ClientSettingsError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ClientSettingsError::new(
                "name",
                "must be 1 to 100 characters",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ClientSettingsError::new(
                "name",
                "must not hold control characters",
            ));
        }
        for (list, uris) in [
            (UriList::Redirect, &self.redirect_uris),
            (UriList::PostLogout, &self.post_logout_redirect_uris),
        ] {
            if uris.len() > MAX_URIS {
                return Err(ClientSettingsError::new(list.field(), "at most 20 URIs"));
            }
            for uri in uris {
                check_redirect_uri(uri, self.public, list)?;
            }
        }
        if self.grant_types.is_empty() {
            return Err(ClientSettingsError::new(
                "grant_types",
                "at least one grant type is needed",
            ));
        }
        let redirects = self.grant_types.contains(&GrantType::AuthorizationCode);
        if redirects && self.redirect_uris.is_empty() {
            return Err(ClientSettingsError::new(
                "redirect_uris",
                "at least one redirect URI is needed for the authorization code grant",
            ));
        }
        if self.public && self.grant_types.contains(&GrantType::ClientCredentials) {
            return Err(ClientSettingsError::new(
                "grant_types",
                "a public client cannot use client_credentials: it has no secret",
            ));
        }
        Ok(())
    }

    /// The settings as they are stored: the name trimmed, the grant types in one order.
    #[must_use]
    pub fn normalised(mut self) -> Self {
        self.name = self.name.trim().to_owned();
        self.grant_types.sort_unstable();
        self.grant_types.dedup();
        self
    }
}

/// The SHA-256 of a client secret, hex encoded: a secret carries 256 random bits, so a fast
/// hash is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecretHash(pub String);

impl ClientSecretHash {
    pub fn of(secret: &str) -> Self {
        Self(sha256_hex(secret))
    }

    /// Whether `secret` hashes to this, in time independent of where they differ.
    pub fn matches(&self, secret: &str) -> bool {
        Self::of(secret)
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }
}

/// A new client secret: shown once, stored as its hash.
pub struct NewClientSecret {
    pub secret: String,
    pub hash: ClientSecretHash,
}

impl NewClientSecret {
    pub fn generate() -> Self {
        let secret = random_secret();
        let hash = ClientSecretHash::of(&secret);
        Self { secret, hash }
    }
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: ClientId,
    pub settings: ClientSettings,
    /// `None` for a public client.
    pub secret_hash: Option<ClientSecretHash>,
    pub created_at: DateTime<Utc>,
}

impl OAuthClient {
    pub fn allows(&self, grant: GrantType) -> bool {
        self.settings.grant_types.contains(&grant)
    }

    /// The registered redirect URI `presented` matches, if any.
    pub fn redirect_uri(&self, presented: &str) -> Option<&str> {
        self.settings
            .redirect_uris
            .iter()
            .find(|registered| redirect_uri_matches(registered, presented, self.settings.public))
            .map(String::as_str)
    }

    /// Whether `uri` is one of the client's post-logout redirect URIs, exactly.
    pub fn allows_post_logout(&self, uri: &str) -> bool {
        self.settings
            .post_logout_redirect_uris
            .iter()
            .any(|registered| registered == uri)
    }
}

/// What a user has allowed a client: remembered, so the consent page is asked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub user_id: UserId,
    pub client_id: ClientId,
    pub scopes: Scopes,
    pub granted_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A consent as the user's list shows it, with the client's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantView {
    pub consent: Consent,
    pub client_name: String,
}

/// The SHA-256 of an authorization code, hex encoded: the only form that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodeHash(pub String);

impl CodeHash {
    pub fn of(code: &str) -> Self {
        Self(sha256_hex(code))
    }
}

/// What an authorization code stands for, bound to everything the token request must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    pub hash: CodeHash,
    pub client_id: ClientId,
    pub user_id: UserId,
    /// The redirect URI exactly as the authorization request sent it.
    pub redirect_uri: String,
    /// The S256 challenge: unpadded base64url of the verifier's SHA-256.
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub scopes: Scopes,
    /// The console session that signed the user in.
    pub session_id: SessionId,
    /// When the user signed in (`auth_time`), and how (`amr`).
    pub auth_time: DateTime<Utc>,
    pub methods: Vec<AuthMethod>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Set when the code was exchanged.
    pub spent_at: Option<DateTime<Utc>>,
    /// The session the exchange opened: ended if the code is presented again.
    pub issued_session: Option<SessionId>,
}

/// Whether `verifier` is a PKCE verifier (RFC 7636 section 4.1: 43 to 128 unreserved
/// characters) whose S256 challenge is `challenge`.
pub fn pkce_verifies(verifier: &str, challenge: &str) -> bool {
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// Whether `challenge` has the shape of an S256 challenge: 43 base64url characters.
pub fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confidential(uri: &str) -> Result<(), ClientSettingsError> {
        check_redirect_uri(uri, false, UriList::Redirect)
    }

    #[test]
    fn redirect_uris_follow_the_rules() {
        assert!(confidential("https://app.example.com/cb").is_ok());
        assert!(confidential("https://app.example.com:8443/cb?x=1").is_ok());
        assert!(confidential("http://localhost:3000/cb").is_ok());
        assert!(confidential("http://127.0.0.1/cb").is_ok());
        assert!(confidential("http://[::1]:9000/cb").is_ok());
        for bad in [
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://*.example.com/cb",
            "https://user:pw@app.example.com/cb",
            "https://evil.com@app.example.com/cb",
            "https://app.example.com/c b",
            "/relative",
            "https:/no-host",
            "com.example.app:/cb",
            "javascript:alert(1)",
            "https://app.example.com:99999999/cb",
        ] {
            let err = confidential(bad).expect_err(bad);
            assert_eq!(err.field, "redirect_uris");
            assert!(err.message.contains(bad), "{err}");
        }
        assert!(check_redirect_uri("com.example.app:/cb", true, UriList::Redirect).is_ok());
        assert!(check_redirect_uri("javascript:alert(1)", true, UriList::Redirect).is_err());
        assert!(check_redirect_uri("data:text/html,x", true, UriList::Redirect).is_err());
        let logout = check_redirect_uri("http://evil.com/", false, UriList::PostLogout);
        assert_eq!(logout.unwrap_err().field, "post_logout_redirect_uris");
    }

    #[test]
    fn redirect_uris_are_compared_exactly_except_a_public_clients_loopback_port() {
        assert!(redirect_uri_matches(
            "https://a.example/cb",
            "https://a.example/cb",
            false
        ));
        assert!(!redirect_uri_matches(
            "https://a.example/cb",
            "https://a.example/cb/",
            false
        ));
        assert!(!redirect_uri_matches(
            "https://a.example/cb",
            "https://a.example/cB",
            false
        ));
        assert!(!redirect_uri_matches(
            "https://a.example/cb",
            "https://A.example/cb",
            false
        ));
        assert!(redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5123/cb",
            true
        ));
        assert!(redirect_uri_matches(
            "http://[::1]:80/cb",
            "http://[::1]:5123/cb",
            true
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5123/cb",
            false
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5123/cb2",
            true
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://localhost:5123/cb",
            true
        ));
        assert!(!redirect_uri_matches(
            "https://a.example/cb",
            "https://a.example:1/cb",
            true
        ));
    }

    /// Found by `a_loopback_match_never_leaves_the_loopback_host`: the authorization code went
    /// wherever the text after `127.0.0.1:` pointed, since a browser reads `127.0.0.1:` there
    /// as userinfo and `evil.example` as the host.
    #[test]
    fn a_public_clients_loopback_uri_matches_only_a_numeric_port() {
        for presented in [
            "http://127.0.0.1:@evil.example/cb",
            "http://127.0.0.1:x@evil.example/cb",
            "http://localhost:1@evil.example/cb",
            "http://[::1]:@evil.example/cb",
            "http://[::1]@evil.example/cb",
            "http://127.0.0.1.evil.example/cb",
            "http://127.0.0.1:/cb",
            "http://127.0.0.1:123456/cb",
        ] {
            assert!(
                !redirect_uri_matches("http://127.0.0.1/cb", presented, true)
                    && !redirect_uri_matches("http://localhost/cb", presented, true)
                    && !redirect_uri_matches("http://[::1]/cb", presented, true),
                "{presented}"
            );
        }
    }

    #[test]
    fn scopes_parse_in_one_order_and_name_what_is_unknown() {
        let scopes = Scopes::parse("email openid  openid").unwrap();
        assert_eq!(scopes.to_string(), "openid email");
        assert_eq!(Scopes::parse("openid admin").unwrap_err(), "admin");
        assert!(Scopes::all().covers(&scopes));
        assert!(!scopes.covers(&Scopes::of([Scope::Profile])));
        assert_eq!(Scopes::parse("").unwrap(), Scopes::default());
    }

    #[test]
    fn pkce_accepts_only_the_verifier_of_the_challenge() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(pkce_verifies(verifier, challenge));
        assert!(!pkce_verifies(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
        assert!(!pkce_verifies(challenge, challenge));
        assert!(!pkce_verifies("short", challenge));
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[test]
    fn client_settings_refuse_what_cannot_work() {
        let settings = ClientSettings {
            name: " App ".into(),
            redirect_uris: vec!["https://app.example/cb".into()],
            post_logout_redirect_uris: vec![],
            public: true,
            first_party: false,
            scopes: Scopes::all(),
            grant_types: vec![GrantType::RefreshToken, GrantType::AuthorizationCode],
        };
        assert!(settings.check().is_ok());
        assert_eq!(settings.clone().normalised().name, "App");
        let credentials = ClientSettings {
            grant_types: vec![GrantType::ClientCredentials],
            ..settings.clone()
        };
        assert_eq!(credentials.check().unwrap_err().field, "grant_types");
        let nameless = ClientSettings {
            name: "  ".into(),
            ..settings.clone()
        };
        assert_eq!(nameless.check().unwrap_err().field, "name");
        let no_uri = ClientSettings {
            redirect_uris: vec![],
            ..settings
        };
        assert_eq!(no_uri.check().unwrap_err().field, "redirect_uris");
    }

    #[test]
    fn client_secrets_match_only_themselves() {
        let secret = NewClientSecret::generate();
        assert!(secret.secret.len() >= 43);
        assert!(secret.hash.matches(&secret.secret));
        assert!(!secret.hash.matches("guess"));
    }

    mod properties {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use proptest::prelude::*;
        use sha2::{Digest as _, Sha256};

        use super::*;
        use crate::properties::config;

        const LOOPBACK: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

        /// A loopback URI with whatever a client might put between the host and the path.
        fn presented() -> impl Strategy<Value = String> {
            (
                0..LOOPBACK.len(),
                "(:[0-9]{0,6})?[:@\\[\\]a-z0-9.%\\\\#?]{0,12}",
                "(/cb)?",
            )
                .prop_map(|(host, tail, path)| format!("http://{}{tail}{path}", LOOPBACK[host]))
        }

        proptest! {
            #![proptest_config(config(1024))]

            /// The host a browser sends the code to is the registered loopback host, whatever
            /// the presented URI holds besides.
            #[test]
            fn a_loopback_match_never_leaves_the_loopback_host(
                registered in 0..LOOPBACK.len(),
                port in prop::option::of(1u16..),
                presented in presented(),
            ) {
                let host = LOOPBACK[registered];
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let registered = format!("http://{host}{port}/cb");
                if redirect_uri_matches(&registered, &presented, true)
                    && let Ok(url) = url::Url::parse(&presented)
                {
                    prop_assert_eq!(url.host_str(), Some(host));
                    prop_assert_eq!(url.path(), "/cb");
                }
                prop_assert!(!redirect_uri_matches(&registered, &presented, false)
                    || registered == presented);
            }

            #[test]
            fn any_redirect_uri_is_judged_without_failing(
                uri in prop_oneof![any::<String>(), presented(), "https?://[a-z.:@\\[\\]0-9]{0,20}/"],
                public: bool,
            ) {
                if check_redirect_uri(&uri, public, UriList::Redirect).is_ok() {
                    prop_assert!(!uri.contains('#') && !uri.contains('*'));
                    prop_assert!(!uri.chars().any(char::is_whitespace));
                }
                redirect_uri_matches(&uri, &uri, public);
            }

            #[test]
            fn scopes_read_back_what_they_print(
                subset in prop::collection::vec(any::<bool>(), Scope::ALL.len()),
                text in prop_oneof![any::<String>(), "((openid|profile|email|offline_access|x) {0,2}){0,5}"],
            ) {
                let scopes = Scopes::of(
                    Scope::ALL.into_iter().zip(&subset).filter(|(_, on)| **on).map(|(s, _)| s),
                );
                prop_assert_eq!(Scopes::parse(&scopes.to_string()), Ok(scopes));
                if let Ok(parsed) = Scopes::parse(&text) {
                    prop_assert_eq!(Scopes::parse(&parsed.to_string()), Ok(parsed.clone()));
                    prop_assert!(Scopes::all().covers(&parsed));
                }
            }

            #[test]
            fn pkce_accepts_the_verifier_of_the_challenge_and_no_other(
                verifier in "[A-Za-z0-9._~-]{43,128}",
                at in any::<prop::sample::Index>(),
                replacement in "[A-Za-z0-9._~-]",
                other in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{43}"],
            ) {
                let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                prop_assert!(is_s256_challenge(&challenge));
                prop_assert!(pkce_verifies(&verifier, &challenge));
                let mut changed = verifier.clone();
                let at = at.index(verifier.len());
                changed.replace_range(at..=at, &replacement);
                prop_assert_eq!(pkce_verifies(&changed, &challenge), changed == verifier);
                prop_assert!(!pkce_verifies(&other, &challenge) || other == verifier);
                pkce_verifies(&verifier, &other);
            }
        }
    }
}
