//! Proving addresses and recovering accounts: `users.email_verified`, the one-time tokens of
//! the links (only their SHA-256), and the outbox of mail jobs that the delivery worker
//! drains.

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
                    .add_column(boolean(EmailVerified::EmailVerified).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EmailTokens::Table)
                    .col(char_len(EmailTokens::TokenHash, 64).primary_key())
                    .col(string_len(EmailTokens::Kind, 32))
                    .col(big_integer(EmailTokens::UserId))
                    .col(string_len(EmailTokens::Email, 254))
                    .col(string_len_null(EmailTokens::NewEmail, 254))
                    .col(uuid_null(EmailTokens::KeepSession))
                    .col(timestamp_with_time_zone(EmailTokens::CreatedAt))
                    .col(timestamp_with_time_zone(EmailTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(EmailTokens::SpentAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_email_tokens_user")
                            .from(EmailTokens::Table, EmailTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_email_tokens_user_id")
                    .table(EmailTokens::Table)
                    .col(EmailTokens::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailOutbox::Table)
                    .col(big_pk_auto(MailOutbox::Id))
                    .col(string_len(MailOutbox::Job, 32))
                    .col(string_len_null(MailOutbox::Email, 254))
                    .col(big_integer_null(MailOutbox::UserId))
                    .col(uuid_null(MailOutbox::SessionId))
                    .col(string_len(MailOutbox::State, 16).default("pending"))
                    .col(integer(MailOutbox::Attempts).default(0))
                    .col(timestamp_with_time_zone(MailOutbox::QueuedAt))
                    .col(timestamp_with_time_zone(MailOutbox::DueAt))
                    .col(timestamp_with_time_zone_null(MailOutbox::ClaimedUntil))
                    .col(timestamp_with_time_zone_null(MailOutbox::FinishedAt))
                    .col(string_len_null(MailOutbox::LastError, 1000))
                    .to_owned(),
            )
            .await?;
        // The worker's claim: due pending jobs in order.
        manager
            .create_index(
                Index::create()
                    .name("ix_mail_outbox_state_due_at")
                    .table(MailOutbox::Table)
                    .col(MailOutbox::State)
                    .col(MailOutbox::DueAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MailOutbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(EmailTokens::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(EmailVerified::EmailVerified)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum EmailVerified {
    EmailVerified,
}

#[derive(DeriveIden)]
enum EmailTokens {
    Table,
    TokenHash,
    Kind,
    UserId,
    Email,
    NewEmail,
    KeepSession,
    CreatedAt,
    ExpiresAt,
    SpentAt,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Id,
    Job,
    Email,
    UserId,
    SessionId,
    State,
    Attempts,
    QueuedAt,
    DueAt,
    ClaimedUntil,
    FinishedAt,
    LastError,
}
