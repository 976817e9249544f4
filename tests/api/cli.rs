//! The `portcullis` binary's operator commands, run as an operator would.

use std::process::Command;

use crate::helpers::{
    Backend, PASSWORD, SECRET, TestApp, TestDb, run_cli, settings, status_within,
};

fn portcullis(db_url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    run_cli(db_url, &[], args, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_and_promotes_admins_from_the_command_line() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();

    let created = portcullis(
        &url,
        &["user", "create", "root@example.com", "--admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("role admin"));
    let weak = portcullis(&url, &["user", "create", "weak@example.com"], "short\n");
    assert!(!weak.status.success());
    let unknown = portcullis(&url, &["user", "promote", "ghost@example.com"], "");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no user with that email"));

    let mut app = TestApp::spawn(settings(&url, serde_json::json!({}))).await;
    let admin = app.token_for_existing("root@example.com").await;
    assert_eq!(app.get_auth("/protected/admin", &admin).await.status(), 200);
    let user = app.token_for("plain@example.com").await;
    assert_eq!(app.get_auth("/protected/admin", &user).await.status(), 403);
    let promoted = portcullis(&url, &["user", "promote", "PLAIN@example.com"], "");
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    // Another process's change reaches the server's session cache within milliseconds.
    let within = std::time::Duration::from_secs(2);
    status_within(&app, "/protected/admin", &user, 200, within).await;
    let deactivated = portcullis(&url, &["user", "deactivate", "plain@example.com"], "");
    assert!(deactivated.status.success());
    status_within(&app, "/protected/admin", &user, 401, within).await;
    app.stop().await;
    db.drop_database().await;
}

#[test]
fn production_refuses_to_start_naming_what_is_missing() {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve"])
        .env("PORTCULLIS_PROFILE", "production")
        .env_remove("DATABASE_URL")
        .env("SECRET_KEY", SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .env("PORTCULLIS_PROFILE", "production")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .env("SECRET_KEY", "too-short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("SECRET_KEY must be at least 32 bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_prints_reset_links_marks_addresses_verified_and_tests_mail() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();
    let mut app = TestApp::spawn(settings(&url, serde_json::json!({}))).await;
    assert_eq!(
        app.register("lost@example.com", PASSWORD).await.status(),
        201
    );

    // A reset link while mail is down: it works at the reset route.
    let printed = portcullis(&url, &["user", "reset-link", "lost@example.com"], "");
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let link = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    let token = link
        .split_once("/console/reset?token=")
        .map(|(_, token)| token.to_owned())
        .unwrap_or_else(|| panic!("a reset link: {link}"));
    let reset = app
        .post_json(
            "/auth/password/reset",
            &serde_json::json!({"token": token, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(reset.status(), 204);
    let unknown = portcullis(&url, &["user", "reset-link", "ghost@example.com"], "");
    assert!(!unknown.status.success());

    // Marking verified, for users that predate verification.
    let verified = portcullis(&url, &["user", "verify", "lost@example.com"], "");
    assert!(String::from_utf8_lossy(&verified.stdout).contains(", verified"));

    // The test message goes through the configured transport and reports the answer.
    let smtp = crate::smtp::SmtpServer::start().await;
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["mail", "test", "ops@example.com"])
        .env("PORTCULLIS_PROFILE", "test")
        .env("DATABASE_URL", &url)
        .env("SECRET_KEY", SECRET)
        .env("BCRYPT_COST", "4")
        .env("MAIL_TRANSPORT", "smtp")
        .env("SMTP_URL", smtp.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("250"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let received = smtp
        .wait_for("ops@example.com", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(received.subject(), "Portcullis test message");
    app.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_deletes_and_reads_the_trail() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let url = db.url().to_owned();
    for email in ["ann@example.com", "bob@example.com"] {
        let created = portcullis(&url, &["user", "create", email], &format!("{PASSWORD}\n"));
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let table = portcullis(&url, &["user", "list"], "");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("ann@example.com") && table.contains("bob@example.com"));

    let json = portcullis(&url, &["user", "list", "--q", "ANN", "--json"], "");
    let users: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["email"], "ann@example.com");

    // The last admin is kept, from the shell too.
    let promoted = portcullis(&url, &["user", "promote", "ann@example.com"], "");
    assert!(promoted.status.success());
    let refused = portcullis(&url, &["user", "delete", "ann@example.com"], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("would leave no active admin"));

    let deleted = portcullis(&url, &["user", "delete", "bob@example.com"], "");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let trail = portcullis(&url, &["audit", "--json", "--kind", "user.deleted"], "");
    let events: serde_json::Value = serde_json::from_slice(&trail.stdout).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["detail"]["via"], "cli");
    let ann = portcullis(&url, &["audit", "--user", "ann@example.com"], "");
    let ann = String::from_utf8_lossy(&ann.stdout);
    assert!(
        ann.contains("user.updated") && ann.contains("user.created"),
        "{ann}"
    );
    assert!(
        !portcullis(&url, &["audit", "--since", "yesterday"], "")
            .status
            .success()
    );
    db.drop_database().await;
}
