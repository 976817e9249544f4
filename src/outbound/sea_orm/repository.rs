//! [`UserRepository`] on SeaORM.
//!
//! Every call is bounded by a timeout, so a stalled database turns into a quick
//! [`BackendError::Unavailable`] instead of a hung request.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, RuntimeErr,
    SqlErr, TransactionTrait,
};
use uuid::Uuid;

use super::entities::{
    email_tokens, mfa_challenges, refresh_tokens, sessions, users, webauthn_ceremonies,
};
use super::session_lookups::SessionLookups;
use super::{admin, invalidations, mail};
use crate::domain::import::PYAUTH;
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{CreateSessionError, CreateUserError, Rotation, UserRepository};
use crate::domain::{
    AccountChange, Applied, AuditEvent, AuditQuery, BackendError, ClientInfo, CookieHash, Email,
    EmailTokenHash, EmailTokenRecord, FullName, MailJob, NewAuditEvent, NewEmailToken,
    NewRefreshToken, NewSession, NewUser, PasswordHash, RefreshTokenHash, RefreshTokenRecord, Role,
    Session, SessionId, SessionKey, User, UserId, UserQuery,
};

/// Sessions ended per login when a user holds more than the limit: one normally, more only
/// after the limit was lowered (the rest go at the next logins).
const OVER_LIMIT_BATCH: u64 = 1000;

/// A connection pool whose every call is bounded by a timeout and translated into a
/// [`BackendError`]. Shared by this module's adapters.
#[derive(Clone)]
pub(super) struct Bounded {
    db: DatabaseConnection,
    timeout: Duration,
}

impl Bounded {
    pub(super) fn new(db: DatabaseConnection, timeout: Duration) -> Self {
        Self { db, timeout }
    }

    pub(super) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A transaction that writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), waiting its turn under the busy timeout: a deferred transaction that read
    /// first and then wrote could instead fail at once with `SQLITE_BUSY` when another writer
    /// got in between. PostgreSQL ignores the mode.
    pub(super) async fn write_transaction(&self) -> Result<sea_orm::DatabaseTransaction, DbErr> {
        self.db
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
    }

    /// Runs one storage call under the timeout, translating its error.
    pub(super) async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, BackendError> {
        self.run_raw(call).await?.map_err(backend_error)
    }

    /// Runs one storage call under the timeout, leaving its error to the caller.
    async fn run_raw<T>(
        &self,
        call: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<Result<T, DbErr>, BackendError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|elapsed| BackendError::Unavailable(Box::new(elapsed)))
    }
}

/// [`UserRepository`] on a SeaORM connection pool (PostgreSQL or SQLite).
#[derive(Clone)]
pub struct SeaOrmUserRepository {
    db: DatabaseConnection,
    bounded: Bounded,
    sessions: SessionLookups,
}

impl SeaOrmUserRepository {
    /// `timeout` bounds every call, transaction included; at most `session_queries` batched
    /// session lookups run at once (see `session_lookups`). Must be called on a Tokio runtime:
    /// it starts the task that batches session lookups.
    pub fn new(db: DatabaseConnection, timeout: Duration, session_queries: usize) -> Self {
        let bounded = Bounded::new(db.clone(), timeout);
        Self {
            sessions: SessionLookups::start(bounded.clone(), session_queries),
            bounded,
            db,
        }
    }

    pub(super) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, BackendError> {
        self.bounded.run(call).await
    }

    pub(super) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(super) async fn write_transaction(&self) -> Result<sea_orm::DatabaseTransaction, DbErr> {
        self.bounded.write_transaction().await
    }
}

/// Locks the row of user `id` if the user is active at `version`, and says whether it is: a
/// password change or a deactivation in flight either commits first (and this matches nothing)
/// or waits for the caller's transaction.
///
/// A login passes `login_at`, which becomes the user's last login in the same statement.
pub(super) async fn lock_current(
    txn: &impl ConnectionTrait,
    id: UserId,
    version: i64,
    login_at: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    let touch = match login_at {
        Some(at) => {
            users::Entity::update_many().col_expr(users::Column::LastLoginAt, Expr::value(at))
        }
        None => users::Entity::update_many().col_expr(
            users::Column::CredentialVersion,
            Expr::col(users::Column::CredentialVersion),
        ),
    };
    let current = touch
        .filter(users::Column::Id.eq(id.0))
        .filter(users::Column::CredentialVersion.eq(version))
        .filter(users::Column::IsActive.eq(true))
        .exec(txn)
        .await?;
    Ok(current.rows_affected == 1)
}

