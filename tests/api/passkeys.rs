//! Passkeys over HTTP, with the software authenticator as the browser: adding, listing and
//! removing them, signing in with one alone, and the answers that must open nothing.
//!
//! The relying party is `public_url`'s origin, which the server need not be reachable at:
//! only the origin the authenticator signs matters, so every app here gets a fixed one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis::domain::Email;
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::email::mail_settings;
use crate::helpers::{
    Backend, PASSWORD, TestApp, access_token, amr, app_test, assert_problem, assert_unauthorized,
    factors, with_app,
};
use crate::smtp::SmtpServer;
use crate::soft_authenticator::{SoftAuthenticator, tamper};

const ORIGIN: &str = "http://localhost:8123";

fn relying_party() -> Value {
    json!({"public_url": ORIGIN})
}

/// A POST to `path`, as the user of `token` if any.
fn post_to(app: &TestApp, path: &str, token: Option<&str>) -> RequestBuilder {
    let request = app.client.post(app.url(path));
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> Response {
    post_to(app, path, token)
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn delete(app: &TestApp, id: &str, token: &str) -> Response {
    app.client
        .delete(app.url(&format!("/auth/passkeys/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn json_of<T: DeserializeOwned>(response: Response, status: u16) -> T {
    assert_eq!(response.status().as_u16(), status);
    response.json().await.expect("json body")
}

/// The options of a ceremony's start, as the browser hands them to the authenticator.
async fn options(app: &TestApp, path: &str, token: Option<&str>) -> String {
    let response = post_to(app, path, token).send().await.expect("request");
    json_of::<Value>(response, 200).await.to_string()
}

/// The options of a registration the user of `token` starts, with their password.
async fn registration_options(app: &TestApp, token: &str) -> String {
    let response = post(
        app,
        "/auth/passkeys/register/start",
        Some(token),
        &json!({"current_password": PASSWORD}),
    )
    .await;
    json_of::<Value>(response, 200).await.to_string()
}

/// The authenticator's answer to a registration the user of `token` starts.
async fn registration_answer(
    app: &TestApp,
    token: &str,
    authenticator: &mut SoftAuthenticator,
) -> Result<Value, String> {
    let options = registration_options(app, token).await;
    authenticator.create(&options, ORIGIN)
}

/// Signs `email` up and adds a passkey "Laptop" on a new authenticator: their access token,
/// the authenticator, and the passkey as the API shows it.
async fn with_passkey(app: &TestApp, email: &str) -> (String, SoftAuthenticator, Value) {
    let token = app.token_for(email).await;
    let mut authenticator = SoftAuthenticator::new();
    let mut answer = registration_answer(app, &token, &mut authenticator)
        .await
        .unwrap();
    answer["name"] = "Laptop".into();
    let passkey = json_of(finish_registration(app, &token, &answer).await, 201).await;
    (token, authenticator, passkey)
}

/// The authenticator's answer, at `origin`, to a sign-in the server starts.
async fn sign_in_answer(
    app: &TestApp,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
) -> Value {
    let options = options(app, "/auth/passkeys/login/start", None).await;
    authenticator.get(&options, origin).unwrap()
}

async fn finish_registration(app: &TestApp, token: &str, body: &Value) -> Response {
    post(app, "/auth/passkeys/register/finish", Some(token), body).await
}

async fn finish_sign_in(app: &TestApp, answer: &Value) -> Response {
    post(app, "/auth/passkeys/login/finish", None, answer).await
}

/// Signs in with the authenticator's passkey: the token response.
async fn sign_in(app: &TestApp, authenticator: &mut SoftAuthenticator) -> Value {
    let answer = sign_in_answer(app, authenticator, ORIGIN).await;
    json_of(finish_sign_in(app, &answer).await, 200).await
}

async fn assert_invalid(response: Response) {
    assert_problem(response, 400, "Invalid passkey response").await;
}

async fn passkeys(app: &TestApp, token: &str) -> Vec<Value> {
    json_of(app.get_auth("/auth/passkeys", token).await, 200).await
}

async fn sessions(app: &TestApp, token: &str) -> Vec<Value> {
    json_of(app.get_auth("/auth/sessions", token).await, 200).await
}

app_test!(
    a_passkey_is_added_listed_and_signs_in_alone_once_per_ceremony,
    relying_party(),
    |app| {
        let (token, mut authenticator, added) = with_passkey(&app, "key@example.com").await;
        assert_eq!(added["name"], "Laptop");
        assert!(added["id"].is_string() && added["created_at"].is_string());
        assert_eq!(added["last_used_at"], Value::Null);
        let listed = passkeys(&app, &token).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (&listed[0]["id"], &listed[0]["name"]),
            (&added["id"], &added["name"])
        );
        assert_eq!(factors(&app, &token).await, json!(["passkey"]));

        let answer = sign_in_answer(&app, &mut authenticator, ORIGIN).await;
        let tokens: Value = json_of(finish_sign_in(&app, &answer).await, 200).await;
        assert_eq!(amr(&tokens), json!(["webauthn"]));
        let passkey_token = access_token(&tokens);
        let sessions = sessions(&app, &passkey_token).await;
        assert_eq!(sessions.len(), 2, "the password's and the passkey's");
        assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
        let used = &passkeys(&app, &passkey_token).await[0];
        assert!(used["last_used_at"].is_string());

        // The ceremony was spent by its first answer.
        assert_invalid(finish_sign_in(&app, &answer).await).await;
    }
);

app_test!(
    answers_that_do_not_verify_are_refused_and_change_nothing,
    relying_party(),
    |app| {
        let (token, mut authenticator, _) = with_passkey(&app, "key@example.com").await;

        // A challenge the server never gave.
        let mut forged: Value =
            serde_json::from_str(&options(&app, "/auth/passkeys/login/start", None).await).unwrap();
        forged["publicKey"]["challenge"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into();
        let forged = authenticator.get(&forged.to_string(), ORIGIN).unwrap();
        assert_invalid(finish_sign_in(&app, &forged).await).await;

        let answer = sign_in_answer(&app, &mut authenticator, ORIGIN).await;
        let tampered = tamper(&answer, "signature", |s| *s.last_mut().unwrap() ^= 1);
        assert_invalid(finish_sign_in(&app, &tampered).await).await;

        let elsewhere = sign_in_answer(&app, &mut authenticator, "http://localhost:9999").await;
        assert_invalid(finish_sign_in(&app, &elsewhere).await).await;

        let registration = registration_options(&app, &token).await;
        let elsewhere = SoftAuthenticator::new()
            .create(&registration, "http://localhost:9999")
            .unwrap();
        assert_invalid(finish_registration(&app, &token, &elsewhere).await).await;

        let listed = passkeys(&app, &token).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["last_used_at"], Value::Null);
        assert_eq!(sessions(&app, &token).await.len(), 1);
        sign_in(&app, &mut authenticator).await;
    }
);

app_test!(
    an_authenticators_credential_is_registered_once,
    relying_party(),
    |app| {
        let (alice, mut alices, _) = with_passkey(&app, "alice@example.com").await;
        let error = registration_answer(&app, &alice, &mut alices)
            .await
            .unwrap_err();
        assert!(error.starts_with("InvalidStateError"), "{error}");

        // Another user's authenticator that claims Alice's credential id.
        let mallory = app.token_for("mallory@example.com").await;
        let mut hostile = SoftAuthenticator::new();
        hostile.next_id = Some(alices.credentials[0].id.clone());
        let answer = registration_answer(&app, &mallory, &mut hostile)
            .await
            .unwrap();
        let body = json!({"credential": answer, "name": "Alice's"});
        assert_problem(
            finish_registration(&app, &mallory, &body).await,
            409,
            "Passkey already registered",
        )
        .await;
        assert_eq!(passkeys(&app, &mallory).await, Vec::<Value>::new());
        sign_in(&app, &mut alices).await;
    }
);

app_test!(
    a_passkey_is_removed_by_its_owner_alone_and_then_signs_in_no_more,
    relying_party(),
    |app| {
        let (alice, mut authenticator, added) = with_passkey(&app, "alice@example.com").await;
        let id = added["id"].as_str().unwrap();

        let bob = app.token_for("bob@example.com").await;
        assert_problem(delete(&app, id, &bob).await, 404, "Passkey not found").await;
        sign_in(&app, &mut authenticator).await;

        // Renamed by its owner alone, to a name the rules allow.
        let rename = |token: &str, body: Value| {
            app.client
                .patch(app.url(&format!("/auth/passkeys/{id}")))
                .bearer_auth(token)
                .json(&body)
                .send()
        };
        let stolen = rename(&bob, json!({"name": "Mine now"})).await.unwrap();
        assert_problem(stolen, 404, "Passkey not found").await;
        for bad in [
            json!({"name": "  "}),
            json!({"name": "a\u{0}b"}),
            json!({"name": "x".repeat(65)}),
            json!({}),
        ] {
            assert_eq!(
                rename(&alice, bad.clone()).await.unwrap().status(),
                422,
                "{bad}"
            );
        }
        assert_eq!(passkeys(&app, &alice).await[0]["name"], "Laptop");
        let renamed = rename(&alice, json!({"name": " Work phone "}))
            .await
            .unwrap();
        assert_eq!(renamed.status(), 204);
        assert_eq!(passkeys(&app, &alice).await[0]["name"], "Work phone");

        assert_eq!(delete(&app, id, &alice).await.status(), 204);
        assert_eq!(passkeys(&app, &alice).await, Vec::<Value>::new());
        assert_eq!(factors(&app, &alice).await, json!([]));
        let answer = sign_in_answer(&app, &mut authenticator, ORIGIN).await;
        assert_invalid(finish_sign_in(&app, &answer).await).await;
    }
);

app_test!(
    a_deactivated_users_passkey_opens_no_session,
    relying_party(),
    |app| {
        let (_, mut authenticator, _) = with_passkey(&app, "gone@example.com").await;
        app.operator()
            .await
            .admin
            .set_active(&Email::parse("gone@example.com").unwrap(), false)
            .await
            .unwrap();
        let answer = sign_in_answer(&app, &mut authenticator, ORIGIN).await;
        assert_unauthorized(finish_sign_in(&app, &answer).await, "Inactive user account").await;
    }
);

app_test!(
    without_a_domain_to_be_the_relying_party_passkeys_are_unavailable,
    |app| {
        let token = app.token_for("key@example.com").await;
        for (path, token) in [
            ("/auth/passkeys/login/start", None),
            ("/auth/passkeys/register/start", Some(token.as_str())),
        ] {
            let body = json!({"current_password": PASSWORD});
            let response = post(&app, path, token, &body).await;
            assert_problem(response, 503, "Passkeys are not configured: set public_url").await;
        }
    }
);

/// The settings of an app that mails through `smtp` and has passkeys; more mail to one
/// address than the default budget, which the flows below reach within their first minute.
fn with_mail(smtp: &SmtpServer) -> Value {
    mail_settings(
        smtp,
        json!({"public_url": ORIGIN, "mail_limit_per_recipient": 20}),
    )
}

/// Pre-account hijacking, undone: someone registers a victim's address before the victim
/// does (with the default settings nobody has to prove an address), adds a passkey and an
/// authenticator app, and waits. The owner takes the account back with "forgot password":
/// the reset proves the address and removes every factor added before that proof, and the
/// address hears of each one, both when they were added and when they were removed. A factor
/// the owner adds afterwards survives the next reset.
async fn a_reset_removes_the_factors_added_before_the_address_was_proved(backend: Backend) {
    let smtp = Arc::new(SmtpServer::start().await);
    let mail = Arc::clone(&smtp);
    with_app(backend, with_mail(&smtp), move |app| async move {
        let smtp = mail;
        let victim = "victim@example.com";
        // The impostor signs up with the victim's address and a password of their own.
        let impostor = app.token_for(victim).await;
        let mut authenticator = SoftAuthenticator::new();
        let mut answer = registration_answer(&app, &impostor, &mut authenticator)
            .await
            .unwrap();
        answer["name"] = "Impostor's key".into();
        json_of::<Value>(finish_registration(&app, &impostor, &answer).await, 201).await;
        crate::mfa::enrol(&app, &impostor).await;
        // The address hears of each, from the start.
        let added = mails_about(&smtp, ADDED, 2).await;
        assert!(
            added[0].contains("passkey \"Impostor's key\""),
            "{}",
            added[0]
        );
        assert!(
            added[1].contains("TOTP (authenticator app)"),
            "{}",
            added[1]
        );
        assert_eq!(factors(&app, &impostor).await, json!(["totp", "passkey"]));

        // The owner takes the account back with the link mailed to the address.
        let forgot = app
            .post_json("/auth/password/forgot", &json!({"email": victim}))
            .await;
        assert_eq!(forgot.status(), 202);
        let link = smtp
            .wait_for_subject(victim, "Reset your password", ARRIVES)
            .await;
        let token = link.token("/console/reset").expect("a reset link");
        let reset = app
            .post_json(
                "/auth/password/reset",
                &json!({"token": token, "new_password": "the owner's own password"}),
            )
            .await;
        assert_eq!(reset.status(), 204);

        // The impostor's passkey names nobody now, and the owner's password alone signs in.
        let answer = sign_in_answer(&app, &mut authenticator, ORIGIN).await;
        assert_invalid(finish_sign_in(&app, &answer).await).await;
        let owner = app.login(victim, "the owner's own password").await;
        assert_eq!(owner.status(), 200);
        let owner: Value = owner.json().await.unwrap();
        assert!(owner.get("mfa_required").is_none(), "{owner}");
        let owner = access_token(&owner);
        assert_eq!(factors(&app, &owner).await, json!([]));
        let removed = smtp
            .wait_for_subject(victim, REMOVED_BY_RESET, ARRIVES)
            .await
            .text();
        for named in ["passkey \"Impostor's key\"", "TOTP (authenticator app)"] {
            assert!(removed.contains(named), "{named} in {removed}");
        }
        let admin = app.admin_token("root@example.com").await;
        let trail: Value = app
            .get_auth("/admin/audit?kind=password.reset", &admin)
            .await
            .json()
            .await
            .unwrap();
        let detail = &trail["items"][0]["detail"];
        assert!(
            detail["factors_removed"]
                .as_str()
                .is_some_and(|f| f.contains("Impostor's key") && f.contains("TOTP")),
            "{trail}"
        );

        // Proved now: what the owner adds stays through the next reset.
        let mut own = SoftAuthenticator::new();
        // The password is asked and checked: the impostor's is no longer it.
        let stale = post(
            &app,
            "/auth/passkeys/register/start",
            Some(&owner),
            &json!({"current_password": PASSWORD}),
        )
        .await;
        assert_problem(stale, 401, "Incorrect password").await;
        let start = post(
            &app,
            "/auth/passkeys/register/start",
            Some(&owner),
            &json!({"current_password": "the owner's own password"}),
        )
        .await;
        let options = json_of::<Value>(start, 200).await.to_string();
        let created = own.create(&options, ORIGIN).unwrap();
        json_of::<Value>(finish_registration(&app, &owner, &created).await, 201).await;
        let forgot = app
            .post_json("/auth/password/forgot", &json!({"email": victim}))
            .await;
        assert_eq!(forgot.status(), 202);
        let links = mails_about(&smtp, "Reset your password", 2).await;
        let start = links[1].find("/console/reset?token=").expect("a link") + 21;
        let token: String = links[1][start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let reset = app
            .post_json(
                "/auth/password/reset",
                &json!({"token": token, "new_password": "another own password"}),
            )
            .await;
        assert_eq!(reset.status(), 204);
        let tokens = sign_in(&app, &mut own).await;
        assert_eq!(amr(&tokens), json!(["webauthn"]));
        app
    })
    .await;
}

/// The texts of the mails with `subject`, in order, once there are `count` (within
/// `ARRIVES`).
async fn mails_about(smtp: &SmtpServer, subject: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + ARRIVES;
    loop {
        let texts: Vec<String> = smtp
            .received()
            .iter()
            .filter(|m| m.subject() == subject)
            .map(|m| m.text())
            .collect();
        if texts.len() >= count {
            return texts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} mails about {subject:?}",
            texts.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const ADDED: &str = "A new way to sign in was added to your account";
const REMOVED_BY_RESET: &str = "Your password was reset, and unconfirmed sign-in methods removed";
const ARRIVES: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_removes_the_factors_added_before_the_address_was_proved_on_sqlite() {
    a_reset_removes_the_factors_added_before_the_address_was_proved(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_removes_the_factors_added_before_the_address_was_proved_on_postgres() {
    a_reset_removes_the_factors_added_before_the_address_was_proved(Backend::Postgres).await;
}
