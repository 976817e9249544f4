//! Cross-cutting HTTP concerns: request ids and access logs, security headers, the body limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt as _;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use tracing::Instrument as _;
use uuid::Uuid;

use super::metrics::{self, RouteLabels};
use super::problem::Problem;

pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client sent, if it is safe to echo and log: short, visible ASCII.
fn client_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    let acceptable =
        !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    acceptable.then(|| value.to_owned())
}

/// Gives every request an id (the client's `X-Request-Id` when acceptable, else a new one),
/// runs it inside a span that carries the id, echoes it, logs one line and records its metrics.
pub async fn observe<E: Endpoint>(
    labels: &RouteLabels,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let id = client_request_id(&req).unwrap_or_else(|| Uuid::new_v4().to_string());
    let span = tracing::info_span!("request", request_id = %id);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let mut response = next
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response)
        .unwrap_or_else(super::problem::into_problem_response);
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
    /// Content-Security-Policy goes on every other route, which only ever answers data.
    pub fn apply(&self, path: &str, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if !is_docs_page(path) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        if path.starts_with("/auth/") {
            // Token responses must not be cached (RFC 6749 section 5.1); nor anything about
            // who the caller is.
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

/// Refuses bodies over `limit` bytes with 413: at once when `Content-Length` says so, and
/// while reading otherwise (a chunked body cannot be trusted to be small).
pub async fn limit_body<E: Endpoint>(
    limit: usize,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
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
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large().into());
    }
    let tripped = Arc::new(AtomicBool::new(false));
    let seen = AtomicUsize::new(0);
    let flag = Arc::clone(&tripped);
    let limited = req.take_body().into_bytes_stream().map(move |chunk| {
        let chunk = chunk?;
        if seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("request body too large"));
        }
        Ok(chunk)
    });
    req.set_body(Body::from_bytes_stream(limited));
    let result = next.call(req).await.map(IntoResponse::into_response);
    if tripped.load(Ordering::Relaxed) {
        return Err(too_large().into());
    }
    result
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
        assert_eq!(with(""), None);
        assert_eq!(with("has space"), None);
        assert_eq!(with(&"x".repeat(129)), None);
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
