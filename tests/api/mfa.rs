//! The second factor over HTTP: TOTP enrolment, the second step of a login, recovery codes,
//! removal, and an admin's reset. Codes are computed from the secret the API hands out with
//! totp-rs, an independent implementation of RFC 6238, as an authenticator app would.

use serde_json::{Value, json};
use totp_rs::{Algorithm, Builder, Secret};

use crate::helpers::{
    Backend, PASSWORD, TestApp, TestDb, access_token, amr, app_test, assert_problem,
    assert_unauthorized, factors, refresh_token, run_cli, settings,
};

/// An authenticator app holding one secret.
pub struct App(totp_rs::Totp);

impl App {
    /// The app for a base32 secret, as typed (groups separated by spaces or not).
    pub fn new(base32: &str) -> Self {
        let base32: String = base32.split_whitespace().collect();
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_step_duration(30)
            .with_secret(Secret::try_from_base32(&base32).expect("base32 secret"))
            .build()
            .expect("a valid TOTP");
        Self(totp)
    }

    /// The code `steps` steps from now (the server accepts -1 to +1).
    pub fn code(&self, steps: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .cast_signed();
        self.0
            .generate((now + 30 * steps).cast_unsigned())
            .to_string()
    }
}

#[test]
fn the_test_authenticator_agrees_with_the_vectors_of_rfc_6238() {
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(8)
        .with_secret(b"12345678901234567890".to_vec())
        .build()
        .unwrap();
    for (time, code) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_234_567_890, "89005924"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp.generate(time).to_string(), code);
    }
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The body that starts an enrolment: the password, asked again.
fn with_password() -> Value {
    json!({"current_password": PASSWORD})
}

/// Enrols `token`'s user: their authenticator and recovery codes.
pub(crate) async fn enrol(app: &TestApp, token: &str) -> (App, Vec<String>) {
    let response = send(app, "POST", "/auth/mfa/totp", token, &with_password()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap();
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Portcullis:"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")));
    let authenticator = App::new(secret);
    let response = send(
        app,
        "POST",
        "/auth/mfa/totp/confirm",
        token,
        &json!({"code": authenticator.code(0)}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    (authenticator, codes)
}

/// The first step of a login of an enrolled user: its `mfa_token`.
async fn first_step(app: &TestApp, email: &str) -> String {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["methods"], json!(["totp", "recovery_code"]));
    assert!(body.get("access_token").is_none());
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post_json("/auth/mfa/verify", body).await
}

