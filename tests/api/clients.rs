//! The example services in Python (`examples/python-fastapi`) and Node
//! (`examples/node-express`) verify Portcullis tokens as their READMEs promise, against a live
//! Portcullis signing with EdDSA: valid tokens pass; expired, tampered, foreign-audience and
//! retired-key tokens are refused; a key rotation is followed without a restart.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDb, keys_cli, settings};

/// One example service, stopped when dropped.
struct Example {
    name: &'static str,
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Example {
    /// Starts the example `name` in its folder, trusting `app` for `audience`; `None` on a
    /// laptop without its runtime or dependencies (`.ci/run` installs them; in CI their
    /// absence fails).
    async fn start(name: &'static str, app: &TestApp, audience: &str) -> Option<Self> {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let (program, probe) = match name {
            "python-fastapi" => (
                "python3",
                ["-c", "import fastapi, uvicorn, jwt, cryptography"],
            ),
            _ => (
                "node",
                ["-e", "import('express').then(() => import('jose'))"],
            ),
        };
        let ready = Command::new(program)
            .args(probe)
            .current_dir(&folder)
            .output()
            .is_ok_and(|out| out.status.success());
        if !ready {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} needs {program} and its dependencies in CI (.ci/run installs them)"
            );
            eprintln!("skipped: {program} or the dependencies of examples/{name} are missing");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let mut command = Command::new(program);
        match name {
            "python-fastapi" => command.args([
                "-m",
                "uvicorn",
                "app:app",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
            ]),
            _ => command.arg("server.js"),
        };
        let child = command
            .current_dir(&folder)
            .env("PORTCULLIS_ISSUER", &app.address)
            .env("PORTCULLIS_AUDIENCE", audience)
            .env("JWKS_CACHE_SECONDS", "1")
            .env("PORT", &port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {name}: {err}"));
        let example = Self {
            name,
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let started = Instant::now();
        while example.status("/me", None).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(example)
    }

    /// The status of `GET path` with `token`, or `None` when nothing answers.
    async fn status(&self, path: &str, token: Option<&str>) -> Option<u16> {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.ok().map(|r| r.status().as_u16())
    }

    async fn me(&self, token: &str) -> Value {
        let response = self
            .client
            .get(format!("{}/me", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", self.name);
        response.json().await.unwrap()
    }

    /// Waits until `token` gets `want` from `/me`, for at most `within`.
    async fn comes_to(&self, token: &str, want: u16, within: Duration) {
        let started = Instant::now();
        loop {
            let got = self.status("/me", Some(token)).await;
            if got == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{}: /me answered {got:?}, not {want}, after {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// `token` with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_services_verify_portcullis_tokens() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let mut app = TestApp::spawn(settings(
        db.url(),
        json!({
            "jwt_algorithm": "EdDSA",
            "signing_key_refresh_seconds": 1,
            "access_token_expire_minutes": 1,
        }),
    ))
    .await;
    let audience = app.settings.jwt_audience.clone();
    let mut examples = Vec::new();
    for name in ["python-fastapi", "node-express"] {
        if let Some(example) = Example::start(name, &app, &audience).await {
            examples.push(example);
        }
    }
    if examples.is_empty() {
        app.stop().await;
        return;
    }
    let user = app.token_for("reader@example.com").await;
    let me = app.get_json_auth("/auth/me", &user).await;
    app.admin_token("boss@example.com").await;
    let admin = app.token_for_existing("boss@example.com").await;
    for example in &examples {
        assert_eq!(
            example.me(&user).await,
            json!({"user_id": me["id"].to_string(), "role": "user"}),
            "{}",
            example.name
        );
        assert_eq!(example.status("/admin", Some(&user)).await, Some(403));
        assert_eq!(example.status("/admin", Some(&admin)).await, Some(200));
        assert_eq!(example.status("/me", None).await, Some(401));
        assert_eq!(
            example.status("/me", Some(&tampered(&user))).await,
            Some(401)
        );
        assert_eq!(example.status("/me", Some("not.a.token")).await, Some(401));
    }
    // A service that expects another audience refuses the very same token.
    for name in ["python-fastapi", "node-express"] {
        if let Some(elsewhere) = Example::start(name, &app, "another-service").await {
            assert_eq!(elsewhere.status("/me", Some(&user)).await, Some(401));
        }
    }

    // A rotation: the new key's tokens pass, with no restart of the services.
    let first_kid = kid(&user);
    keys_cli(&app, &["keys", "rotate", "--now"]);
    let rotated = loop {
        let token = app.token_for_existing("reader@example.com").await;
        if kid(&token) != first_kid {
            break token;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let minted = Instant::now();
    for example in &examples {
        example
            .comes_to(&rotated, 200, Duration::from_secs(5))
            .await;
    }
    // Retiring the old key: its tokens are refused once the services' cached sets expire.
    keys_cli(&app, &["keys", "retire", &first_kid]);
    for example in &examples {
        example.comes_to(&user, 401, Duration::from_secs(10)).await;
        example
            .comes_to(&rotated, 200, Duration::from_secs(1))
            .await;
    }
    // Expiry: the rotated token lives a minute, and no leeway is granted past it.
    let expiry = Duration::from_secs(61);
    tokio::time::sleep(expiry.saturating_sub(minted.elapsed())).await;
    for example in &examples {
        example
            .comes_to(&rotated, 401, Duration::from_secs(5))
            .await;
    }
    drop(examples);
    app.stop().await;
    db.drop_database().await;
}
