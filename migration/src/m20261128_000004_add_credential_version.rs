//! `users.credential_version`: moved on by every password change and deactivation, and checked
//! in the statement that opens a session, so that a login that raced such a change opens
//! nothing.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261127_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer(CredentialVersion::CredentialVersion).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(CredentialVersion::CredentialVersion)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum CredentialVersion {
    CredentialVersion,
}
