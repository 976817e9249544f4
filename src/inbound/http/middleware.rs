//! The one pass every request makes through the HTTP layer, on its way in and on its way out:
//! its id, span, access log line and metrics; the body's size and deadline; the security
//! headers, `Vary` and `Allow`.
//!
//! One pass rather than a stack of middlewares: each layer boxed its future, cloned its settings
//! and turned errors into responses again, on every request. Everything here that can be worked
//! out once is: the metric handles, the header values, the route table.

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use poem::error::ResponseError as _;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::metrics::{self, Routes};
use crate::inbound::web::problem::{Problem, into_problem_response};

pub const REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a client.
const REQUEST_ID_MAX_LEN: usize = 64;

/// What every request goes through around the routes.
pub struct Perimeter<E> {
    pub inner: E,
    pub routes: Routes,
    pub proxies: TrustedProxies,
    pub headers: SecurityHeaders,
    pub body: BodyLimits,
    /// Whether CORS is on: answers then vary by `Origin`.
    pub cors: bool,
}

impl<E: Endpoint> Endpoint for Perimeter<E> {
    type Output = Response;

    /// Gives the request an id (the client's `X-Request-Id` when acceptable, else a new one),
    /// runs it inside a span that carries the id, guards its body, adds the headers, echoes
    /// the id, logs one line (with the client's address) and records its metrics.
    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let id = RequestId::of(&req);
        let span = tracing::info_span!("request", request_id = %id);
        let client = Client(self.proxies.client_ip(&req));
        let method = req.method().clone();
        // A clone shares the bytes: the path outlives the request, for the log.
        let uri = req.uri().clone();
        let path = uri.path();
        let mut response = match BodyGuard::install(self.body, &mut req) {
            Admission::TooLarge(limit) => closing(too_large(limit)),
            admission => {
                let result = self
                    .inner
                    .call(req)
                    .instrument(span.clone())
                    .await
                    .map(IntoResponse::into_response);
                match admission {
                    Admission::Guarded(guard) => guard.judge(result),
                    _ => result.unwrap_or_else(into_problem_response),
                }
            }
        };
        let route = self.routes.find(path);
        self.headers.apply(path, &mut response);
        let headers = response.headers_mut();
        if self.cors {
            // The CORS headers depend on the Origin sent: caches must keep one answer per
            // origin (Fetch standard, "CORS protocol and HTTP caches").
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = self.routes.allow(route)
        {
            // RFC 9110 section 15.5.6: a 405 names the methods that would work.
            response.headers_mut().insert(header::ALLOW, allow.clone());
        }
        response
            .headers_mut()
            .insert(REQUEST_ID, id.to_header_value());
        let status = status.as_u16();
        let elapsed = started.elapsed().as_secs_f64();
        self.routes.record(route, method.as_str(), status, elapsed);
        if status == 429 {
            metrics::record_rate_limited(self.routes.label(route));
        }
        span.in_scope(|| {
            tracing::info!(
                %method,
                path,
                %client,
                status,
                elapsed_ms = elapsed * 1000.0,
                "request"
            );
        });
        Ok(response)
    }
}

/// The client's address in the access log; `-` when unknown.
struct Client(Option<IpAddr>);

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A request's id: the client's, or one made here.
enum RequestId {
    /// Checked by [`client_request_id`].
    Echoed(HeaderValue),
    /// A UUID, in its 36 characters.
    Made([u8; 36]),
}

impl RequestId {
    fn of(req: &Request) -> Self {
        client_request_id(req).map_or_else(|| Self::Made(new_request_id()), Self::Echoed)
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Echoed(value) => value.to_str().unwrap_or_default(),
            Self::Made(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
        }
    }

