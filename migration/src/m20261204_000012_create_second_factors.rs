//! Second factors: `sessions.methods` (how a session's user signed in), TOTP secrets (sealed),
//! recovery codes (only their SHA-256), the pending second steps of logins, passkeys, and the
//! WebAuthn ceremonies in progress.
//!
//! Everything of a user goes with the user (ON DELETE CASCADE). A credential id is unique across
//! users and a recovery code unique per user, so that when instances race the repository can
//! decide by the database's constraints and rows affected, never by a read before a write.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261127_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `ON DELETE CASCADE` from `column` of `table` to the user.
fn to_user(name: &str, table: impl IntoIden, column: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, column)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

/// An index `name` on `column` of `table`.
fn index(name: &str, table: impl IntoIden, column: impl IntoIden) -> IndexCreateStatement {
    Index::create()
        .name(name)
        .table(table)
        .col(column)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Space-separated `amr` values; every session before this one was a password login.
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(text(Sessions::Methods).default("pwd"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TotpFactors::Table)
                    .col(big_integer(TotpFactors::UserId).primary_key())
                    .col(blob(TotpFactors::SealedSecret))
                    .col(timestamp_with_time_zone(TotpFactors::CreatedAt))
                    .col(timestamp_with_time_zone_null(TotpFactors::ConfirmedAt))
                    .col(big_integer_null(TotpFactors::LastStep))
                    .foreign_key(&mut to_user(
                        "fk_totp_factors_user",
                        TotpFactors::Table,
                        TotpFactors::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RecoveryCodes::Table)
                    .col(big_pk_auto(RecoveryCodes::Id))
                    .col(big_integer(RecoveryCodes::UserId))
                    .col(text(RecoveryCodes::CodeHash))
                    .col(timestamp_with_time_zone_null(RecoveryCodes::UsedAt))
                    .foreign_key(&mut to_user(
                        "fk_recovery_codes_user",
                        RecoveryCodes::Table,
                        RecoveryCodes::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        // Also the index of a user's codes, for the spend and the replacement.
        manager
            .create_index(
                index(
                    "ux_recovery_codes_user_id_code_hash",
                    RecoveryCodes::Table,
                    RecoveryCodes::UserId,
                )
                .col(RecoveryCodes::CodeHash)
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MfaChallenges::Table)
                    .col(text(MfaChallenges::TokenHash).primary_key())
                    .col(big_integer(MfaChallenges::UserId))
                    .col(big_integer(MfaChallenges::CredentialVersion))
                    .col(timestamp_with_time_zone(MfaChallenges::CreatedAt))
                    .col(timestamp_with_time_zone(MfaChallenges::ExpiresAt))
                    .col(integer(MfaChallenges::Failures).default(0))
                    .col(timestamp_with_time_zone_null(MfaChallenges::SpentAt))
                    .foreign_key(&mut to_user(
                        "fk_mfa_challenges_user",
                        MfaChallenges::Table,
                        MfaChallenges::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_mfa_challenges_expires_at",
                MfaChallenges::Table,
                MfaChallenges::ExpiresAt,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Passkeys::Table)
                    .col(pk_uuid(Passkeys::Id))
                    .col(big_integer(Passkeys::UserId))
                    .col(text(Passkeys::Name))
                    .col(blob(Passkeys::CredentialId))
                    .col(text(Passkeys::Credential))
                    .col(uuid(Passkeys::UserHandle))
                    .col(timestamp_with_time_zone(Passkeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(Passkeys::LastUsedAt))
                    .foreign_key(&mut to_user(
                        "fk_passkeys_user",
                        Passkeys::Table,
                        Passkeys::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_passkeys_user_id",
                Passkeys::Table,
                Passkeys::UserId,
            ))
            .await?;
        // One credential, one holder: a registration racing another of the same authenticator
        // loses here.
        manager
            .create_index(
                index(
                    "ux_passkeys_credential_id",
                    Passkeys::Table,
                    Passkeys::CredentialId,
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebauthnCeremonies::Table)
                    .col(text(WebauthnCeremonies::Challenge).primary_key())
                    .col(text(WebauthnCeremonies::Kind))
                    .col(big_integer_null(WebauthnCeremonies::UserId))
                    .col(text(WebauthnCeremonies::State))
                    .col(timestamp_with_time_zone(WebauthnCeremonies::ExpiresAt))
                    .foreign_key(&mut to_user(
                        "fk_webauthn_ceremonies_user",
                        WebauthnCeremonies::Table,
                        WebauthnCeremonies::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_webauthn_ceremonies_expires_at",
                WebauthnCeremonies::Table,
                WebauthnCeremonies::ExpiresAt,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebauthnCeremonies::Table.into_iden(),
            Passkeys::Table.into_iden(),
            MfaChallenges::Table.into_iden(),
            RecoveryCodes::Table.into_iden(),
            TotpFactors::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::Methods)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Methods,
}

#[derive(DeriveIden)]
enum TotpFactors {
    Table,
    UserId,
    SealedSecret,
    CreatedAt,
    ConfirmedAt,
    LastStep,
}

#[derive(DeriveIden)]
enum RecoveryCodes {
    Table,
    Id,
    UserId,
    CodeHash,
    UsedAt,
}

#[derive(DeriveIden)]
enum MfaChallenges {
    Table,
    TokenHash,
    UserId,
    CredentialVersion,
    CreatedAt,
    ExpiresAt,
    Failures,
    SpentAt,
}

#[derive(DeriveIden)]
enum Passkeys {
    Table,
    Id,
    UserId,
    Name,
    CredentialId,
    Credential,
    UserHandle,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum WebauthnCeremonies {
    Table,
    Challenge,
    Kind,
    UserId,
    State,
    ExpiresAt,
}
