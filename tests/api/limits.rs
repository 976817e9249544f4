//! Abuse limits: per address, per account, the failure delay, trusted proxies.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, app_test, assert_problem};

async fn assert_throttled(response: reqwest::Response) -> u64 {
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_problem(response, 429, "Too many attempts").await;
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    retry_after
}

async fn login_from(
    app: &TestApp,
    email: &str,
    password: &str,
    forwarded: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": email, "password": password}));
    if let Some(ip) = forwarded {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.unwrap()
}

app_test!(
    repeated_failures_slow_an_account_down_and_a_success_resets_it,
    |app| {
        assert_eq!(
            app.register("target@example.com", PASSWORD).await.status(),
            201
        );
        // Five free failures, then the sixth starts a one-second delay.
        for _ in 0..6 {
            assert_eq!(
                app.login("target@example.com", "wrong password")
                    .await
                    .status(),
                401
            );
        }
        let refused = app.login("target@example.com", PASSWORD).await;
        let wait = assert_throttled(refused).await;
        assert!(wait <= 2, "{wait}");
        // The address is not the problem: another account logs in fine meanwhile.
        assert_eq!(
            app.register("bystander@example.com", PASSWORD)
                .await
                .status(),
            201
        );
        assert_eq!(
            app.login("bystander@example.com", PASSWORD).await.status(),
            200
        );
        // Once the delay is served the owner gets in, and that clears the run.
        tokio::time::sleep(std::time::Duration::from_millis(wait * 1000 + 100)).await;
        assert_eq!(
            app.login("target@example.com", PASSWORD).await.status(),
            200
        );
        assert_eq!(
            app.login("target@example.com", "wrong password")
                .await
                .status(),
            401
        );
        assert_eq!(
            app.login("target@example.com", PASSWORD).await.status(),
            200
        );
    }
);

app_test!(
    the_failure_delay_grows_but_is_capped,
    json!({"login_free_failures": 0, "login_failure_delay_max_seconds": 2}),
    |app| {
        assert_eq!(
            app.register("capped@example.com", PASSWORD).await.status(),
            201
        );
        assert_eq!(
            app.login("capped@example.com", "wrong password")
                .await
                .status(),
            401
        );
        let first = assert_throttled(app.login("capped@example.com", "wrong password").await).await;
        assert_eq!(first, 1);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(
            app.login("capped@example.com", "wrong password")
                .await
                .status(),
            401
        );
        let second = assert_throttled(app.login("capped@example.com", PASSWORD).await).await;
        assert_eq!(second, 2);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(
            app.login("capped@example.com", "wrong password")
                .await
                .status(),
            401
        );
        // Still two seconds: the cap holds.
        assert_eq!(
            assert_throttled(app.login("capped@example.com", PASSWORD).await).await,
            2
        );
    }
);

app_test!(
    logins_per_address_are_limited,
    json!({"login_limit_per_ip": 3}),
    |app| {
        for i in 0..3 {
            let response = app.login(&format!("nobody{i}@example.com"), PASSWORD).await;
            assert_eq!(response.status(), 401);
        }
        assert_throttled(app.login("nobody9@example.com", PASSWORD).await).await;
        // The OAuth2 form shares the budget.
        let form = app
            .client
            .post(app.url("/auth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "x@example.com"),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_throttled(form).await;
    }
);

app_test!(
    logins_per_account_are_limited,
    json!({"login_limit_per_account": 2, "login_free_failures": 100}),
    |app| {
        assert_eq!(
            app.register("busy@example.com", PASSWORD).await.status(),
            201
        );
        assert_eq!(app.login("busy@example.com", PASSWORD).await.status(), 200);
        assert_eq!(
            app.login("BUSY@example.com", "wrong password")
                .await
                .status(),
            401
        );
        assert_throttled(app.login("busy@example.com", PASSWORD).await).await;
    }
);

app_test!(
    registrations_per_address_are_limited_and_store_nothing,
    json!({"register_limit_per_ip": 2}),
    |app| {
        assert_eq!(
            app.register("one@example.com", PASSWORD).await.status(),
            201
        );
        assert_eq!(
            app.register("two@example.com", PASSWORD).await.status(),
            201
        );
        assert_throttled(app.register("three@example.com", PASSWORD).await).await;
        assert_eq!(app.login("three@example.com", PASSWORD).await.status(), 401);
    }
);

app_test!(
    refreshes_per_address_are_limited,
    json!({"refresh_limit_per_ip": 2, "trusted_proxies": "127.0.0.1"}),
    |app| {
        let tokens = app.signed_up("fresh@example.com").await;
        let mut refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
        for _ in 0..2 {
            let response = app
                .post_json("/auth/refresh", &json!({"refresh_token": refresh}))
                .await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            refresh = body["refresh_token"].as_str().unwrap().to_owned();
        }
        let refused = app
            .post_json("/auth/refresh", &json!({"refresh_token": refresh}))
            .await;
        assert_throttled(refused).await;
        // The refused refresh did not spend the token: from another address it still works.
        let elsewhere = app
            .client
            .post(app.url("/auth/refresh"))
            .header("x-forwarded-for", "198.51.100.20")
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 200);
    }
);

app_test!(
    forwarded_for_counts_only_behind_a_trusted_proxy,
    json!({"login_limit_per_ip": 2, "trusted_proxies": "127.0.0.1"}),
    |app| {
        for _ in 0..2 {
            let response = login_from(&app, "a@example.com", PASSWORD, Some("198.51.100.1")).await;
            assert_eq!(response.status(), 401);
        }
        assert_throttled(login_from(&app, "a@example.com", PASSWORD, Some("198.51.100.1")).await)
            .await;
        // Another client behind the same proxy has its own budget.
        let other = login_from(
            &app,
            "b@example.com",
            PASSWORD,
            Some("6.6.6.6, 198.51.100.2"),
        )
        .await;
        assert_eq!(other.status(), 401);
    }
);

app_test!(
    forwarded_for_is_ignored_without_a_trusted_proxy,
    json!({"login_limit_per_ip": 2}),
    |app| {
        for ip in ["198.51.100.1", "198.51.100.2"] {
            assert_eq!(
                login_from(&app, "a@example.com", PASSWORD, Some(ip))
                    .await
                    .status(),
                401
            );
        }
        // Spoofing a new address does not buy a new budget.
        assert_throttled(login_from(&app, "a@example.com", PASSWORD, Some("198.51.100.3")).await)
            .await;
    }
);

app_test!(
    limits_can_be_switched_off,
    json!({"rate_limits_enabled": false, "login_limit_per_ip": 1}),
    |app| {
        for _ in 0..4 {
            assert_eq!(app.login("x@example.com", PASSWORD).await.status(), 401);
        }
    }
);
