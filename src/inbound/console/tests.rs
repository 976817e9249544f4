//! The console's own rules, with the core's ports mocked: CSRF tokens, the `Origin` check,
//! cookies and redirects. Each test states which use cases may run; a refused form runs none.

use std::sync::Arc;

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, Request, Response};

use super::guard::{ConsoleSettings, csrf_token, new_secret};
use super::routes;
use crate::domain::service::test_support::{Mocks, now, session, user};
use crate::domain::{CookieHash, Role, SessionId, User};
use crate::inbound::http::client::TrustedProxies;

const HOST: &str = "console.test";
const ORIGIN: &str = "http://console.test";

async fn call(mocks: Mocks, req: Request) -> Response {
    let console = poem::Route::new().nest(
        "/console",
        routes(
            Arc::new(mocks.service()),
            TrustedProxies::default(),
            ConsoleSettings::new(None),
        ),
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
    m.users
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
        m.users.expect_create_session().never();
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
    let body = format!(
        "email=user1%40example.com&password=pw&csrf={}",
        csrf_token(&visitor)
    );
    for (origin, site) in [
        ("https://evil.example", "cross-site"),
        ("http://console.test.evil.example", "cross-site"),
        (ORIGIN, "cross-site"),
        ("null", "cross-site"),
    ] {
        let mut m = Mocks::new();
        m.users.expect_find_user_by_email().never();
        let mut req = post(
            "/console/sign-in",
            &format!("portcullis-visitor={visitor}"),
            &body,
        );
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
    let token = csrf_token(&visitor);
    for (next, expected) in [
        ("%2Fconsole%2Fadmin%2Fusers", "/console/admin/users"),
        ("https%3A%2F%2Fevil.example%2F", "/console/account"),
        ("%2F%2Fevil.example", "/console/account"),
    ] {
        let mut m = sign_in_mocks();
        m.users
            .expect_create_session()
            .times(1)
            .returning(|new, _| Ok(session(new.id, 1)));
        m.tokens.expect_issue().never();
        let body = format!("email=user1%40example.com&password=pw&csrf={token}&next={next}");
        let response = call(
            m,
            post(
                "/console/sign-in",
                &format!("portcullis-visitor={visitor}"),
                &body,
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), expected);
        let cookies = set_cookies(&response);
        let session_cookie = cookies
            .iter()
            .find(|c| c.starts_with("portcullis-session="))
            .expect("a session cookie");
        assert!(session_cookie.ends_with("; Path=/console; HttpOnly; SameSite=Strict"));
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
    m.users.expect_create_session().never();
    let body = format!(
        "email=user1%40example.com&password=nope&csrf={}",
        csrf_token(&visitor)
    );
    let response = call(
        m,
        post(
            "/console/sign-in",
            &format!("portcullis-visitor={visitor}"),
            &body,
        ),
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
    m.users.expect_find_cookie_session().never();
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
    m.users.expect_find_cookie_session().returning(|_| {
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
    m.users.expect_set_password().never();
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
        .expect_set_password()
        .times(1)
        .returning(|_, _, _, _, _| Ok(()));
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
    m.users
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
