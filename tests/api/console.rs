//! The web console in a real Chromium (Debian's, through chromedriver): the flows a person
//! goes through, an accessibility check (axe-core) of every page on the way, and a
//! screenshot of each page in `target/console-screenshots/` (kept as test artifacts).
//!
//! On SQLite only: the console is storage-agnostic, and the storage adapters are tested on
//! both databases elsewhere; a browser per test is what costs here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use serde_json::{Value, json};

use crate::browser::{Browser, free_port, serve_html};
use crate::email::mail_settings;
use crate::helpers::{Backend, PASSWORD, TestApp, access_token, with_app};
use crate::mfa::App;
use crate::smtp::SmtpServer;

/// How long a queued mail may take to arrive: the worker looks every half second.
const ARRIVES: Duration = Duration::from_secs(10);

/// A browser on a running app.
struct Ui {
    browser: Browser,
    base: String,
}

impl Ui {
    /// A browser that opens the app where its `public_url` says it is, else where it listens.
    async fn open(app: &TestApp) -> Option<Self> {
        let browser = Browser::start().await?;
        Some(Self {
            browser,
            base: app
                .settings
                .public_url
                .clone()
                .unwrap_or_else(|| app.address.clone()),
        })
    }

    async fn goto(&self, path: &str) {
        self.browser.goto(&format!("{}{path}", self.base)).await;
    }

    /// The current path and query.
    async fn path(&self) -> String {
        let url = self.browser.current_url().await;
        url.strip_prefix(&self.base).unwrap_or(&url).to_owned()
    }

