//! Prometheus metrics: the recorder, the per-request counters and histograms, and the labels.
//!
//! Recording goes through the `metrics` facade (the bcrypt adapter records its queue there
//! too); this module owns the one exporter and renders it at `GET /metrics`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::http::HeaderValue;

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

/// The routes as metrics see them: request paths mapped onto the route templates of the
/// OpenAPI document (so that labels stay few whatever paths clients send), the methods each
/// answers (for `Allow`), and each route's metric handles.
///
/// The handles are resolved from the registry the first time a route, method and status are
/// seen, then kept: looking a series up by its labels on every request (hashing them,
/// allocating them) cost more than the rest of the metrics together.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// The templates without a parameter, by path: most requests are found in one lookup.
    exact: HashMap<String, usize>,
    /// The templates with one, tried in order.
    templated: Vec<usize>,
}

/// One route of [`Routes`], by its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(usize);

#[derive(Debug)]
struct Route {
    label: String,
    segments: Vec<String>,
    /// The methods it answers, as an `Allow` header value; none for the routes outside the
    /// OpenAPI document.
    allow: Option<HeaderValue>,
    series: OnceLock<Box<Series>>,
}

/// The labels of the routes outside the OpenAPI document, in the order `Routes` appends them.
const DOCS: usize = 0;
const REDOC: usize = 1;
const OPENAPI: usize = 2;
const CONSOLE: usize = 3;
const UNMATCHED: usize = 4;
const OUTSIDE: [&str; 5] = ["/docs", "/redoc", "/openapi.json", "/console", "unmatched"];

/// The method labels: the standard methods, and `other`, so that clients cannot mint new
/// series by inventing methods.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];

/// The statuses whose counters are kept; any other is looked up each time.
const STATUSES: [u16; 24] = [
    200, 201, 204, 301, 302, 303, 304, 307, 400, 401, 403, 404, 405, 406, 408, 409, 410, 413, 415,
    422, 429, 500, 502, 503,
];

/// One route's handles, by method (and status).
#[derive(Debug)]
struct Series {
    durations: [OnceLock<Histogram>; METHODS.len()],
    counts: [[OnceLock<Counter>; STATUSES.len()]; METHODS.len()],
}

impl Routes {
    /// From the templates (`/auth/sessions/{id}`) of an OpenAPI document, each with the
    /// methods it answers.
    pub fn new(templates: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let mut routes: Vec<Route> = templates
            .into_iter()
            .map(|(template, methods)| Route {
                segments: template.split('/').map(String::from).collect(),
                allow: HeaderValue::from_str(&methods.join(", ")).ok(),
                label: template,
                series: OnceLock::new(),
            })
            .collect();
        let documented = routes.len();
        routes.extend(OUTSIDE.iter().map(|label| Route {
            label: (*label).to_owned(),
            segments: Vec::new(),
            allow: None,
            series: OnceLock::new(),
        }));
        let (templated, fixed): (Vec<usize>, Vec<usize>) =
            (0..documented).partition(|&i| routes[i].segments.iter().any(|s| is_parameter(s)));
        let exact = fixed
            .into_iter()
            .map(|i| (routes[i].label.clone(), i))
            .collect();
        Self {
            routes,
            exact,
            templated,
        }
    }

    fn outside(&self, which: usize) -> RouteId {
        RouteId(self.routes.len() - OUTSIDE.len() + which)
    }

    /// The route `path` is: its template; `/docs` and `/redoc` for the documentation pages;
    /// `/console` for the web console; `unmatched` for anything else.
    pub fn find(&self, path: &str) -> RouteId {
        if let Some(&i) = self.exact.get(path) {
            return RouteId(i);
        }
        let found = self.templated.iter().copied().find(|&i| {
            let mut segments = path.split('/');
            self.routes[i]
                .segments
                .iter()
                .all(|t| segments.next().is_some_and(|s| t == s || is_parameter(t)))
                && segments.next().is_none()
        });
        if let Some(i) = found {
            return RouteId(i);
        }
        self.outside(match path {
            "/docs" => DOCS,
            _ if path.starts_with("/docs/") => DOCS,
            "/redoc" => REDOC,
            "/openapi.json" => OPENAPI,
            // The console's pages, as one series: their ids would mint a series each.
            "/console" => CONSOLE,
            _ if path.starts_with("/console/") => CONSOLE,
            _ => UNMATCHED,
        })
    }

