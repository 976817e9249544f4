//! Counters for abuse limits, in the database so that every instance shares one budget.
//!
//! `rate_limit_counters` holds one row per fixed window and subject; `login_failures` holds the
//! consecutive failed logins of each account. Both are keyed by hashes, never by raw emails or
//! addresses.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RateLimitCounters::Table)
                    .col(string_len(RateLimitCounters::Bucket, 128).primary_key())
                    .col(integer(RateLimitCounters::Count))
                    .col(timestamp_with_time_zone(RateLimitCounters::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_rate_limit_counters_expires_at")
                    .table(RateLimitCounters::Table)
                    .col(RateLimitCounters::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginFailures::Table)
                    .col(string_len(LoginFailures::Account, 64).primary_key())
                    .col(integer(LoginFailures::Failures))
                    .col(timestamp_with_time_zone(LoginFailures::LastFailureAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LoginFailures::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RateLimitCounters::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RateLimitCounters {
    Table,
    Bucket,
    Count,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum LoginFailures {
    Table,
    Account,
    Failures,
    LastFailureAt,
}
