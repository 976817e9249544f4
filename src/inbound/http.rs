//! The HTTP adapter: poem-openapi APIs over the core, with generated OpenAPI, Swagger UI and
//! ReDoc (their assets are compiled in, so the pages work offline).
//!
//! It knows the core's use cases and error types, and nothing of storage, hashing or JWT.

pub mod api;
pub mod dto;
pub mod json;
pub mod middleware;
pub mod oauth;
pub mod schema;
pub mod security;
pub mod server;

use std::sync::Arc;

use poem::endpoint::make_sync;
use poem::middleware::Cors;
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Route};
use poem_openapi::OpenApiService;

use self::api::admin::AdminApi;
use self::api::auth::AuthApi;
use self::api::clients::ClientsApi;
use self::api::grants::GrantsApi;
use self::api::keys::{Discovery, KeysApi};
use self::api::mfa::MfaApi;
use self::api::passkeys::PasskeysApi;
use self::api::protected::ProtectedApi;
use self::api::provider::ProviderApi;
use self::api::public::PublicApi;
use self::api::recovery::RecoveryApi;
use self::api::sessions::SessionsApi;
use self::middleware::{BodyLimits, Perimeter, SecurityHeaders};
use self::server::Draining;
use crate::domain::Core;
use crate::domain::service::SigningKeys;
use crate::inbound::console::{self, guard::ConsoleSettings};
use crate::inbound::web::client::TrustedProxies;
use crate::inbound::web::errors::PROVIDER_OFF;
use crate::inbound::web::metrics::{MetricsExporter, Routes};
use crate::inbound::web::problem::{Problem, into_problem_response};
use poem::http::StatusCode;

/// What the HTTP layer needs to know besides the core.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub body_limit_bytes: usize,
    /// The whole body of a request must arrive within this (408 otherwise).
    pub body_read_timeout: std::time::Duration,
    /// Allowed CORS origins; `*` allows any.
    pub cors_origins: Vec<String>,
    pub security_headers: SecurityHeaders,
    pub trusted_proxies: TrustedProxies,
    pub metrics: MetricsExporter,
    /// Whether `/metrics` is served here too (no management listener of its own).
    pub metrics_on_api: bool,
    /// Set at the shutdown signal: `/ready` then answers 503.
    pub draining: Draining,
    /// What the discovery documents say.
    pub discovery: Discovery,
    /// The web console under `/console`; `None` when `console_enabled` is false.
    pub console: Option<ConsoleSettings>,
}

type Apis = (
    PublicApi,
    AuthApi,
    RecoveryApi,
    SessionsApi,
    MfaApi,
    PasskeysApi,
    ProtectedApi,
    AdminApi,
    ClientsApi,
    GrantsApi,
    KeysApi,
    ProviderApi,
);

/// The OpenAPI service: every route, documented.
pub fn openapi(
    core: &Arc<Core>,
    keys: &Arc<SigningKeys>,
    settings: &HttpSettings,
) -> OpenApiService<Apis, ()> {
    let proxies = &settings.trusted_proxies;
    let apis = (
        PublicApi {
            core: Arc::clone(core),
            metrics: settings.metrics_on_api.then(|| settings.metrics.clone()),
            draining: settings.draining.clone(),
        },
        AuthApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        RecoveryApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        SessionsApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        MfaApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        PasskeysApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        ProtectedApi {
            core: Arc::clone(core),
        },
        AdminApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        ClientsApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        GrantsApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
        KeysApi {
            keys: Arc::clone(keys),
            discovery: settings.discovery.clone(),
        },
        ProviderApi {
            core: Arc::clone(core),
            proxies: proxies.clone(),
        },
    );
    OpenApiService::new(apis, "Portcullis", env!("CARGO_PKG_VERSION"))
        .description(
            "Email/password authentication: registration, login, JWT access tokens, refresh-token \
             sessions and roles. Click Authorize and sign in with your email and password to try \
             the protected routes.",
        )
        .server("/")
}

/// The OpenAPI document as served at `/openapi.json`, and the ReDoc page that renders it (its
/// script inline, no font or script from elsewhere), for `portcullis openapi`.
pub fn documents(
    core: &Arc<Core>,
    keys: &Arc<SigningKeys>,
    settings: &HttpSettings,
) -> (String, String) {
    documents_of(&openapi(core, keys, settings))
}

fn documents_of(api: &OpenApiService<Apis, ()>) -> (String, String) {
    (complete_spec(&api.spec()), offline_redoc(&api.redoc_html()))
}

/// The management listener's application: `GET /metrics` and nothing else, for the scraper.
pub fn management_app(metrics: MetricsExporter) -> impl Endpoint {
    Route::new()
        .at(
            "/metrics",
            poem::get(make_sync(move |_| {
                poem::Response::builder()
                    .content_type("text/plain; version=0.0.4; charset=utf-8")
                    .body(metrics.render())
            })),
        )
        .around(|ep, req| async move {
            Ok(ep
                .call(req)
                .await
                .map(poem::IntoResponse::into_response)
                .unwrap_or_else(into_problem_response))
        })
}

