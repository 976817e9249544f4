//! What stands between a browser and the console's use cases: the session cookie, the CSRF
//! token of every form, the `Origin` check of every submission, and safe redirects.
//!
//! Two cookies, both `HttpOnly` and `SameSite=Strict`, scoped to `/console`, `Secure` (with the
//! `__Host-` prefix' guarantees) whenever `public_url` is https:
//! - the session cookie: the opaque secret of a core session, set at sign-in;
//! - the visitor cookie: 256 random bits given to any browser that opens a form, so that the
//!   forms used before signing in (sign-in itself, register, reset ...) carry a CSRF token too.
//!
//! A form's CSRF token is the SHA-256 of one of those secrets under a label: a page script
//! cannot compute it (the cookies are `HttpOnly`), another site cannot read it (same-origin
//! policy), and the token says nothing about the cookie. Forms of a signed-in user carry the
//! session's token, so a token is good for one session only.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::Request;
use poem::http::{HeaderValue, StatusCode, header};
use rand::Rng as _;
use sha2::{Digest, Sha256};

use crate::domain::Principal;
use crate::domain::service::AuthError;

/// Settings of the console that come from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSettings {
    /// `public_url`'s origin (`scheme://host[:port]`), when it is configured: forms must come
    /// from it. Otherwise they must come from the host the request names.
    pub origin: Option<String>,
    /// `public_url` is https: cookies are `Secure` and `__Host-` prefixed.
    pub secure_cookies: bool,
}

impl ConsoleSettings {
    /// From `public_url`, if set.
    pub fn new(public_url: Option<&str>) -> Self {
        let origin = public_url.and_then(origin_of);
        let secure_cookies = public_url.is_some_and(|url| url.starts_with("https://"));
        Self {
            origin,
            secure_cookies,
        }
    }

    fn cookie_name(&self, name: &str) -> String {
        if self.secure_cookies {
            format!("__Host-{name}")
        } else {
            name.to_owned()
        }
    }

    pub(super) fn session_cookie(&self) -> String {
        self.cookie_name("portcullis-session")
    }

    pub(super) fn visitor_cookie(&self) -> String {
        self.cookie_name("portcullis-visitor")
    }

    /// A `Set-Cookie` value for `name`; `None` clears it.
    pub(super) fn set_cookie(&self, name: &str, value: Option<&str>) -> HeaderValue {
        // `Path=/`: `__Host-` cookies must have it, and the OpenID provider's pages
        // (`/oauth/authorize`, `/oauth/logout`) read the session too. The API never reads a
        // cookie: it takes bearer tokens only, so a cookie sent along there grants nothing.
        let path = "/";
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let text = match value {
            Some(value) => {
                format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict{secure}")
            }
            None => format!("{name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
        };
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether a form submission comes from the console's own pages, by the headers browsers
    /// set and scripts cannot: `Sec-Fetch-Site` must say same-origin when present, and
    /// `Origin` must be the console's. A request with neither is no browser's (browsers send
    /// `Origin` with every POST), and still needs its CSRF token.
    pub(super) fn same_origin(&self, req: &Request) -> bool {
        let headers = req.headers();
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.to_str(), Ok("same-origin" | "none"))
        {
            return false;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return headers.get("sec-fetch-site").is_none();
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match &self.origin {
            Some(expected) => origin.eq_ignore_ascii_case(expected),
            None => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                let named = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                matches!((named, host), (Some(named), Some(host)) if named.eq_ignore_ascii_case(host))
            }
        }
    }
}

/// `scheme://host[:port]` of a URL, lower-cased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// The value of cookie `name` in the request, if it is there once and looks like a secret.
pub(super) fn cookie(req: &Request, name: &str) -> Option<String> {
    let mut found = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned());
    let value = found.next()?;
    // Two cookies of one name: one was planted (by a sibling subdomain); trust neither.
    if found.next().is_some() || !is_secret(&value) {
        return None;
    }
    Some(value)
}

