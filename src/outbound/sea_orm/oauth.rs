//! [`ClientRepository`] and [`GrantRepository`] on SeaORM.
//!
//! A client's sessions are ended (`ended_at` set) before anything of theirs is deleted: the
//! session cache's triggers (migration 13) fire on that update, never on a delete, and a
//! session cached by any instance must stop working at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, QueryOrder,
};

use super::admin;
use super::entities::{
    oauth_clients, oauth_codes, oauth_consents, oauth_revoked_tokens, refresh_tokens, sessions,
};
use super::rows::{methods_column, to_methods};
use super::store::SeaOrmStore;
use crate::domain::oauth::{
    AuthorizationCode, ClientId, ClientSecretHash, ClientSettings, CodeHash, Consent, GrantType,
    GrantView, OAuthClient, Scope, Scopes,
};
use crate::domain::ports::{ClientRepository, GrantRepository};
use crate::domain::{BackendError, NewAuditEvent, SessionId, UserId};

/// Scopes as a column holds them. A word this version does not know (written by a newer one)
/// grants nothing.
fn to_scopes(column: &str) -> Scopes {
    Scopes::of(column.split_whitespace().filter_map(Scope::parse))
}

fn uris_column(uris: &[String]) -> Result<String, BackendError> {
    serde_json::to_string(uris).map_err(BackendError::unexpected)
}

fn to_uris(column: &str) -> Result<Vec<String>, BackendError> {
    serde_json::from_str(column).map_err(BackendError::unexpected)
}

/// The row of `client`, changed last at `updated_at`.
fn client_row(
    client: &OAuthClient,
    updated_at: DateTime<Utc>,
) -> Result<oauth_clients::ActiveModel, BackendError> {
    let settings = &client.settings;
    let grant_types: Vec<&str> = settings
        .grant_types
        .iter()
        .map(|grant| grant.as_str())
        .collect();
    Ok(oauth_clients::ActiveModel {
        client_id: Set(client.id.0.clone()),
        name: Set(settings.name.clone()),
        redirect_uris: Set(uris_column(&settings.redirect_uris)?),
        post_logout_redirect_uris: Set(uris_column(&settings.post_logout_redirect_uris)?),
        public: Set(settings.public),
        first_party: Set(settings.first_party),
        scopes: Set(settings.scopes.to_string()),
        grant_types: Set(grant_types.join(" ")),
        secret_hash: Set(client.secret_hash.as_ref().map(|hash| hash.0.clone())),
        created_at: Set(client.created_at),
        updated_at: Set(updated_at),
    })
}

fn to_client(row: oauth_clients::Model) -> Result<OAuthClient, BackendError> {
    Ok(OAuthClient {
        id: ClientId(row.client_id),
        settings: ClientSettings {
            name: row.name,
            redirect_uris: to_uris(&row.redirect_uris)?,
            post_logout_redirect_uris: to_uris(&row.post_logout_redirect_uris)?,
            public: row.public,
            first_party: row.first_party,
            scopes: to_scopes(&row.scopes),
            // As with scopes: a grant type this version does not know allows nothing.
            grant_types: row
                .grant_types
                .split_whitespace()
                .filter_map(GrantType::parse)
                .collect(),
        },
        secret_hash: row.secret_hash.map(ClientSecretHash),
        created_at: row.created_at,
    })
}

fn to_consent(row: oauth_consents::Model) -> Consent {
    Consent {
        user_id: UserId(row.user_id),
        client_id: ClientId(row.client_id),
        scopes: to_scopes(&row.scopes),
        granted_at: row.granted_at,
        last_used_at: row.last_used_at,
    }
}

fn code_row(code: &AuthorizationCode) -> oauth_codes::ActiveModel {
    oauth_codes::ActiveModel {
        code_hash: Set(code.hash.0.clone()),
        client_id: Set(code.client_id.0.clone()),
        user_id: Set(code.user_id.0),
        redirect_uri: Set(code.redirect_uri.clone()),
        code_challenge: Set(code.code_challenge.clone()),
        nonce: Set(code.nonce.clone()),
        scopes: Set(code.scopes.to_string()),
        session_id: Set(code.session_id.0),
        auth_time: Set(code.auth_time),
        methods: Set(methods_column(&code.methods)),
        created_at: Set(code.created_at),
        expires_at: Set(code.expires_at),
        spent_at: Set(code.spent_at),
        issued_session_id: Set(code.issued_session.map(|id| id.0)),
    }
}

