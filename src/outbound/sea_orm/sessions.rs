//! [`SessionRepository`] on SeaORM.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::admin;
use super::entities::{refresh_tokens, sessions, users};
use super::rows::{methods_column, to_session, to_user};
use super::store::{SeaOrmStore, lock_current};
use crate::domain::ports::{CreateSessionError, Rotation, SessionRepository};
use crate::domain::{
    BackendError, ClientInfo, CookieHash, NewAuditEvent, NewRefreshToken, NewSession,
    RefreshTokenHash, RefreshTokenRecord, Session, SessionId, SessionKey, User, UserId,
};

#[async_trait]
impl SessionRepository for SeaOrmStore {
    async fn create_session(
        &self,
        new: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let (user_id, version, now) = (new.user_id, new.credential_version, new.created_at);
        let audit = new.audit;
        let live_limit = u64::from(new.live_limit);
        // The cap counts a client's sessions apart from Portcullis's own and other clients'.
        let same_kind = match &new.client_id {
            Some(client) => sessions::Column::ClientId.eq(client.as_str()),
            None => sessions::Column::ClientId.is_null(),
        };
        let session = sessions::ActiveModel {
            id: Set(new.id.0),
            user_id: Set(user_id.0),
            created_at: Set(now),
            last_used_at: Set(now),
            expires_at: Set(new.expires_at),
            idle_expires_at: Set(key.idle_expires_at()),
            ended_at: Set(None),
            user_agent: Set(new.client.user_agent),
            ip: Set(new.client.ip),
            cookie_hash: Set(match &key {
                SessionKey::Cookie(cookie) => Some(cookie.hash.0.clone()),
                SessionKey::RefreshToken(_) => None,
            }),
            methods: Set(methods_column(&new.methods)),
            client_id: Set(new.client_id.map(|id| id.0)),
            origin_session_id: Set(new.origin.map(|origin| origin.0)),
        };
        let stored = self
            .bounded(async {
                let txn = self.write_transaction().await?;
                if !lock_current(&txn, user_id, version, Some(now)).await? {
                    txn.rollback().await?;
                    return Ok(None);
                }
                let stored = session.insert(&txn).await?;
                admin::record(&txn, audit).await?;
                if let SessionKey::RefreshToken(refresh) = key {
                    refresh_token_model(refresh).insert(&txn).await?;
                }
                let beyond_limit: Vec<Uuid> = sessions::Entity::find()
                    .select_only()
                    .column(sessions::Column::Id)
                    .filter(sessions::Column::UserId.eq(user_id.0))
                    .filter(same_kind)
                    .filter(live_at(now))
                    .order_by_desc(sessions::Column::LastUsedAt)
                    .order_by_desc(sessions::Column::CreatedAt)
                    .offset(live_limit)
                    .limit(OVER_LIMIT_BATCH)
                    .into_tuple()
                    .all(&txn)
                    .await?;
                if !beyond_limit.is_empty() {
                    sessions::Entity::update_many()
                        .col_expr(sessions::Column::EndedAt, Expr::value(now))
                        .filter(sessions::Column::Id.is_in(beyond_limit))
                        .exec(&txn)
                        .await?;
                }
                txn.commit().await?;
                Ok(Some(stored))
            })
            .await?;
        stored.map(to_session).ok_or(CreateSessionError::Stale)
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError> {
        // The hot path of every authenticated request: batched with concurrent lookups, and
        // bounded as a whole (waiting for a batch included).
        tokio::time::timeout(self.bounded.timeout(), self.sessions.find(id))
            .await
            .map_err(|elapsed| BackendError::Unavailable(Box::new(elapsed)))?
    }

    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError> {
        let found = self
            .bounded(
                sessions::Entity::find()
                    .filter(sessions::Column::CookieHash.eq(hash.0.as_str()))
                    .find_also_related(users::Entity)
                    .one(&self.db),
            )
            .await?;
        match found {
            Some((session, Some(user))) => Ok(Some((to_session(session), to_user(user)?))),
            _ => Ok(None),
        }
    }

    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.bounded(
            sessions::Entity::update_many()
                .col_expr(sessions::Column::LastUsedAt, Expr::value(now))
                .col_expr(
                    sessions::Column::IdleExpiresAt,
                    Expr::value(idle_expires_at),
                )
                .filter(sessions::Column::Id.eq(id.0))
                .filter(sessions::Column::EndedAt.is_null())
                .exec(&self.db),
        )
        .await?;
        Ok(())
    }

    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError> {
        let found = self
            .bounded(async {
                let Some((token, Some(session))) =
                    refresh_tokens::Entity::find_by_id(hash.0.clone())
                        .find_also_related(sessions::Entity)
                        .one(&self.db)
                        .await?
                else {
                    return Ok(None);
                };
                let user = users::Entity::find_by_id(session.user_id)
                    .one(&self.db)
                    .await?;
                Ok(user.map(|user| (token, session, user)))
            })
            .await?;
        let Some((token, session, user)) = found else {
            return Ok(None);
        };
        Ok(Some(RefreshTokenRecord {
            expires_at: token.expires_at,
            spent_at: token.spent_at,
            session: to_session(session),
            user: to_user(user)?,
        }))
    }

    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: ClientInfo,
    ) -> Result<Rotation, BackendError> {
        let now = next.created_at;
        let session_id = next.session_id;
        let idle_expires_at = next.expires_at;
        self.bounded(async {
            let txn = self.write_transaction().await?;
            // Locks the session's row: a password change, deactivation or logout that ends it
            // either commits first (and this matches nothing) or waits for this rotation.
            let touched = sessions::Entity::update_many()
                .col_expr(sessions::Column::LastUsedAt, Expr::value(now))
                .col_expr(
                    sessions::Column::IdleExpiresAt,
                    Expr::value(idle_expires_at),
                )
                .col_expr(sessions::Column::UserAgent, Expr::value(client.user_agent))
                .col_expr(sessions::Column::Ip, Expr::value(client.ip))
                .filter(sessions::Column::Id.eq(session_id.0))
                .filter(sessions::Column::EndedAt.is_null())
                .exec(&txn)
                .await?;
            if touched.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(Rotation::SessionEnded);
            }
            // The conditional update is the lock: of two rotations of one token, the database
            // lets exactly one see `spent_at IS NULL`.
            let spent = refresh_tokens::Entity::update_many()
                .col_expr(refresh_tokens::Column::SpentAt, Expr::value(now))
                .filter(refresh_tokens::Column::TokenHash.eq(presented.0.as_str()))
                .filter(refresh_tokens::Column::SpentAt.is_null())
                .exec(&txn)
                .await?;
            if spent.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(Rotation::AlreadySpent);
            }
            refresh_token_model(next).insert(&txn).await?;
            txn.commit().await?;
            Ok(Rotation::Rotated)
        })
        .await
    }

    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError> {
        let found = self
            .bounded(
                sessions::Entity::find()
                    .filter(sessions::Column::UserId.eq(user_id.0))
                    .filter(sessions::Column::ClientId.is_null())
                    .filter(live_at(now))
                    .order_by_desc(sessions::Column::CreatedAt)
                    .limit(u64::from(limit))
                    .all(&self.db),
            )
            .await?;
        Ok(found.into_iter().map(to_session).collect())
    }

    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            let ended = sessions::Entity::update_many()
                .col_expr(sessions::Column::EndedAt, Expr::value(now))
                .filter(sessions::Column::Id.eq(id.0))
                .filter(sessions::Column::UserId.eq(user_id.0))
                .filter(live_at(now))
                .exec(&txn)
                .await?;
            if ended.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            sessions::Entity::update_many()
                .col_expr(sessions::Column::EndedAt, Expr::value(now))
                .filter(sessions::Column::OriginSessionId.eq(id.0))
                .filter(sessions::Column::EndedAt.is_null())
                .exec(&txn)
                .await?;
            admin::record(&txn, audit).await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    }
}

/// Sessions ended per login when a user holds more than the limit: one normally, more only
/// after the limit was lowered (the rest go at the next logins).
const OVER_LIMIT_BATCH: u64 = 1000;

fn refresh_token_model(token: NewRefreshToken) -> refresh_tokens::ActiveModel {
    refresh_tokens::ActiveModel {
        token_hash: Set(token.hash.0),
        session_id: Set(token.session_id.0),
        created_at: Set(token.created_at),
        expires_at: Set(token.expires_at),
        spent_at: Set(None),
    }
}

/// The condition of a session that is live at `now`.
fn live_at(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(sessions::Column::EndedAt.is_null())
        .add(sessions::Column::ExpiresAt.gt(now))
        .add(sessions::Column::IdleExpiresAt.gt(now))
}
