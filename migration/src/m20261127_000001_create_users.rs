//! The users table. Email uniqueness lives in the database, on the normalised form, so that
//! two concurrent registrations of one address cannot both succeed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(string_len(Users::Email, 254))
                    .col(string_len_uniq(Users::EmailNormalized, 254))
                    .col(string_len_null(Users::FullName, 255))
                    .col(string_len(Users::PasswordHash, 255))
                    .col(
                        string_len(Users::Role, 16)
                            .default("user")
                            .check(Expr::col(Users::Role).is_in(["user", "admin"])),
                    )
                    .col(boolean(Users::IsActive).default(true))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub(crate) enum Users {
    Table,
    Id,
    Email,
    EmailNormalized,
    FullName,
    PasswordHash,
    Role,
    IsActive,
    CreatedAt,
    UpdatedAt,
}
