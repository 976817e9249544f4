//! Schema migrations for Portcullis, written with the portable schema helpers so that one
//! migration runs on PostgreSQL and SQLite alike.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_users;
mod m20261127_000002_create_sessions;
mod m20261127_000003_create_rate_limits;
mod m20261128_000004_add_credential_version;
pub mod m20261128_000005_rekey_emails;
mod m20261128_000006_create_mail;
mod m20261128_000007_create_audit;
mod m20261128_000008_index_user_search;
mod m20261128_000009_create_signing_keys;
mod m20261128_000010_add_imported_from;
mod m20261128_000011_add_session_cookie;
mod m20261204_000012_create_second_factors;
mod m20261204_000013_session_cache_invalidations;
mod m20261207_000014_announce_signing_keys;
mod m20261207_000015_factors_added_unverified;
mod m20261207_000016_index_audit_folding;
mod m20261207_000017_create_oauth;

/// Runs the statements written for the connected database, in order: for the migrations whose
/// SQL (extensions, triggers, virtual tables) the portable helpers cannot express.
async fn run_per_backend(
    manager: &SchemaManager<'_>,
    postgres: &[&str],
    sqlite: &[&str],
) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
    let statements = match manager.get_database_backend() {
        DbBackend::Postgres => postgres,
        DbBackend::Sqlite => sqlite,
        other => return Err(DbErr::Migration(format!("unsupported database {other:?}"))),
    };
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_users::Migration),
            Box::new(m20261127_000002_create_sessions::Migration),
            Box::new(m20261127_000003_create_rate_limits::Migration),
            Box::new(m20261128_000004_add_credential_version::Migration),
            Box::new(m20261128_000005_rekey_emails::Migration),
            Box::new(m20261128_000006_create_mail::Migration),
            Box::new(m20261128_000007_create_audit::Migration),
            Box::new(m20261128_000008_index_user_search::Migration),
            Box::new(m20261128_000009_create_signing_keys::Migration),
            Box::new(m20261128_000010_add_imported_from::Migration),
            Box::new(m20261128_000011_add_session_cookie::Migration),
            Box::new(m20261204_000012_create_second_factors::Migration),
            Box::new(m20261204_000013_session_cache_invalidations::Migration),
            Box::new(m20261207_000014_announce_signing_keys::Migration),
            Box::new(m20261207_000015_factors_added_unverified::Migration),
            Box::new(m20261207_000016_index_audit_folding::Migration),
            Box::new(m20261207_000017_create_oauth::Migration),
        ]
    }
}
