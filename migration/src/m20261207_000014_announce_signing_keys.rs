//! Tells every instance on PostgreSQL that the signing-key table changed, in the transaction of
//! the change: a `NOTIFY` on `portcullis_signing_keys`, delivered at commit. Instances reload
//! their keys on it, so an operator's `keys retire` or `rotate --now` reaches all of them
//! within milliseconds instead of at their next periodic refresh.
//!
//! One notification per statement, not per row: a key change moves at most a few keys, and
//! the listeners only need to know that they should look. SQLite has no notifications; its
//! single server refreshes on its own schedule (`signing_key_refresh_seconds`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "CREATE FUNCTION portcullis_signing_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('portcullis_signing_keys', ''); RETURN NULL; END $$",
    "CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys \
     FOR EACH STATEMENT EXECUTE FUNCTION portcullis_signing_keys_changed()",
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS signing_keys_changed ON signing_keys",
    "DROP FUNCTION IF EXISTS portcullis_signing_keys_changed()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_per_backend(manager, POSTGRES_UP, &[]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_per_backend(manager, POSTGRES_DOWN, &[]).await
    }
}
