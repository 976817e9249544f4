//! The OpenID provider with a real relying party: `examples/python-relying-party`, built on
//! Authlib's Starlette client, signs a person in through a real Chromium. Authlib does the
//! discovery, the authorization code flow with PKCE and a nonce, the ID token's checks against
//! the JWKS, userinfo, the refresh grant, revocation and RP-initiated logout; the person uses
//! the console's sign-in and consent pages.
//!
//! The application is at `http://127.0.0.1:PORT` and Portcullis at `http://localhost:PORT`:
//! two sites, so every hop between them is cross-site and the console's `SameSite=Strict`
//! cookies stay behind on the way in (the same-site hop of `/oauth/authorize` and
//! `/oauth/logout` brings them back).
//!
//! Skipped on a laptop without Chromium or the example's Python dependencies; in CI (`CI` set)
//! their absence fails, as in `browser.rs` and `clients.rs`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{Browser, free_port};
use crate::helpers::{PASSWORD, TestApp, access_token, app_test};
use crate::provider::{provider_on, register_client};

/// How long a page may take to come after a click or a redirect chain: Chromium, Portcullis
/// and the Python application share two cores.
const NAVIGATION: Duration = Duration::from_secs(30);
/// How long the Python application may take to serve after its start.
const RP_START: Duration = Duration::from_secs(60);

const CLIENT_NAME: &str = "Python relying party";
const EMAIL: &str = "ann@example.com";

/// `examples/python-relying-party` under uvicorn, stopped when dropped; its output is printed
/// when a test fails.
struct RelyingParty {
    child: Child,
    base: String,
    log: tempfile::NamedTempFile,
}