/// The whole HTTP application, middleware included.
pub fn app(core: Arc<Core>, keys: Arc<SigningKeys>, settings: HttpSettings) -> impl Endpoint {
    let api = openapi(&core, &keys, &settings);
    let (spec, redoc) = documents_of(&api);
    let routes = route_table(&spec);
    let pages = Route::new()
        .nest("/docs", api.swagger_ui())
        .at("/redoc", make_sync(move |_| Html(redoc.clone())))
        .at(
            "/openapi.json",
            make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(spec.clone())
            }),
        );
    let pages = match settings.console.clone() {
        Some(console_settings) => {
            let console = console::routes(
                Arc::clone(&core),
                settings.trusted_proxies.clone(),
                console_settings,
            );
            pages
                .nest("/console", console.pages)
                .at("/oauth/authorize", console.authorize)
                .at("/oauth/logout", console.logout)
        }
        // Without the console nobody can sign in to an application: the provider is off.
        None => {
            let off = || {
                make_sync(|_| {
                    let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, PROVIDER_OFF);
                    poem::error::ResponseError::as_response(&problem)
                })
            };
            pages
                .at("/oauth/authorize", off())
                .at("/oauth/logout", off())
        }
    };
    let cors_on = !settings.cors_origins.is_empty();
    let inner = Split {
        pages,
        api: api.into_endpoint(),
    }
    // No origins configured: no CORS headers at all, so browsers keep other sites out.
    // (poem's Cors with an empty list would allow every origin.)
    .with_if(cors_on, cors(&settings.cors_origins))
    .data(core);
    Perimeter {
        inner,
        routes,
        proxies: settings.trusted_proxies,
        headers: settings.security_headers,
        body: BodyLimits {
            max_bytes: settings.body_limit_bytes,
            read_timeout: settings.body_read_timeout,
        },
        cors: cors_on,
    }
}

/// The pages for people (documentation, console, the provider's sign-in and sign-out) apart
/// from the API: the API's own router then sees every other request as it came, without an
/// outer router matching it first and nesting rewriting its URI, on every request.
struct Split<A> {
    pages: Route,
    api: A,
}

impl<A: Endpoint> Endpoint for Split<A> {
    type Output = poem::Response;

    async fn call(&self, req: poem::Request) -> poem::Result<poem::Response> {
        let path = req.uri().path();
        let page = middleware::is_under(path, "/docs")
            || middleware::is_under(path, "/console")
            || matches!(
                path,
                "/redoc" | "/openapi.json" | "/oauth/authorize" | "/oauth/logout"
            );
        if page {
            self.pages.call(req).await
        } else {
            self.api.call(req).await.map(IntoResponse::into_response)
        }
    }
}

/// The OpenAPI document with what poem-openapi leaves out: OpenAPI 3.0 requires `scopes` on
/// every OAuth flow, even when empty, and strict validators refuse the document without it;
/// and the email fields of request bodies are `format: email`, so that generated clients
/// check what the server checks.
fn complete_spec(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(spec) else {
        return spec.to_owned();
    };
    for (schema, field) in [
        ("RegisterRequest", "email"),
        ("LoginRequest", "email"),
        ("ForgotPasswordRequest", "email"),
        ("ChangeEmailRequest", "new_email"),
        ("CreateUserRequest", "email"),
    ] {
        if let Some(email) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
            .and_then(serde_json::Value::as_object_mut)
        {
            email.insert("format".into(), "email".into());
        }
    }
    declare_query_types(&mut doc);
    declare_browser_routes(&mut doc);
    if let Some(schemes) = doc
        .pointer_mut("/components/securitySchemes")
        .and_then(serde_json::Value::as_object_mut)
    {
        for flow in schemes
            .values_mut()
            .filter_map(|scheme| scheme.get_mut("flows")?.as_object_mut())
            .flat_map(|flows| flows.values_mut())
            .filter_map(serde_json::Value::as_object_mut)
        {
            flow.entry("scopes")
                .or_insert_with(|| serde_json::json!({}));
        }
    }
    doc.to_string()
}

