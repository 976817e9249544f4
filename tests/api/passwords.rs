//! The password policy at every place a password is set, and rehashing at login. (pyauth's
//! tokens during a cutover are in `import.rs`: they name only imported users.)

use reqwest::Response;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, access_token, app_test, run_cli};
use crate::import::stored_hash;

const COMMON: &str = "is one of the most commonly used passwords; choose another";
const SAME_AS_EMAIL: &str = "must not be the email address or its local part";

/// A 422 whose one error names `field` and says `message`.
async fn assert_policy(response: Response, field: &str, message: &str) {
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], field, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(message),
        "{body}"
    );
}

app_test!(
    registration_refuses_common_passwords_and_the_address,
    |app| {
        for (password, message) in [
            ("password1", COMMON),
            ("PassWord1", COMMON),
            ("12345678", COMMON),
            ("Ann.Smith@Example.com", SAME_AS_EMAIL),
            ("ANN.SMITH", SAME_AS_EMAIL),
        ] {
            let response = app.register("ann.smith@example.com", password).await;
            assert_policy(response, "password", message).await;
        }
        // The length rule keeps its own message.
        let short = app.register("ann.smith@example.com", "short").await;
        assert_policy(short, "password", "must be at least 8 characters").await;
        assert_eq!(
            app.register("ann.smith@example.com", PASSWORD)
                .await
                .status(),
            201
        );
    }
);

app_test!(
    a_minimum_score_refuses_guessable_passwords_with_advice,
    json!({"password_min_score": 3}),
    |app| {
        let weak = app
            .post_json(
                "/auth/register",
                &json!({"email": "quill@example.com", "password": "zanzibarquill", "full_name": "Zanzibar Quill"}),
            )
            .await;
        assert_policy(weak, "password", "is too easy to guess: ").await;
        // The person's own name, exactly as given, is no password either.
        let own_name = app
            .post_json(
                "/auth/register",
                &json!({"email": "quill@example.com", "password": "Zanzibar Quill", "full_name": "Zanzibar Quill"}),
            )
            .await;
        assert_policy(own_name, "password", "is too easy to guess: ").await;
        assert_eq!(
            app.register("quill@example.com", "vivid otter cantilever 93")
                .await
                .status(),
            201
        );
    }
);

app_test!(every_place_a_password_is_set_applies_the_policy, |app| {
    // Change.
    let token = app.token_for("owner@example.com").await;
    let change = app
        .client
        .post(app.url("/auth/password"))
        .bearer_auth(&token)
        .json(&json!({"current_password": PASSWORD, "new_password": "iloveyou1"}))
        .send()
        .await
        .unwrap();
    assert_policy(change, "new_password", COMMON).await;
    // The weak attempt changed nothing.
    assert_eq!(app.get_auth("/auth/me", &token).await.status(), 200);

    // Reset: the link stays usable after a refused password.
    let email = portcullis::domain::Email::parse("owner@example.com").unwrap();
    let link = app
        .operator()
        .await
        .recovery
        .reset_link(&email)
        .await
        .unwrap();
    let reset_token = link.split("token=").nth(1).unwrap().to_owned();
    let refused = app
        .post_json(
            "/auth/password/reset",
            &json!({"token": reset_token, "new_password": "owner@example.com"}),
        )
        .await;
    assert_policy(refused, "new_password", SAME_AS_EMAIL).await;
    let reset = app
        .post_json(
            "/auth/password/reset",
            &json!({"token": reset_token, "new_password": "a much better secret"}),
        )
        .await;
    assert_eq!(reset.status(), 204);

    // Administration.
    let admin = app.admin_token("root@example.com").await;
    let created = app
        .client
        .post(app.url("/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": "new@example.com", "password": "qwerty123"}))
        .send()
        .await
        .unwrap();
    assert_policy(created, "password", COMMON).await;

    // The command line.
    let cli = run_cli(
        app.settings.database_url(),
        &[],
        &["user", "create", "cli@example.com"],
        "password123\n",
    );
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("most commonly used"));
});

app_test!(
    a_login_rehashes_at_the_configured_cost_and_a_failed_one_does_not,
    |app| {
        app.register("rehash@example.com", PASSWORD).await;
        let url = app.settings.database_url().to_owned();
        let id = 1;
        assert!(stored_hash(&url, id).await.starts_with("$2b$04$"));
        let mut settings = app.settings.clone();
        settings.bcrypt_cost = 5;
        let mut costlier = TestApp::spawn(settings).await;
        assert_eq!(
            costlier
                .login("rehash@example.com", "wrong password")
                .await
                .status(),
            401
        );
        assert!(
            stored_hash(&url, id).await.starts_with("$2b$04$"),
            "a failed login rehashed"
        );
        let login = costlier.login("rehash@example.com", PASSWORD).await;
        assert_eq!(login.status(), 200);
        let before = stored_hash(&url, id).await;
        assert!(before.starts_with("$2b$05$"), "{before}");
        // The session the login opened is untouched by the rehash, and the next login keeps it.
        let token = access_token(&login.json().await.unwrap());
        assert_eq!(costlier.get_auth("/auth/me", &token).await.status(), 200);
        assert_eq!(
            costlier
                .login("rehash@example.com", PASSWORD)
                .await
                .status(),
            200
        );
        assert_eq!(stored_hash(&url, id).await, before);
        costlier.stop().await;
    }
);