/// Outages (no connection, a dropped one, a busy SQLite file) are worth a retry; anything else
/// is a bug.
fn backend_error(err: DbErr) -> BackendError {
    let transient = match &err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            use sea_orm::sqlx::Error as Sqlx;
            match inner.as_ref() {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
                Sqlx::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
                _ => false,
            }
        }
        _ => false,
    };
    if transient {
        BackendError::Unavailable(Box::new(err))
    } else {
        BackendError::Unexpected(Box::new(err))
    }
}

/// SQLite's busy and locked codes, extended ones included (`SQLITE_BUSY_SNAPSHOT` is 517: the
/// primary code is the low byte), and PostgreSQL's "server shutting down" class.
fn transient_code(code: &str) -> bool {
    match code.parse::<i32>() {
        Ok(sqlite) => matches!(sqlite & 0xff, 5 | 6),
        Err(_) => matches!(code, "57P01" | "57P02" | "57P03"),
    }
}

pub(super) fn to_user(model: users::Model) -> Result<User, BackendError> {
    Ok(User {
        id: UserId(model.id),
        email: Email::from_trusted(model.email),
        full_name: model.full_name.map(FullName::from_trusted),
        role: model
            .role
            .parse::<Role>()
            .map_err(BackendError::unexpected)?,
        is_active: model.is_active,
        email_verified: model.email_verified,
        created_at: model.created_at,
        updated_at: model.updated_at,
        last_login_at: model.last_login_at,
        password_hash: PasswordHash::new(model.password_hash),
        credential_version: model.credential_version,
    })
}

pub(super) fn to_session(model: sessions::Model) -> Session {
    Session {
        id: SessionId(model.id),
        user_id: UserId(model.user_id),
        created_at: model.created_at,
        last_used_at: model.last_used_at,
        expires_at: model.expires_at,
        idle_expires_at: model.idle_expires_at,
        ended_at: model.ended_at,
        client: ClientInfo {
            user_agent: model.user_agent,
            ip: model.ip,
        },
        // A word this version does not know (written by a newer one) claims nothing.
        methods: model
            .methods
            .split_whitespace()
            .filter_map(AuthMethod::parse)
            .collect(),
    }
}

fn refresh_token_model(token: NewRefreshToken) -> refresh_tokens::ActiveModel {
    refresh_tokens::ActiveModel {
        token_hash: Set(token.hash.0),
        session_id: Set(token.session_id.0),
        created_at: Set(token.created_at),
        expires_at: Set(token.expires_at),
        spent_at: Set(None),
    }
}

/// Ends, at `now`, the sessions of `user_id` still open, except `keep`.
pub(super) async fn end_sessions(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    keep: Option<SessionId>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut filter = Condition::all()
        .add(sessions::Column::UserId.eq(user_id.0))
        .add(sessions::Column::EndedAt.is_null());
    if let Some(keep) = keep {
        filter = filter.add(sessions::Column::Id.ne(keep.0));
    }
    sessions::Entity::update_many()
        .col_expr(sessions::Column::EndedAt, Expr::value(now))
        .filter(filter)
        .exec(conn)
        .await?;
    Ok(())
}

/// `credential_version + 1`.
pub(super) fn next_version() -> SimpleExpr {
    Expr::col(users::Column::CredentialVersion).add(1)
}

/// The condition of a session that is live at `now`.
fn live_at(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(sessions::Column::EndedAt.is_null())
        .add(sessions::Column::ExpiresAt.gt(now))
        .add(sessions::Column::IdleExpiresAt.gt(now))
}

#[async_trait]
impl UserRepository for SeaOrmUserRepository {
    async fn ping(&self) -> Result<(), BackendError> {
        // A failed ping is an outage whatever the driver calls it.
        self.bounded(self.db.ping()).await.map_err(|err| match err {
            BackendError::Unexpected(source) => BackendError::Unavailable(source),
            other => other,
        })
    }

