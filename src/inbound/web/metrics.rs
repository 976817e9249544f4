//! Prometheus metrics: the recorder, the per-request counters and histograms, and the labels.
//!
//! Recording goes through the `metrics` facade (the bcrypt adapter records its queue there
//! too); this module owns the one exporter and renders it at `GET /metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::TokenPair;
use crate::domain::service::{CookieSignIn, LoginError, LoginStep, TokenEndpointError};

/// Latency buckets, in seconds: from a cached read to a slow bcrypt under load.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use. One per process: the facade
/// has one global recorder.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Someone else installed a recorder: ours still renders, just sees nothing.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Gauges sampled when `/metrics` is scraped (database pool use), set by start-up, which knows
/// the pool.
pub type Sampler = Arc<dyn Fn() + Send + Sync>;

/// What `GET /metrics` renders.
#[derive(Clone)]
pub struct MetricsExporter {
    handle: PrometheusHandle,
    sampler: Sampler,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter").finish_non_exhaustive()
    }
}

impl MetricsExporter {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            handle: handle(),
            sampler,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        (self.sampler)();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Drains histogram buffers now and then, so their memory stays bounded between scrapes.
pub async fn upkeep_periodically(every: Duration) {
    let handle = handle();
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// Maps request paths onto the route templates of the OpenAPI document, so that labels stay
/// few whatever paths clients send.
#[derive(Debug, Clone, Default)]
pub struct RouteLabels {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    template: String,
    segments: Vec<String>,
    /// The methods it answers, as an `Allow` header value.
    allow: String,
}

impl RouteLabels {
    /// From the templates (`/auth/sessions/{id}`) of an OpenAPI document, each with the
    /// methods it answers.
    pub fn new(routes: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        Self {
            routes: routes
                .into_iter()
                .map(|(template, methods)| Route {
                    segments: template.split('/').map(String::from).collect(),
                    allow: methods.join(", "),
                    template,
                })
                .collect(),
        }
    }

    fn find(&self, path: &str) -> Option<&Route> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes.iter().find(|route| {
            route.segments.len() == segments.len()
                && route
                    .segments
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
    }

    /// The methods `path` answers, for the `Allow` header of a 405.
    pub fn allow(&self, path: &str) -> Option<&str> {
        self.find(path).map(|route| route.allow.as_str())
    }

    /// The template `path` matches; `/docs` and `/redoc` for the documentation pages;
    /// `/console` for the web console; `unmatched` for anything else.
    pub fn label(&self, path: &str) -> String {
        match self.find(path) {
            Some(route) => route.template.clone(),
            None if path == "/docs" || path.starts_with("/docs/") => "/docs".into(),
            None if path == "/redoc" || path == "/openapi.json" => path.into(),
            // The console's pages, as one series: their ids would mint a series each.
            None if path == "/console" || path.starts_with("/console/") => "/console".into(),
            None => "unmatched".into(),
        }
    }
}

/// The method as a label: one of the standard methods, else `other`, so that clients cannot
/// mint new series by inventing methods.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

/// Records one finished request.
pub fn record_request(route: &str, method: &str, status: u16, seconds: f64) {
    let method = method_label(method);
    let status = status.to_string();
    metrics::counter!(
        "portcullis_http_requests_total",
        "route" => route.to_owned(),
        "method" => method,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "portcullis_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method
    )
    .record(seconds);
}

/// What a right password led to: a session, or a second step still owed.
pub trait PasswordStep {
    fn owes_second_factor(&self) -> bool;
}

impl PasswordStep for TokenPair {
    fn owes_second_factor(&self) -> bool {
        false
    }
}

impl PasswordStep for LoginStep {
    fn owes_second_factor(&self) -> bool {
        matches!(self, Self::SecondFactor(_))
    }
}

impl PasswordStep for CookieSignIn {
    fn owes_second_factor(&self) -> bool {
        matches!(self, Self::SecondFactor(_))
    }
}

/// Records a login attempt's outcome: `success`, `second_factor` (a right password, a code
/// owed), `invalid_credentials`, `inactive`, `unverified`, `mfa_required` (the token grant of a
/// user with a second factor), `rate_limited`, `error`.
pub fn record_login<T: PasswordStep>(result: &Result<T, LoginError>) {
    let outcome = match result {
        Ok(step) if step.owes_second_factor() => "second_factor",
        Ok(_) => "success",
        Err(LoginError::InvalidCredentials) => "invalid_credentials",
        Err(LoginError::Inactive) => "inactive",
        Err(LoginError::Unverified) => "unverified",
        Err(LoginError::SecondFactorRequired) => "mfa_required",
        Err(LoginError::Throttled(_)) => "rate_limited",
        Err(LoginError::Backend(_)) => "error",
    };
    metrics::counter!("portcullis_logins_total", "outcome" => outcome).increment(1);
}

/// Records a request to the OpenID provider's token endpoint by grant type (`authorization_code`,
/// `refresh_token`, `client_credentials`, `other`) and outcome (`success`, or the OAuth error:
/// `invalid_client`, `invalid_grant`, ..., `rate_limited`, `error`).
pub fn record_token_grant<T>(grant_type: Option<&str>, result: &Result<T, TokenEndpointError>) {
    let grant_type = match grant_type {
        Some("authorization_code") => "authorization_code",
        Some("refresh_token") => "refresh_token",
        Some("client_credentials") => "client_credentials",
        _ => "other",
    };
    let outcome = match result {
        Ok(_) => "success",
        Err(TokenEndpointError::Off) => "off",
        Err(TokenEndpointError::InvalidClient { .. }) => "invalid_client",
        Err(TokenEndpointError::InvalidRequest(_)) => "invalid_request",
        Err(TokenEndpointError::InvalidGrant(_)) => "invalid_grant",
        Err(TokenEndpointError::UnauthorizedClient) => "unauthorized_client",
        Err(TokenEndpointError::UnsupportedGrantType) => "unsupported_grant_type",
        Err(TokenEndpointError::InvalidScope(_)) => "invalid_scope",
        Err(TokenEndpointError::Throttled(_)) => "rate_limited",
        Err(TokenEndpointError::Backend(_)) => "error",
    };
    metrics::counter!(
        "portcullis_oauth_token_grants_total",
        "grant_type" => grant_type,
        "outcome" => outcome
    )
    .increment(1);
}

/// Records what an authorization request came to: `code` (sent back with a code), `sign_in`
/// and `consent` (a page shown), `denied` (consent declined), `error` (sent back with another
/// error), `refused` (an unknown client or redirect URI: a page, no redirect).
pub fn record_authorization(outcome: &'static str) {
    metrics::counter!("portcullis_oauth_authorizations_total", "outcome" => outcome).increment(1);
}

/// Records a request refused by an abuse limit.
pub fn record_rate_limited(route: &str) {
    metrics::counter!("portcullis_rate_limited_total", "route" => route.to_owned()).increment(1);
}

/// Records a connection closed at once because `max_connections` were open.
pub fn record_connection_refused() {
    metrics::counter!("portcullis_connections_refused_total").increment(1);
}

/// Sets the number of open connections.
pub fn record_open_connections(open: usize) {
    metrics::gauge!("portcullis_connections_open").set(open as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_onto_their_templates() {
        let labels = RouteLabels::new([
            ("/auth/me".into(), vec!["GET".into()]),
            ("/auth/sessions/{id}".into(), vec!["DELETE".into()]),
        ]);
        assert_eq!(labels.allow("/auth/sessions/x"), Some("DELETE"));
        assert_eq!(labels.label("/auth/me"), "/auth/me");
        assert_eq!(
            labels.label("/auth/sessions/8c5e6e3a-0000-0000-0000-000000000000"),
            "/auth/sessions/{id}"
        );
        assert_eq!(labels.label("/docs/oauth-receiver.html"), "/docs");
        assert_eq!(labels.label("/auth/me/extra"), "unmatched");
        assert_eq!(labels.label("/console/admin/users/42"), "/console");
        assert_eq!(labels.label("/../../etc/passwd"), "unmatched");
    }

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "other");
    }
}
