//! The console's own rules, with the core's ports mocked: CSRF tokens, the `Origin` check,
//! cookies and redirects. Each test states which use cases may run; a refused form runs none.

use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, Request, Response};
use uuid::Uuid;

use super::guard::{ConsoleSettings, csrf_token, new_secret};
use super::routes;
use crate::domain::mfa::{
    AuthMethod, Ceremony, CeremonyKind, Factors, MfaChallenge, MfaTokenHash, Passkey,
    RecoveryCodeHash, TotpFactor, TotpSecret, totp_step,
};
use crate::domain::ports::{CeremonyStart, MockPasskeyCeremonies, VerifiedAssertion};
use crate::domain::service::test_support::{Mocks, now, session, user};
use crate::domain::service::user_handle;
use crate::domain::{Applied, CookieHash, Role, SessionId, User, UserId};
use crate::inbound::web::client::TrustedProxies;

const HOST: &str = "console.test";
const ORIGIN: &str = "http://console.test";

async fn call(mocks: Mocks, req: Request) -> Response {
    let console = poem::Route::new().nest(
        "/console",
        routes(
            Arc::new(mocks.service()),
            TrustedProxies::default(),
            ConsoleSettings::new(None),
        )
        .pages,
    );
    console
        .call(req)
        .await
        .unwrap_or_else(|err| err.into_response())
}

/// A form POST from the console's own origin with `cookies` and `body`.
fn post(path: &str, cookies: &str, body: &str) -> Request {
    Request::builder()
        .method(Method::POST)
        .uri_str(path)
        .header(header::HOST, HOST)
        .header(header::ORIGIN, ORIGIN)
        .header("sec-fetch-site", "same-origin")
        .header(header::COOKIE, cookies)
        .content_type("application/x-www-form-urlencoded")
        .body(body.to_owned())
}

/// The sign-in form with `fields`, posted by `visitor` with its CSRF token.
fn sign_in(visitor: &str, fields: &str) -> Request {
    post(
        "/console/sign-in",
        &format!("portcullis-visitor={visitor}"),
        &format!("{fields}&csrf={}", csrf_token(visitor)),
    )
}

