//! Several instances on one database share tokens, logouts and limits.

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, access_token, app_test, assert_unauthorized};

app_test!(
    two_instances_share_tokens_logouts_and_limits,
    json!({"login_limit_per_ip": 4}),
    |app| {
        let mut other = TestApp::spawn(app.settings.clone()).await;
        assert_ne!(app.address, other.address);

        // Registered and logged in on one, accepted by the other.
        let tokens = app.signed_up("shared@example.com").await;
        let access = access_token(&tokens);
        assert_eq!(
            other.get_auth("/protected/user", &access).await.status(),
            200
        );

        // Logged out on the other, refused by the first.
        let logout = other.logout(&access).await;
        assert_eq!(logout.status(), 204);
        assert_unauthorized(app.get_auth("/protected/user", &access).await, "").await;

        // One login budget: one login was spent by signed_up, two more here, one there.
        assert_eq!(
            app.login("shared@example.com", PASSWORD).await.status(),
            200
        );
        assert_eq!(
            app.login("shared@example.com", PASSWORD).await.status(),
            200
        );
        assert_eq!(
            other.login("shared@example.com", PASSWORD).await.status(),
            200
        );
        assert_eq!(
            other.login("shared@example.com", PASSWORD).await.status(),
            429
        );
        assert_eq!(
            app.login("shared@example.com", PASSWORD).await.status(),
            429
        );
        other.stop().await;
    }
);
