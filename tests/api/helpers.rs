//! A real Portcullis on 127.0.0.1:0 over a fresh database, driven over HTTP.
//!
//! Every test runs twice: on a SQLite file in a temporary folder, and on a PostgreSQL database
//! created for it (and dropped after) under `TEST_DATABASE_URL`. Without that variable the
//! PostgreSQL half is skipped on a laptop, and fails in CI.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use figment::providers::Serialized;
use futures::FutureExt as _;
use portcullis::config::{Profile, Settings};
use portcullis::domain::Core;
use portcullis::outbound::session_cache::{CacheStats, SessionCache};
use portcullis::startup::{Application, Storage, build};
use reqwest::{Client, Response, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse battery";
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database made for one test.
pub enum TestDb {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

impl TestDb {
    /// A fresh database, or `None` when PostgreSQL is not configured (outside CI).
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/test.db?mode=rwc", dir.path().display());
                Some(Self::Sqlite { url, _dir: dir })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "TEST_DATABASE_URL must be set in CI: the PostgreSQL tests may not skip there"
                    );
                    eprintln!("skipped: TEST_DATABASE_URL is not set");
                    return None;
                };
                let name = format!("portcullis_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("TEST_DATABASE_URL has a database");
                let url = format!("{base}/{name}");
                Some(Self::Postgres {
                    url,
                    admin_url,
                    name,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } => url,
        }
    }

    /// A pool of `max_connections` on this database.
    pub async fn pool(&self, max_connections: u32) -> sea_orm::DatabaseConnection {
        portcullis::outbound::sea_orm::connect(&portcullis::outbound::sea_orm::DatabaseSettings {
            url: self.url().to_owned(),
            max_connections,
            connect_timeout: std::time::Duration::from_secs(5),
        })
        .await
        .expect("connect")
    }

    pub async fn drop_database(self) {
        if let Self::Postgres {
            admin_url, name, ..
        } = self
        {
            let admin = Database::connect(&admin_url)
                .await
                .expect("connect TEST_DATABASE_URL");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .expect("drop test database");
            admin.close().await.ok();
        }
    }
}

/// Settings for a test app on `url`, with `overrides` on top.
pub fn settings(url: &str, overrides: Value) -> Settings {
    let mut figment = Settings::defaults().merge(Serialized::defaults(json!({
        "port": 0,
        "database_url": url,
        "secret_key": SECRET,
        "bcrypt_cost": 4,
        "log_level": "warn",
        "cors_allowed_origins": "*",
        // Limit windows are fixed and aligned: an hour makes it unlikely that a test counting
        // attempts straddles the start of a new window (with a minute, one in thirty did).
        "rate_limit_window_seconds": 3600,
        "shutdown_drain_seconds": 0,
    })));
    if let Value::Object(map) = overrides {
        for (key, value) in map {
            figment = figment.merge(Serialized::default(&key, value));
        }
    }
    Settings::from_figment(Profile::Test, &figment).expect("valid test settings")
}