app_test!(an_enrolled_user_logs_in_with_a_code_once_per_code, |app| {
    let tokens = app.signed_up("two@example.com").await;
    assert_eq!(amr(&tokens), json!(["pwd"]));
    let token = access_token(&tokens);
    assert_eq!(factors(&app, &token).await, json!([]));

    // An access token alone starts nothing: the password is asked again.
    assert_problem(
        send(&app, "POST", "/auth/mfa/totp", &token, &json!({})).await,
        422,
        "",
    )
    .await;
    assert_problem(
        send(
            &app,
            "POST",
            "/auth/mfa/totp",
            &token,
            &json!({"current_password": "not the password"}),
        )
        .await,
        401,
        "Incorrect password",
    )
    .await;
    // Enrolling again before confirming replaces the secret: the first one's codes fail.
    let first: Value = send(&app, "POST", "/auth/mfa/totp", &token, &with_password())
        .await
        .json()
        .await
        .unwrap();
    let stale = App::new(first["secret"].as_str().unwrap());
    let second: Value = send(&app, "POST", "/auth/mfa/totp", &token, &with_password())
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["secret"], second["secret"]);
    let confirm = |code: String| {
        let (app, token) = (&app, &token);
        async move {
            send(
                app,
                "POST",
                "/auth/mfa/totp/confirm",
                token,
                &json!({"code": code}),
            )
            .await
        }
    };
    assert_problem(confirm(stale.code(0)).await, 400, "Invalid code").await;
    assert_problem(confirm("12345".into()).await, 400, "Invalid code").await;
    assert_eq!(factors(&app, &token).await, json!([]));
    let authenticator = App::new(second["secret"].as_str().unwrap());
    let confirmed = authenticator.code(0);
    let response = confirm(confirmed.clone()).await;
    assert_eq!(response.status(), 200);
    let codes: Value = response.json().await.unwrap();
    let codes = codes["recovery_codes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(factors(&app, &token).await, json!(["totp"]));
    assert_problem(
        send(&app, "POST", "/auth/mfa/totp", &token, &with_password()).await,
        409,
        "TOTP already enabled",
    )
    .await;

    // The password alone opens nothing now.
    let mfa_token = first_step(&app, "two@example.com").await;
    let wrong = verify(&app, &json!({"mfa_token": mfa_token, "code": "000000"})).await;
    assert_problem(wrong, 400, "Invalid code").await;
    // The code that confirmed the enrolment is spent: the next step's code works once.
    let replay = verify(&app, &json!({"mfa_token": mfa_token, "code": confirmed})).await;
    assert_problem(replay, 400, "Invalid code").await;
    let code = authenticator.code(1);
    let response = verify(&app, &json!({"mfa_token": mfa_token, "code": code})).await;
    assert_eq!(response.status(), 200);
    let signed_in: Value = response.json().await.unwrap();
    assert_eq!(signed_in["token_type"], "bearer");
    assert_eq!(amr(&signed_in), json!(["pwd", "otp"]));
    assert_eq!(
        app.get_auth("/auth/me", &access_token(&signed_in))
            .await
            .status(),
        200
    );
    // A refreshed token says the same.
    let refreshed: Value = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": refresh_token(&signed_in)}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(amr(&refreshed), json!(["pwd", "otp"]));

    // The mfa_token is spent, and the code too, on a new login.
    let again = verify(
        &app,
        &json!({"mfa_token": mfa_token, "code": authenticator.code(-1)}),
    )
    .await;
    assert_problem(again, 400, "Invalid code").await;
    let mfa_token = first_step(&app, "two@example.com").await;
    let replay = verify(&app, &json!({"mfa_token": mfa_token, "code": code})).await;
    assert_problem(replay, 400, "Invalid code").await;

    // A recovery code works once, in any case and with or without dashes.
    let recovery = codes[0].as_str().unwrap().to_uppercase().replace('-', "");
    let response = verify(
        &app,
        &json!({"mfa_token": mfa_token, "recovery_code": recovery}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        amr(&response.json().await.unwrap()),
        json!(["pwd", "recovery"])
    );
    let mfa_token = first_step(&app, "two@example.com").await;
    let spent = verify(
        &app,
        &json!({"mfa_token": mfa_token, "recovery_code": codes[0]}),
    )
    .await;
    assert_problem(spent, 400, "Invalid code").await;
    let other = verify(
        &app,
        &json!({"mfa_token": mfa_token, "recovery_code": codes[1]}),
    )
    .await;
    assert_eq!(other.status(), 200);
});

app_test!(
    the_password_grant_refuses_an_enrolled_user_only_after_the_right_password,
    |app| {
        let token = app.token_for("grant@example.com").await;
        enrol(&app, &token).await;
        let grant = |password: &'static str| {
            let app = &app;
            async move {
                reqwest::Client::new()
                    .post(app.url("/auth/token"))
                    .form(&[
                        ("grant_type", "password"),
                        ("username", "grant@example.com"),
                        ("password", password),
                    ])
                    .send()
                    .await
                    .unwrap()
            }
        };
        let right = grant(PASSWORD).await;
        assert_eq!(right.status(), 400);
        let body: Value = right.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "mfa_required");
        let wrong: Value = grant("not the password").await.json().await.unwrap();
        assert_eq!(wrong["error"], "invalid_grant");
        assert_eq!(wrong["error_description"], "Incorrect email or password");
    }
);

app_test!(the_fifth_wrong_code_spends_the_mfa_token, |app| {
    let token = app.token_for("five@example.com").await;
    let (authenticator, _) = enrol(&app, &token).await;
    let mfa_token = first_step(&app, "five@example.com").await;
    for _ in 0..4 {
        let wrong = verify(&app, &json!({"mfa_token": mfa_token, "code": "000000"})).await;
        assert_problem(wrong, 400, "Invalid code").await;
    }
    // Four wrong codes leave it usable.
    let right = verify(
        &app,
        &json!({"mfa_token": mfa_token, "code": authenticator.code(1)}),
    )
    .await;
    assert_eq!(right.status(), 200);

    let mfa_token = first_step(&app, "five@example.com").await;
    for _ in 0..5 {
        let wrong = verify(&app, &json!({"mfa_token": mfa_token, "code": "000000"})).await;
        assert_problem(wrong, 400, "Invalid code").await;
    }
    let spent = verify(
        &app,
        &json!({"mfa_token": mfa_token, "code": authenticator.code(-1)}),
    )
    .await;
    assert_problem(spent, 400, "Invalid code").await;
    // The wrong codes count as failed logins: the account serves a delay now.
    let response = app.login("five@example.com", PASSWORD).await;
    assert_eq!(response.status(), 429);
});