/// The OpenID provider's pages for people are the console's handlers, not operations of the
/// API; the document lists them all the same, so that it names every route (and the metrics
/// label them by it).
fn declare_browser_routes(doc: &mut serde_json::Value) {
    use serde_json::json;
    let query = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}))
            .collect()
    };
    let page = |description: &str| json!({"description": description, "content": {"text/html": {"schema": {"type": "string"}}}});
    let redirect = |description: &str| json!({"description": description, "headers": {"Location": {"required": true, "schema": {"type": "string"}}}});
    let routes = json!({
        "/oauth/authorize": {
            "get": {
                "tags": ["Provider"],
                "summary": "The authorization endpoint (a browser's)",
                "description": "The authorization code flow with PKCE (S256): the console's sign-in when nobody is signed in (or `prompt=login`, or `max_age` passed), the consent page unless the scopes were granted before or the client is first-party, then back to the redirect URI with `code`, `state` and `iss`. An unknown client or redirect URI gets a page, never a redirect; other errors go back to the redirect URI.",
                "operationId": "oauth_authorize",
                "parameters": query(&["response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge", "code_challenge_method", "prompt", "max_age", "login_hint"]),
                "responses": {
                    "200": page("The consent page, or a page that sends a browser arriving from another site on from this one"),
                    "303": redirect("To the redirect URI (a code or an error), or to the console's sign-in"),
                    "400": page("An unknown client, or a redirect URI not registered for it"),
                    "503": page("The provider is off")
                }
            },
            "post": {
                "tags": ["Provider"],
                "summary": "The consent page's answer",
                "description": "From the console's own page only (its `Origin` and CSRF token): `decision` is `allow` or `deny`.",
                "operationId": "oauth_authorize_answer",
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["csrf", "request", "decision"], "properties": {"csrf": {"type": "string"}, "request": {"type": "string"}, "decision": {"type": "string", "enum": ["allow", "deny"]}}}}}},
                "responses": {
                    "200": page("A page that sends the browser to the redirect URI with a code, or with access_denied"),
                    "303": redirect("Not signed in any more: to the console's sign-in"),
                    "403": page("Not sent from the console's page")
                }
            }
        },
        "/oauth/logout": {
            "get": {
                "tags": ["Provider"],
                "summary": "Sign out (RP-Initiated Logout 1.0)",
                "description": "Ends the browser's console session (grants with offline_access live on); back to `post_logout_redirect_uri` with `state` only when it is registered for the client that `id_token_hint` or `client_id` names.",
                "operationId": "oauth_logout",
                "parameters": query(&["id_token_hint", "client_id", "post_logout_redirect_uri", "state"]),
                "responses": {
                    "200": page("Signed out"),
                    "303": redirect("To the registered post-logout redirect URI"),
                    "503": page("The provider is off")
                }
            }
        }
    });
    if let (Some(paths), serde_json::Value::Object(routes)) = (
        doc.get_mut("paths")
            .and_then(serde_json::Value::as_object_mut),
        routes,
    ) {
        paths.extend(routes);
    }
}

/// The admin listings take their query parameters as text and parse them themselves (so that
/// a bad one is a 422 naming it); the document declares the types they accept.
fn declare_query_types(doc: &mut serde_json::Value) {
    let types = [
        (
            "limit",
            serde_json::json!({"type": "integer", "minimum": 1, "maximum": 200}),
        ),
        ("is_active", serde_json::json!({"type": "boolean"})),
        ("email_verified", serde_json::json!({"type": "boolean"})),
        (
            "role",
            serde_json::json!({"type": "string", "enum": ["user", "admin"]}),
        ),
        ("q", serde_json::json!({"type": "string", "maxLength": 200})),
        (
            "user_id",
            serde_json::json!({"type": "integer", "minimum": 1}),
        ),
        (
            "actor_id",
            serde_json::json!({"type": "integer", "minimum": 1}),
        ),
        (
            "since",
            serde_json::json!({"type": "string", "format": "date-time"}),
        ),
        (
            "until",
            serde_json::json!({"type": "string", "format": "date-time"}),
        ),
    ];
    for path in ["/admin/users", "/admin/audit"] {
        let Some(parameters) = doc
            .pointer_mut(&format!(
                "/paths/{}/get/parameters",
                path.replace('/', "~1")
            ))
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            if let Some((_, schema)) = types.iter().find(|(known, _)| *known == name) {
                parameter["schema"] = schema.clone();
            }
        }
    }
}

/// The route templates of the OpenAPI document with their methods, as metric labels and for
/// the `Allow` header of a 405.
fn route_table(spec: &str) -> Routes {
    let paths = serde_json::from_str::<serde_json::Value>(spec)
        .ok()
        .and_then(|spec| spec.get("paths").and_then(|p| p.as_object()).cloned())
        .unwrap_or_default();
    Routes::new(paths.into_iter().map(|(template, operations)| {
        let methods = operations
            .as_object()
            .map(|ops| ops.keys().map(|m| m.to_uppercase()).collect())
            .unwrap_or_default();
        (template, methods)
    }))
}

/// poem-openapi's ReDoc page inlines its script but links Google Fonts; without the link it
/// renders in the system fonts and loads nothing from outside, so it works offline.
fn offline_redoc(html: &str) -> String {
    html.lines()
        .filter(|line| !line.contains("fonts.googleapis.com"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cors(origins: &[String]) -> Cors {
    let cors = Cors::new()
        .allow_methods(["GET", "POST", "PATCH", "DELETE", "OPTIONS"])
        .allow_headers(["authorization", "content-type", "x-request-id"])
        .expose_headers(["x-request-id", "retry-after", "www-authenticate"]);
    if origins.iter().any(|o| o == "*") {
        cors
    } else {
        origins
            .iter()
            .fold(cors, |cors, origin| cors.allow_origin(origin.as_str()))
    }
}