/// Runs the `portcullis` binary on `db_url` as an operator would, with `env` on top of the
/// test settings and `stdin` as its input.
pub fn run_cli(
    db_url: &str,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_PROFILE", "test")
        .env("DATABASE_URL", db_url)
        .env("SECRET_KEY", SECRET)
        .env("BCRYPT_COST", "4")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a `portcullis keys ...` command on `app`'s database, as an operator of an EdDSA
/// deployment would, and expects it to succeed.
pub fn keys_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let output = run_cli(
        app.settings.database_url(),
        &[("JWT_ALGORITHM", "EdDSA")],
        args,
        "",
    );
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A running app.
pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub settings: Settings,
    /// The instance's session cache (`None` with `session_cache = false` or `memory://`).
    pub cache: Option<Arc<SessionCache>>,
    /// The management listener's base URL, when `metrics_listen` is set.
    pub metrics_address: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> Self {
        let app = Application::build(&settings).await.expect("app builds");
        let address = format!("http://{}", app.address());
        let cache = app.session_cache();
        let metrics_address = app.metrics_address().map(|addr| format!("http://{addr}"));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            rx.await.ok();
        }));
        Self {
            address,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            settings,
            cache,
            metrics_address,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The core on the same storage, as the operator's CLI builds it.
    pub async fn operator(&self) -> Arc<Core> {
        let storage = Storage::open(&self.settings).await.expect("storage");
        build(&self.settings, &storage).await.expect("service")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GETs `path` without credentials, expecting 200, and reads its JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.expect("json body")
    }

    /// GETs `path` as the user of `token`, expecting 200, and reads its JSON.
    pub async fn get_json_auth(&self, path: &str, token: &str) -> Value {
        let response = self.get_auth(path, token).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.expect("json body")
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/register",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers `email` and logs in: the token response.
    pub async fn signed_up(&self, email: &str) -> Value {
        assert_eq!(
            self.register(email, PASSWORD).await.status(),
            StatusCode::CREATED
        );
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("token json")
    }

    /// A signed-up user's access token.
    pub async fn token_for(&self, email: &str) -> String {
        access_token(&self.signed_up(email).await)
    }

    /// Signs up `email` and makes them an admin: their access token.
    pub async fn admin_token(&self, email: &str) -> String {
        let token = self.token_for(email).await;
        let operator = self.operator().await;
        operator
            .admin
            .set_role(
                &portcullis::domain::Email::parse(email).expect("email"),
                portcullis::domain::Role::Admin,
            )
            .await
            .expect("promote");
        token
    }
}

pub fn access_token(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// The claims of a JWT, unverified.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON claims")
}

/// The second factors `GET /auth/me` lists for the user of `token`.
pub async fn factors(app: &TestApp, token: &str) -> Value {
    let response = app.get_auth("/auth/me", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.expect("json body")["factors"].clone()
}

/// The `amr` claim of a token response's access token.
pub fn amr(tokens: &Value) -> Value {
    claims_of(&access_token(tokens))["amr"].clone()
}

pub fn refresh_token(tokens: &Value) -> String {
    tokens["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

/// Checks a problem document: status, content type and detail; returns its body.
pub async fn assert_problem(response: Response, status: u16, detail: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string());
    if !detail.is_empty() {
        assert_eq!(body["detail"], detail);
    }
    body
}

/// A 401 with its Bearer challenge.
pub async fn assert_unauthorized(response: Response, detail: &str) -> Value {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate was {challenge:?}"
    );
    assert_problem(response, 401, detail).await
}

/// Runs `test` against a fresh app on `backend`, then stops it and drops its database, even
/// when the test fails.
pub async fn with_app<F, Fut>(backend: Backend, overrides: Value, test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = TestApp>,
{
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let app = TestApp::spawn(settings(db.url(), overrides)).await;
    let outcome = AssertUnwindSafe(test(app)).catch_unwind().await;
    if let Ok(mut app) = outcome {
        app.stop().await;
        db.drop_database().await;
    } else {
        db.drop_database().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Declares a test that runs on SQLite and on PostgreSQL: `app_test!(name, |app| { ... })`,
/// optionally with settings overrides: `app_test!(name, json!({...}), |app| { ... })`.
macro_rules! app_test {
    ($name:ident, |$app:ident| $body:block) => {
        app_test!($name, serde_json::json!({}), |$app| $body);
    };
    ($name:ident, $overrides:expr, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: $crate::helpers::TestApp) -> $crate::helpers::TestApp {
                $body
                $app
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::helpers::with_app($crate::helpers::Backend::Sqlite, $overrides, body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::helpers::with_app($crate::helpers::Backend::Postgres, $overrides, body)
                    .await;
            }
        }
    };
}
pub(crate) use app_test;

impl TestApp {
    /// `POST /auth/logout` with `token`.
    pub async fn logout(&self, token: &str) -> Response {
        self.client
            .post(self.url("/auth/logout"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Logs in a user that exists already: their access token.
    pub async fn token_for_existing(&self, email: &str) -> String {
        self.token_for_existing_with(email, PASSWORD).await
    }

    /// Logs in a user that exists already with `password`: their access token.
    pub async fn token_for_existing_with(&self, email: &str, password: &str) -> String {
        let response = self.login(email, password).await;
        assert_eq!(response.status(), StatusCode::OK);
        access_token(&response.json().await.expect("token json"))
    }
}

/// Requests `path` with `token` on `app` until it answers `status`: how long that took. Panics
/// after `limit`. For changes made elsewhere (another instance, the CLI), which reach this
/// instance's session cache within milliseconds rather than before the writer's answer.
pub async fn status_within(
    app: &TestApp,
    path: &str,
    token: &str,
    status: u16,
    limit: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        if app.get_auth(path, token).await.status() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} did not answer {status} within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// The value of the first line of `/metrics` that starts with `series` (a name, with its
/// labels if any), or `None` when there is none.
pub async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

impl TestApp {
    /// The counters of this instance's session cache; panics when it has none.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.as_ref().expect("a session cache").stats()
    }

    /// Waits until this instance's session cache is trusted (`true`) or not; panics after five
    /// seconds.
    pub async fn cache_trusted(&self, trusted: bool) {
        let started = std::time::Instant::now();
        while self.cache_stats().trusted != trusted {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the session cache did not become {}",
                if trusted { "trusted" } else { "distrusted" }
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