fn get(path: &str, cookies: &str) -> Request {
    Request::builder()
        .uri_str(path)
        .header(header::HOST, HOST)
        .header(header::COOKIE, cookies)
        .finish()
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn location(response: &Response) -> &str {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Mocks in which `alice` (user 1, password right) can sign in.
fn sign_in_mocks() -> Mocks {
    let mut m = Mocks::new();
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(1, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(true));
    m
}

/// Mocks in which the cookie `secret` is a live session of `who`.
fn signed_in_as(who: User, secret: &str) -> Mocks {
    let mut m = Mocks::new();
    let hash = CookieHash::of(secret);
    m.sessions
        .expect_find_cookie_session()
        .withf(move |h| *h == hash)
        .returning(move |_| Ok(Some((session(SessionId::random(), who.id.0), who.clone()))));
    m
}

#[tokio::test]
async fn a_sign_in_form_without_the_visitor_token_runs_nothing() {
    let visitor = new_secret();
    let cookies = format!("portcullis-visitor={visitor}");
    for body in [
        "email=user1%40example.com&password=pw".to_owned(),
        "email=user1%40example.com&password=pw&csrf=forged".to_owned(),
        // Another browser's token.
        format!(
            "email=user1%40example.com&password=pw&csrf={}",
            csrf_token(&new_secret())
        ),
    ] {
        let mut m = Mocks::new();
        m.users.expect_find_user_by_email().never();
        m.sessions.expect_create_session().never();
        let response = call(m, post("/console/sign-in", &cookies, &body)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{body}");
        assert!(
            set_cookies(&response)
                .iter()
                .all(|c| !c.starts_with("portcullis-session="))
        );
    }
}

#[tokio::test]
async fn a_form_from_another_origin_runs_nothing_even_with_the_right_token() {
    let visitor = new_secret();
    for (origin, site) in [
        ("https://evil.example", "cross-site"),
        ("http://console.test.evil.example", "cross-site"),
        (ORIGIN, "cross-site"),
        ("null", "cross-site"),
    ] {
        let mut m = Mocks::new();
        m.users.expect_find_user_by_email().never();
        let mut req = sign_in(&visitor, "email=user1%40example.com&password=pw");
        req.headers_mut()
            .insert(header::ORIGIN, origin.parse().unwrap());
        req.headers_mut()
            .insert("sec-fetch-site", site.parse().unwrap());
        let response = call(m, req).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin}");
    }
}

#[tokio::test]
async fn signing_in_sets_only_an_opaque_http_only_strict_cookie_and_follows_a_local_next() {
    let visitor = new_secret();
    for (next, expected) in [
        ("%2Fconsole%2Fadmin%2Fusers", "/console/admin/users"),
        ("https%3A%2F%2Fevil.example%2F", "/console/account"),
        ("%2F%2Fevil.example", "/console/account"),
    ] {
        let mut m = sign_in_mocks();
        m.sessions
            .expect_create_session()
            .times(1)
            .returning(|new, _| Ok(session(new.id, 1)));
        m.tokens.expect_issue().never();
        let fields = format!("email=user1%40example.com&password=pw&next={next}");
        let response = call(m, sign_in(&visitor, &fields)).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), expected);
        let cookies = set_cookies(&response);
        let session_cookie = cookies
            .iter()
            .find(|c| c.starts_with("portcullis-session="))
            .expect("a session cookie");
        assert!(session_cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict"));
        let value = &session_cookie["portcullis-session=".len()..session_cookie.find(';').unwrap()];
        assert_eq!(value.len(), 43, "an opaque 256-bit secret, not a JWT");
        assert!(!value.contains('.'));
    }
}

#[tokio::test]
async fn a_wrong_password_shows_the_form_again_with_the_apis_words() {
    let visitor = new_secret();
    let mut m = Mocks::new();
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(1, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(false));
    m.sessions.expect_create_session().never();
    let response = call(
        m,
        sign_in(&visitor, "email=user1%40example.com&password=nope"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let html = response.into_body().into_string().await.unwrap();
    assert!(html.contains("Incorrect email or password."), "{html}");
    assert!(
        html.contains(r#"value="user1@example.com""#),
        "the email is kept"
    );
    assert!(!html.contains("nope"), "a password is never shown again");
}

#[tokio::test]
async fn pages_for_signed_in_users_send_visitors_to_sign_in_and_back() {
    let mut m = Mocks::new();
    m.sessions.expect_find_cookie_session().never();
    let response = call(m, get("/console/account/password", "")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&response),
        "/console/sign-in?next=%2Fconsole%2Faccount%2Fpassword"
    );
}

#[tokio::test]
async fn a_cookie_of_an_ended_session_is_cleared_and_grants_nothing() {
    let secret = new_secret();
    let mut m = Mocks::new();
    m.sessions.expect_find_cookie_session().returning(|_| {
        let mut ended = session(SessionId::random(), 1);
        ended.ended_at = Some(now());
        Ok(Some((ended, user(1, Role::User, true))))
    });
    let response = call(
        m,
        get("/console/account", &format!("portcullis-session={secret}")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(location(&response).starts_with("/console/sign-in"));
    assert!(
        set_cookies(&response)
            .iter()
            .any(|c| c.starts_with("portcullis-session=;") && c.contains("Max-Age=0"))
    );
}

#[tokio::test]
async fn a_signed_in_form_needs_the_sessions_token_not_the_visitors() {
    let secret = new_secret();
    let visitor = new_secret();
    let cookies = format!("portcullis-session={secret}; portcullis-visitor={visitor}");
    let body = |token: &str| {
        format!("current_password=old-password&new_password=a+new+long+password&csrf={token}")
    };
    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    m.hasher.expect_verify().never();
    m.users.expect_apply().never();
    let response = call(
        m,
        post(
            "/console/account/password",
            &cookies,
            &body(&csrf_token(&visitor)),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The session's own token gets through to the use case.
    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    m.hasher.expect_verify().returning(|_, _| Ok(true));
    m.hasher
        .expect_hash()
        .returning(|_| Ok(crate::domain::PasswordHash::new("new".into())));
    m.users
        .expect_apply()
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let response = call(
        m,
        post(
            "/console/account/password",
            &cookies,
            &body(&csrf_token(&secret)),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/account?done=password");
}

#[tokio::test]
async fn signing_out_ends_the_session_and_clears_the_cookie() {
    let secret = new_secret();
    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    m.sessions
        .expect_end_session()
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    let response = call(
        m,
        post(
            "/console/sign-out",
            &format!("portcullis-session={secret}"),
            &format!("csrf={}", csrf_token(&secret)),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/sign-in?done=signed-out");
    assert!(
        set_cookies(&response)
            .iter()
            .any(|c| c.starts_with("portcullis-session=;"))
    );
}

#[tokio::test]
async fn administration_pages_refuse_users_who_are_not_admins() {
    let secret = new_secret();
    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    m.users.expect_list_users().never();
    let response = call(
        m,
        get(
            "/console/admin/users",
            &format!("portcullis-session={secret}"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn notices_come_from_a_fixed_list_never_from_the_link() {
    let response = call(
        Mocks::new(),
        get(
            "/console/sign-in?done=%3Cscript%3Ealert(1)%3C/script%3E",
            "",
        ),
    )
    .await;
    let html = response.into_body().into_string().await.unwrap();
    assert!(!html.contains("alert(1)"));
    let response = call(Mocks::new(), get("/console/sign-in?done=signed-out", "")).await;
    let html = response.into_body().into_string().await.unwrap();
    assert!(html.contains("You are signed out."));
}

#[tokio::test]
async fn an_unknown_console_page_is_a_page_not_a_json_problem() {
    let response = call(Mocks::new(), get("/console/no-such-page", "")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/html; charset=utf-8"
    );
    let html = response.into_body().into_string().await.unwrap();
    assert!(html.contains("There is no such page."));
}

fn session_cookie(response: &Response) -> Option<String> {
    set_cookies(response)
        .into_iter()
        .find(|c| c.starts_with("portcullis-session=") && !c.contains("Max-Age=0"))
}

/// User 1 has an authenticator app.
fn has_app(m: &mut Mocks) {
    m.factors.expect_factors().returning(|_| {
        Ok(Factors {
            totp: true,
            passkeys: 0,
        })
    });
}

#[tokio::test]
async fn a_right_password_of_a_user_with_an_app_asks_for_a_code_and_sets_no_cookie() {
    let visitor = new_secret();
    let mut m = sign_in_mocks();
    has_app(&mut m);
    m.challenges
        .expect_store_mfa_challenge()
        .times(1)
        .returning(|_| Ok(()));
    m.sessions.expect_create_session().never();
    let response = call(
        m,
        sign_in(
            &visitor,
            "email=user1%40example.com&password=pw&next=%2Fconsole%2Fadmin%2Fusers",
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(session_cookie(&response), None);
    let html = response.into_body().into_string().await.unwrap();
    assert!(html.contains("<h1>Two-step verification</h1>"), "{html}");
    assert!(html.contains(r#"action="/console/sign-in/verify""#));
    assert!(html.contains(r#"name="next" value="/console/admin/users""#));
    assert!(html.contains(r#"autocomplete="one-time-code""#));
    let token = html
        .split(r#"name="mfa_token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the pending login's token");
    assert_eq!(token.len(), 43, "a 256-bit token: {token}");
}

const MFA_TOKEN: &str = "the-pending-login";

/// Mocks in which `MFA_TOKEN` names a pending login of user 1, still open.
fn pending_mocks() -> Mocks {
    let mut m = Mocks::new();
    m.challenges
        .expect_find_mfa_challenge()
        .withf(|hash| *hash == MfaTokenHash::of(MFA_TOKEN))
        .returning(|_| {
            Ok(Some(MfaChallenge {
                user_id: UserId(1),
                credential_version: 0,
                expires_at: now() + TimeDelta::minutes(5),
                failures: 0,
                spent_at: None,
            }))
        });
    m.users
        .expect_find_user_by_id()
        .returning(|id| Ok(Some(user(id.0, Role::User, true))));
    m
}

fn second_step(visitor: &str, code: &str) -> Request {
    post(
        "/console/sign-in/verify",
        &format!("portcullis-visitor={visitor}"),
        &format!(
            "mfa_token={MFA_TOKEN}&next=%2Fconsole%2Fadmin%2Fusers&code={code}&csrf={}",
            csrf_token(visitor)
        ),
    )
}

#[tokio::test]
async fn a_wrong_code_shows_the_step_again_on_its_field_and_sets_no_cookie() {
    let visitor = new_secret();
    let mut m = pending_mocks();
    // Six digits are an app's code (whether this one is right is the core's tests' business).
    m.factors
        .expect_find_totp()
        .times(1)
        .returning(|_| Ok(None));
    m.factors.expect_spend_recovery_code().never();
    m.challenges
        .expect_fail_mfa_challenge()
        .times(1)
        .returning(|_, _, _| Ok(()));
    m.sessions.expect_create_session().never();
    let response = call(m, second_step(&visitor, "123+456")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(session_cookie(&response), None);
    let html = response.into_body().into_string().await.unwrap();
    assert!(
        html.contains(r#"<p class="error" id="code-error">Invalid code.</p>"#),
        "{html}"
    );
    assert!(html.contains(r#"aria-invalid="true" aria-describedby="code-error""#));
    assert!(html.contains(&format!(r#"name="mfa_token" value="{MFA_TOKEN}""#)));
    assert!(html.contains(r#"name="next" value="/console/admin/users""#));
}

#[tokio::test]
async fn a_right_recovery_code_sets_the_cookie_and_follows_next() {
    let visitor = new_secret();
    let mut m = pending_mocks();
    m.factors.expect_find_totp().never();
    m.factors
        .expect_spend_recovery_code()
        .withf(|id, hash, _| {
            *id == UserId(1)
                && Some(hash) == RecoveryCodeHash::of_typed("abcdefghijklmnop").as_ref()
        })
        .times(1)
        .returning(|_, _, _| Ok(true));
    m.challenges
        .expect_spend_mfa_challenge()
        .times(1)
        .returning(|_, _| Ok(true));
    m.sessions
        .expect_create_session()
        .times(1)
        .returning(|new, _| Ok(session(new.id, 1)));
    let response = call(m, second_step(&visitor, "ABCD-efgh-ijkl-mnop")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/admin/users");
    let cookie = session_cookie(&response).expect("a session cookie");
    assert!(cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict"));
}

#[tokio::test]
async fn setting_up_shows_a_qr_code_and_the_key_and_a_first_code_shows_ten_recovery_codes() {
    let secret = new_secret();
    let cookies = format!("portcullis-session={secret}");
    let form = |fields: &str| format!("{fields}csrf={}", csrf_token(&secret));
    let stored: Arc<Mutex<Vec<u8>>> = Arc::default();

    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    let keep = Arc::clone(&stored);
    m.factors.expect_find_totp().returning(|_| Ok(None));
    // The set-up asks for the password again.
    m.hasher
        .expect_verify()
        .withf(|candidate, _| candidate == "pw")
        .returning(|_, _| Ok(true));
    m.factors
        .expect_store_pending_totp()
        .times(1)
        .returning(move |_, sealed, _| {
            *keep.lock().unwrap() = sealed;
            Ok(true)
        });
    let response = call(
        m,
        post(
            "/console/account/two-step/setup",
            &cookies,
            &form("current_password=pw&"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.into_body().into_string().await.unwrap();
    assert!(
        html.contains(r#"<svg role="img" aria-label="QR code to add this account"#),
        "{html}"
    );
    assert!(!html.contains("<?xml"));
    // The test sealer's sealed form ends with the plain secret, after a NUL.
    let sealed = stored.lock().unwrap().clone();
    let plain =
        TotpSecret::from_bytes(sealed[sealed.iter().position(|b| *b == 0).unwrap() + 1..].to_vec());
    let key = plain.base32();
    assert_eq!(key.len(), 32);
    let grouped = format!(
        "{} {} {} {} {} {} {} {}",
        &key[0..4],
        &key[4..8],
        &key[8..12],
        &key[12..16],
        &key[16..20],
        &key[20..24],
        &key[24..28],
        &key[28..32]
    );
    assert!(
        html.contains(&format!(r#"id="secret">{grouped}</code>"#)),
        "{html}"
    );

    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    m.factors.expect_find_totp().returning(move |_| {
        Ok(Some(TotpFactor {
            user_id: UserId(1),
            sealed_secret: sealed.clone(),
            confirmed_at: None,
            last_step: None,
            added_unverified: false,
        }))
    });
    m.users
        .expect_apply()
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let code = format!("{:06}", plain.code_at(totp_step(now())));
    let response = call(
        m,
        post(
            "/console/account/two-step/confirm",
            &cookies,
            &form(&format!("code={code}&")),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.into_body().into_string().await.unwrap();
    assert!(html.contains("each works once"), "{html}");
    assert_eq!(html.matches("<li><code>").count(), 10, "{html}");
}

#[tokio::test]
async fn turning_the_app_off_with_a_wrong_password_says_so_on_its_field() {
    let secret = new_secret();
    let cookies = format!("portcullis-session={secret}");
    for right in [false, true] {
        let mut m = signed_in_as(user(1, Role::User, true), &secret);
        has_app(&mut m);
        m.factors.expect_find_totp().returning(|id| {
            Ok(Some(TotpFactor {
                user_id: id,
                sealed_secret: Vec::new(),
                confirmed_at: Some(now()),
                last_step: None,
                added_unverified: false,
            }))
        });
        m.hasher.expect_verify().returning(move |_, _| Ok(right));
        m.users
            .expect_apply()
            .times(usize::from(right))
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        let body = format!("password=guess&csrf={}", csrf_token(&secret));
        let response = call(m, post("/console/account/two-step/off", &cookies, &body)).await;
        if right {
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            assert_eq!(
                location(&response),
                "/console/account/two-step?done=two-step-off"
            );
        } else {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let html = response.into_body().into_string().await.unwrap();
            assert!(
                html.contains(r#"<p class="error" id="password-error">Incorrect password.</p>"#),
                "{html}"
            );
            assert!(!html.contains("code-error"));
        }
    }
}

const OPTIONS: &str = r#"{"publicKey":{"challenge":"Y2hhbGxlbmdl"}}"#;

/// Passkeys configured, with ceremonies that start with `OPTIONS` and whose answers carry
/// the challenge "challenge".
fn ceremonies(m: &mut Mocks) -> &mut MockPasskeyCeremonies {
    let mut ceremonies = MockPasskeyCeremonies::new();
    let start = || {
        Ok(CeremonyStart {
            options: OPTIONS.into(),
            challenge: "challenge".into(),
            state: "state".into(),
        })
    };
    ceremonies
        .expect_start_registration()
        .returning(move |_, _, _, _| start());
    ceremonies.expect_start_authentication().returning(start);
    ceremonies
        .expect_challenge_of()
        .returning(|_| Ok("challenge".into()));
    m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
    m.passkeys.insert(ceremonies)
}

async fn json_body(response: Response) -> serde_json::Value {
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    serde_json::from_str(&response.into_body().into_string().await.unwrap()).unwrap()
}

#[tokio::test]
async fn passkey_options_need_the_pages_token_and_come_as_json() {
    let secret = new_secret();
    let visitor = new_secret();
    let cookies = format!("portcullis-session={secret}; portcullis-visitor={visitor}");
    for (path, right) in [
        ("/console/account/passkeys/options", csrf_token(&secret)),
        ("/console/sign-in/passkey/options", csrf_token(&visitor)),
    ] {
        let another_browsers = csrf_token(&new_secret());
        for (token, good) in [
            ("forged", false),
            (&another_browsers, false),
            (&right, true),
        ] {
            let mut m = signed_in_as(user(1, Role::User, true), &secret);
            ceremonies(&mut m);
            m.challenges
                .expect_store_ceremony()
                .times(usize::from(good))
                .returning(|_, _| Ok(()));
            // Adding a passkey asks for the password again; signing in needs none.
            m.hasher.expect_verify().returning(|_, _| Ok(true));
            let body = format!("csrf={token}&name=&current_password=pw");
            let response = call(m, post(path, &cookies, &body)).await;
            if !good {
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
                continue;
            }
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let options: serde_json::Value = serde_json::from_str(OPTIONS).unwrap();
            assert_eq!(json_body(response).await, options);
        }
    }
}

#[tokio::test]
async fn a_passkey_name_the_api_refuses_is_refused_before_the_browser_makes_a_passkey() {
    let secret = new_secret();
    let mut m = signed_in_as(user(1, Role::User, true), &secret);
    ceremonies(&mut m);
    m.challenges.expect_store_ceremony().never();
    let body = format!("name={}&csrf={}", "x".repeat(65), csrf_token(&secret));
    let response = call(
        m,
        post(
            "/console/account/passkeys/options",
            &format!("portcullis-session={secret}"),
            &body,
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"message": "Name must be at most 64 characters."})
    );
}

#[tokio::test]
async fn without_a_relying_party_the_script_is_told_why_in_words() {
    let visitor = new_secret();
    let response = call(
        Mocks::new(),
        post(
            "/console/sign-in/passkey/options",
            &format!("portcullis-visitor={visitor}"),
            &format!("csrf={}", csrf_token(&visitor)),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"message": "Passkeys are not configured: set public_url."})
    );
}

#[tokio::test]
async fn a_verified_passkey_sets_the_session_cookie_and_follows_next() {
    let visitor = new_secret();
    let mut m = Mocks::new();
    let ceremonies = ceremonies(&mut m);
    ceremonies
        .expect_credential_of()
        .returning(|_| Ok(vec![1, 2, 3]));
    ceremonies
        .expect_finish_authentication()
        .withf(|state, answer, _, _| state == "state" && answer == r#"{"id":"answer"}"#)
        .times(1)
        .returning(|_, _, _, _| {
            Ok(VerifiedAssertion {
                credential_id: vec![1, 2, 3],
                updated_credential: None,
            })
        });
    m.challenges
        .expect_take_ceremony()
        .times(1)
        .returning(|_, _| {
            Ok(Some(Ceremony {
                challenge: "challenge".into(),
                kind: CeremonyKind::Authentication,
                user_id: None,
                state: "state".into(),
                expires_at: now() + TimeDelta::minutes(5),
            }))
        });
    m.factors.expect_find_passkey().returning(|id| {
        Ok(Some(Passkey {
            id: Uuid::from_u128(1),
            user_id: UserId(1),
            name: "Laptop".into(),
            created_at: now(),
            last_used_at: None,
            credential_id: id.to_vec(),
            credential: "stored".into(),
            user_handle: user_handle(UserId(1)),
            added_unverified: false,
        }))
    });
    m.users
        .expect_find_user_by_id()
        .returning(|id| Ok(Some(user(id.0, Role::User, true))));
    m.factors.expect_touch_passkey().returning(|_, _, _| Ok(()));
    m.sessions
        .expect_create_session()
        .withf(|new, _| new.methods == [AuthMethod::Webauthn])
        .times(1)
        .returning(|new, _| Ok(session(new.id, 1)));
    let body = format!(
        "credential=%7B%22id%22%3A%22answer%22%7D&next=%2Fconsole%2Fadmin%2Fusers&csrf={}",
        csrf_token(&visitor)
    );
    let response = call(
        m,
        post(
            "/console/sign-in/passkey",
            &format!("portcullis-visitor={visitor}"),
            &body,
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/admin/users");
    let cookie = session_cookie(&response).expect("a session cookie");
    assert!(cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict"));
}

#[tokio::test]
async fn removing_a_passkey_that_is_not_the_users_says_so_on_the_page() {
    let secret = new_secret();
    let cookies = format!("portcullis-session={secret}");
    for id in [Uuid::from_u128(5).to_string(), "not-an-id".into()] {
        let mut m = signed_in_as(user(1, Role::User, true), &secret);
        m.users.expect_apply().never();
        m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
        let response = call(
            m,
            post(
                &format!("/console/account/passkeys/{id}/remove"),
                &cookies,
                &format!("csrf={}", csrf_token(&secret)),
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{id}");
        let html = response.into_body().into_string().await.unwrap();
        assert!(
            html.contains(r#"<p class="alert" role="alert">Passkey not found.</p>"#),
            "{html}"
        );
        assert!(html.contains("<h1>Passkeys</h1>"));
    }
}