app_test!(bad_second_steps_are_refused_and_change_nothing, |app| {
    let token_a = app.token_for("ann@example.com").await;
    let (ann, _) = enrol(&app, &token_a).await;
    let token_b = app.token_for("bob@example.com").await;
    enrol(&app, &token_b).await;
    let ann_token = first_step(&app, "ann@example.com").await;
    let bob_token = first_step(&app, "bob@example.com").await;
    // Ann's code does not complete Bob's login.
    let foreign = verify(&app, &json!({"mfa_token": bob_token, "code": ann.code(1)})).await;
    assert_problem(foreign, 400, "Invalid code").await;
    for body in [
        json!({"mfa_token": ann_token}),
        json!({"mfa_token": ann_token, "code": ann.code(1), "recovery_code": "x"}),
        json!({"code": ann.code(1)}),
        json!({"mfa_token": 5, "code": ann.code(1)}),
    ] {
        assert_eq!(verify(&app, &body).await.status(), 422, "{body}");
    }
    for mfa_token in ["", "not-a-token", &"x".repeat(300)] {
        let unknown = verify(&app, &json!({"mfa_token": mfa_token, "code": ann.code(1)})).await;
        assert_problem(unknown, 400, "Invalid code").await;
    }
    for code in ["", "1234567", "12a456", "١٢٣٤٥٦"] {
        let malformed = verify(&app, &json!({"mfa_token": ann_token, "code": code})).await;
        assert_problem(malformed, 400, "Invalid code").await;
    }
    // None of that spent Ann's pending login or her code.
    let response = verify(&app, &json!({"mfa_token": ann_token, "code": ann.code(1)})).await;
    assert_eq!(response.status(), 200);
    // Without a token, the enrolment routes refuse.
    assert_unauthorized(app.post_json("/auth/mfa/totp", &with_password()).await, "").await;
});

app_test!(removing_the_factor_takes_a_code_or_the_password, |app| {
    let token = app.token_for("off@example.com").await;
    let (authenticator, _) = enrol(&app, &token).await;
    let remove = |body: Value| {
        let (app, token) = (&app, &token);
        async move { send(app, "DELETE", "/auth/mfa/totp", token, &body).await }
    };
    assert_problem(remove(json!({"code": "000000"})).await, 400, "Invalid code").await;
    assert_problem(
        remove(json!({"password": "not the password"})).await,
        401,
        "Incorrect password",
    )
    .await;
    assert_eq!(remove(json!({})).await.status(), 422);
    assert_eq!(
        remove(json!({"code": "000000", "password": PASSWORD}))
            .await
            .status(),
        422
    );
    assert_eq!(factors(&app, &token).await, json!(["totp"]));
    assert_eq!(
        remove(json!({"code": authenticator.code(1)}))
            .await
            .status(),
        204
    );
    assert_eq!(factors(&app, &token).await, json!([]));
    assert_problem(
        remove(json!({"password": PASSWORD})).await,
        400,
        "TOTP not enabled",
    )
    .await;
    // The password alone signs in again.
    assert_eq!(
        amr(&app
            .login("off@example.com", PASSWORD)
            .await
            .json()
            .await
            .unwrap()),
        json!(["pwd"])
    );

    // And with the password, on a new enrolment.
    enrol(&app, &token).await;
    assert_eq!(remove(json!({"password": PASSWORD})).await.status(), 204);
    assert_eq!(factors(&app, &token).await, json!([]));
});

app_test!(an_admin_sees_and_resets_a_users_factors, |app| {
    let admin = app.admin_token("root@example.com").await;
    let token = app.token_for("lost@example.com").await;
    enrol(&app, &token).await;
    let me: Value = app.get_auth("/auth/me", &token).await.json().await.unwrap();
    let path = format!("/admin/users/{}/factors", me["id"]);
    let seen: Value = app.get_auth(&path, &admin).await.json().await.unwrap();
    assert_eq!(seen["factors"], json!(["totp"]));
    assert_eq!(app.get_auth(&path, &token).await.status(), 403);
    assert_eq!(
        send(&app, "DELETE", &path, &token, &json!({}))
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&app, "DELETE", &path, &admin, &json!({}))
            .await
            .status(),
        204
    );
    let seen: Value = app.get_auth(&path, &admin).await.json().await.unwrap();
    assert_eq!(seen["factors"], json!([]));
    assert_eq!(
        app.get_auth("/admin/users/999999/factors", &admin)
            .await
            .status(),
        404
    );
    let audit: Value = app
        .get_auth("/admin/audit?kind=mfa.reset", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
    assert_eq!(audit["items"][0]["user_id"], me["id"]);
    // The user signs in with the password alone.
    assert_eq!(app.login("lost@example.com", PASSWORD).await.status(), 200);
    let tokens: Value = app
        .login("lost@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(amr(&tokens), json!(["pwd"]));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resets_a_users_factors_from_the_command_line() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();
    let mut app = TestApp::spawn(settings(&url, json!({}))).await;
    let token = app.token_for("phone-lost@example.com").await;
    enrol(&app, &token).await;
    first_step(&app, "phone-lost@example.com").await;

    let reset = run_cli(
        &url,
        &[],
        &["user", "mfa-reset", "Phone-Lost@example.com"],
        "",
    );
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(String::from_utf8_lossy(&reset.stdout).contains("second factors removed"));
    let tokens: Value = app
        .login("phone-lost@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(amr(&tokens), json!(["pwd"]));
    let again = run_cli(
        &url,
        &[],
        &["user", "mfa-reset", "phone-lost@example.com"],
        "",
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("had no second factor"));
    let unknown = run_cli(&url, &[], &["user", "mfa-reset", "ghost@example.com"], "");
    assert!(!unknown.status.success());
    app.stop().await;
    db.drop_database().await;
}
