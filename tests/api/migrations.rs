//! Migrations apply up and down on both databases.

use std::time::Duration;

use portcullis::outbound::sea_orm::{DatabaseSettings, connect, migrate_down, migrate_up};
use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::{Backend, TestDb};

async fn table_count(conn: &sea_orm::DatabaseConnection) -> i64 {
    let sql = match conn.get_database_backend() {
        sea_orm::DbBackend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'sessions', 'refresh_tokens', 'rate_limit_counters', 'login_failures')"
        }
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('users', 'sessions', 'refresh_tokens', 'rate_limit_counters', 'login_failures')"
        }
    };
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn up_down_up(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let conn = connect(&DatabaseSettings {
        url: db.url().to_owned(),
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    migrate_up(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 5);
    // Applying again is a no-op.
    migrate_up(&conn).await.unwrap();
    migrate_down(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 0);
    migrate_up(&conn).await.unwrap();
    assert_eq!(table_count(&conn).await, 5);
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
