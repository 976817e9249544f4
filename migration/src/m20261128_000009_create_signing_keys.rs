//! `signing_keys`: the asymmetric keys that sign access tokens, shared by every instance.
//!
//! Two partial unique indexes make "at most one `next` and one `current` key" a rule of the
//! database, so that of several instances starting the same rotation at once, one wins.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .col(string_len(SigningKeys::Kid, 64).primary_key())
                    .col(string_len(SigningKeys::Algorithm, 16))
                    .col(string_len(SigningKeys::State, 16))
                    .col(text(SigningKeys::PublicJwk))
                    .col(blob(SigningKeys::PrivateKey))
                    .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                    .col(timestamp_with_time_zone(SigningKeys::ActivatesAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::RetiresAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::RetiredAt))
                    .to_owned(),
            )
            .await?;
        // Partial indexes: the same SQL on PostgreSQL and SQLite.
        let db = manager.get_connection();
        for state in ["next", "current"] {
            db.execute_unprepared(&format!(
                "CREATE UNIQUE INDEX ux_signing_keys_one_{state} ON signing_keys (state) \
                 WHERE state = '{state}'"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SigningKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    Algorithm,
    State,
    PublicJwk,
    PrivateKey,
    CreatedAt,
    ActivatesAt,
    RetiresAt,
    RetiredAt,
}
