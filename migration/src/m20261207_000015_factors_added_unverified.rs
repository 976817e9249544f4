//! Whether each second factor was added while its account's address was unverified, and a
//! `detail` for mail jobs that carry more than an address, a user and a session.
//!
//! A password reset proves the address; until then anyone could have registered it. So a
//! reset removes the factors added before any proof: otherwise whoever registered a victim's
//! address first, and added a passkey or TOTP, keeps a way in after the owner takes the account
//! back. Factors of users whose address is still unverified today were certainly added that
//! way, and are marked so; of a verified address nobody can tell any more, and they stay.
//!
//! `mail_outbox.detail` is a JSON object: the requesting client of a `forgot` (recorded with
//! `password.reset_requested` when the link goes out), and the change and factors a security
//! notice names.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TotpFactors {
    Table,
    AddedUnverified,
}

#[derive(DeriveIden)]
enum Passkeys {
    Table,
    AddedUnverified,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Detail,
}

const BACKFILL: &[&str] = &[
    "UPDATE totp_factors SET added_unverified = TRUE \
     WHERE user_id IN (SELECT id FROM users WHERE email_verified = FALSE)",
    "UPDATE passkeys SET added_unverified = TRUE \
     WHERE user_id IN (SELECT id FROM users WHERE email_verified = FALSE)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(TotpFactors::Table)
                    .add_column(boolean(TotpFactors::AddedUnverified).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Passkeys::Table)
                    .add_column(boolean(Passkeys::AddedUnverified).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(MailOutbox::Table)
                    .add_column(text_null(MailOutbox::Detail))
                    .to_owned(),
            )
            .await?;
        crate::run_per_backend(manager, BACKFILL, BACKFILL).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            (
                MailOutbox::Table.into_iden(),
                MailOutbox::Detail.into_iden(),
            ),
            (
                Passkeys::Table.into_iden(),
                Passkeys::AddedUnverified.into_iden(),
            ),
            (
                TotpFactors::Table.into_iden(),
                TotpFactors::AddedUnverified.into_iden(),
            ),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
