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

use crate::helpers::{
    TestApp, access_token, amr, app_test, assert_problem, assert_unauthorized, factors,
};
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

/// The authenticator's answer to a registration the user of `token` starts.
async fn registration_answer(
    app: &TestApp,
    token: &str,
    authenticator: &mut SoftAuthenticator,
) -> Result<Value, String> {
    let options = options(app, "/auth/passkeys/register/start", Some(token)).await;
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

        let registration = options(&app, "/auth/passkeys/register/start", Some(&token)).await;
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
            let response = post_to(&app, path, token).send().await.unwrap();
            assert_problem(response, 503, "Passkeys are not configured: set public_url").await;
        }
    }
);
