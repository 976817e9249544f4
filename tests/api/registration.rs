//! POST /auth/register.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, app_test, assert_problem};

async fn field_errors(response: reqwest::Response) -> Vec<String> {
    let body = assert_problem(response, 422, "").await;
    body["errors"]
        .as_array()
        .expect("errors list")
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

app_test!(
    a_valid_registration_returns_the_user_without_secrets,
    |app| {
        let response = app
        .post_json(
            "/auth/register",
            &json!({"email": "  Alice@Example.com ", "password": PASSWORD, "full_name": "Alice A."}),
        )
        .await;
        assert_eq!(response.status(), 201);
        let text = response.text().await.unwrap();
        assert!(!text.contains(PASSWORD) && !text.contains("$2b$"), "{text}");
        let user: Value = serde_json::from_str(&text).unwrap();
        assert!(user["id"].is_i64());
        assert_eq!(user["email"], "Alice@Example.com");
        assert_eq!(user["full_name"], "Alice A.");
        assert_eq!(user["role"], "user");
        assert_eq!(user["is_active"], true);
        let created = user["created_at"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(created).is_ok(),
            "{created}"
        );
        assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    }
);

app_test!(registration_without_full_name_gives_null, |app| {
    let response = app.register("bob@example.com", PASSWORD).await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert!(user["full_name"].is_null());
    assert!(user.as_object().unwrap().contains_key("full_name"));
});

app_test!(a_duplicate_email_in_any_case_is_refused, |app| {
    assert_eq!(
        app.register("carol@example.com", PASSWORD).await.status(),
        201
    );
    for again in [
        "carol@example.com",
        "CAROL@Example.COM",
        " carol@example.com",
    ] {
        let response = app.register(again, PASSWORD).await;
        assert_problem(response, 400, "Email already registered").await;
    }
});

app_test!(
    concurrent_registrations_of_one_address_give_one_201,
    |app| {
        let attempts = (0..8).map(|i| {
            let email = if i % 2 == 0 {
                "race@example.com"
            } else {
                "RACE@example.com"
            };
            app.register(email, PASSWORD)
        });
        let statuses: Vec<u16> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 400).count(),
            7,
            "{statuses:?}"
        );
    }
);

app_test!(an_invalid_email_is_422_naming_the_field, |app| {
    for email in [
        "not-an-email",
        "",
        "a@b",
        "alice@exa mple.com",
        "<script>@x.com",
    ] {
        let fields = field_errors(app.register(email, PASSWORD).await).await;
        assert_eq!(fields, ["email"], "{email:?}");
    }
});

app_test!(a_short_password_is_422, |app| {
    let body = assert_problem(app.register("dave@example.com", "short").await, 422, "").await;
    assert_eq!(body["errors"][0]["field"], "password");
    assert_eq!(
        body["errors"][0]["message"],
        "must be at least 8 characters"
    );
});

app_test!(passwords_over_72_bytes_are_refused_never_truncated, |app| {
    let exactly_72 = "x".repeat(72);
    assert_eq!(
        app.register("max@example.com", &exactly_72).await.status(),
        201
    );
    // With truncation this would log in: the first 72 bytes match.
    let longer = format!("{exactly_72}-and-more");
    assert_eq!(app.login("max@example.com", &longer).await.status(), 401);
    assert_eq!(
        app.login("max@example.com", &exactly_72).await.status(),
        200
    );

    let fields = field_errors(app.register("long@example.com", &"x".repeat(73)).await).await;
    assert_eq!(fields, ["password"]);
    // 25 three-byte characters: 25 characters, 75 bytes.
    let fields = field_errors(app.register("long@example.com", &"€".repeat(25)).await).await;
    assert_eq!(fields, ["password"]);
    assert_eq!(
        app.login("long@example.com", &"x".repeat(73))
            .await
            .status(),
        401
    );
});

app_test!(a_full_name_over_255_characters_is_422, |app| {
    let ok = app
        .post_json(
            "/auth/register",
            &json!({"email": "erin@example.com", "password": PASSWORD, "full_name": "é".repeat(255)}),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let too_long = app
        .post_json(
            "/auth/register",
            &json!({"email": "frank@example.com", "password": PASSWORD, "full_name": "a".repeat(256)}),
        )
        .await;
    assert_eq!(field_errors(too_long).await, ["full_name"]);
});

app_test!(every_failing_field_is_listed_and_nothing_is_stored, |app| {
    let response = app
        .post_json(
            "/auth/register",
            &json!({"email": "nope", "password": "1", "full_name": "x".repeat(300)}),
        )
        .await;
    assert_eq!(
        field_errors(response).await,
        ["email", "password", "full_name"]
    );
    let fields = field_errors(app.register("nope", PASSWORD).await).await;
    assert_eq!(fields, ["email"]);
});

app_test!(hostile_strings_are_refused_cleanly_not_with_a_500, |app| {
    let cases = [
        json!({"email": "nul\u{0}@example.com", "password": PASSWORD}),
        json!({"email": "ok1@example.com", "password": "pass\u{0}word-nul"}),
        json!({"email": "ok2@example.com", "password": PASSWORD, "full_name": "a\u{0}b"}),
        json!({"email": "rtl\u{202e}@example.com", "password": PASSWORD}),
        json!({"email": "ok3@example.com'; DROP TABLE users; --", "password": PASSWORD}),
    ];
    for case in cases {
        let response = app.post_json("/auth/register", &case).await;
        assert_eq!(response.status(), 422, "{case}");
    }
    // Unicode that is fine is stored and returned exactly.
    let response = app
        .post_json(
            "/auth/register",
            &json!({"email": "zoë@example.com", "password": "pässwörd-ñ-漢字", "full_name": "Zoë 漢字 🦀"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["full_name"], "Zoë 漢字 🦀");
    assert_eq!(
        app.login("ZOË@example.com", "pässwörd-ñ-漢字")
            .await
            .status(),
        200
    );
    // The SQL-looking address is just a malformed email; the table is still there.
    assert_eq!(
        app.register("still-here@example.com", PASSWORD)
            .await
            .status(),
        201
    );
});
