//! Refresh with rotation and reuse detection, logout, the session list, password change.

use portcullis::domain::Email;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TestApp, access_token, app_test, assert_problem, assert_unauthorized, refresh_token,
};

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/auth/refresh", &json!({"refresh_token": token}))
        .await
}

async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let response = app.get_auth("/auth/sessions", access).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

app_test!(
    refreshing_spends_the_token_and_issues_a_working_pair,
    |app| {
        let first = app.signed_up("stay@example.com").await;
        let response = refresh(&app, &refresh_token(&first)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let second: Value = response.json().await.unwrap();
        assert_eq!(second["token_type"], "bearer");
        assert_ne!(refresh_token(&second), refresh_token(&first));
        assert_eq!(
            app.get_auth("/auth/me", &access_token(&second))
                .await
                .status(),
            200
        );
        // A chain of refreshes keeps the one session alive.
        let third: Value = refresh(&app, &refresh_token(&second))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(sessions(&app, &access_token(&third)).await.len(), 1);
    }
);

app_test!(
    replaying_a_spent_refresh_token_revokes_the_whole_session,
    |app| {
        let stolen = app.signed_up("theft@example.com").await;
        let legit: Value = refresh(&app, &refresh_token(&stolen))
            .await
            .json()
            .await
            .unwrap();
        // The thief replays the spent token.
        let replay = refresh(&app, &refresh_token(&stolen)).await;
        assert_unauthorized(replay, "").await;
        // Every token descended from that login is dead now.
        assert_unauthorized(refresh(&app, &refresh_token(&legit)).await, "").await;
        assert_unauthorized(app.get_auth("/auth/me", &access_token(&legit)).await, "").await;
        assert_unauthorized(app.get_auth("/auth/me", &access_token(&stolen)).await, "").await;
        // The owner can still log in again.
        assert_eq!(app.login("theft@example.com", PASSWORD).await.status(), 200);
    }
);

app_test!(
    two_refreshes_of_one_token_at_once_let_exactly_one_succeed,
    |app| {
        for round in 0..5 {
            let tokens = app.signed_up(&format!("race{round}@example.com")).await;
            let token = refresh_token(&tokens);
            let (a, b) = tokio::join!(refresh(&app, &token), refresh(&app, &token));
            let mut statuses = [a.status().as_u16(), b.status().as_u16()];
            statuses.sort_unstable();
            assert_eq!(statuses, [200, 401], "round {round}");
        }
    }
);

app_test!(unknown_and_malformed_refresh_tokens_are_401_or_422, |app| {
    for token in ["", "nonsense", &"A".repeat(43), &"x".repeat(5000)] {
        assert_unauthorized(refresh(&app, token).await, "").await;
    }
    let missing = app.post_json("/auth/refresh", &json!({})).await;
    assert_problem(missing, 422, "").await;
    let wrong_type = app
        .post_json("/auth/refresh", &json!({"refresh_token": 42}))
        .await;
    assert_problem(wrong_type, 422, "").await;
});

app_test!(logout_ends_the_session_and_its_tokens_at_once, |app| {
    let tokens = app.signed_up("bye@example.com").await;
    let access = access_token(&tokens);
    let other = app
        .login("bye@example.com", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let response = app.logout(&access).await;
    assert_eq!(response.status(), 204);
    assert_unauthorized(app.get_auth("/auth/me", &access).await, "").await;
    assert_unauthorized(refresh(&app, &refresh_token(&tokens)).await, "").await;
    // The other session is untouched.
    assert_eq!(
        app.get_auth("/auth/me", &access_token(&other))
            .await
            .status(),
        200
    );
    let none = app
        .client
        .post(app.url("/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(none, "Could not validate credentials").await;
});

app_test!(
    the_session_list_shows_live_sessions_and_marks_the_current_one,
    |app| {
        let first = app.signed_up("many@example.com").await;
        let second: Value = app
            .client
            .post(app.url("/auth/login"))
            .header("user-agent", "phone-app/1.0")
            .json(&json!({"email": "many@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = sessions(&app, &access_token(&second)).await;
        assert_eq!(listed.len(), 2);
        let current: Vec<&Value> = listed.iter().filter(|s| s["current"] == true).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0]["user_agent"], "phone-app/1.0");
        assert_eq!(current[0]["ip"], "127.0.0.1");
        for session in &listed {
            for key in [
                "id",
                "created_at",
                "last_used_at",
                "user_agent",
                "ip",
                "current",
            ] {
                assert!(session.get(key).is_some(), "{key} missing");
            }
        }
        // Ending the first session from the second.
        let first_id = listed.iter().find(|s| s["current"] == false).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = app
            .client
            .delete(app.url(&format!("/auth/sessions/{first_id}")))
            .bearer_auth(access_token(&second))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        assert_unauthorized(app.get_auth("/auth/me", &access_token(&first)).await, "").await;
        assert_eq!(sessions(&app, &access_token(&second)).await.len(), 1);
    }
);

app_test!(
    ending_someone_elses_session_is_404_and_changes_nothing,
    |app| {
        let victim = app.signed_up("victim@example.com").await;
        let attacker = app.token_for("attacker@example.com").await;
        let victim_session = sessions(&app, &access_token(&victim)).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for id in [
            victim_session.as_str(),
            "00000000-0000-0000-0000-000000000000",
            "not-a-uuid",
        ] {
            let response = app
                .client
                .delete(app.url(&format!("/auth/sessions/{id}")))
                .bearer_auth(&attacker)
                .send()
                .await
                .unwrap();
            assert_problem(response, 404, "").await;
        }
        assert_eq!(
            app.get_auth("/auth/me", &access_token(&victim))
                .await
                .status(),
            200
        );
    }
);

app_test!(changing_the_password_ends_every_other_session, |app| {
    let here = app.signed_up("pw@example.com").await;
    let elsewhere = app
        .login("pw@example.com", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let change = |current: &str, new: &str| {
        app.client
            .post(app.url("/auth/password"))
            .bearer_auth(access_token(&here))
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    assert_unauthorized(
        change("wrong password", "a brand new secret")
            .await
            .unwrap(),
        "",
    )
    .await;
    let weak = change(PASSWORD, "short").await.unwrap();
    let body = assert_problem(weak, 422, "").await;
    assert_eq!(body["errors"][0]["field"], "new_password");
    // Nothing changed so far.
    assert_eq!(
        app.get_auth("/auth/me", &access_token(&elsewhere))
            .await
            .status(),
        200
    );

    assert_eq!(
        change(PASSWORD, "a brand new secret")
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        app.get_auth("/auth/me", &access_token(&here))
            .await
            .status(),
        200
    );
    assert_unauthorized(
        app.get_auth("/auth/me", &access_token(&elsewhere)).await,
        "",
    )
    .await;
    assert_unauthorized(refresh(&app, &refresh_token(&elsewhere)).await, "").await;
    assert_eq!(app.login("pw@example.com", PASSWORD).await.status(), 401);
    assert_eq!(
        app.login("pw@example.com", "a brand new secret")
            .await
            .status(),
        200
    );
});

app_test!(deactivating_a_user_ends_their_sessions, |app| {
    let tokens = app.signed_up("off@example.com").await;
    let email = Email::parse("off@example.com").unwrap();
    let operator = app.operator().await;
    operator.admin.set_active(&email, false).await.unwrap();
    assert_unauthorized(
        app.get_auth("/auth/me", &access_token(&tokens)).await,
        "Inactive user",
    )
    .await;
    assert_unauthorized(refresh(&app, &refresh_token(&tokens)).await, "").await;
    // Reactivation does not bring the old sessions back.
    operator.admin.set_active(&email, true).await.unwrap();
    assert_unauthorized(
        app.get_auth("/auth/me", &access_token(&tokens)).await,
        "Could not validate credentials",
    )
    .await;
    assert_unauthorized(refresh(&app, &refresh_token(&tokens)).await, "").await;
    assert_eq!(app.login("off@example.com", PASSWORD).await.status(), 200);
});
