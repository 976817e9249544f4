//! The OpenID provider over HTTP, driven as a relying party and a browser would (cookies and
//! forms by hand), with the attacks that matter: replayed and stolen codes, wrong verifiers,
//! redirect URIs off by one character, open redirects, cross-origin consent, tokens used
//! where they do not belong, and grants that must end. `relying_party.rs` does the whole flow
//! with a real OpenID Connect library and Chromium.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::browser::free_port;
use crate::helpers::{PASSWORD, TestApp, app_test, assert_unauthorized, claims_of, run_cli};

/// Settings with the provider on: EdDSA, and `jwt_issuer` equal to `public_url`, on a port
/// chosen now so that both can name it.
pub(crate) fn provider_on() -> Value {
    let port = free_port();
    let url = format!("http://localhost:{port}");
    json!({"port": port, "public_url": url, "jwt_issuer": url, "jwt_algorithm": "EdDSA"})
}

pub(crate) const REDIRECT: &str = "https://wiki.example/callback";
const VERIFIER: &str = "a-verifier-of-enough-length-0123456789-abcdefghijklmnop";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A registered client, as the admin API made it.
pub(crate) struct Client {
    pub id: String,
    pub secret: String,
}

/// Registers a confidential client with `REDIRECT` through the admin API.
pub(crate) async fn register_client(app: &TestApp, admin: &str, extra: Value) -> Client {
    let mut body = json!({
        "name": "Wiki",
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": ["https://wiki.example/bye"],
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    let response = app
        .client
        .post(app.url("/admin/clients"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let made: Value = response.json().await.unwrap();
    Client {
        id: made["client_id"].as_str().unwrap().to_owned(),
        secret: made["client_secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// A browser's cookies and the console's forms, by hand.
pub(crate) struct Visit<'a> {
    app: &'a TestApp,
    origin: String,
    cookies: HashMap<String, String>,
}

impl<'a> Visit<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            origin: app.settings.public_url.clone().unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all("set-cookie") {
            let text = set.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub async fn get(&mut self, path_and_query: &str) -> reqwest::Response {
        let response = self
            .app
            .client
            .get(self.app.url(path_and_query))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    pub async fn post_form(
        &mut self,
        path: &str,
        origin: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let response = self
            .app
            .client
            .post(self.app.url(path))
            .header("cookie", self.cookie_header())
            .header("origin", origin)
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    /// Signs in to the console with the password.
    pub async fn sign_in(&mut self, email: &str) {
        let page = self.get("/console/sign-in").await.text().await.unwrap();
        let csrf = hidden(&page, "csrf");
        let origin = self.origin.clone();
        let response = self
            .post_form(
                "/console/sign-in",
                &origin,
                &[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", PASSWORD),
                    ("next", ""),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "signed in");
    }

    /// Answers the consent page `page` with `decision` from `origin`.
    pub async fn answer(&mut self, page: &str, decision: &str, origin: &str) -> reqwest::Response {
        let csrf = hidden(page, "csrf");
        let request = hidden(page, "request");
        self.post_form(
            "/oauth/authorize",
            origin,
            &[
                ("csrf", &csrf),
                ("request", &request),
                ("decision", decision),
            ],
        )
        .await
    }
}

/// The value of the hidden field `name` of an HTML page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    let end = start + page[start..].find('"').unwrap();
    unescape(&page[start..end])
}

/// HTML text with its character references (`&amp;`, `&#38;`, `&#x2f;`) resolved.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find(';') else {
            break;
        };
        let entity = &rest[at + 1..at + end];
        let decoded = match entity {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        out.push(decoded.expect("a known character reference"));
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Where a page of the "continue" kind, or a 303, sends the browser.
async fn destination(response: reqwest::Response) -> String {
    if response.status() == StatusCode::SEE_OTHER {
        return response.headers()["location"].to_str().unwrap().to_owned();
    }
    let status = response.status();
    let page = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    let start = page.find("url=").expect("a meta refresh") + 4;
    let end = start + page[start..].find('"').unwrap();
    unescape(&page[start..end])
}

/// The query parameters of a URL.
fn params(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap()
        .into_iter()
        .collect()
}

/// An authorization request's query for `client`, with `extra` pairs.
fn authorize_query(client: &str, extra: &[(&str, &str)]) -> String {
    let challenge = challenge(VERIFIER);
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email profile offline_access"),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in extra {
        pairs.retain(|(n, _)| n != name);
        pairs.push((name, value));
    }
    serde_urlencoded::to_string(pairs).unwrap()
}

/// The whole browser part: authorize, consent (Allow), the code at the redirect URI.
pub(crate) async fn code_for(visit: &mut Visit<'_>, client: &str) -> String {
    code_for_with(visit, client, &[]).await
}

/// [`code_for`], with `extra` parameters in the authorization request.
async fn code_for_with(visit: &mut Visit<'_>, client: &str, extra: &[(&str, &str)]) -> String {
    let response = visit
        .get(&format!(
            "/oauth/authorize?{}",
            authorize_query(client, extra)
        ))
        .await;
    let target = if response.status() == StatusCode::OK {
        let page = response.text().await.unwrap();
        assert!(page.contains("Allow") && page.contains("Deny"), "{page}");
        let origin = visit.origin.clone();
        destination(visit.answer(&page, "allow", &origin).await).await
    } else {
        destination(response).await
    };
    assert!(target.starts_with(REDIRECT), "{target}");
    let params = params(&target);
    assert_eq!(params["state"], "st-1");
    assert_eq!(params["iss"], visit.origin);
    params["code"].clone()
}

/// `POST /oauth/token` with Basic authentication.
pub(crate) async fn token(
    app: &TestApp,
    client: &Client,
    form: &[(&str, &str)],
) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .basic_auth(&client.id, Some(&client.secret))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// `POST /oauth/token` with the refresh token `refresh`.
async fn refresh_with(app: &TestApp, client: &Client, refresh: &str) -> reqwest::Response {
    token(
        app,
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await
}

async fn exchange(app: &TestApp, client: &Client, code: &str) -> reqwest::Response {
    token(
        app,
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

async fn oauth_error(response: reqwest::Response, status: u16, error: &str) {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
}

async fn userinfo(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// An app with the provider on, an admin, a client and a signed-in user ("ann").
async fn setting_up(app: &TestApp) -> (Client, Visit<'_>) {
    let admin = app.admin_token("root@example.com").await;
    let client = register_client(app, &admin, json!({})).await;
    app.signed_up("ann@example.com").await;
    let mut visit = Visit::new(app);
    visit.sign_in("ann@example.com").await;
    (client, visit)
}

app_test!(
    a_code_becomes_tokens_once_and_they_carry_what_the_contract_says,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let response = exchange(&app, &client, &code).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let tokens: Value = response.json().await.unwrap();
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["scope"], "openid profile email offline_access");
        let access = tokens["access_token"].as_str().unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(access.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], "at+jwt");
        let at = claims_of(access);
        let issuer = app.settings.public_url.clone().unwrap();
        assert_eq!(at["iss"], issuer.as_str());
        assert_eq!(at["aud"], client.id.as_str());
        assert_eq!(at["client_id"], client.id.as_str());
        let id = claims_of(tokens["id_token"].as_str().unwrap());
        assert_eq!(id["aud"], json!([client.id]));
        assert_eq!(id["azp"], client.id.as_str());
        assert_eq!(id["nonce"], "n-1");
        assert_eq!(id["amr"], json!(["pwd"]));
        assert_eq!(id["email"], "ann@example.com");
        assert_eq!(id["sub"], at["sub"]);
        assert!(id["auth_time"].is_i64() && id["at_hash"].is_string() && id["sid"].is_string());
        let expected_hash = URL_SAFE_NO_PAD.encode(&sha2::Sha512::digest(access.as_bytes())[..32]);
        assert_eq!(
            id["at_hash"],
            expected_hash.as_str(),
            "EdDSA: the left half of SHA-512"
        );

        let info: Value = userinfo(&app, access).await.json().await.unwrap();
        assert_eq!(info["sub"], id["sub"]);
        assert_eq!(info["email"], "ann@example.com");
        assert_eq!(info["email_verified"], false);

        // The code again: refused, and the tokens of its first exchange end.
        oauth_error(exchange(&app, &client, &code).await, 400, "invalid_grant").await;
        assert_eq!(
            userinfo(&app, access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let refresh = tokens["refresh_token"].as_str().unwrap();
        oauth_error(
            refresh_with(&app, &client, refresh).await,
            400,
            "invalid_grant",
        )
        .await;
        let audit = app.operator().await;
        let events = audit
            .admin
            .audit_events(&portcullis::domain::AuditQuery {
                kind: portcullis::domain::AuditKind::parse("oauth.code_reused"),
                limit: 10,
                ..portcullis::domain::AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }
);

app_test!(
    a_code_is_refused_to_another_client_a_wrong_verifier_and_another_redirect_uri,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let admin = app.admin_token("second@example.com").await;
        let thief = register_client(&app, &admin, json!({"name": "Thief"})).await;
        let code = code_for(&mut visit, &client.id).await;
        let attempts: [(&Client, &str, &str); 3] = [
            (&thief, REDIRECT, VERIFIER),
            (&client, "https://wiki.example/callbacK", VERIFIER),
            (
                &client,
                REDIRECT,
                "a-verifier-of-enough-length-0123456789-abcdefghijklmnoQ",
            ),
        ];
        for (who, redirect, verifier) in attempts {
            let response = token(
                &app,
                who,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", verifier),
                ],
            )
            .await;
            oauth_error(response, 400, "invalid_grant").await;
        }
        // None of those spent it: the rightful exchange still works.
        assert_eq!(
            exchange(&app, &client, &code).await.status(),
            StatusCode::OK
        );
    }
);

app_test!(
    client_authentication_failures_are_invalid_client,
    provider_on(),
    |app| {
        let (client, _) = setting_up(&app).await;
        let wrong = Client {
            id: client.id.clone(),
            secret: "wrong".into(),
        };
        let response = token(&app, &wrong, &[("grant_type", "client_credentials")]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        oauth_error(
            token(&app, &wrong, &[("grant_type", "client_credentials")]).await,
            401,
            "invalid_client",
        )
        .await;
        // No credentials at all.
        let response = app
            .client
            .post(app.url("/oauth/token"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        oauth_error(response, 401, "invalid_client").await;
        // A client without the grant.
        oauth_error(
            token(&app, &client, &[("grant_type", "client_credentials")]).await,
            400,
            "unauthorized_client",
        )
        .await;
        oauth_error(
            token(&app, &client, &[("grant_type", "password")]).await,
            400,
            "unsupported_grant_type",
        )
        .await;
    }
);

app_test!(
    the_authorization_endpoint_never_redirects_to_what_is_not_registered,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        for query in [
            authorize_query(
                &client.id,
                &[("redirect_uri", "https://wiki.example/callback/")],
            ),
            authorize_query(
                &client.id,
                &[("redirect_uri", "https://evil.example/callback")],
            ),
            authorize_query("no-such-client", &[]),
        ] {
            let response = visit.get(&format!("/oauth/authorize?{query}")).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            assert!(response.headers().get("location").is_none());
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html")
            );
        }
        // Other errors go back to the registered URI, with state and iss, before any sign-in.
        let mut anonymous = Visit::new(&app);
        for (query, error) in [
            (
                authorize_query(&client.id, &[("code_challenge_method", "plain")]),
                "invalid_request",
            ),
            (
                authorize_query(&client.id, &[("scope", "openid admin")]),
                "invalid_scope",
            ),
            (
                authorize_query(&client.id, &[("response_type", "token")]),
                "unsupported_response_type",
            ),
            (
                format!("{}&scope=email", authorize_query(&client.id, &[])),
                "invalid_request",
            ),
            (
                authorize_query(&client.id, &[("prompt", "none")]),
                "login_required",
            ),
        ] {
            let response = anonymous.get(&format!("/oauth/authorize?{query}")).await;
            let target = destination(response).await;
            assert!(target.starts_with(REDIRECT), "{target}");
            let params = params(&target);
            assert_eq!(params["error"], error, "{query}");
            assert_eq!(params["state"], "st-1");
        }
        // Signed in, with no consent yet, prompt=none cannot ask.
        let response = visit
            .get(&format!(
                "/oauth/authorize?{}",
                authorize_query(&client.id, &[("prompt", "none")])
            ))
            .await;
        assert_eq!(
            params(&destination(response).await)["error"],
            "consent_required"
        );
        // Nobody signed in: the console's sign-in page, with the hint, then back here.
        let response = anonymous
            .get(&format!(
                "/oauth/authorize?{}",
                authorize_query(&client.id, &[("login_hint", "ann@example.com")])
            ))
            .await;
        let target = destination(response).await;
        assert!(
            target.starts_with("/console/sign-in?next=%2Foauth%2Fauthorize%3F"),
            "{target}"
        );
        let page = anonymous.get(&target).await.text().await.unwrap();
        assert!(
            page.contains("value=\"ann@example.com\""),
            "login_hint fills the email"
        );
    }
);

app_test!(
    a_consent_posted_from_another_origin_is_refused_and_a_denial_is_access_denied,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let page = visit
            .get(&format!(
                "/oauth/authorize?{}",
                authorize_query(&client.id, &[])
            ))
            .await
            .text()
            .await
            .unwrap();
        assert!(page.contains("Wiki") && page.contains("See your email address"));
        let response = visit.answer(&page, "allow", "https://evil.example").await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let origin = visit.origin.clone();
        let target = destination(visit.answer(&page, "deny", &origin).await).await;
        assert_eq!(params(&target)["error"], "access_denied");
        // Nothing was granted by either.
        let grants = visit.app.operator().await;
        let ann = grants
            .admin
            .find_user(&portcullis::domain::Email::parse("ann@example.com").unwrap())
            .await
            .unwrap();
        assert!(
            grants
                .authorizations
                .grants(ann.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
);

app_test!(
    client_tokens_and_portcullis_tokens_do_not_cross,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let client_token = tokens["access_token"].as_str().unwrap();
        for path in [
            "/auth/me",
            "/protected/user",
            "/admin/users",
            "/auth/sessions",
        ] {
            assert_unauthorized(
                app.get_auth(path, client_token).await,
                "Could not validate credentials",
            )
            .await;
        }
        let own = app.token_for("bob@example.com").await;
        let response = userinfo(&app, &own).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        // The client's refresh token is no session of Portcullis's own.
        let refresh = tokens["refresh_token"].as_str().unwrap();
        let response = app
            .post_json("/auth/refresh", &json!({"refresh_token": refresh}))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // ... and it was left as it was.
        let rotated = refresh_with(&app, &client, refresh).await;
        assert_eq!(rotated.status(), StatusCode::OK);
    }
);

app_test!(
    refresh_tokens_rotate_and_a_reused_one_ends_the_grants_tokens,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let first: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let refresh = first["refresh_token"].as_str().unwrap();
        let second: Value = refresh_with(&app, &client, refresh)
            .await
            .json()
            .await
            .unwrap();
        let newer = second["access_token"].as_str().unwrap();
        assert_eq!(userinfo(&app, newer).await.status(), StatusCode::OK);
        // Narrower is fine; wider is not.
        let narrow = token(
            &app,
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", second["refresh_token"].as_str().unwrap()),
                ("scope", "openid"),
            ],
        )
        .await;
        let narrow: Value = narrow.json().await.unwrap();
        assert_eq!(narrow["scope"], "openid");
        // The spent one again: every token of the grant ends.
        oauth_error(
            refresh_with(&app, &client, refresh).await,
            400,
            "invalid_grant",
        )
        .await;
        assert_eq!(
            userinfo(&app, newer).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let latest = narrow["refresh_token"].as_str().unwrap();
        oauth_error(
            refresh_with(&app, &client, latest).await,
            400,
            "invalid_grant",
        )
        .await;
    }
);

app_test!(
    revocation_introspection_and_the_users_grants,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let access = tokens["access_token"].as_str().unwrap();
        let introspect = |token: String, who: &Client| {
            let request = app
                .client
                .post(app.url("/oauth/introspect"))
                .basic_auth(&who.id, Some(&who.secret))
                .form(&[("token", token)]);
            async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let active = introspect(access.to_owned(), &client).await;
        assert_eq!(active["active"], true);
        assert_eq!(active["client_id"], client.id.as_str());
        assert_eq!(active["token_type"], "Bearer");
        let admin = app.admin_token("other-admin@example.com").await;
        let other = register_client(&app, &admin, json!({"name": "Other"})).await;
        assert_eq!(
            introspect(access.to_owned(), &other).await,
            json!({"active": false})
        );
        // Another client's revocation leaves the token alone.
        let revoke = |token: &str, who: &Client| {
            let request = app
                .client
                .post(app.url("/oauth/revoke"))
                .basic_auth(&who.id, Some(&who.secret))
                .form(&[("token", token.to_owned())]);
            async move { request.send().await.unwrap().status() }
        };
        assert_eq!(revoke(access, &other).await, StatusCode::OK);
        assert_eq!(userinfo(&app, access).await.status(), StatusCode::OK);
        assert_eq!(revoke("not a token", &client).await, StatusCode::OK);
        assert_eq!(revoke(access, &client).await, StatusCode::OK);
        assert_eq!(
            userinfo(&app, access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            introspect(access.to_owned(), &client).await["active"],
            false
        );

        // The user's side: the grant is listed, and revoking it ends its refresh token.
        let user = app.token_for_existing("ann@example.com").await;
        let grants = app.get_json_auth("/auth/grants", &user).await;
        assert_eq!(grants[0]["client_id"], client.id.as_str());
        assert_eq!(grants[0]["client_name"], "Wiki");
        let delete = |id: String| {
            let request = app
                .client
                .delete(app.url(&format!("/auth/grants/{id}")))
                .bearer_auth(&user);
            async move { request.send().await.unwrap().status() }
        };
        assert_eq!(delete(client.id.clone()).await, StatusCode::NO_CONTENT);
        assert_eq!(delete(client.id.clone()).await, StatusCode::NOT_FOUND);
        let refresh = tokens["refresh_token"].as_str().unwrap();
        oauth_error(
            refresh_with(&app, &client, refresh).await,
            400,
            "invalid_grant",
        )
        .await;
    }
);

app_test!(
    a_deleted_client_and_a_deactivated_user_keep_no_token,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let access = tokens["access_token"].as_str().unwrap();
        // Deactivation ends the user's sessions, the grant's among them.
        let operator = app.operator().await;
        let ann = portcullis::domain::Email::parse("ann@example.com").unwrap();
        operator.admin.set_active(&ann, false).await.unwrap();
        assert_eq!(
            userinfo(&app, access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let refresh = tokens["refresh_token"].as_str().unwrap();
        oauth_error(
            refresh_with(&app, &client, refresh).await,
            400,
            "invalid_grant",
        )
        .await;
        operator.admin.set_active(&ann, true).await.unwrap();

        // A second grant, then the client is deleted: its tokens and its secret end.
        let mut visit = Visit::new(&app);
        visit.sign_in("ann@example.com").await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(userinfo(&app, access).await.status(), StatusCode::OK);
        let admin = app.token_for_existing("root@example.com").await;
        let response = app
            .client
            .delete(app.url(&format!("/admin/clients/{}", client.id)))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            userinfo(&app, access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let refresh = tokens["refresh_token"].as_str().unwrap();
        oauth_error(
            refresh_with(&app, &client, refresh).await,
            401,
            "invalid_client",
        )
        .await;
    }
);

app_test!(
    logout_ends_the_console_session_and_redirects_only_where_registered,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let hint = tokens["id_token"].as_str().unwrap();
        // An unregistered target: signed out, and a page rather than a redirect.
        let response = visit
            .get(&format!(
                "/oauth/logout?id_token_hint={hint}&post_logout_redirect_uri={}",
                "https%3A%2F%2Fevil.example%2F"
            ))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("location").is_none());
        let account = visit.get("/console/account").await;
        assert_eq!(account.status(), StatusCode::SEE_OTHER, "signed out");
        // A registered one, named by client_id: back there with the state.
        visit.sign_in("ann@example.com").await;
        // A grant without offline_access, from this sign-in: it ends with it.
        let code = code_for_with(&mut visit, &client.id, &[("scope", "openid email")]).await;
        let online: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        assert!(online.get("refresh_token").is_none());
        let online = online["access_token"].as_str().unwrap().to_owned();
        assert_eq!(userinfo(&app, &online).await.status(), StatusCode::OK);
        let response = visit
            .get(&format!(
                "/oauth/logout?client_id={}&post_logout_redirect_uri={}&state=s9",
                client.id, "https%3A%2F%2Fwiki.example%2Fbye"
            ))
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()["location"],
            "https://wiki.example/bye?state=s9"
        );
        assert_eq!(
            userinfo(&app, &online).await.status(),
            StatusCode::UNAUTHORIZED
        );
        // offline_access lives on after the sign-out.
        let refresh = tokens["refresh_token"].as_str().unwrap();
        let response = refresh_with(&app, &client, refresh).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
);

app_test!(
    clients_are_managed_by_admins_with_their_rules,
    provider_on(),
    |app| {
        let admin = app.admin_token("root@example.com").await;
        let user = app.token_for("ann@example.com").await;
        let response = app
            .client
            .post(app.url("/admin/clients"))
            .bearer_auth(&admin)
            .json(&json!({"name": "Bad", "redirect_uris": ["http://app.example/cb"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "redirect_uris");
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("http://app.example/cb")
        );
        let forbidden = app
            .client
            .get(app.url("/admin/clients"))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

        let client = register_client(&app, &admin, json!({"public": false})).await;
        assert!(client.secret.len() >= 43);
        let listed = app.get_json_auth("/admin/clients", &admin).await;
        assert_eq!(listed["items"][0]["client_id"], client.id.as_str());
        assert!(
            listed["items"][0].get("client_secret").is_none(),
            "the secret is shown once"
        );
        assert_eq!(
            listed["items"][0]["grant_types"],
            json!(["authorization_code", "refresh_token"])
        );
        let rotated: Value = app
            .client
            .post(app.url(&format!("/admin/clients/{}/secret", client.id)))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fresh = Client {
            id: client.id.clone(),
            secret: rotated["client_secret"].as_str().unwrap().to_owned(),
        };
        oauth_error(
            token(&app, &client, &[("grant_type", "client_credentials")]).await,
            401,
            "invalid_client",
        )
        .await;
        let patched = app
            .client
            .patch(app.url(&format!("/admin/clients/{}", client.id)))
            .bearer_auth(&admin)
            .json(&json!({"grant_types": ["client_credentials"], "name": "Machine"}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::OK);
        let machine: Value = token(&app, &fresh, &[("grant_type", "client_credentials")])
            .await
            .json()
            .await
            .unwrap();
        let claims = claims_of(machine["access_token"].as_str().unwrap());
        assert_eq!(claims["sub"], client.id.as_str());
        assert!(machine.get("id_token").is_none() && machine.get("refresh_token").is_none());
        let missing = app
            .client
            .get(app.url("/admin/clients/nope"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["detail"], "Client not found");
    }
);

app_test!(
    the_command_line_registers_lists_rotates_and_deletes_clients,
    provider_on(),
    |app| {
        let db = app.settings.database_url.clone().unwrap();
        let run = |args: &[&str]| {
            let mut all = vec!["clients"];
            all.extend_from_slice(args);
            run_cli(&db, &[], &all, "")
        };
        let made = run(&[
            "create",
            "--name",
            "Grafana",
            "--redirect-uri",
            "https://grafana.example/cb",
            "--json",
        ]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let made: Value = serde_json::from_slice(&made.stdout).unwrap();
        let id = made["client_id"].as_str().unwrap();
        assert!(made["client_secret"].as_str().unwrap().len() >= 43);
        assert_eq!(made["public"], false);
        let refused = run(&[
            "create",
            "--name",
            "X",
            "--redirect-uri",
            "https://x.example/cb#frag",
        ]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("redirect_uris") && stderr.contains("https://x.example/cb#frag"),
            "{stderr}"
        );
        let listed = run(&["list", "--json"]);
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1);
        let rotated = run(&["rotate-secret", id, "--json"]);
        let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
        assert_eq!(rotated["client_id"], id);
        assert_ne!(rotated["client_secret"], made["client_secret"]);
        assert!(run(&["delete", id]).status.success());
        assert!(!run(&["delete", id]).status.success());
    }
);

app_test!(
    the_discovery_document_names_the_provider_when_it_is_on,
    provider_on(),
    |app| {
        let issuer = app.settings.public_url.clone().unwrap();
        let document = app.get_json("/.well-known/openid-configuration").await;
        assert_eq!(document["issuer"], issuer.as_str());
        assert_eq!(
            document["authorization_endpoint"],
            format!("{issuer}/oauth/authorize")
        );
        assert_eq!(document["token_endpoint"], format!("{issuer}/oauth/token"));
        assert_eq!(
            document["end_session_endpoint"],
            format!("{issuer}/oauth/logout")
        );
        assert_eq!(
            document["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(document["response_types_supported"], json!(["code"]));
        assert_eq!(
            document["authorization_response_iss_parameter_supported"],
            true
        );
        assert_eq!(
            document["grant_types_supported"],
            json!(["authorization_code", "refresh_token", "client_credentials"])
        );
        assert_eq!(
            app.get_json("/.well-known/oauth-authorization-server")
                .await,
            document
        );
    }
);

app_test!(the_provider_is_off_with_hs256, |app| {
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
        let response = app
            .client
            .post(app.url(path))
            .form(&[("grant_type", "client_credentials"), ("token", "t")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "OpenID provider needs an asymmetric signing key and a URL issuer"
    );
    let document = app.get_json("/.well-known/openid-configuration").await;
    assert!(document.get("authorization_endpoint").is_none());
    assert_eq!(document["token_endpoint"], app.url("/auth/token"));
});

app_test!(
    without_the_console_the_provider_is_off,
    {
        let mut settings = provider_on();
        settings["console_enabled"] = json!(false);
        settings
    },
    |app| {
        for path in ["/oauth/authorize?client_id=x", "/oauth/logout"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let document = app.get_json("/.well-known/openid-configuration").await;
        assert!(document.get("authorization_endpoint").is_none());
    }
);

app_test!(
    prompt_login_asks_for_the_password_again_even_when_signed_in,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let query = authorize_query(&client.id, &[("prompt", "login")]);
        let target = destination(visit.get(&format!("/oauth/authorize?{query}")).await).await;
        assert!(target.starts_with("/console/sign-in?next="), "{target}");
        assert!(target.ends_with("&reauth=1"), "{target}");
        // The sign-in page shows its form although a session is open.
        let page = visit.get(&target).await;
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        let next = hidden(&page, "next");
        assert!(
            next.starts_with("/oauth/authorize?") && !next.contains("prompt"),
            "{next}"
        );
        // The sign-in form's own token (the navigation's sign-out form comes first).
        let form = &page[page.find("action=\"/console/sign-in\"").unwrap()..];
        let csrf = hidden(form, "csrf");
        let origin = visit.origin.clone();
        let signed_in = visit
            .post_form(
                "/console/sign-in",
                &origin,
                &[
                    ("csrf", &csrf),
                    ("email", "ann@example.com"),
                    ("password", PASSWORD),
                    ("next", &next),
                ],
            )
            .await;
        // On to the authorization endpoint, by a page rather than a redirect after the form.
        let onward = destination(signed_in).await;
        assert_eq!(onward, next);
        let consent = visit.get(&onward).await.text().await.unwrap();
        assert!(consent.contains("Allow"), "{consent}");
        // prompt=login consent: after the sign-in, the consent page is still asked for.
        let query = authorize_query(&client.id, &[("prompt", "login consent")]);
        let target = destination(visit.get(&format!("/oauth/authorize?{query}")).await).await;
        assert!(target.ends_with("&reauth=1"), "{target}");
        assert!(
            target.contains("prompt%3Dconsent%26") || target.contains("prompt%3Dconsent&"),
            "{target}"
        );
    }
);

app_test!(
    a_relying_partys_refresh_token_is_not_where_the_previous_release_looks,
    provider_on(),
    |app| {
        let (client, mut visit) = setting_up(&app).await;
        let code = code_for(&mut visit, &client.id).await;
        let tokens: Value = exchange(&app, &client, &code).await.json().await.unwrap();
        let refresh = tokens["refresh_token"].as_str().unwrap();
        // Release 0.2.0 finds `/auth/refresh` tokens by their plain SHA-256. Beside a newer
        // instance in a rolling upgrade, or after a roll-back, it must not find a relying
        // party's token: it would rotate it into first-party access tokens.
        let plain = format!("{:x}", Sha256::digest(refresh.as_bytes()));
        let db = sea_orm::Database::connect(app.settings.database_url())
            .await
            .unwrap();
        let found = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM refresh_tokens WHERE token_hash = '{plain}'"),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        db.close().await.unwrap();
        assert_eq!(found, 0);
        // Its own endpoint still takes it.
        assert_eq!(
            refresh_with(&app, &client, refresh).await.status(),
            StatusCode::OK
        );
    }
);
