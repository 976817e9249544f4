//! GET /auth/me, /protected/user and /protected/admin.

use serde_json::{Value, json};

use crate::helpers::{app_test, assert_problem, assert_unauthorized};

app_test!(a_valid_token_reaches_the_user_route, |app| {
    let token = app.token_for("alice@example.com").await;
    let response = app.get_auth("/protected/user", &token).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string());
    assert!(body["user_id"].is_i64());
    assert_eq!(body["user_email"], "alice@example.com");
    assert_eq!(body["user_role"], "user");
    let me: Value = app.get_auth("/auth/me", &token).await.json().await.unwrap();
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["id"], body["user_id"]);
});

app_test!(no_token_garbage_or_a_wrong_scheme_is_401, |app| {
    let token = app.token_for("alice@example.com").await;
    let none = app
        .client
        .get(app.url("/protected/user"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(none, "Could not validate credentials").await;
    for header in [
        "Bearer garbage".to_owned(),
        "Bearer ".to_owned(),
        "Bearer".to_owned(),
        format!("Basic {token}"),
        format!("Token {token}"),
        token.clone(),
        format!("Bearer {token}x"),
    ] {
        let response = app
            .client
            .get(app.url("/protected/user"))
            .header("authorization", header.as_str())
            .send()
            .await
            .unwrap();
        assert_unauthorized(response, "Could not validate credentials").await;
    }
});

app_test!(an_admin_may_use_both_routes_and_a_user_only_one, |app| {
    let user = app.token_for("user@example.com").await;
    let admin = app.admin_token("admin@example.com").await;
    assert_eq!(app.get_auth("/protected/user", &admin).await.status(), 200);
    let response = app.get_auth("/protected/admin", &admin).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user_role"], "admin");
    assert!(body["message"].as_str().unwrap().contains("admin"));
    assert_problem(
        app.get_auth("/protected/admin", &user).await,
        403,
        "Insufficient privileges",
    )
    .await;
    let none = app
        .client
        .get(app.url("/protected/admin"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(none, "Could not validate credentials").await;
});

app_test!(
    role_changes_and_deactivation_apply_to_the_next_request,
    |app| {
        // Another admin stays, so that demoting this one leaves an admin (the last-admin rule).
        // The changes go through this instance's admin API: a change made here applies to the
        // very next request here, cached session checks included (another instance's or the
        // CLI's changes arrive within milliseconds: tests/api/session_cache.rs).
        let keeper = app.admin_token("keeper@example.com").await;
        let token = app.token_for("flip@example.com").await;
        let me: Value = app.get_auth("/auth/me", &token).await.json().await.unwrap();
        let change = |body: Value| {
            app.client
                .patch(app.url(&format!("/admin/users/{}", me["id"])))
                .bearer_auth(&keeper)
                .json(&body)
                .send()
        };
        assert_eq!(app.get_auth("/protected/admin", &token).await.status(), 403);
        assert_eq!(
            change(json!({"role": "admin"})).await.unwrap().status(),
            200
        );
        assert_eq!(app.get_auth("/protected/admin", &token).await.status(), 200);
        assert_eq!(change(json!({"role": "user"})).await.unwrap().status(), 200);
        assert_eq!(app.get_auth("/protected/admin", &token).await.status(), 403);
        assert_eq!(
            change(json!({"is_active": false})).await.unwrap().status(),
            200
        );
        assert_unauthorized(app.get_auth("/protected/user", &token).await, "").await;
    }
);
