//! POST /auth/login and POST /auth/token.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, app_test, assert_problem, assert_unauthorized};

app_test!(a_valid_login_returns_a_bearer_token_pair, |app| {
    assert_eq!(
        app.register("alice@example.com", PASSWORD).await.status(),
        201
    );
    let response = app.login("ALICE@example.com", PASSWORD).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);
});

app_test!(
    wrong_password_and_unknown_email_get_the_same_answer,
    |app| {
        assert_eq!(
            app.register("alice@example.com", PASSWORD).await.status(),
            201
        );
        let wrong = app.login("alice@example.com", "wrong password").await;
        let unknown = app.login("nobody@example.com", PASSWORD).await;
        let wrong = assert_unauthorized(wrong, "Incorrect email or password").await;
        let unknown = assert_unauthorized(unknown, "Incorrect email or password").await;
        assert_eq!(wrong, unknown);
    }
);

app_test!(
    an_inactive_user_is_told_only_after_a_correct_password,
    |app| {
        assert_eq!(
            app.register("gone@example.com", PASSWORD).await.status(),
            201
        );
        let email = portcullis::domain::Email::parse("gone@example.com").unwrap();
        app.operator()
            .await
            .admin
            .set_active(&email, false)
            .await
            .unwrap();
        assert_unauthorized(
            app.login("gone@example.com", PASSWORD).await,
            "Inactive user account",
        )
        .await;
        assert_unauthorized(
            app.login("gone@example.com", "wrong password").await,
            "Incorrect email or password",
        )
        .await;
    }
);

app_test!(login_bodies_are_validated, |app| {
    let missing = app
        .post_json("/auth/login", &json!({"email": "a@b.co"}))
        .await;
    let body = assert_problem(missing, 422, "").await;
    assert_eq!(body["errors"][0]["field"], "password");
    let wrong_type = app
        .post_json(
            "/auth/login",
            &json!({"email": ["a@b.co"], "password": PASSWORD}),
        )
        .await;
    let body = assert_problem(wrong_type, 422, "").await;
    assert_eq!(body["errors"][0]["field"], "email");
    let malformed = app
        .post_json("/auth/login", &json!({"email": "nope", "password": "x"}))
        .await;
    assert_problem(malformed, 422, "").await;
});

app_test!(the_oauth2_password_grant_issues_tokens, |app| {
    assert_eq!(
        app.register("swagger@example.com", PASSWORD).await.status(),
        201
    );
    let response = app
        .client
        .post(app.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "Swagger@Example.com"),
            ("password", PASSWORD),
            ("scope", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    let me = app
        .get_auth("/auth/me", body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.status(), 200);
});

app_test!(oauth2_errors_take_the_rfc_6749_form, |app| {
    assert_eq!(
        app.register("oauth@example.com", PASSWORD).await.status(),
        201
    );
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("grant_type", "password"),
                ("username", "oauth@example.com"),
                ("password", "wrong"),
            ],
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "nobody@example.com"),
                ("password", PASSWORD),
            ],
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "not an email"),
                ("password", PASSWORD),
            ],
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("username", "oauth@example.com"),
            ],
            "unsupported_grant_type",
        ),
        (
            &[("username", "oauth@example.com"), ("password", PASSWORD)],
            "invalid_request",
        ),
    ];
    for (form, error) in cases {
        let response = app
            .client
            .post(app.url("/auth/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{form:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{form:?}");
        assert!(body["error_description"].is_string());
    }
});