impl RelyingParty {
    /// The example's address, chosen before it starts so that the client can be registered
    /// with it.
    fn address(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Whether Python has the example's requirements; `false` skips on a laptop and fails in
    /// CI (`.ci/run` installs them).
    fn available() -> bool {
        let ready = Command::new("python3")
            .args([
                "-c",
                "import authlib, starlette, uvicorn, httpx, itsdangerous",
            ])
            .output()
            .is_ok_and(|out| out.status.success());
        if !ready {
            assert!(
                std::env::var_os("CI").is_none(),
                "python-relying-party needs python3 and its requirements in CI (.ci/run installs them)"
            );
            eprintln!("skipped: python3 or the requirements of examples/python-relying-party");
        }
        ready
    }

    /// Starts the example on `port` as the client `client_id` of `issuer`, and waits until it
    /// serves.
    async fn start(port: u16, issuer: &str, client_id: &str, secret: &str) -> Self {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-relying-party");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let output = File::options()
            .append(true)
            .open(log.path())
            .expect("the log file");
        let base = Self::address(port);
        let child = Command::new("python3")
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .current_dir(&folder)
            .env("PORTCULLIS_ISSUER", issuer)
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", secret)
            .env("PORT", port.to_string())
            .env("BASE_URL", &base)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log handle"))
            .stderr(output)
            .spawn()
            .expect("start python3");
        let mut rp = Self { child, base, log };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let home = client.get(format!("{}/", rp.base)).send().await;
            if home.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            let exited = rp.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && started.elapsed() < RP_START,
                "the relying party did not serve (exit: {exited:?}):\n{}",
                rp.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("relying party: serving after {:.1?}", started.elapsed());
        rp
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for RelyingParty {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if std::thread::panicking() {
            eprintln!("the relying party's output:\n{}", self.output());
        }
    }
}

/// The browser, and where the two sites are.
struct Person<'a> {
    browser: Browser,
    rp: &'a RelyingParty,
    issuer: String,
}

impl Person<'_> {
    /// Waits until the page shown is at an address that starts with `prefix`, loaded.
    async fn arrives(&self, prefix: &str) -> String {
        let deadline = Instant::now() + NAVIGATION;
        loop {
            let url = self.browser.current_url().await;
            if url.starts_with(prefix) {
                let state = self
                    .browser
                    .execute("return document.readyState;", vec![])
                    .await;
                if state == "complete" {
                    return url;
                }
            }
            if Instant::now() >= deadline {
                let shot = self.browser.screenshot("relying-party-failed").await;
                let text = self
                    .browser
                    .execute(
                        "return document.body ? document.body.innerText : '';",
                        vec![],
                    )
                    .await;
                panic!(
                    "expected a page at {prefix}, still at {url} after {NAVIGATION:?} (see {}):\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The JSON the relying party's page shows.
    async fn result(&self) -> Value {
        let text = self.browser.text("#result").await;
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
    }

    /// Opens the relying party's `path` and reads its answer.
    async fn open(&self, path: &str) -> Value {
        self.browser.goto(&self.rp.url(path)).await;
        self.arrives(&self.rp.url(path)).await;
        self.result().await
    }

    /// Clicks the link to `path` on the relying party's home page: a navigation to the other
    /// site that a page starts, as a person's click does. (One that WebDriver starts, like one
    /// typed in the address bar, may bring the console's cookies along the redirect.)
    async fn click(&self, path: &str) {
        self.open("/").await;
        self.browser.click(&format!("nav a[href='{path}']")).await;
    }

    /// Fills and sends the console's sign-in page, which the browser must be on.
    async fn signs_in(&self) {
        self.arrives(&format!("{}/console/sign-in?next=", self.issuer))
            .await;
        self.browser.fill("#email", EMAIL).await;
        self.browser.fill("#password", PASSWORD).await;
        self.browser
            .click("form[action='/console/sign-in'] button[type=submit]")
            .await;
    }

    /// Waits for the relying party's callback and reads what it found.
    async fn signed_in(&self) -> Value {
        let url = self.arrives(&self.rp.url("/callback?")).await;
        let result = self.result().await;
        assert!(result.get("error").is_none(), "{url}: {result}");
        result
    }
}

/// The words of a scope string, in any order.
fn scopes(value: &Value) -> BTreeSet<String> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a scope string: {value}"))
        .split(' ')
        .map(str::to_owned)
        .collect()
}

app_test!(
    authlib_signs_in_through_chromium_refreshes_revokes_and_signs_out,
    provider_on(),
    |app| {
        let started = Instant::now();
        if !RelyingParty::available() {
            return app;
        }
        let issuer = app.settings.public_url.clone().unwrap();
        let rp_port = free_port();
        let rp_base = RelyingParty::address(rp_port);
        let admin = app.admin_token("root@example.com").await;
        let client = register_client(
            &app,
            &admin,
            json!({
                "name": CLIENT_NAME,
                "redirect_uris": [format!("{rp_base}/callback")],
                "post_logout_redirect_uris": [format!("{rp_base}/signed-out")],
            }),
        )
        .await;
        let (user_id, api_token) = signed_up(&app).await;
        let Some(browser) = Browser::start().await else {
            return app;
        };
        let rp = RelyingParty::start(rp_port, &issuer, &client.id, &client.secret).await;
        let person = Person {
            browser,
            rp: &rp,
            issuer: issuer.clone(),
        };
        let all =
            BTreeSet::from(["openid", "email", "profile", "offline_access"].map(String::from));

        // Sign-in: to Portcullis's sign-in page, then its consent page, then back with a code.
        person.click("/login").await;
        person.signs_in().await;
        person.arrives(&format!("{issuer}/oauth/authorize?")).await;
        let main = person.browser.text("main").await;
        assert!(
            main.contains(CLIENT_NAME) && main.contains(EMAIL),
            "the consent page names the client and the person:\n{main}"
        );
        let buttons = person
            .browser
            .execute(
                "return [...document.querySelectorAll('main form button')].map(b => b.textContent.trim());",
                vec![],
            )
            .await;
        assert_eq!(buttons, json!(["Allow", "Deny"]));
        person.browser.screenshot("relying-party-consent").await;
        person.browser.assert_accessible("the consent page").await;
        person.browser.click("button[value='allow']").await;

        // Authlib checked the ID token (signature against the JWKS, iss, aud, exp, the nonce it
        // sent, at_hash) before the page shows its claims.
        let signed_in = person.signed_in().await;
        let claims = &signed_in["id_token_claims"];
        assert_eq!(claims["iss"], issuer.as_str(), "{signed_in}");
        assert_eq!(claims["sub"], user_id.as_str());
        assert_eq!(claims["aud"], json!([client.id]));
        assert_eq!(claims["azp"], client.id.as_str());
        assert_eq!(claims["email"], EMAIL);
        assert_eq!(claims["amr"], json!(["pwd"]));
        assert!(
            claims["nonce"].as_str().is_some_and(|n| n.len() >= 16),
            "Authlib's nonce, which it compared: {claims}"
        );
        assert!(claims["at_hash"].is_string() && claims["sid"].is_string());
        assert_eq!(signed_in["userinfo"]["sub"], user_id.as_str());
        assert_eq!(signed_in["userinfo"]["email"], EMAIL);
        assert_eq!(signed_in["userinfo"]["email_verified"], false);
        assert_eq!(scopes(&signed_in["scope"]), all);

        // Userinfo with the access token; a refresh (rotated), and the new access token works.
        let me = person.open("/me").await;
        assert_eq!(me["userinfo"]["sub"], user_id.as_str(), "{me}");
        let refreshed = person.open("/refresh").await;
        assert_eq!(scopes(&refreshed["scope"]), all, "{refreshed}");
        assert_eq!(refreshed["refresh_token_changed"], true, "{refreshed}");
        let me = person.open("/me").await;
        assert_eq!(me["userinfo"]["email"], EMAIL, "{me}");

        // Revocation of the refresh token ends the grant's tokens: no refresh, no userinfo.
        let revoked = person.open("/revoke").await;
        assert_eq!(revoked["revocation_status"], 200, "{revoked}");
        assert_eq!(
            revoked["refresh_after_revocation"], "invalid_grant",
            "{revoked}"
        );
        let me = person.open("/me").await;
        assert_eq!(me["userinfo_status"], 401, "{me}");

        // RP-initiated logout: back to the application with its state (which Authlib checked),
        // and the console session is over: ended on the server (the logout endpoint's
        // same-site hop brought its cookie), not only forgotten by the browser.
        assert_eq!(browser_sessions(&app, &api_token).await, 1);
        person.click("/logout").await;
        let url = person.arrives(&rp.url("/signed-out?state=")).await;
        let signed_out = person.result().await;
        assert_eq!(signed_out["signed_out"], true, "{signed_out}");
        let state = signed_out["state"].as_str().unwrap();
        assert!(url.ends_with(&format!("state={state}")), "{url}");
        assert_eq!(browser_sessions(&app, &api_token).await, 0);
        person
            .browser
            .goto(&format!("{issuer}/console/account"))
            .await;
        person.arrives(&format!("{issuer}/console/sign-in")).await;

        // Signing in again: the consent is remembered, so the sign-in leads straight back.
        person.click("/login").await;
        person.signs_in().await;
        let again = person.signed_in().await;
        assert_eq!(again["id_token_claims"]["sub"], user_id.as_str(), "{again}");
        assert_ne!(
            again["id_token_claims"]["nonce"], claims["nonce"],
            "a nonce per request"
        );

        // Single sign-on: with the console session on, another sign-in from the application's
        // site needs no form at all (the authorize endpoint's same-site hop finds the session).
        person.click("/login").await;
        let sso = person.signed_in().await;
        assert_eq!(sso["id_token_claims"]["sub"], user_id.as_str(), "{sso}");
        assert_eq!(
            sso["id_token_claims"]["auth_time"], again["id_token_claims"]["auth_time"],
            "the same sign-in"
        );

        person.browser.close().await;
        drop(rp);
        eprintln!("relying party flow: {:.1?}", started.elapsed());
    }
);

/// Signs up the person through the API: their user id, as an ID token's `sub` names it, and
/// an access token of theirs.
async fn signed_up(app: &TestApp) -> (String, String) {
    let token = access_token(&app.signed_up(EMAIL).await);
    let me = app.get_json_auth("/auth/me", &token).await;
    (me["id"].to_string().trim_matches('"').to_owned(), token)
}

/// How many of the person's sessions Chromium opened (the console's).
async fn browser_sessions(app: &TestApp, token: &str) -> usize {
    let sessions = app.get_json_auth("/auth/sessions", token).await;
    let sessions = sessions.as_array().expect("a list of sessions");
    sessions
        .iter()
        .filter(|s| {
            s["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.contains("Chrome"))
        })
        .count()
}
