//! `users.imported_from`: which import made the user (`pyauth`), so that a re-run updates its
//! own users and never overwrites one that registered here; `users.imported_digest`: the
//! source row as last imported, so that a re-run updates only users whose row changed there
//! (a rehash at login or a change made here is not a change of the source).

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261127_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column a statement: SQLite's ALTER TABLE takes one change at a time.
        for column in [
            string_len_null(ImportedFrom::ImportedFrom, 16),
            string_len_null(ImportedFrom::ImportedDigest, 64),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [ImportedFrom::ImportedFrom, ImportedFrom::ImportedDigest] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ImportedFrom {
    ImportedFrom,
    ImportedDigest,
}