    /// The route's label.
    pub fn label(&self, route: RouteId) -> &str {
        &self.routes[route.0].label
    }

    /// The methods the route answers, for the `Allow` header of a 405.
    pub fn allow(&self, route: RouteId) -> Option<&HeaderValue> {
        self.routes[route.0].allow.as_ref()
    }

    /// Records one finished request.
    pub fn record(&self, route: RouteId, method: &str, status: u16, seconds: f64) {
        let entry = &self.routes[route.0];
        let series = entry.series.get_or_init(|| {
            Box::new(Series {
                durations: std::array::from_fn(|_| OnceLock::new()),
                counts: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            })
        });
        let m = METHODS
            .iter()
            .position(|known| *known == method)
            .unwrap_or(METHODS.len() - 1);
        let method = METHODS[m];
        let count = || {
            metrics::counter!(
                "portcullis_http_requests_total",
                "route" => entry.label.clone(),
                "method" => method,
                "status" => status.to_string()
            )
        };
        match STATUSES.iter().position(|known| *known == status) {
            Some(s) => series.counts[m][s].get_or_init(count).increment(1),
            None => count().increment(1),
        }
        series.durations[m]
            .get_or_init(|| {
                metrics::histogram!(
                    "portcullis_http_request_duration_seconds",
                    "route" => entry.label.clone(),
                    "method" => method
                )
            })
            .record(seconds);
    }
}

fn is_parameter(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
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
        let routes = Routes::new([
            ("/auth/me".into(), vec!["GET".into()]),
            ("/auth/sessions/{id}".into(), vec!["DELETE".into()]),
            (
                "/admin/users/{id}/role".into(),
                vec!["PATCH".into(), "GET".into()],
            ),
        ]);
        let label = |path: &str| routes.label(routes.find(path)).to_owned();
        assert_eq!(
            routes.allow(routes.find("/auth/sessions/x")).unwrap(),
            "DELETE"
        );
        assert_eq!(label("/auth/me"), "/auth/me");
        assert_eq!(
            label("/auth/sessions/8c5e6e3a-0000-0000-0000-000000000000"),
            "/auth/sessions/{id}"
        );
        assert_eq!(label("/admin/users/7/role"), "/admin/users/{id}/role");
        assert_eq!(
            routes.allow(routes.find("/admin/users/7/role")).unwrap(),
            "PATCH, GET"
        );
        assert_eq!(label("/admin/users/7"), "unmatched");
        assert_eq!(label("/auth/sessions"), "unmatched");
        assert_eq!(label("/docs/oauth-receiver.html"), "/docs");
        assert_eq!(label("/docsx"), "unmatched");
        assert_eq!(label("/redoc"), "/redoc");
        assert_eq!(label("/auth/me/extra"), "unmatched");
        assert_eq!(label("/console/admin/users/42"), "/console");
        assert_eq!(label("/../../etc/passwd"), "unmatched");
        assert_eq!(routes.allow(routes.find("/redoc")), None);
    }

    #[test]
    fn each_series_is_counted_under_its_labels() {
        let routes = Routes::new([("/auth/me".into(), vec!["GET".into()])]);
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let me = routes.find("/auth/me");
            for status in [200, 200, 401, 418] {
                routes.record(me, "GET", status, 0.001);
            }
            routes.record(me, "BREW", 200, 0.001);
            routes.record(routes.find("/nowhere"), "GET", 404, 0.001);
        });
        let text = handle.render();
        for line in [
            r#"portcullis_http_requests_total{route="/auth/me",method="GET",status="200"} 2"#,
            r#"portcullis_http_requests_total{route="/auth/me",method="GET",status="401"} 1"#,
            r#"portcullis_http_requests_total{route="/auth/me",method="GET",status="418"} 1"#,
            r#"portcullis_http_requests_total{route="/auth/me",method="other",status="200"} 1"#,
            r#"portcullis_http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
            r#"portcullis_http_request_duration_seconds_count{route="/auth/me",method="GET"} 4"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