/// 43 characters of unpadded base64url: the shape of every secret the console hands out.
fn is_secret(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 256 bits from the operating system's generator, in unpadded base64url.
pub(super) fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The CSRF token of the forms protected by `secret`.
pub(super) fn csrf_token(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"portcullis console csrf\0")
        .chain_update(secret.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(digest)
}

/// Compares without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who is on the other end of a console request.
pub(super) struct Visitor {
    /// The signed-in user, with the cookie that proves it.
    pub signed_in: Option<(String, Principal)>,
    /// The visitor cookie sent, or one made for this answer.
    visitor_secret: String,
    /// Whether `visitor_secret` is new and must be set.
    fresh: bool,
    /// The session cookie sent is no good any more (ended, expired): clear it.
    pub stale_session: bool,
}

/// Why a visitor could not be read: the database did not answer.
pub(super) struct Unavailable(pub AuthError);

impl Visitor {
    /// Reads the cookies of `req`, checking the session cookie against the core.
    pub(super) async fn read(console: &super::Console, req: &Request) -> Result<Self, Unavailable> {
        let settings = &console.settings;
        let mut stale_session = false;
        let signed_in = match cookie(req, &settings.session_cookie()) {
            None => None,
            Some(secret) => match console.core.cookies.authenticate_cookie(&secret).await {
                Ok(principal) => Some((secret, principal)),
                Err(AuthError::InvalidToken | AuthError::Inactive | AuthError::Forbidden) => {
                    stale_session = true;
                    None
                }
                Err(err @ AuthError::Backend(_)) => return Err(Unavailable(err)),
            },
        };
        let (visitor_secret, fresh) = match cookie(req, &settings.visitor_cookie()) {
            Some(secret) => (secret, false),
            None => (new_secret(), true),
        };
        Ok(Self {
            signed_in,
            visitor_secret,
            fresh,
            stale_session,
        })
    }

    pub(super) fn principal(&self) -> Option<&Principal> {
        self.signed_in.as_ref().map(|(_, principal)| principal)
    }

    /// The token for forms of the signed-in user.
    pub(super) fn session_csrf(&self) -> Option<String> {
        self.signed_in
            .as_ref()
            .map(|(secret, _)| csrf_token(secret))
    }

    /// The token for forms anyone may send (sign-in, register, the mailed links' forms).
    pub(super) fn visitor_csrf(&self) -> String {
        csrf_token(&self.visitor_secret)
    }

    /// Whether `sent` is the token of a signed-in form of this session.
    pub(super) fn session_token_matches(&self, sent: &str) -> bool {
        self.session_csrf()
            .is_some_and(|token| same_token(&token, sent))
    }

    /// Whether `sent` is this browser's visitor token (a fresh visitor cookie has none yet).
    pub(super) fn visitor_token_matches(&self, sent: &str) -> bool {
        !self.fresh && same_token(&self.visitor_csrf(), sent)
    }

    /// Sets the cookies this answer must carry: a new visitor cookie, the clearing of a dead
    /// session cookie.
    pub(super) fn finish(&self, settings: &ConsoleSettings, response: &mut poem::Response) {
        let headers = response.headers_mut();
        if self.fresh {
            headers.append(
                header::SET_COOKIE,
                settings.set_cookie(&settings.visitor_cookie(), Some(&self.visitor_secret)),
            );
        }
        if self.stale_session {
            headers.append(
                header::SET_COOKIE,
                settings.set_cookie(&settings.session_cookie(), None),
            );
        }
    }
}

/// A `303 See Other` to `location` (after a form: the browser follows with a GET, so a reload
/// does not send the form again).
pub(super) fn see_other(location: &str) -> poem::Response {
    poem::Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .finish()
}

/// Where to go after signing in: `next` if it is a console page of this site or the OpenID
/// provider's authorization endpoint (a sign-in on an application's behalf), else the account
/// page. Anything else (another host, `//evil`, `/\evil`, a scheme) could make the
/// console an open redirect.
pub(super) fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if (next.starts_with("/console/") || next.starts_with("/oauth/authorize?"))
                && !next.contains("//")
                && !next.contains('\\')
                && !next.chars().any(char::is_control) =>
        {
            next
        }
        _ => "/console/account",
    }
}