    fn to_header_value(&self) -> HeaderValue {
        match self {
            Self::Echoed(value) => value.clone(),
            Self::Made(bytes) => {
                HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
            }
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request id the client sent, if it is safe to echo and log: at most 64 letters, digits and
/// `-`, `_`, `.`, `:` (what UUIDs, trace ids and load balancers' ids are made of). Anything
/// else could forge log fields or smuggle markup into a log viewer.
fn client_request_id(req: &Request) -> Option<HeaderValue> {
    let value = req.headers().get(REQUEST_ID)?;
    let bytes = value.as_bytes();
    let acceptable = !bytes.is_empty()
        && bytes.len() <= REQUEST_ID_MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    acceptable.then(|| value.clone())
}

/// A new version-4 UUID, without a system call: each thread draws 128 random bits once, then
/// counts. The upper half stays the thread's random draw; the lower half is the thread's
/// counter through splitmix64, a bijection, so a thread never repeats an id and two threads (or
/// instances) share one with the odds of two random 64-bit draws. Ids need to be unique, not
/// secret: nothing is authorised by one.
fn new_request_id() -> [u8; 36] {
    thread_local! {
        static STREAM: Cell<(u64, u64)> = Cell::new(Uuid::new_v4().as_u64_pair());
    }
    let (high, count) = STREAM.with(|stream| {
        let (high, count) = stream.get();
        stream.set((high, count.wrapping_add(1)));
        (high, count)
    });
    let bits = (u128::from(high) << 64) | u128::from(splitmix64(count));
    let uuid = uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid();
    let mut text = [0; 36];
    uuid.hyphenated().encode_lower(&mut text);
    text
}

/// Sebastiano Vigna's splitmix64 finaliser: a bijection on 64 bits that scatters a counter.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which security headers to send.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security`, when on.
    hsts: Option<HeaderValue>,
}

impl SecurityHeaders {
    /// `Strict-Transport-Security` with `hsts_max_age_seconds`; none when zero.
    pub fn new(hsts_max_age_seconds: u64) -> Self {
        let value = format!("max-age={hsts_max_age_seconds}; includeSubDomains");
        Self {
            hsts: (hsts_max_age_seconds > 0)
                .then(|| HeaderValue::from_str(&value).ok())
                .flatten(),
        }
    }

    /// Adds the headers. The documentation pages run inline scripts, so the strict
    /// Content-Security-Policy goes on every other route, which only ever answers data; the
    /// pages still refuse to be framed (clickjacking their Authorize dialog).
    pub fn apply(&self, path: &str, response: &mut Response) {
        let headers = response.headers_mut();
        headers.reserve(8);
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // The console's forms need `Origin` on their POSTs, which browsers send as `null`
        // under `no-referrer`; `same-origin` still gives other sites nothing (no token in a
        // mailed link's URL leaks).
        let referrer = if is_console_page(path) || is_provider_page(path) {
            "same-origin"
        } else {
            "no-referrer"
        };
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static(referrer));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        let policy = if is_docs_page(path) {
            "frame-ancestors 'none'"
        } else if is_provider_page(path) {
            // The authorization and sign-out pages: the console's rules, without `form-action`,
            // since the browser leaves the consent form for the application's redirect URI
            // (some browsers hold a redirect after a form to the form's `form-action`).
            "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; \
             base-uri 'none'"
        } else if is_console_page(path) {
            // Server-rendered pages with one stylesheet and one script of their own (passkeys:
            // it fetches WebAuthn options from the console); nothing inline, and forms may
            // only post back to this origin.
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        } else {
            "default-src 'none'; frame-ancestors 'none'"
        };
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        );
        if !is_cacheable(path) {
            // Tokens (RFC 6749 section 5.1) and anything about who the caller is must not be
            // kept by a browser or a shared cache; only the public documents may be.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        if let Some(hsts) = &self.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}

/// `path` is `prefix` or below it.
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn is_docs_page(path: &str) -> bool {
    is_under(path, "/docs") || is_under(path, "/redoc")
}

fn is_console_page(path: &str) -> bool {
    is_under(path, "/console")
}

/// The OpenID provider's pages for people (the rest of `/oauth` answers data).
fn is_provider_page(path: &str) -> bool {
    matches!(path, "/oauth/authorize" | "/oauth/logout")
}

/// The documents that are the same for everyone: the documentation pages and the OpenAPI
/// document. Every other answer may carry personal data.
fn is_cacheable(path: &str) -> bool {
    // The key set and the discovery documents are public and meant to be cached; the JWKS
    // route says for how long.
    is_docs_page(path)
        || path == "/openapi.json"
        || path.starts_with("/.well-known/")
        || path.starts_with("/console/assets/")
}

/// What a request's body may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// From the moment the request reaches the application, the whole body must arrive within
    /// this.
    pub read_timeout: Duration,
}

/// Guards a body: 413 over `max_bytes` (at once when `Content-Length` says so, and while
/// reading otherwise: a chunked body cannot be trusted to be small), 408 when it has not all
/// arrived within `read_timeout`. An answer given before the body was read to its end says
/// `Connection: close`, and the connection is closed after it: the unread rest would otherwise
/// be taken for the client's next request, or the client would send one on a connection that
/// is going away.
struct BodyGuard {
    limit: usize,
    state: Arc<BodyState>,
}

/// What [`BodyGuard::install`] makes of a request.
enum Admission {
    /// No body.
    Unguarded,
    Guarded(BodyGuard),
    /// `Content-Length` over the limit: answered 413 at once, nothing of it read.
    TooLarge(usize),
}

/// What reading a body came to.
#[derive(Default)]
struct BodyState {
    finished: AtomicBool,
    too_large: AtomicBool,
    timed_out: AtomicBool,
}

fn too_large(limit: usize) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request body exceeds {limit} bytes"),
    )
    .as_response()
}

