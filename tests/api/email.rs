//! The email flows over real SMTP: the service's SMTP adapter delivers to the test server in
//! `smtp.rs`, and the tests follow the links in what arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    Backend, PASSWORD, TestApp, TestDb, access_token, app_test, assert_problem,
    assert_unauthorized, settings,
};
use crate::smtp::SmtpServer;

/// How long a queued mail may take to arrive: the worker looks every half second.
const ARRIVES: Duration = Duration::from_secs(10);

/// Settings for mail through `smtp`, with `extra` on top.
pub(crate) fn mail_settings(smtp: &SmtpServer, extra: Value) -> Value {
    let mut overrides = json!({
        "mail_transport": "smtp",
        "smtp_url": smtp.url(),
        "mail_retry_base_seconds": 1,
    });
    if let (Value::Object(map), Value::Object(extra)) = (&mut overrides, extra) {
        map.extend(extra);
    }
    overrides
}

/// Runs `test` on SQLite and on PostgreSQL, each with an SMTP server of its own.
macro_rules! mail_test {
    ($name:ident, $extra:expr, |$app:ident, $smtp:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run(backend: Backend) {
                let $smtp = Arc::new(SmtpServer::start().await);
                let overrides = mail_settings(&$smtp, $extra);
                let smtp = Arc::clone(&$smtp);
                crate::helpers::with_app(backend, overrides, move |$app| async move {
                    let $smtp = smtp;
                    $body
                    $app
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Backend::Postgres).await;
            }
        }
    };
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.post_json(path, &body).await
}

