//! The password policy at every place a password is set, rehashing at login, and pyauth's
//! tokens during a cutover.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Response;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, SECRET, TestApp, access_token, app_test, assert_unauthorized, run_cli,
};
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
    let link = app.operator().await.reset_link(&email).await.unwrap();
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

/// A token exactly as pyauth's `create_access_token` makes it: python-jose, HS256,
/// `{"sub": str(user.id), "role": user.role.value, "exp": ...}`.
fn pyauth_token(user_id: i64, role: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user_id.to_string(), "role": role, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339()
}

async fn user_id(app: &TestApp, token: &str) -> i64 {
    let me: Value = app.get_auth("/auth/me", token).await.json().await.unwrap();
    me["id"].as_i64().unwrap()
}

app_test!(
    pyauth_tokens_work_until_the_deadline_and_belong_to_no_session,
    json!({"accept_pyauth_tokens_until": in_an_hour()}),
    |app| {
        let own = app.token_for("carried@example.com").await;
        let id = user_id(&app, &own).await;
        let exp = chrono::Utc::now().timestamp() + 900;
        let token = pyauth_token(id, "user", exp);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header, json!({"typ": "JWT", "alg": "HS256"}));
        assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
        let sessions: Value = app
            .get_auth("/auth/sessions", &token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(sessions.as_array().unwrap().len(), 1);
        assert_eq!(sessions[0]["current"], false);
        // Logout answers 204 and ends nothing: the token carries no session.
        let logout = app.logout(&token).await;
        assert_eq!(logout.status(), 204);
        assert_eq!(app.get_auth("/protected/user", &token).await.status(), 200);
        assert_eq!(app.get_auth("/protected/user", &own).await.status(), 200);
        // The role comes from the database, not the token; a deactivation applies at once.
        let claims_admin = pyauth_token(id, "admin", exp);
        assert_eq!(
            app.get_auth("/protected/admin", &claims_admin)
                .await
                .status(),
            403
        );
        let operator = app.operator().await;
        let email = portcullis::domain::Email::parse("carried@example.com").unwrap();
        operator.set_active(&email, false).await.unwrap();
        assert_unauthorized(app.get_auth("/auth/me", &token).await, "Inactive user").await;
        // Expired, forged, or for nobody.
        for refused in [
            pyauth_token(id, "user", chrono::Utc::now().timestamp() - 3600),
            pyauth_token(999_999, "user", exp),
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": id.to_string(), "role": "user", "exp": exp}),
                &EncodingKey::from_secret(b"not the secret key, not at all"),
            )
            .unwrap(),
        ] {
            assert_eq!(app.get_auth("/auth/me", &refused).await.status(), 401);
        }
    }
);

app_test!(
    pyauth_tokens_are_refused_without_the_setting_and_after_the_deadline,
    |app| {
        let own = app.token_for("late@example.com").await;
        let id = user_id(&app, &own).await;
        let exp = chrono::Utc::now().timestamp() + 900;
        let token = pyauth_token(id, "user", exp);
        assert_unauthorized(app.get_auth("/auth/me", &token).await, "").await;
        let mut settings = app.settings.clone();
        settings.accept_pyauth_tokens_until =
            Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1));
        let mut passed = TestApp::spawn(settings).await;
        assert_unauthorized(passed.get_auth("/auth/me", &token).await, "").await;
        passed.stop().await;
    }
);