fn to_code(row: oauth_codes::Model) -> AuthorizationCode {
    AuthorizationCode {
        hash: CodeHash(row.code_hash),
        client_id: ClientId(row.client_id),
        user_id: UserId(row.user_id),
        redirect_uri: row.redirect_uri,
        code_challenge: row.code_challenge,
        nonce: row.nonce,
        scopes: to_scopes(&row.scopes),
        session_id: SessionId(row.session_id),
        auth_time: row.auth_time,
        methods: to_methods(&row.methods),
        created_at: row.created_at,
        expires_at: row.expires_at,
        spent_at: row.spent_at,
        issued_session: row.issued_session_id.map(SessionId),
    }
}

/// Ends, at `now`, the sessions issued to `client` still open: every user's, or `user`'s only.
async fn end_client_sessions(
    conn: &impl ConnectionTrait,
    client: &ClientId,
    user: Option<UserId>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut update = sessions::Entity::update_many()
        .col_expr(sessions::Column::EndedAt, Expr::value(now))
        .filter(sessions::Column::ClientId.eq(client.as_str()))
        .filter(sessions::Column::EndedAt.is_null());
    if let Some(user) = user {
        update = update.filter(sessions::Column::UserId.eq(user.0));
    }
    update.exec(conn).await?;
    Ok(())
}

#[async_trait]
impl ClientRepository for SeaOrmStore {
    async fn create_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<(), BackendError> {
        let row = client_row(client, client.created_at)?;
        self.bounded(async {
            let txn = self.write_transaction().await?;
            oauth_clients::Entity::insert(row)
                .exec_without_returning(&txn)
                .await?;
            admin::record(&txn, audit).await?;
            txn.commit().await
        })
        .await
    }

    async fn find_client(&self, id: &ClientId) -> Result<Option<OAuthClient>, BackendError> {
        let found = self
            .bounded(oauth_clients::Entity::find_by_id(id.0.clone()).one(self.db()))
            .await?;
        found.map(to_client).transpose()
    }

    async fn list_clients(&self) -> Result<Vec<OAuthClient>, BackendError> {
        let found = self
            .bounded(
                oauth_clients::Entity::find()
                    .order_by_asc(oauth_clients::Column::CreatedAt)
                    .order_by_asc(oauth_clients::Column::ClientId)
                    .all(self.db()),
            )
            .await?;
        found.into_iter().map(to_client).collect()
    }