#[cfg(test)]
mod tests {
    use poem::http::Method;

    use super::*;

    fn post(headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri_str("/console/sign-in");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.finish()
    }

    #[test]
    fn https_public_urls_make_secure_prefixed_cookies() {
        let secure = ConsoleSettings::new(Some("https://auth.example.com/base"));
        assert_eq!(secure.origin.as_deref(), Some("https://auth.example.com"));
        assert_eq!(secure.session_cookie(), "__Host-portcullis-session");
        let set = secure.set_cookie("__Host-portcullis-session", Some("v"));
        assert_eq!(
            set.to_str().unwrap(),
            "__Host-portcullis-session=v; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        let plain = ConsoleSettings::new(Some("http://localhost:8000"));
        assert!(!plain.secure_cookies);
        let cleared = plain.set_cookie(&plain.session_cookie(), None);
        assert_eq!(
            cleared.to_str().unwrap(),
            "portcullis-session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn submissions_from_other_origins_are_refused() {
        let configured = ConsoleSettings::new(Some("https://auth.example.com"));
        assert!(configured.same_origin(&post(&[("origin", "https://auth.example.com")])));
        assert!(!configured.same_origin(&post(&[("origin", "https://evil.example")])));
        assert!(!configured.same_origin(&post(&[("origin", "http://auth.example.com")])));
        assert!(!configured.same_origin(&post(&[("origin", "null")])));
        let by_host = ConsoleSettings::new(None);
        assert!(by_host.same_origin(&post(&[
            ("origin", "http://127.0.0.1:8000"),
            ("host", "127.0.0.1:8000"),
        ])));
        assert!(!by_host.same_origin(&post(&[
            ("origin", "http://127.0.0.1:9000"),
            ("host", "127.0.0.1:8000"),
        ])));
        assert!(!by_host.same_origin(&post(&[
            ("origin", "http://127.0.0.1:8000"),
            ("host", "127.0.0.1:8000"),
            ("sec-fetch-site", "cross-site"),
        ])));
        // A browser always sends Origin with a POST; one that says it is a browser and
        // sends none is refused. A non-browser client is left to the CSRF token.
        assert!(!by_host.same_origin(&post(&[("sec-fetch-site", "same-origin")])));
        assert!(by_host.same_origin(&post(&[])));
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_secret() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert!(!csrf_token(&a).contains(&a));
        assert!(same_token(&csrf_token(&a), &csrf_token(&a)));
        assert!(!same_token(&csrf_token(&a), &csrf_token(&b)));
        assert!(!same_token(&csrf_token(&a), ""));
    }

    #[test]
    fn cookies_must_be_one_and_shaped_like_a_secret() {
        let secret = new_secret();
        let req = |value: &str| Request::builder().header("cookie", value).finish();
        assert_eq!(
            cookie(
                &req(&format!("a=b; portcullis-session={secret}")),
                "portcullis-session"
            ),
            Some(secret.clone())
        );
        assert_eq!(
            cookie(
                &req(&format!(
                    "portcullis-session={secret}; portcullis-session={secret}"
                )),
                "portcullis-session"
            ),
            None
        );
        assert_eq!(
            cookie(&req("portcullis-session=short"), "portcullis-session"),
            None
        );
    }

    #[test]
    fn only_console_pages_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/console/admin/users")),
            "/console/admin/users"
        );
        for evil in [
            "https://evil.example/",
            "//evil.example",
            "/console//evil.example",
            "/\\evil.example",
            "/console/\\\\evil",
            "/docs",
            "/console/x\r\nSet-Cookie: a=b",
        ] {
            assert_eq!(safe_next(Some(evil)), "/console/account", "{evil}");
        }
        assert_eq!(safe_next(None), "/console/account");
    }
}