    async fn create_user(&self, new: NewUser) -> Result<User, CreateUserError> {
        let model = users::ActiveModel {
            email: Set(new.email.as_str().to_owned()),
            email_normalized: Set(new.email.normalized().to_owned()),
            email_key: Set(Some(new.email.key().to_owned())),
            full_name: Set(new.full_name.map(|n| n.as_str().to_owned())),
            password_hash: Set(new.password_hash.as_str().to_owned()),
            role: Set(new.role.as_str().to_owned()),
            is_active: Set(true),
            created_at: Set(new.created_at),
            updated_at: Set(new.created_at),
            credential_version: Set(0),
            email_verified: Set(false),
            last_login_at: Set(None),
            ..Default::default()
        };
        let (send_verification, now) = (new.send_verification, new.created_at);
        let mut audit = new.audit;
        let insert = async {
            let txn = self.write_transaction().await?;
            let user = match model.insert(&txn).await {
                Ok(user) => user,
                Err(err) => {
                    // Now, not when the dropped transaction gets round to it: on SQLite the
                    // failed insert holds the write lock until the transaction ends.
                    txn.rollback().await?;
                    return Err(err);
                }
            };
            audit.user_id = audit.user_id.or(Some(UserId(user.id)));
            admin::record(&txn, audit).await?;
            if send_verification {
                let job = MailJob::Verification {
                    user_id: UserId(user.id),
                };
                mail::enqueue(&txn, job, now).await?;
            }
            txn.commit().await?;
            Ok(user)
        };
        let inserted = match self.bounded.run_raw(insert).await? {
            Ok(model) => model,
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(CreateUserError::EmailTaken);
            }
            Err(err) => return Err(backend_error(err).into()),
        };
        Ok(to_user(inserted)?)
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError> {
        let found = self
            .bounded(
                users::Entity::find()
                    .filter(users::Column::EmailKey.eq(email.key()))
                    .one(&self.db),
            )
            .await?;
        found.map(to_user).transpose()
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError> {
        let found = self
            .bounded(users::Entity::find_by_id(id.0).one(&self.db))
            .await?;
        found.map(to_user).transpose()
    }

    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError> {
        // An import keeps the source row's id and marks the user; nothing else sets the mark.
        let found = self
            .bounded(
                users::Entity::find_by_id(pyauth_id)
                    .filter(users::Column::ImportedFrom.eq(PYAUTH))
                    .one(&self.db),
            )
            .await?;
        found.map(to_user).transpose()
    }

    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError> {
        self.apply_change(change).await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        let found = self.bounded(admin::list_users(&self.db, query)).await?;
        found.into_iter().map(to_user).collect()
    }

    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        self.bounded(admin::record(&self.db, event)).await
    }

    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            admin::record_folded(&txn, event, since).await?;
            txn.commit().await
        })
        .await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError> {
        self.bounded(admin::list_audit(&self.db, query)).await
    }

    async fn create_session(
        &self,
        new: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError> {
        let (user_id, version, now) = (new.user_id, new.credential_version, new.created_at);
        let audit = new.audit;
        let live_limit = u64::from(new.live_limit);
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
            methods: Set(new
                .methods
                .iter()
                .map(|method| method.as_str())
                .collect::<Vec<_>>()
                .join(" ")),
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
            admin::record(&txn, audit).await?;
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.bounded(mail::enqueue(&self.db, job, now)).await
    }

    async fn store_email_token(
        &self,
        token: NewEmailToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            mail::token_row(token).insert(&txn).await?;
            if let Some(audit) = audit {
                admin::record(&txn, audit).await?;
            }
            txn.commit().await
        })
        .await
    }

    async fn find_email_token(
        &self,
        hash: &EmailTokenHash,
    ) -> Result<Option<EmailTokenRecord>, BackendError> {
        let found = self
            .bounded(
                email_tokens::Entity::find_by_id(hash.0.clone())
                    .find_also_related(users::Entity)
                    .one(&self.db),
            )
            .await?;
        let Some((token, Some(user))) = found else {
            return Ok(None);
        };
        Ok(Some(mail::to_token(token, to_user(user)?)?))
    }

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError> {
        self.bounded(async {
            admin::purge_audit(&self.db, audit_before).await?;
            refresh_tokens::Entity::delete_many()
                .filter(refresh_tokens::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            mfa_challenges::Entity::delete_many()
                .filter(mfa_challenges::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            webauthn_ceremonies::Entity::delete_many()
                .filter(webauthn_ceremonies::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            // Refresh tokens of these sessions go with them (ON DELETE CASCADE).
            mail::purge(&self.db, now).await?;
            invalidations::purge(&self.db, now).await?;
            let deleted = sessions::Entity::delete_many()
                .filter(
                    Condition::any()
                        .add(sessions::Column::EndedAt.is_not_null())
                        .add(sessions::Column::ExpiresAt.lte(now))
                        .add(sessions::Column::IdleExpiresAt.lte(now)),
                )
                .exec(&self.db)
                .await?;
            Ok(deleted.rows_affected)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::transient_code;

    #[test]
    fn busy_and_shutdown_codes_are_transient() {
        for code in ["5", "6", "517", "773", "262", "57P01"] {
            assert!(transient_code(code), "{code}");
        }
        for code in ["19", "2067", "23505", "42P01"] {
            assert!(!transient_code(code), "{code}");
        }
    }
}