    async fn update_client(
        &self,
        client: &OAuthClient,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        // The change is made when it is recorded.
        let mut row = client_row(client, audit.at)?;
        row.created_at = NotSet;
        self.bounded(async {
            let txn = self.write_transaction().await?;
            let updated = oauth_clients::Entity::update_many()
                .set(row)
                .filter(oauth_clients::Column::ClientId.eq(client.id.as_str()))
                .exec(&txn)
                .await?;
            if updated.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            admin::record(&txn, audit).await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn delete_client(
        &self,
        id: &ClientId,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            // Ended when the deletion is recorded, then deleted: explicitly, since SQLite's
            // `sessions.client_id` has no foreign key to cascade from.
            end_client_sessions(&txn, id, None, audit.at).await?;
            let client_sessions = Query::select()
                .column(sessions::Column::Id)
                .from(sessions::Entity)
                .and_where(sessions::Column::ClientId.eq(id.as_str()))
                .to_owned();
            refresh_tokens::Entity::delete_many()
                .filter(refresh_tokens::Column::SessionId.in_subquery(client_sessions))
                .exec(&txn)
                .await?;
            sessions::Entity::delete_many()
                .filter(sessions::Column::ClientId.eq(id.as_str()))
                .exec(&txn)
                .await?;
            oauth_codes::Entity::delete_many()
                .filter(oauth_codes::Column::ClientId.eq(id.as_str()))
                .exec(&txn)
                .await?;
            oauth_consents::Entity::delete_many()
                .filter(oauth_consents::Column::ClientId.eq(id.as_str()))
                .exec(&txn)
                .await?;
            let deleted = oauth_clients::Entity::delete_by_id(id.0.clone())
                .exec(&txn)
                .await?;
            if deleted.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            admin::record(&txn, audit).await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl GrantRepository for SeaOrmStore {
    async fn find_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
    ) -> Result<Option<Consent>, BackendError> {
        let found = self
            .bounded(
                oauth_consents::Entity::find_by_id((user_id.0, client_id.0.clone())).one(self.db()),
            )
            .await?;
        Ok(found.map(to_consent))
    }

    async fn save_consent(
        &self,
        consent: &Consent,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        let row = oauth_consents::ActiveModel {
            user_id: Set(consent.user_id.0),
            client_id: Set(consent.client_id.0.clone()),
            scopes: Set(consent.scopes.to_string()),
            granted_at: Set(consent.granted_at),
            last_used_at: Set(consent.last_used_at),
        };
        let upsert = oauth_consents::Entity::insert(row).on_conflict(
            OnConflict::columns([
                oauth_consents::Column::UserId,
                oauth_consents::Column::ClientId,
            ])
            .update_columns([
                oauth_consents::Column::Scopes,
                oauth_consents::Column::GrantedAt,
                oauth_consents::Column::LastUsedAt,
            ])
            .to_owned(),
        );
        self.bounded(async {
            let txn = self.write_transaction().await?;
            upsert.exec_without_returning(&txn).await?;
            if let Some(audit) = audit {
                admin::record(&txn, audit).await?;
            }
            txn.commit().await
        })
        .await
    }

    async fn touch_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.bounded(
            oauth_consents::Entity::update_many()
                .col_expr(oauth_consents::Column::LastUsedAt, Expr::value(at))
                .filter(oauth_consents::Column::UserId.eq(user_id.0))
                .filter(oauth_consents::Column::ClientId.eq(client_id.as_str()))
                .exec(self.db()),
        )
        .await?;
        Ok(())
    }

    async fn list_consents(&self, user_id: UserId) -> Result<Vec<GrantView>, BackendError> {
        let found = self
            .bounded(
                oauth_consents::Entity::find()
                    .filter(oauth_consents::Column::UserId.eq(user_id.0))
                    .find_also_related(oauth_clients::Entity)
                    .order_by_desc(oauth_consents::Column::GrantedAt)
                    .order_by_asc(oauth_consents::Column::ClientId)
                    .all(self.db()),
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(consent, client)| {
                Some(GrantView {
                    client_name: client?.name,
                    consent: to_consent(consent),
                })
            })
            .collect())
    }

    async fn revoke_consent(
        &self,
        user_id: UserId,
        client_id: &ClientId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            let revoked = oauth_consents::Entity::delete_by_id((user_id.0, client_id.0.clone()))
                .exec(&txn)
                .await?;
            if revoked.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            end_client_sessions(&txn, client_id, Some(user_id), now).await?;
            admin::record(&txn, audit).await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn store_code(&self, code: &AuthorizationCode) -> Result<(), BackendError> {
        self.bounded(oauth_codes::Entity::insert(code_row(code)).exec_without_returning(self.db()))
            .await?;
        Ok(())
    }

    async fn find_code(&self, hash: &CodeHash) -> Result<Option<AuthorizationCode>, BackendError> {
        let found = self
            .bounded(oauth_codes::Entity::find_by_id(hash.0.clone()).one(self.db()))
            .await?;
        Ok(found.map(to_code))
    }

    async fn spend_code(
        &self,
        hash: &CodeHash,
        issued: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        // The conditional update is the lock: of two exchanges, the database lets exactly one
        // see `spent_at IS NULL`.
        let update = oauth_codes::Entity::update_many()
            .col_expr(oauth_codes::Column::SpentAt, Expr::value(now))
            .col_expr(oauth_codes::Column::IssuedSessionId, Expr::value(issued.0))
            .filter(oauth_codes::Column::CodeHash.eq(hash.0.as_str()))
            .filter(oauth_codes::Column::SpentAt.is_null())
            .exec(self.db());
        Ok(self.bounded(update).await?.rows_affected == 1)
    }

    async fn revoke_access_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let row = oauth_revoked_tokens::ActiveModel {
            token_id: Set(token_id.to_owned()),
            expires_at: Set(expires_at),
        };
        // Revoked twice is revoked.
        let insert = oauth_revoked_tokens::Entity::insert(row)
            .on_conflict(
                OnConflict::column(oauth_revoked_tokens::Column::TokenId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.db());
        self.bounded(insert).await?;
        Ok(())
    }

    async fn is_access_token_revoked(&self, token_id: &str) -> Result<bool, BackendError> {
        let found = self
            .bounded(oauth_revoked_tokens::Entity::find_by_id(token_id.to_owned()).one(self.db()))
            .await?;
        Ok(found.is_some())
    }
}