impl BodyGuard {
    /// Wraps the body of `req`, if it has one: a request without `Content-Length` or
    /// `Transfer-Encoding` has none (RFC 9112 section 6.3), and costs nothing here.
    fn install(limits: BodyLimits, req: &mut Request) -> Admission {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body = declared.is_some_and(|len| len > 0)
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_body {
            return Admission::Unguarded;
        }
        let limit = limits.max_bytes;
        if declared.is_some_and(|len| len > limit as u64) {
            return Admission::TooLarge(limit);
        }
        let state = Arc::new(BodyState::default());
        let seen = AtomicUsize::new(0);
        let tracked = Arc::clone(&state);
        let deadline = tokio::time::Instant::now() + limits.read_timeout;
        let chunks = req.take_body().into_bytes_stream();
        let guarded = futures_util::stream::unfold(
            (chunks, tracked, seen),
            move |(mut chunks, state, seen)| async move {
                let item = match tokio::time::timeout_at(deadline, chunks.next()).await {
                    Err(_) => {
                        state.timed_out.store(true, Ordering::Relaxed);
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request body not received in time",
                        ))
                    }
                    Ok(None) => {
                        state.finished.store(true, Ordering::Relaxed);
                        return None;
                    }
                    Ok(Some(Err(err))) => Err(err),
                    Ok(Some(Ok(chunk))) => {
                        if seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > limit {
                            state.too_large.store(true, Ordering::Relaxed);
                            Err(std::io::Error::other("request body too large"))
                        } else {
                            Ok(chunk)
                        }
                    }
                };
                Some((item, (chunks, state, seen)))
            },
        );
        req.set_body(Body::from_bytes_stream(guarded));
        Admission::Guarded(Self { limit, state })
    }

    /// The answer, given what reading the body came to.
    fn judge(self, result: poem::Result<Response>) -> Response {
        let state = &self.state;
        let response = if state.too_large.load(Ordering::Relaxed) {
            too_large(self.limit)
        } else if state.timed_out.load(Ordering::Relaxed) {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request body not received in time",
            )
            .as_response()
        } else {
            result.unwrap_or_else(into_problem_response)
        };
        if state.finished.load(Ordering::Relaxed) {
            return response;
        }
        closing(response)
    }
}

/// `response`, saying that the connection closes after it.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_request_ids_are_echoed() {
        let with = |value: &str| {
            let req = Request::builder().header(REQUEST_ID, value).finish();
            client_request_id(&req).map(|id| id.to_str().unwrap().to_owned())
        };
        assert_eq!(with("abc-123"), Some("abc-123".into()));
        assert_eq!(
            with("0f8fad5b-d9cb-469f-a165-70867728950e"),
            Some("0f8fad5b-d9cb-469f-a165-70867728950e".into())
        );
        assert_eq!(with("trace.id:1_2-3"), Some("trace.id:1_2-3".into()));
        assert_eq!(with(""), None);
        assert_eq!(with("has space"), None);
        assert_eq!(with("quote\"injection"), None);
        assert_eq!(with("<script>"), None);
        assert_eq!(with("a=b"), None);
        assert_eq!(with(&"x".repeat(64)), Some("x".repeat(64)));
        assert_eq!(with(&"x".repeat(65)), None);
    }

    #[test]
    fn made_request_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| {
                let id = RequestId::Made(new_request_id());
                let uuid = Uuid::parse_str(id.as_str()).unwrap();
                assert_eq!(uuid.get_version_num(), 4);
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
                assert_eq!(id.to_header_value(), id.as_str());
                id.to_string()
            })
            .collect();
        assert_eq!(ids.len(), 10_000);
        let elsewhere = std::thread::spawn(|| RequestId::Made(new_request_id()).to_string());
        assert!(!ids.contains(&elsewhere.join().unwrap()));
    }

    #[test]
    fn hsts_is_sent_only_when_configured() {
        let mut response = Response::default();
        SecurityHeaders::new(0).apply("/auth/me", &mut response);
        assert!(
            !response
                .headers()
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        );
        SecurityHeaders::new(31_536_000).apply("/auth/me", &mut response);
        assert_eq!(
            response.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
    }

    #[test]
    fn only_the_public_documents_may_be_cached_and_nothing_may_be_framed() {
        let headers = SecurityHeaders::new(0);
        for (path, cacheable, csp) in [
            (
                "/protected/user",
                false,
                "default-src 'none'; frame-ancestors 'none'",
            ),
            (
                "/auth/me",
                false,
                "default-src 'none'; frame-ancestors 'none'",
            ),
            (
                "/public",
                false,
                "default-src 'none'; frame-ancestors 'none'",
            ),
            ("/docs", true, "frame-ancestors 'none'"),
            (
                "/console/account",
                false,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                 img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (
                "/console/assets/console.css",
                true,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                 img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            ("/redoc", true, "frame-ancestors 'none'"),
            (
                "/openapi.json",
                true,
                "default-src 'none'; frame-ancestors 'none'",
            ),
            (
                "/.well-known/jwks.json",
                true,
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ] {
            let mut response = Response::default();
            headers.apply(path, &mut response);
            let h = response.headers();
            assert_eq!(h.contains_key(header::CACHE_CONTROL), !cacheable, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], csp, "{path}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
        }
    }

    #[test]
    fn docs_pages_are_told_apart() {
        assert!(is_docs_page("/docs"));
        assert!(is_docs_page("/docs/oauth-receiver.html"));
        assert!(is_docs_page("/redoc"));
        assert!(!is_docs_page("/docsx"));
        assert!(!is_docs_page("/auth/me"));
    }
}
