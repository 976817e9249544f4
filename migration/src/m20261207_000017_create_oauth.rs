//! The OpenID provider: registered clients, the consents users gave them, authorization codes
//! (only their SHA-256), the access tokens revoked before their end, and `sessions.client_id`
//! (the client a session was opened for; NULL for Portcullis's own sessions).
//!
//! A client's consents, codes and sessions go with the client, and a user's consents and codes
//! with the user (ON DELETE CASCADE). On SQLite `sessions.client_id` has no foreign key: SQLite
//! cannot add one to an existing table, and a column that had one could not be dropped again.
//! The repository deletes a client's sessions itself, on both databases, since it must end
//! them first for the session cache to hear of it (its triggers fire on `ended_at`, not on a
//! delete). Codes and revoked tokens are indexed on their expiry for the periodic purge.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261127_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The longest client id: today's are 22 characters.
const CLIENT_ID_LEN: u32 = 64;

/// `ON DELETE CASCADE` from `column` of `table` to `to`'s `key`.
fn cascade(
    name: &str,
    (table, column): (impl IntoIden, impl IntoIden),
    (to, key): (impl IntoIden, impl IntoIden),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, column)
        .to(to, key)
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

const SESSIONS_CLIENT_INDEX: &str = "ix_sessions_client_id";
const SESSIONS_ORIGIN_INDEX: &str = "ix_sessions_origin_session_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OauthClients::Table)
                    .col(string_len(OauthClients::ClientId, CLIENT_ID_LEN).primary_key())
                    .col(string_len(OauthClients::Name, 255))
                    // JSON arrays of strings.
                    .col(text(OauthClients::RedirectUris))
                    .col(text(OauthClients::PostLogoutRedirectUris))
                    .col(boolean(OauthClients::Public))
                    .col(boolean(OauthClients::FirstParty))
                    // Space-separated, as on the wire.
                    .col(text(OauthClients::Scopes))
                    .col(text(OauthClients::GrantTypes))
                    .col(char_len_null(OauthClients::SecretHash, 64))
                    .col(timestamp_with_time_zone(OauthClients::CreatedAt))
                    .col(timestamp_with_time_zone(OauthClients::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OauthConsents::Table)
                    .col(big_integer(OauthConsents::UserId))
                    .col(string_len(OauthConsents::ClientId, CLIENT_ID_LEN))
                    .col(text(OauthConsents::Scopes))
                    .col(timestamp_with_time_zone(OauthConsents::GrantedAt))
                    .col(timestamp_with_time_zone_null(OauthConsents::LastUsedAt))
                    .primary_key(
                        Index::create()
                            .col(OauthConsents::UserId)
                            .col(OauthConsents::ClientId),
                    )
                    .foreign_key(&mut cascade(
                        "fk_oauth_consents_user",
                        (OauthConsents::Table, OauthConsents::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_oauth_consents_client",
                        (OauthConsents::Table, OauthConsents::ClientId),
                        (OauthClients::Table, OauthClients::ClientId),
                    ))
                    .to_owned(),
            )
            .await?;
        // A client's consents, found when it is deleted (the primary key leads with the user).
        manager
            .create_index(index(
                "ix_oauth_consents_client_id",
                OauthConsents::Table,
                OauthConsents::ClientId,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OauthCodes::Table)
                    .col(char_len(OauthCodes::CodeHash, 64).primary_key())
                    .col(string_len(OauthCodes::ClientId, CLIENT_ID_LEN))
                    .col(big_integer(OauthCodes::UserId))
                    .col(text(OauthCodes::RedirectUri))
                    .col(text(OauthCodes::CodeChallenge))
                    .col(text_null(OauthCodes::Nonce))
                    .col(text(OauthCodes::Scopes))
                    .col(uuid(OauthCodes::SessionId))
                    .col(timestamp_with_time_zone(OauthCodes::AuthTime))
                    // Space-separated `amr` values, as `sessions.methods`.
                    .col(text(OauthCodes::Methods))
                    .col(timestamp_with_time_zone(OauthCodes::CreatedAt))
                    .col(timestamp_with_time_zone(OauthCodes::ExpiresAt))
                    .col(timestamp_with_time_zone_null(OauthCodes::SpentAt))
                    .col(uuid_null(OauthCodes::IssuedSessionId))
                    .foreign_key(&mut cascade(
                        "fk_oauth_codes_client",
                        (OauthCodes::Table, OauthCodes::ClientId),
                        (OauthClients::Table, OauthClients::ClientId),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_oauth_codes_user",
                        (OauthCodes::Table, OauthCodes::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_oauth_codes_expires_at",
                OauthCodes::Table,
                OauthCodes::ExpiresAt,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OauthRevokedTokens::Table)
                    .col(string_len(OauthRevokedTokens::TokenId, 64).primary_key())
                    .col(timestamp_with_time_zone(OauthRevokedTokens::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_oauth_revoked_tokens_expires_at",
                OauthRevokedTokens::Table,
                OauthRevokedTokens::ExpiresAt,
            ))
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(string_len_null(Sessions::ClientId, CLIENT_ID_LEN))
                    .to_owned(),
            )
            .await?;
        // A grant without offline_access lives only as long as the console session it was
        // signed in with: ending that session ends it too.
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(uuid_null(Sessions::OriginSessionId))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .create_foreign_key(cascade(
                    "fk_sessions_client",
                    (Sessions::Table, Sessions::ClientId),
                    (OauthClients::Table, OauthClients::ClientId),
                ))
                .await?;
        }
        // A client's sessions, ended and deleted with it; a user's own sessions are found
        // through the index on the user.
        manager
            .create_index(index(
                SESSIONS_CLIENT_INDEX,
                Sessions::Table,
                Sessions::ClientId,
            ))
            .await?;
        manager
            .create_index(index(
                SESSIONS_ORIGIN_INDEX,
                Sessions::Table,
                Sessions::OriginSessionId,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(SESSIONS_ORIGIN_INDEX)
                    .table(Sessions::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::OriginSessionId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(SESSIONS_CLIENT_INDEX)
                    .table(Sessions::Table)
                    .to_owned(),
            )
            .await?;
        // The column's foreign key goes with it.
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::ClientId)
                    .to_owned(),
            )
            .await?;
        for table in [
            OauthRevokedTokens::Table.into_iden(),
            OauthCodes::Table.into_iden(),
            OauthConsents::Table.into_iden(),
            OauthClients::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    ClientId,
    OriginSessionId,
}

#[derive(DeriveIden)]
enum OauthClients {
    Table,
    ClientId,
    Name,
    RedirectUris,
    PostLogoutRedirectUris,
    Public,
    FirstParty,
    Scopes,
    GrantTypes,
    SecretHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OauthConsents {
    Table,
    UserId,
    ClientId,
    Scopes,
    GrantedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum OauthCodes {
    Table,
    CodeHash,
    ClientId,
    UserId,
    RedirectUri,
    CodeChallenge,
    Nonce,
    Scopes,
    SessionId,
    AuthTime,
    Methods,
    CreatedAt,
    ExpiresAt,
    SpentAt,
    IssuedSessionId,
}

#[derive(DeriveIden)]
enum OauthRevokedTokens {
    Table,
    TokenId,
    ExpiresAt,
}