async fn post_auth(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

mail_test!(
    a_newcomer_registers_verifies_forgets_and_resets_over_smtp,
    json!({}),
    |app, smtp| {
        assert_eq!(
            app.register("ann@example.com", PASSWORD).await.status(),
            201
        );
        let welcome = smtp.wait_for("ann@example.com", ARRIVES).await;
        assert_eq!(welcome.subject(), "Confirm your email address");
        assert!(
            welcome.data.contains("text/html"),
            "both parts: {}",
            welcome.data
        );
        let token = welcome
            .token("/console/verify")
            .expect("a verification link");
        let verified: Value = post(&app, "/auth/verify", json!({"token": token}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(verified["email_verified"], true);
        // Used once.
        assert_problem(
            post(&app, "/auth/verify", json!({"token": token})).await,
            400,
            "Invalid or expired token",
        )
        .await;

        let old_session = app.token_for_existing("ann@example.com").await;
        let forgot = post(
            &app,
            "/auth/password/forgot",
            json!({"email": "ann@example.com"}),
        )
        .await;
        assert_eq!(forgot.status(), 202);
        let sent_before = smtp.received().len();
        let reset_mail = smtp
            .wait_for_subject("ann@example.com", "Reset your password", ARRIVES)
            .await;
        assert!(smtp.received().len() > sent_before);
        let token = reset_mail.token("/console/reset").expect("a reset link");
        let reset = post(
            &app,
            "/auth/password/reset",
            json!({"token": token, "new_password": "a brand new passphrase"}),
        )
        .await;
        assert_eq!(reset.status(), 204);
        // Every session ended; the new password works, the old one does not.
        assert_unauthorized(app.get_auth("/auth/me", &old_session).await, "").await;
        assert_eq!(app.login("ann@example.com", PASSWORD).await.status(), 401);
        assert_eq!(
            app.login("ann@example.com", "a brand new passphrase")
                .await
                .status(),
            200
        );
        // The link is spent.
        assert_problem(
            post(
                &app,
                "/auth/password/reset",
                json!({"token": token, "new_password": "yet another passphrase"}),
            )
            .await,
            400,
            "Invalid or expired token",
        )
        .await;
    }
);

mail_test!(
    forgot_answers_the_same_for_every_address_and_mails_only_active_accounts,
    json!({"mail_limit_per_ip": 100}),
    |app, smtp| {
        assert_eq!(
            app.register("known@example.com", PASSWORD).await.status(),
            201
        );
        assert_eq!(
            app.register("gone@example.com", PASSWORD).await.status(),
            201
        );
        app.operator()
            .await
            .admin
            .set_active(
                &portcullis::domain::Email::parse("gone@example.com").unwrap(),
                false,
            )
            .await
            .unwrap();
        let mut answers = Vec::new();
        for email in [
            "known@example.com",
            "nobody@example.com",
            "gone@example.com",
        ] {
            let response = post(&app, "/auth/password/forgot", json!({"email": email})).await;
            let status = response.status().as_u16();
            answers.push((status, response.text().await.unwrap()));
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        assert_eq!(answers[0].0, 202);
        assert_eq!(
            serde_json::from_str::<Value>(&answers[0].1).unwrap()["message"],
            "If the address is registered, a reset link has been sent"
        );
        let reset = smtp
            .wait_for_subject("known@example.com", "Reset your password", ARRIVES)
            .await;
        assert!(reset.token("/console/reset").is_some());
        // Give the worker time for the other two jobs: neither sends anything.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let to: Vec<Vec<String>> = smtp.received().into_iter().map(|m| m.to).collect();
        assert!(
            !to.iter()
                .flatten()
                .any(|r| r.contains("nobody") || r.contains("gone")),
            "{to:?}"
        );
    }
);

mail_test!(
    an_email_change_needs_the_password_and_the_link_and_keeps_only_the_asking_session,
    json!({}),
    |app, smtp| {
        let asking = app.token_for("old@example.com").await;
        let other = app.token_for_existing("old@example.com").await;
        assert_unauthorized(
            post_auth(
                &app,
                "/auth/email",
                &asking,
                json!({"new_email": "new@example.com", "current_password": "wrong"}),
            )
            .await,
            "Incorrect password",
        )
        .await;
        let asked = post_auth(
            &app,
            "/auth/email",
            &asking,
            json!({"new_email": "new@example.com", "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(asked.status(), 202);
        let confirm = smtp.wait_for("new@example.com", ARRIVES).await;
        let notice = smtp.wait_for("old@example.com", ARRIVES).await;
        assert!(notice.text().contains("new@example.com"));
        let token = confirm
            .token("/console/email")
            .expect("a confirmation link");
        // Nothing changed yet.
        let me: Value = app
            .get_auth("/auth/me", &asking)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["email"], "old@example.com");
        let moved: Value = post(&app, "/auth/email/confirm", json!({"token": token}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(moved["email"], "new@example.com");
        assert_eq!(moved["email_verified"], true);
        assert_eq!(app.get_auth("/auth/me", &asking).await.status(), 200);
        assert_unauthorized(app.get_auth("/auth/me", &other).await, "").await;
        assert_eq!(app.login("new@example.com", PASSWORD).await.status(), 200);
        assert_eq!(app.login("old@example.com", PASSWORD).await.status(), 401);
    }
);

mail_test!(
    a_change_to_a_taken_address_answers_the_same_and_warns_its_owner,
    json!({}),
    |app, smtp| {
        assert_eq!(
            app.register("owner@example.com", PASSWORD).await.status(),
            201
        );
        let token = app.token_for("mover@example.com").await;
        let asked = post_auth(
            &app,
            "/auth/email",
            &token,
            json!({"new_email": "OWNER@example.com", "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(asked.status(), 202);
        let body: Value = asked.json().await.unwrap();
        assert_eq!(body["message"], "Confirmation sent to the new address");
        let warned = smtp
            .wait_for_subject(
                "owner@example.com",
                "Someone tried to use your email address",
                ARRIVES,
            )
            .await;
        assert!(warned.token("/console/email").is_none());
        smtp.wait_for("mover@example.com", ARRIVES).await;
    }
);

mail_test!(
    tokens_of_another_kind_or_malformed_are_refused_and_change_nothing,
    json!({}),
    |app, smtp| {
        assert_eq!(
            app.register("kind@example.com", PASSWORD).await.status(),
            201
        );
        let verification = smtp
            .wait_for("kind@example.com", ARRIVES)
            .await
            .token("/console/verify")
            .unwrap();
        for token in [
            verification.clone(),
            String::new(),
            "x".repeat(10_000),
            "not-a-token".into(),
        ] {
            assert_problem(
                post(
                    &app,
                    "/auth/password/reset",
                    json!({"token": token, "new_password": "a brand new passphrase"}),
                )
                .await,
                400,
                "Invalid or expired token",
            )
            .await;
            assert_problem(
                post(&app, "/auth/email/confirm", json!({"token": token})).await,
                400,
                "Invalid or expired token",
            )
            .await;
        }
        assert_eq!(app.login("kind@example.com", PASSWORD).await.status(), 200);
        // The verification token still works for what it is.
        assert_eq!(
            post(&app, "/auth/verify", json!({"token": verification}))
                .await
                .status(),
            200
        );
        for (path, body) in [
            ("/auth/password/forgot", json!({"email": "not an email"})),
            ("/auth/password/forgot", json!({})),
            (
                "/auth/password/reset",
                json!({"token": "t", "new_password": "short"}),
            ),
            ("/auth/verify", json!({"token": 5})),
        ] {
            assert_eq!(post(&app, path, body).await.status(), 422, "{path}");
        }
    }
);

mail_test!(
    verified_addresses_can_be_required_at_login,
    json!({"require_verified_email": true}),
    |app, smtp| {
        assert_eq!(
            app.register("fresh@example.com", PASSWORD).await.status(),
            201
        );
        assert_problem(
            app.login("fresh@example.com", PASSWORD).await,
            403,
            "Email not verified",
        )
        .await;
        assert_eq!(
            app.login("fresh@example.com", "wrong password")
                .await
                .status(),
            401
        );
        let grant: Value = app
            .client
            .post(app.url("/auth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "fresh@example.com"),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(grant["error"], "invalid_grant");
        assert_eq!(grant["error_description"], "Email not verified");
        let token = smtp
            .wait_for("fresh@example.com", ARRIVES)
            .await
            .token("/console/verify")
            .unwrap();
        assert_eq!(
            post(&app, "/auth/verify", json!({"token": token}))
                .await
                .status(),
            200
        );
        assert_eq!(app.login("fresh@example.com", PASSWORD).await.status(), 200);
    }
);

mail_test!(
    a_signed_in_user_asks_for_verification_again_once_it_is_due,
    json!({"verify_email_on_register": false}),
    |app, smtp| {
        let token = app.token_for("later@example.com").await;
        let asked = post_auth(&app, "/auth/verify/request", &token, json!(null)).await;
        assert_eq!(asked.status(), 202);
        assert_eq!(
            asked.json::<Value>().await.unwrap()["message"],
            "Verification email sent"
        );
        let link = smtp
            .wait_for("later@example.com", ARRIVES)
            .await
            .token("/console/verify")
            .unwrap();
        assert_eq!(
            post(&app, "/auth/verify", json!({"token": link}))
                .await
                .status(),
            200
        );
        assert_problem(
            post_auth(&app, "/auth/verify/request", &token, json!(null)).await,
            409,
            "Email already verified",
        )
        .await;
    }
);

mail_test!(
    mail_requests_are_limited_per_account,
    json!({"mail_limit_per_account": 2}),
    |app, smtp| {
        for _ in 0..2 {
            assert_eq!(
                post(
                    &app,
                    "/auth/password/forgot",
                    json!({"email": "x@example.com"})
                )
                .await
                .status(),
                202
            );
        }
        let refused = post(
            &app,
            "/auth/password/forgot",
            json!({"email": "X@example.com"}),
        )
        .await;
        assert!(refused.headers().contains_key("retry-after"));
        assert_problem(refused, 429, "Too many attempts").await;
        assert!(smtp.received().is_empty());
    }
);

app_test!(
    without_a_transport_mail_routes_say_so_and_registration_works,
    |app| {
        let token = app.token_for("plain@example.com").await;
        for response in [
            post(
                &app,
                "/auth/password/forgot",
                json!({"email": "plain@example.com"}),
            )
            .await,
            post(
                &app,
                "/auth/password/forgot",
                json!({"email": "nobody@example.com"}),
            )
            .await,
            post_auth(&app, "/auth/verify/request", &token, json!(null)).await,
            post_auth(
                &app,
                "/auth/email",
                &token,
                json!({"new_email": "other@example.com", "current_password": PASSWORD}),
            )
            .await,
        ] {
            assert!(response.headers().contains_key("retry-after"));
            assert_problem(response, 503, "Mail is not configured").await;
        }
        // Input is still checked first.
        assert_eq!(
            post(&app, "/auth/password/forgot", json!({"email": "bad"}))
                .await
                .status(),
            422
        );
    }
);

/// With the mail server down, a reset is still accepted at once; when it comes back, the mail
/// arrives; with two instances on one database it arrives once.
async fn the_outbox_survives_an_outage(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let mut smtp = SmtpServer::start().await;
    let port = smtp.port;
    let overrides = mail_settings(&smtp, json!({}));
    smtp.stop();
    let mut first = TestApp::spawn(settings(db.url(), overrides.clone())).await;
    let mut second = TestApp::spawn(settings(db.url(), overrides)).await;
    assert_eq!(
        first
            .register("patient@example.com", PASSWORD)
            .await
            .status(),
        201
    );

    let started = Instant::now();
    let forgot = post(
        &second,
        "/auth/password/forgot",
        json!({"email": "patient@example.com"}),
    )
    .await;
    assert_eq!(forgot.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Let both workers fail at least once.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let smtp = SmtpServer::on(port).await;
    let reset = smtp
        .wait_for_subject(
            "patient@example.com",
            "Reset your password",
            Duration::from_secs(30),
        )
        .await;
    assert!(reset.token("/console/reset").is_some());
    // Both instances keep polling; the two jobs (verification, reset) arrive once each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(
        subjects
            .iter()
            .filter(|s| *s == "Reset your password")
            .count(),
        1,
        "{subjects:?}"
    );
    assert_eq!(
        subjects
            .iter()
            .filter(|s| *s == "Confirm your email address")
            .count(),
        1,
        "{subjects:?}"
    );
    first.stop().await;
    second.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_an_outage_and_delivers_once_on_sqlite() {
    the_outbox_survives_an_outage(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_an_outage_and_delivers_once_on_postgres() {
    the_outbox_survives_an_outage(Backend::Postgres).await;
}

#[tokio::test]
async fn a_refresh_token_is_no_reset_token() {
    // A refresh token is not a reset token either, whatever its shape.
    let Some(db) = TestDb::create(Backend::Sqlite).await else {
        return;
    };
    let smtp = SmtpServer::start().await;
    let mut app = TestApp::spawn(settings(db.url(), mail_settings(&smtp, json!({})))).await;
    let tokens = app.signed_up("refresh@example.com").await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_problem(
        post(
            &app,
            "/auth/password/reset",
            json!({"token": refresh, "new_password": "a brand new passphrase"}),
        )
        .await,
        400,
        "Invalid or expired token",
    )
    .await;
    assert_eq!(
        app.get_auth("/auth/me", &access_token(&tokens))
            .await
            .status(),
        200
    );
    app.stop().await;
    db.drop_database().await;
}

/// The mails `smtp` received for `to`, once `count` arrived, and after the worker had the
/// time to send one more had one been queued.
async fn settled_mail_to(smtp: &SmtpServer, to: &str, count: usize) -> Vec<String> {
    let of = |smtp: &SmtpServer| -> Vec<String> {
        smtp.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .map(|m| m.subject())
            .collect()
    };
    let deadline = Instant::now() + ARRIVES;
    while of(smtp).len() < count {
        assert!(Instant::now() < deadline, "{:?}", of(smtp));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker looks every half second: four looks find nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    of(smtp)
}

mail_test!(
    one_address_gets_no_more_than_its_budget_of_mail_whoever_asks_and_however,
    json!({"mail_limit_per_ip": 100, "mail_limit_per_recipient": 3}),
    |app, smtp| {
        // The victim's own registration mails once; then strangers take turns.
        assert_eq!(
            app.register("victim@example.com", PASSWORD).await.status(),
            201
        );
        let mut answers = Vec::new();
        for n in 0..6 {
            let token = app.token_for(&format!("stranger{n}@example.com")).await;
            let asked = post_auth(
                &app,
                "/auth/email",
                &token,
                json!({"new_email": "victim@example.com", "current_password": PASSWORD}),
            )
            .await;
            answers.push(asked.status().as_u16());
        }
        for _ in 0..3 {
            let forgot = post(
                &app,
                "/auth/password/forgot",
                json!({"email": "Victim@Example.com"}),
            )
            .await;
            answers.push(forgot.status().as_u16());
        }
        // Every request answered as usual: nothing tells that the budget is spent.
        assert!(answers.iter().all(|status| *status == 202), "{answers:?}");
        let received = settled_mail_to(&smtp, "victim@example.com", 3).await;
        assert_eq!(received.len(), 3, "{received:?}");
    }
);

mail_test!(
    registration_mail_counts_in_the_client_address_budget,
    json!({"mail_limit_per_ip": 3, "register_limit_per_ip": 100}),
    |app, smtp| {
        for n in 0..5 {
            let email = format!("newcomer{n}@example.com");
            assert_eq!(
                app.register(&email, PASSWORD).await.status(),
                201,
                "{email}"
            );
        }
        settled_mail_to(&smtp, "newcomer2@example.com", 1).await;
        let mailed = smtp.received().len();
        assert_eq!(mailed, 3, "{:?}", smtp.received());
        // The ones left without a link ask for one later, once the window allows.
        let token = app.token_for_existing("newcomer4@example.com").await;
        let status = post_auth(&app, "/auth/verify/request", &token, json!({}))
            .await
            .status();
        assert_eq!(status, 429, "the client address's mail budget is spent");
    }
);

mail_test!(
    an_admins_reset_link_is_on_record_at_once_with_the_admin_and_within_the_budget,
    json!({"mail_limit_per_ip": 100, "mail_limit_per_recipient": 3}),
    |app, smtp| {
        let admin = app.admin_token("root@example.com").await;
        let admin_id = app.get_json_auth("/auth/me", &admin).await["id"].clone();
        let created = app
            .client
            .post(app.url("/admin/users"))
            .bearer_auth(&admin)
            .json(&json!({"email": "forgetful@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let id = created.json::<Value>().await.unwrap()["id"].clone();
        for _ in 0..5 {
            let sent = app
                .client
                .post(app.url(&format!("/admin/users/{id}/password-reset")))
                .bearer_auth(&admin)
                .header("user-agent", "admin-console/1.0")
                .send()
                .await
                .unwrap();
            assert_eq!(sent.status(), 202);
        }
        // Recorded at once, by whom and from where, and whether a link went.
        let trail = app
            .get_json_auth(
                &format!("/admin/audit?kind=password.reset_requested&user_id={id}"),
                &admin,
            )
            .await;
        let events = trail["items"].as_array().unwrap();
        assert_eq!(events.len(), 5, "{trail}");
        for event in events {
            assert_eq!(event["actor_id"], admin_id, "{event}");
            assert_eq!(event["ip"], "127.0.0.1", "{event}");
            assert_eq!(event["user_agent"], "admin-console/1.0", "{event}");
        }
        let queued = events
            .iter()
            .filter(|e| e["detail"]["mail"] == "queued")
            .count();
        assert_eq!(queued, 3, "{trail}");
        let received = settled_mail_to(&smtp, "forgetful@example.com", 3).await;
        assert_eq!(received.len(), 3, "{received:?}");

        // A stranger's `forgot` is recorded once the link goes to a registered address, with
        // the stranger's address and user agent, and no actor.
        assert_eq!(
            app.register("asker@example.com", PASSWORD).await.status(),
            201
        );
        let forgot = app
            .client
            .post(app.url("/auth/password/forgot"))
            .header("user-agent", "forgot-client/2.0")
            .json(&json!({"email": "asker@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(forgot.status(), 202);
        smtp.wait_for_subject("asker@example.com", "Reset your password", ARRIVES)
            .await;
        let asker =
            app.get_json_auth("/admin/users?q=asker", &admin).await["items"][0]["id"].clone();
        let trail = app
            .get_json_auth(
                &format!("/admin/audit?kind=password.reset_requested&user_id={asker}"),
                &admin,
            )
            .await;
        let event = &trail["items"][0];
        assert_eq!(
            (&event["ip"], &event["user_agent"], &event["actor_id"]),
            (
                &json!("127.0.0.1"),
                &json!("forgot-client/2.0"),
                &Value::Null
            ),
            "{trail}"
        );
    }
);