    /// Clicks `css` (a submit button) and waits for the page the browser is sent to, whose
    /// path starts with `path`.
    async fn press(&self, css: &str, path: &str) {
        let before = self
            .browser
            .execute("return performance.timeOrigin;", vec![])
            .await;
        self.browser.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self
                .browser
                .execute(
                    "return [performance.timeOrigin, document.readyState];",
                    vec![],
                )
                .await;
            if loaded[0] != before && loaded[1] == "complete" && self.path().await.starts_with(path)
            {
                return;
            }
            if Instant::now() >= deadline {
                let shot = self.browser.screenshot("failed-press").await;
                let page = self.text("main").await;
                panic!(
                    "after clicking {css}, at {} (expected {path}); see {}:\n{page}",
                    self.path().await,
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A screenshot for the record and an accessibility check of the page on screen.
    async fn check(&self, name: &str) {
        self.browser.screenshot(name).await;
        self.browser.assert_accessible(name).await;
    }

    async fn text(&self, css: &str) -> String {
        self.browser.text(css).await
    }

    async fn sign_in(&self, email: &str, password: &str) {
        self.goto("/console/sign-in").await;
        self.browser.fill("#email", email).await;
        self.browser.fill("#password", password).await;
        self.press("form[action='/console/sign-in'] button", "/console/account")
            .await;
    }
}

/// Runs `test` with a browser, an app on SQLite with mail going to a test SMTP server.
async fn with_console<F, Fut>(extra: Value, test: F)
where
    F: FnOnce(Ui, TestApp, Arc<SmtpServer>) -> Fut,
    Fut: Future<Output = (Ui, TestApp)>,
{
    let smtp = Arc::new(SmtpServer::start().await);
    let overrides = mail_settings(&smtp, extra);
    with_app(Backend::Sqlite, overrides, move |app| async move {
        let Some(ui) = Ui::open(&app).await else {
            return app;
        };
        let (ui, app) = test(ui, app, smtp).await;
        ui.browser.close().await;
        app
    })
    .await;
}

async fn api_login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.login(email, password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_registers_signs_in_verifies_changes_password_and_ends_another_session() {
    with_console(json!({}), |ui, app, smtp| async move {
        // Register: a weak password is refused on the form, with the API's words.
        ui.goto("/console/register").await;
        ui.check("register").await;
        ui.browser.fill("#full_name", "Ann Example").await;
        ui.browser.fill("#email", "ann@example.com").await;
        ui.browser.fill("#password", "password").await;
        ui.press(
            "form[action='/console/register'] button",
            "/console/register",
        )
        .await;
        let error = ui.text("#password-error").await;
        assert!(error.contains("common"), "{error}");
        assert_eq!(
            ui.browser
                .execute("return document.querySelector('#email').value;", vec![])
                .await,
            "ann@example.com"
        );
        ui.check("register-errors").await;
        ui.browser.fill("#password", PASSWORD).await;
        ui.press(
            "form[action='/console/register'] button",
            "/console/sign-in?done=registered",
        )
        .await;
        assert!(ui.text(".notice").await.contains("Your account is ready"));
        ui.check("sign-in").await;

        // A wrong password: the form says so, and nothing opens.
        ui.browser.fill("#email", "ann@example.com").await;
        ui.browser.fill("#password", "not the password").await;
        ui.press("form[action='/console/sign-in'] button", "/console/sign-in")
            .await;
        assert_eq!(ui.text(".alert").await, "Incorrect email or password.");
        ui.check("sign-in-errors").await;

        ui.sign_in("ann@example.com", PASSWORD).await;
        assert_eq!(ui.text("h1").await, "Your account");
        // The page's scripts can read no cookie: the session cookie is HttpOnly.
        assert_eq!(
            ui.browser.execute("return document.cookie;", vec![]).await,
            ""
        );
        let cookies = ui.browser.cookies().await;
        let session = cookies
            .iter()
            .find(|c| c.name() == "portcullis-session")
            .expect("a session cookie");
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
        assert_eq!(session.value().len(), 43);

        // The same user signs in through the API: the console lists two sessions, marks its
        // own, and ends the other; the API's token stops working at once.
        let tokens: Value = api_login(&app, "ann@example.com", PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        let api_token = access_token(&tokens);
        let listed: Value = app
            .get_auth("/auth/sessions", &api_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            listed.as_array().unwrap().len(),
            2,
            "the console's session is a session: {listed}"
        );
        ui.goto("/console/account").await;
        assert_eq!(
            ui.browser
                .execute(
                    "return document.querySelectorAll('.sessions li').length;",
                    vec![]
                )
                .await,
            2
        );
        assert!(ui.text(".sessions").await.contains("this browser"));
        ui.check("account").await;
        ui.press(
            "form[action^='/console/account/sessions/'] button",
            "/console/account?done=session-ended",
        )
        .await;
        assert_eq!(
            ui.browser
                .execute(
                    "return document.querySelectorAll('.sessions li').length;",
                    vec![]
                )
                .await,
            1
        );
        assert_eq!(app.get_auth("/auth/me", &api_token).await.status(), 401);

        // Verify the address from the mail sent at registration.
        let mail = smtp
            .wait_for_subject("ann@example.com", "Confirm your email address", ARRIVES)
            .await;
        let token = mail.token("/console/verify").expect("a verification link");
        ui.goto(&format!("/console/verify?token={token}")).await;
        ui.check("verify").await;
        ui.press(
            "form[action='/console/verify'] button",
            "/console/account?done=verified",
        )
        .await;
        assert!(ui.text(".facts").await.contains("verified"));
        assert!(!ui.text(".facts").await.contains("not verified"));

        // Change the password: the old one stops working, this session stays.
        ui.goto("/console/account/password").await;
        ui.check("password").await;
        ui.browser.fill("#current_password", PASSWORD).await;
        ui.browser
            .fill("#new_password", "a brand new passphrase")
            .await;
        ui.press(
            "form[action='/console/account/password'] button",
            "/console/account?done=password",
        )
        .await;
        assert_eq!(
            api_login(&app, "ann@example.com", PASSWORD).await.status(),
            401
        );
        assert_eq!(
            api_login(&app, "ann@example.com", "a brand new passphrase")
                .await
                .status(),
            200
        );

        // Change the address, confirmed from the mail to the new one.
        ui.goto("/console/account/email").await;
        ui.check("email-change").await;
        ui.browser.fill("#new_email", "ann@example.org").await;
        ui.browser
            .fill("#current_password", "a brand new passphrase")
            .await;
        ui.press(
            "form[action='/console/account/email'] button",
            "/console/account?done=email-change-sent",
        )
        .await;
        let mail = smtp
            .wait_for_subject("ann@example.org", "Confirm your new email address", ARRIVES)
            .await;
        let token = mail.token("/console/email").expect("an email-change link");
        ui.goto(&format!("/console/email?token={token}")).await;
        ui.check("email-confirm").await;
        ui.press(
            "form[action='/console/email'] button",
            "/console/account?done=email-changed",
        )
        .await;
        assert!(ui.text(".facts").await.contains("ann@example.org"));

        // On a phone.
        ui.browser.set_window_size(390, 844).await;
        ui.goto("/console/account").await;
        ui.check("account-phone").await;
        ui.browser.set_window_size(1280, 900).await;

        ui.press(
            "form[action='/console/sign-out'] button",
            "/console/sign-in?done=signed-out",
        )
        .await;
        assert!(ui.text(".notice").await.contains("signed out"));
        ui.goto("/console/account").await;
        assert!(ui.path().await.starts_with("/console/sign-in?next="));
        (ui, app)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_password_is_reset_from_the_mailed_link_by_keyboard_alone() {
    with_console(json!({}), |ui, app, smtp| async move {
        app.signed_up("bo@example.com").await;
        ui.goto("/console/forgot").await;
        ui.check("forgot").await;
        ui.browser.fill("#email", "bo@example.com").await;
        ui.press(
            "form[action='/console/forgot'] button",
            "/console/forgot?done=mail-sent",
        )
        .await;
        assert!(ui.text(".notice").await.contains("on its way"));
        let mail = smtp
            .wait_for_subject("bo@example.com", "Reset your password", ARRIVES)
            .await;
        let token = mail.token("/console/reset").expect("a reset link");
        ui.goto(&format!("/console/reset?token={token}")).await;
        ui.check("reset").await;
        ui.browser
            .fill("#new_password", "the new passphrase of bo")
            .await;
        ui.press(
            "form[action='/console/reset'] button",
            "/console/sign-in?done=reset",
        )
        .await;
        // The link works once.
        ui.goto(&format!("/console/reset?token={token}")).await;
        ui.browser
            .fill("#new_password", "yet another passphrase")
            .await;
        ui.press("form[action='/console/reset'] button", "/console/reset")
            .await;
        assert_eq!(ui.text(".alert").await, "Invalid or expired token.");

        // Sign in with the keyboard only: Tab to the email field, type, Tab, type, Enter.
        ui.goto("/console/sign-in").await;
        let client = ui.browser.client();
        let mut focused = String::new();
        for _ in 0..10 {
            client
                .active_element()
                .await
                .unwrap()
                .send_keys(&Key::Tab.to_string())
                .await
                .unwrap();
            focused = client
                .active_element()
                .await
                .unwrap()
                .attr("id")
                .await
                .unwrap()
                .unwrap_or_default();
            if focused == "email" {
                break;
            }
        }
        assert_eq!(focused, "email", "the email field is reachable by Tab");
        let active = client.active_element().await.unwrap();
        active.send_keys("bo@example.com").await.unwrap();
        active.send_keys(&Key::Tab.to_string()).await.unwrap();
        let active = client.active_element().await.unwrap();
        assert_eq!(
            active.attr("id").await.unwrap().as_deref(),
            Some("password")
        );
        active
            .send_keys(&format!("the new passphrase of bo{}", Key::Enter))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ui.path().await.starts_with("/console/account") {
            assert!(
                Instant::now() < deadline,
                "Enter did not sign in: {}",
                ui.path().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Focus is visible: the focused control gets an outline.
        let outline = ui
            .browser
            .execute(
                "const b = document.querySelector('.sign-out button'); b.focus(); \
                 return getComputedStyle(b).outlineStyle;",
                vec![],
            )
            .await;
        assert_eq!(outline, "solid");
        (ui, app)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_finds_and_deactivates_a_user_and_reads_the_audit_log() {
    with_console(json!({}), |ui, app, _smtp| async move {
        let operator = app.operator().await;
        operator
            .admin
            .create_user_as_operator(
                portcullis::domain::Email::parse("root@example.com").unwrap(),
                portcullis::domain::Password::parse(PASSWORD).unwrap(),
                portcullis::domain::Role::Admin,
            )
            .await
            .unwrap();
        for name in ["carol", "dave", "erin", "bob"] {
            app.signed_up(&format!("{name}@example.com")).await;
        }
        ui.sign_in("root@example.com", PASSWORD).await;
        ui.goto("/console/admin/users").await;
        assert_eq!(
            ui.browser
                .execute(
                    "return document.querySelectorAll('tbody tr').length;",
                    vec![]
                )
                .await,
            5
        );
        ui.check("admin-users").await;

        ui.browser.fill("#q", "BOB").await;
        ui.press(
            "form[action='/console/admin/users'] button",
            "/console/admin/users?q=BOB",
        )
        .await;
        assert_eq!(
            ui.browser
                .execute(
                    "return document.querySelectorAll('tbody tr').length;",
                    vec![]
                )
                .await,
            1
        );
        assert!(ui.text("tbody").await.contains("bob@example.com"));
        ui.check("admin-users-search").await;

        ui.press("tbody a", "/console/admin/users/").await;
        assert_eq!(ui.text("h1").await, "bob@example.com");
        ui.check("admin-user").await;
        ui.browser.click("#is_active").await;
        ui.press(
            "form[action^='/console/admin/users/'] button[type=submit]",
            "/console/admin/users/",
        )
        .await;
        assert!(ui.text(".notice").await.contains("updated"));
        assert!(
            !ui.browser
                .execute(
                    "return document.querySelector('#is_active').checked;",
                    vec![]
                )
                .await
                .as_bool()
                .unwrap()
        );
        let refused = api_login(&app, "bob@example.com", PASSWORD).await;
        assert_eq!(refused.status(), 401);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["detail"], "Inactive user account");

        ui.goto("/console/admin/audit?kind=user.updated").await;
        let log = ui.text("tbody").await;
        assert!(
            log.contains("user.updated") && log.contains("is_active=false"),
            "{log}"
        );
        ui.check("admin-audit").await;

        // A bad filter is shown on its field, nothing listed.
        ui.goto("/console/admin/audit?user_id=abc").await;
        assert_eq!(ui.text("#user_id-error").await, "User id must be a user id");
        ui.check("admin-audit-errors").await;

        // Deletion asks first.
        ui.goto("/console/admin/users?q=dave").await;
        ui.press("tbody a", "/console/admin/users/").await;
        ui.press("a.danger-link", "/console/admin/users/").await;
        ui.check("admin-delete").await;
        ui.press(
            "form[action$='/delete'] button",
            "/console/admin/users?done=user-deleted",
        )
        .await;
        assert!(!ui.text("tbody").await.contains("dave@example.com"));
        (ui, app)
    })
    .await;
}

/// Another six digits than `code`.
fn wrong(code: &str) -> String {
    let code: u32 = code.parse().expect("six digits");
    format!("{:06}", (code + 500_000) % 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sets_up_an_authenticator_app_signs_in_with_a_code_and_an_admin_resets_it() {
    with_console(json!({}), |ui, app, _smtp| async move {
        app.signed_up("tia@example.com").await;
        ui.sign_in("tia@example.com", PASSWORD).await;
        assert!(
            ui.text("main")
                .await
                .contains("Your password alone signs you in.")
        );
        ui.press(
            "main a[href='/console/account/two-step']",
            "/console/account/two-step",
        )
        .await;
        ui.check("two-step-off").await;
        // A new way in takes the password, asked again.
        ui.browser
            .fill("#current_password", "not the password")
            .await;
        ui.press(
            "form[action='/console/account/two-step/setup'] button",
            "/console/account/two-step/setup",
        )
        .await;
        assert!(
            ui.text("#current_password-error")
                .await
                .contains("Incorrect password")
        );
        ui.browser.fill("#current_password", PASSWORD).await;
        ui.press(
            "form[action='/console/account/two-step/setup'] button",
            "/console/account/two-step/setup",
        )
        .await;
        assert!(ui.browser.exists(".qr svg[role=img][aria-label]").await);
        let key = ui.text("#secret").await;
        assert_eq!(key.len(), 39, "32 characters in groups of 4: {key}");
        ui.check("two-step-setup").await;

        // A wrong code is said on its field; the key shown before still works after it.
        let confirm = "form[action='/console/account/two-step/confirm'] button";
        ui.browser
            .fill("#code", &wrong(&App::new(&key).code(0)))
            .await;
        ui.press(confirm, "/console/account/two-step/confirm").await;
        assert_eq!(ui.text("#code-error").await, "Invalid code.");
        ui.check("two-step-setup-errors").await;
        ui.browser.fill("#code", &App::new(&key).code(0)).await;
        ui.press(confirm, "/console/account/two-step/confirm").await;
        assert_eq!(ui.text("h1").await, "Save your recovery codes");
        let codes = ui
            .browser
            .execute(
                "return [...document.querySelectorAll('.codes code')].map((c) => c.textContent);",
                vec![],
            )
            .await;
        let codes: Vec<String> = serde_json::from_value(codes).unwrap();
        assert_eq!(codes.len(), 10);
        ui.check("recovery-codes").await;
        ui.press(
            "main a[href='/console/account/two-step']",
            "/console/account/two-step",
        )
        .await;
        assert!(
            ui.browser
                .exists("form[action='/console/account/two-step/off']")
                .await
        );
        ui.check("two-step-on").await;

        // Signing in again: the right password leads to the second step, and no session.
        ui.press(
            "form[action='/console/sign-out'] button",
            "/console/sign-in?done=signed-out",
        )
        .await;
        ui.browser.fill("#email", "tia@example.com").await;
        ui.browser.fill("#password", PASSWORD).await;
        ui.press("form[action='/console/sign-in'] button", "/console/sign-in")
            .await;
        assert_eq!(ui.text("h1").await, "Two-step verification");
        assert!(
            ui.browser
                .cookies()
                .await
                .iter()
                .all(|c| c.name() != "portcullis-session")
        );
        ui.check("sign-in-code").await;
        let verify = "form[action='/console/sign-in/verify'] button";
        ui.browser.fill("#code", "000 00").await;
        ui.press(verify, "/console/sign-in/verify").await;
        assert_eq!(ui.text("#code-error").await, "Invalid code.");
        ui.check("sign-in-code-errors").await;
        // The code of the confirmation was spent; the app's next one is new.
        ui.browser.fill("#code", &App::new(&key).code(1)).await;
        ui.press(verify, "/console/account").await;
        assert_eq!(ui.text("h1").await, "Your account");

        // Without the app: a recovery code, as shown, once.
        ui.press(
            "form[action='/console/sign-out'] button",
            "/console/sign-in?done=signed-out",
        )
        .await;
        ui.browser.fill("#email", "tia@example.com").await;
        ui.browser.fill("#password", PASSWORD).await;
        ui.press("form[action='/console/sign-in'] button", "/console/sign-in")
            .await;
        ui.browser.fill("#code", &codes[0]).await;
        ui.press(verify, "/console/account").await;
        ui.press(
            "form[action='/console/sign-out'] button",
            "/console/sign-in?done=signed-out",
        )
        .await;

        // Tia lost the app: an admin resets it, and the password alone signs her in.
        let operator = app.operator().await;
        operator
            .admin
            .create_user_as_operator(
                portcullis::domain::Email::parse("root@example.com").unwrap(),
                portcullis::domain::Password::parse(PASSWORD).unwrap(),
                portcullis::domain::Role::Admin,
            )
            .await
            .unwrap();
        ui.sign_in("root@example.com", PASSWORD).await;
        ui.goto("/console/admin/users?q=tia").await;
        ui.press("tbody a", "/console/admin/users/").await;
        assert!(ui.text(".facts").await.contains("authenticator app"));
        ui.check("admin-user-two-step").await;
        ui.press(
            "form[action$='/two-step/reset'] button",
            "/console/admin/users/",
        )
        .await;
        assert!(
            ui.text(".notice")
                .await
                .contains("two-step verification is reset")
        );
        assert!(!ui.text(".facts").await.contains("authenticator app"));
        let tokens: Value = api_login(&app, "tia@example.com", PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        assert!(tokens["access_token"].is_string(), "{tokens}");
        (ui, app)
    })
    .await;
}

/// Settings of an app that browsers reach at `http://localhost:PORT`, its `public_url`: a
/// WebAuthn relying party must be a domain name, and it is fixed when the app is built, before
/// port 0 would have become a real port. So the port is picked here, at a small risk that
/// another test takes it before the app binds it.
fn on_localhost() -> Value {
    let port = free_port();
    json!({"port": port, "public_url": format!("http://localhost:{port}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_a_passkey_signs_in_with_it_renames_and_removes_it() {
    with_console(on_localhost(), |ui, app, _smtp| async move {
        // A platform authenticator that verifies its user and consents by itself.
        ui.browser.cdp("WebAuthn.enable", json!({})).await;
        let authenticator = ui
            .browser
            .cdp(
                "WebAuthn.addVirtualAuthenticator",
                json!({"options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                }}),
            )
            .await;
        app.signed_up("pia@example.com").await;
        ui.sign_in("pia@example.com", PASSWORD).await;
        assert!(ui.text("main").await.contains("You have no passkey."));
        ui.press(
            "main a[href='/console/account/passkeys']",
            "/console/account/passkeys",
        )
        .await;
        assert!(ui.text("main").await.contains("You have no passkey yet."));
        assert!(
            !ui.browser
                .exists("[data-without-passkeys]:not([hidden])")
                .await,
            "the script found WebAuthn, and the page says no more that it needs it"
        );
        ui.check("passkeys-none").await;

        // The user does not verify: the browser refuses, and the form says so.
        let user_verified = |verified: bool| {
            json!({
                "authenticatorId": authenticator["authenticatorId"],
                "isUserVerified": verified,
            })
        };
        ui.browser
            .cdp("WebAuthn.setUserVerified", user_verified(false))
            .await;
        // A new way in takes the password, asked again.
        ui.browser.fill("#current_password", PASSWORD).await;
        ui.browser
            .click("form[action='/console/account/passkeys'] button")
            .await;
        let problem = ui
            .browser
            .wait_for("[data-passkey-problem]:not([hidden])")
            .await;
        assert!(
            problem
                .text()
                .await
                .unwrap()
                .starts_with("No passkey was used"),
            "{}",
            problem.text().await.unwrap()
        );
        ui.check("passkeys-refused").await;
        ui.browser
            .cdp("WebAuthn.setUserVerified", user_verified(true))
            .await;

        ui.browser.fill("#name", "Laptop").await;
        ui.browser.fill("#current_password", PASSWORD).await;
        ui.press(
            "form[action='/console/account/passkeys'] button",
            "/console/account/passkeys?done=passkey-added",
        )
        .await;
        assert_eq!(ui.text(".sessions .client").await, "Laptop");
        assert!(
            ui.text(".sessions .muted")
                .await
                .contains("last used never")
        );
        ui.check("passkeys").await;

        // Signed out, the passkey alone signs Pia in, and `next` is followed.
        ui.press(
            "form[action='/console/sign-out'] button",
            "/console/sign-in?done=signed-out",
        )
        .await;
        ui.goto("/console/sign-in?next=%2Fconsole%2Faccount%2Fpasskeys")
            .await;
        ui.check("sign-in-with-passkeys").await;
        ui.press(
            "form[action='/console/sign-in/passkey'] button",
            "/console/account/passkeys",
        )
        .await;
        assert_eq!(ui.text("h1").await, "Passkeys");
        assert!(
            !ui.text(".sessions .muted")
                .await
                .contains("last used never")
        );

        ui.press("main a[href$='/name']", "/console/account/passkeys/")
            .await;
        assert_eq!(ui.text("h1").await, "Rename a passkey");
        ui.check("passkey-rename").await;
        ui.browser.fill("#name", "Work laptop").await;
        ui.press(
            "form[action$='/name'] button",
            "/console/account/passkeys?done=passkey-renamed",
        )
        .await;
        assert_eq!(ui.text(".sessions .client").await, "Work laptop");

        ui.press(
            "form[action$='/remove'] button",
            "/console/account/passkeys?done=passkey-removed",
        )
        .await;
        assert!(ui.text("main").await.contains("You have no passkey yet."));
        (ui, app)
    })
    .await;
}

/// A page of another origin that posts to the console: the attacker's.
async fn attacker_site(console: &str) -> String {
    let page = format!(
        r#"<!doctype html><html lang="en"><head><title>Win a prize</title></head><body>
<form id="signout" method="post" action="{console}/console/sign-out">
<input type="hidden" name="csrf" value="guessed"><button id="sign-out">Claim</button></form>
<form id="login" method="post" action="{console}/console/sign-in">
<input type="hidden" name="email" value="mallory@example.com">
<input type="hidden" name="password" value="{PASSWORD}">
<button id="log-in">Claim more</button></form>
</body></html>"#
    );
    serve_html(move |_| ("200 OK", String::new(), page.clone())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_posted_from_another_origin_are_refused_and_change_nothing() {
    with_console(json!({}), |ui, app, _smtp| async move {
        app.signed_up("victim@example.com").await;
        let mallory = access_token(&app.signed_up("mallory@example.com").await);
        ui.sign_in("victim@example.com", PASSWORD).await;
        let attacker = attacker_site(&app.address).await;

        // Signing the victim out from another origin (another port: same site, so the
        // strict cookie even goes along).
        ui.browser.goto(&format!("{attacker}/")).await;
        ui.browser.click("#sign-out").await;
        ui.browser.wait_for("main h1").await;
        assert_eq!(ui.text("h1").await, "Form refused");
        ui.check("csrf-refused").await;
        ui.goto("/console/account").await;
        assert_eq!(ui.path().await, "/console/account", "still signed in");

        // Signing the victim in as the attacker (login CSRF).
        ui.browser.goto(&format!("{attacker}/")).await;
        ui.browser.click("#log-in").await;
        ui.browser.wait_for("main h1").await;
        assert_eq!(ui.text("h1").await, "Form refused");
        ui.goto("/console/account").await;
        assert!(ui.text(".facts").await.contains("victim@example.com"));
        let sessions: Value = app
            .get_auth("/auth/sessions", &mallory)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            sessions.as_array().unwrap().len(),
            1,
            "no session of mallory's opened: {sessions}"
        );
        (ui, app)
    })
    .await;
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    with_app(
        Backend::Sqlite,
        json!({"console_enabled": false}),
        |app| async move {
            for path in [
                "/console/sign-in",
                "/console/assets/console.css",
                "/console/account",
            ] {
                let response = app.client.get(app.url(path)).send().await.unwrap();
                assert_eq!(response.status(), 404, "{path}");
            }
            assert_eq!(
                app.client
                    .get(app.url("/public"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
            app
        },
    )
    .await;
}

/// An application that signs people in with Portcullis: registered on the Applications page,
/// allowed on the consent page, listed and revoked on the account page; each page checked for
/// accessibility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_registers_an_application_and_a_person_allows_and_revokes_it() {
    with_console(
        crate::provider::provider_on(),
        |ui, app, _smtp| async move {
            let operator = app.operator().await;
            operator
                .admin
                .create_user_as_operator(
                    portcullis::domain::Email::parse("root@example.com").unwrap(),
                    portcullis::domain::Password::parse(PASSWORD).unwrap(),
                    portcullis::domain::Role::Admin,
                )
                .await
                .unwrap();
            let application = serve_html(|path| {
                let page = format!(
                    "<!doctype html><html lang=\"en\"><head><title>Team wiki</title></head>\
                 <body><main><h1>Team wiki</h1><p id=\"arrived\">{path}</p></main></body></html>"
                );
                ("200 OK", String::new(), page)
            })
            .await;
            ui.sign_in("root@example.com", PASSWORD).await;
            ui.goto("/console/admin/clients").await;
            ui.check("admin-clients-empty").await;
            ui.browser.fill("#name", "Team wiki").await;
            ui.browser
                .fill("#redirect_uris", &format!("{application}/callback"))
                .await;
            ui.press(
                "form[action='/console/admin/clients'] button[type=submit]",
                "/console/admin/clients",
            )
            .await;
            assert!(
                ui.text(".secret").await.len() >= 43,
                "the secret is shown once"
            );
            assert!(ui.text("main").await.contains("Team wiki"));
            ui.check("admin-clients").await;

            let client = operator.clients.list().await.unwrap().remove(0);
            let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
            let query = serde_urlencoded::to_string([
                ("response_type", "code"),
                ("client_id", client.id.as_str()),
                ("redirect_uri", &format!("{application}/callback")),
                ("scope", "openid email profile"),
                ("state", "s1"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
            .unwrap();
            ui.goto(&format!("/oauth/authorize?{query}")).await;
            ui.browser.wait_for("button[value=allow]").await;
            assert!(ui.text("main").await.contains("See your email address"));
            ui.check("consent").await;
            ui.browser.click("button[value=allow]").await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ui.browser.current_url().await.starts_with(&application) {
                assert!(
                    Instant::now() < deadline,
                    "never sent back to the application"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let arrived = ui.browser.text("#arrived").await;
            assert!(arrived.starts_with("/callback?code="), "{arrived}");
            assert!(arrived.contains("state=s1"), "{arrived}");

            ui.goto("/console/account").await;
            assert!(ui.text("#apps ~ ul").await.contains("Team wiki"));
            ui.check("account-apps").await;
            ui.press("button[aria-label='Revoke: Team wiki']", "/console/account")
                .await;
            assert!(ui.text(".notice").await.contains("revoked"));
            assert!(
                ui.text("main")
                    .await
                    .contains("No application signs you in")
            );
            (ui, app)
        },
    )
    .await;
}
