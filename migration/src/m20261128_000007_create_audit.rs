//! The audit trail (`audit_events`) and `users.last_login_at`.
//!
//! Events keep their `user_id` after the user is deleted, so the column has no foreign key.
//! The indexes serve the admin API's filters, each with the keyset order (id descending), and
//! the retention purge by time.

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
                    .add_column(timestamp_with_time_zone_null(LastLogin::LastLoginAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string_len(AuditEvents::Kind, 48))
                    .col(boolean(AuditEvents::Success))
                    .col(big_integer_null(AuditEvents::UserId))
                    .col(big_integer_null(AuditEvents::ActorId))
                    .col(string_len_null(AuditEvents::Ip, 64))
                    .col(string_len_null(AuditEvents::UserAgent, 512))
                    .col(text(AuditEvents::Detail))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("ix_audit_events_user_id", AuditEvents::UserId),
            ("ix_audit_events_actor_id", AuditEvents::ActorId),
            ("ix_audit_events_kind", AuditEvents::Kind),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(column)
                        .col(AuditEvents::Id)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_at")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(LastLogin::LastLoginAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum LastLogin {
    LastLoginAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    At,
    Kind,
    Success,
    UserId,
    ActorId,
    Ip,
    UserAgent,
    Detail,
}
