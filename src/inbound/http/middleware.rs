//! Cross-cutting HTTP concerns: request ids and access logs, security headers, the body's size
//! and deadline.

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
use crate::inbound::web::metrics::{self, RouteLabels};
use crate::inbound::web::problem::{Problem, into_problem_response};

pub const REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a client.
const REQUEST_ID_MAX_LEN: usize = 64;

/// A request id the client sent, if it is safe to echo and log: at most 64 letters, digits and
/// `-`, `_`, `.`, `:` (what UUIDs, trace ids and load balancers' ids are made of). Anything
/// else could forge log fields or smuggle markup into a log viewer.
fn client_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    let acceptable = !value.is_empty()
        && value.len() <= REQUEST_ID_MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    acceptable.then(|| value.to_owned())
}

/// Gives every request an id (the client's `X-Request-Id` when acceptable, else a new one),
/// runs it inside a span that carries the id, echoes it, logs one line (with the client's
/// address) and records its metrics.
pub async fn observe<E: Endpoint>(
    labels: &RouteLabels,
    proxies: &TrustedProxies,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let id = client_request_id(&req).unwrap_or_else(|| Uuid::new_v4().to_string());
    let span = tracing::info_span!("request", request_id = %id);
    let client = proxies
        .client_ip(&req)
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let mut response = next
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response)
        .unwrap_or_else(into_problem_response);
    let status = response.status().as_u16();
    let route = labels.label(&path);
    metrics::record_request(
        &route,
        method.as_str(),
        status,
        started.elapsed().as_secs_f64(),
    );
    if status == 429 {
        metrics::record_rate_limited(&route);
    }
    span.in_scope(|| {
        tracing::info!(
            %method,
            path,
            client,
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// Which security headers to send.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security` max-age; none when zero.
    pub hsts_max_age_seconds: u64,
}

impl SecurityHeaders {
    /// Adds the headers. The documentation pages run inline scripts, so the strict
    /// Content-Security-Policy goes on every other route, which only ever answers data; the
    /// pages still refuse to be framed (clickjacking their Authorize dialog).
    pub fn apply(&self, path: &str, response: &mut Response) {
        let headers = response.headers_mut();
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
        if self.hsts_max_age_seconds > 0
            && let Ok(value) = HeaderValue::from_str(&format!(
                "max-age={}; includeSubDomains",
                self.hsts_max_age_seconds
            ))
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }
}

fn is_docs_page(path: &str) -> bool {
    ["/docs", "/redoc"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

fn is_console_page(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
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

/// Guards the body: 413 over `max_bytes` (at once when `Content-Length` says so, and while
/// reading otherwise: a chunked body cannot be trusted to be small), 408 when it has not all
/// arrived within `read_timeout`. An answer given before the body was read to its end says
/// `Connection: close`, and the connection is closed after it: the unread rest would otherwise
/// be taken for the client's next request, or the client would send one on a connection that
/// is going away.
pub async fn guard_body<E: Endpoint>(
    limits: BodyLimits,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let limit = limits.max_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body = declared.is_some_and(|len| len > 0)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.is_some_and(|len| len > limit as u64) {
        return Ok(closing(too_large().as_response()));
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
    let result = next.call(req).await.map(IntoResponse::into_response);
    let response = if state.too_large.load(Ordering::Relaxed) {
        too_large().as_response()
    } else if state.timed_out.load(Ordering::Relaxed) {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request body not received in time",
        )
        .as_response()
    } else {
        result.unwrap_or_else(into_problem_response)
    };
    if has_body && !state.finished.load(Ordering::Relaxed) {
        return Ok(closing(response));
    }
    Ok(response)
}

/// What reading a body came to.
#[derive(Default)]
struct BodyState {
    finished: AtomicBool,
    too_large: AtomicBool,
    timed_out: AtomicBool,
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
            client_request_id(&req)
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
    fn only_the_public_documents_may_be_cached_and_nothing_may_be_framed() {
        let headers = SecurityHeaders {
            hsts_max_age_seconds: 0,
        };
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
