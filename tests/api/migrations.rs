//! Migrations apply up and down on both databases, and carry existing data over.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use portcullis::domain::Email;
use portcullis::domain::ports::UserRepository;
use portcullis::outbound::sea_orm::{SchemaState, SeaOrmStore, migrate_down, migrate_up};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

use crate::helpers::{Backend, TestApp, TestDb, access_token, run_cli, settings};

/// Every table the migrations make.
const TABLES: &str = "'users', 'sessions', 'refresh_tokens', 'rate_limit_counters', \
    'login_failures', 'email_tokens', 'mail_outbox', 'signing_keys', 'totp_factors', \
    'recovery_codes', 'mfa_challenges', 'passkeys', 'webauthn_ceremonies', 'oauth_clients', \
    'oauth_consents', 'oauth_codes', 'oauth_revoked_tokens'";

async fn table_count(conn: &sea_orm::DatabaseConnection) -> i64 {
    count(
        conn,
        &format!("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ({TABLES})"),
        &format!(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ({TABLES})"
        ),
    )
    .await
}

/// The `n` that `sqlite` or `postgres` counts, as the connection's engine is.
async fn count(conn: &sea_orm::DatabaseConnection, sqlite: &str, postgres: &str) -> i64 {
    let sql = match conn.get_database_backend() {
        sea_orm::DbBackend::Sqlite => sqlite,
        _ => postgres,
    };
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// The session cache's triggers (migration 13): one per table and event.
async fn cache_trigger_count(conn: &sea_orm::DatabaseConnection) -> i64 {
    let names = "'users_changed', 'users_deleted', 'sessions_ended'";
    count(
        conn,
        &format!("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'trigger' AND name IN ({names})"),
        &format!(
            "SELECT COUNT(DISTINCT trigger_name) AS n FROM information_schema.triggers WHERE trigger_name IN ({names})"
        ),
    )
    .await
}

async fn up_down_up(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = db.pool(2).await;
    migrate_up(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 17);
    assert_eq!(cache_trigger_count(&conn).await, 3);
    // Applying again is a no-op.
    migrate_up(&conn).await.unwrap();
    migrate_down(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 0);
    assert_eq!(cache_trigger_count(&conn).await, 0);
    migrate_up(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 17);
    assert_eq!(cache_trigger_count(&conn).await, 3);
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn migrations_apply_up_and_down_on_sqlite() {
    up_down_up(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrations_apply_up_and_down_on_postgres() {
    up_down_up(Backend::Postgres).await;
}

/// A database at migration 3 (before look-alike keys) holding users with `emails`.
async fn before_email_keys(
    backend: Backend,
    emails: &[&str],
) -> Option<(TestDb, sea_orm::DatabaseConnection)> {
    let db = TestDb::create(backend).await?;
    let conn = db.pool(2).await;
    Migrator::up(&conn, Some(3)).await.unwrap();
    for email in emails {
        conn.execute_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            match conn.get_database_backend() {
                sea_orm::DbBackend::Postgres => {
                    "INSERT INTO users (email, email_normalized, password_hash, role, is_active, created_at, updated_at) VALUES ($1, $2, 'h', 'user', true, '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00')"
                }
                _ => {
                    "INSERT INTO users (email, email_normalized, password_hash, role, is_active, created_at, updated_at) VALUES (?, ?, 'h', 'user', true, '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00')"
                }
            },
            [(*email).into(), email.to_lowercase().into()],
        ))
        .await
        .unwrap();
    }
    Some((db, conn))
}

async fn existing_users_are_rekeyed_and_clashes_stop_the_upgrade(backend: Backend) {
    // Users that read differently keep working, now found by their look-alikes too.
    let Some((db, conn)) =
        before_email_keys(backend, &["kelly@example.com", "Bob@Example.com"]).await
    else {
        return;
    };
    migrate_up(&conn).await.unwrap();
    let repo = SeaOrmStore::new(conn.clone(), Duration::from_secs(5), 1);
    let kelly = repo
        .find_user_by_email(&Email::parse("\u{ff4b}elly@example.com").unwrap())
        .await
        .unwrap()
        .expect("kelly, by a look-alike");
    assert_eq!(kelly.email.as_str(), "kelly@example.com");
    assert!(
        repo.find_user_by_email(&Email::parse("bob@example.com").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    conn.close().await.unwrap();
    db.drop_database().await;

    // Two users whose addresses read the same: nothing changes, and both are named.
    let Some((db, conn)) = before_email_keys(
        backend,
        &[
            "kelly@example.com",
            "k\u{435}lly@example.com",
            "ann@example.com",
        ],
    )
    .await
    else {
        return;
    };
    let err = migrate_up(&conn).await.unwrap_err().to_string();
    assert!(err.contains("1 <kelly@example.com>"), "{err}");
    assert!(err.contains("2 <k\\u{435}lly@example.com>"), "{err}");
    assert!(!err.contains("ann@"), "{err}");
    let untouched = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM users",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.try_get::<i64>("", "n").unwrap(), 3);
    // The operator tells them apart; the upgrade then goes through.
    conn.execute_unprepared("DELETE FROM users WHERE id = 2")
        .await
        .unwrap();
    migrate_up(&conn).await.unwrap();
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn existing_users_are_rekeyed_and_clashes_stop_the_upgrade_on_sqlite() {
    existing_users_are_rekeyed_and_clashes_stop_the_upgrade(Backend::Sqlite).await;
}

#[tokio::test]
async fn existing_users_are_rekeyed_and_clashes_stop_the_upgrade_on_postgres() {
    existing_users_are_rekeyed_and_clashes_stop_the_upgrade(Backend::Postgres).await;
}

/// A migration of a release newer than this binary.
const FUTURE: &str = "m20991231_000099_from_a_newer_release";

/// Records [`FUTURE`] as applied, as a newer release's `migrate` would.
async fn record_future_migration(conn: &sea_orm::DatabaseConnection) {
    conn.execute_unprepared(&format!(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{FUTURE}', 0)"
    ))
    .await
    .unwrap();
}

async fn a_database_a_newer_release_migrated_is_served(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = db.pool(2).await;
    assert_eq!(migrate_up(&conn).await.unwrap(), SchemaState::Current);
    record_future_migration(&conn).await;
    assert_eq!(
        migrate_up(&conn).await.unwrap(),
        SchemaState::Ahead(vec![FUTURE.to_owned()])
    );

    // An older instance restarting in the middle of a rollout starts and serves.
    let mut app = TestApp::spawn(settings(db.url(), json!({}))).await;
    let tokens = app.signed_up("kelly@example.com").await;
    let me = app.get_json_auth("/auth/me", &access_token(&tokens)).await;
    assert_eq!(me["email"], "kelly@example.com");
    app.stop().await;

    // Its `migrate` (run before every start by the unit files) applies nothing and says why.
    let output = run_cli(db.url(), &[], &["migrate"], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("nothing applied: a newer release has migrated the database")
            && stdout.contains(FUTURE),
        "{stdout}"
    );
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_database_a_newer_release_migrated_is_served_on_sqlite() {
    a_database_a_newer_release_migrated_is_served(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_database_a_newer_release_migrated_is_served_on_postgres() {
    a_database_a_newer_release_migrated_is_served(Backend::Postgres).await;
}

async fn a_database_of_a_diverged_history_is_refused(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = db.pool(2).await;
    Migrator::up(&conn, Some(16)).await.unwrap();
    record_future_migration(&conn).await;
    let err = migrate_up(&conn).await.unwrap_err().to_string();
    assert!(
        err.contains(FUTURE) && err.contains("m20261207_000017_create_oauth"),
        "{err}"
    );
    // Migration 17's four tables were not made.
    assert_eq!(table_count(&conn).await, 13);
    conn.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn a_database_of_a_diverged_history_is_refused_on_sqlite() {
    a_database_of_a_diverged_history_is_refused(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_database_of_a_diverged_history_is_refused_on_postgres() {
    a_database_of_a_diverged_history_is_refused(Backend::Postgres).await;
}

#[test]
fn the_migrations_frozen_key_agrees_with_the_core() {
    for address in [
        "kelly@example.com",
        "\u{ff4b}elly@example.com",
        "k\u{435}lly@example.com",
        "\u{1d424}elly@example.com",
        "\u{131}kelly@example.com",
        "Jos\u{e9}@Example.ES",
        "o'brien+tag@sub.example.org",
        "rn0l1@example.com",
    ] {
        assert_eq!(
            migration::m20261128_000005_rekey_emails::lookalike_key(address),
            portcullis::domain::address::lookalike_key(address),
            "{address}"
        );
    }
}
