//! The SeaORM store: [`UserRepository`] and [`Housekeeping`], and what its other ports share
//! (the bounded pool, the row conversions).
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
    DatabaseConnection, DbErr, EntityTrait, QueryFilter, RuntimeErr, SqlErr, TransactionTrait,
};

use super::entities::{mfa_challenges, refresh_tokens, sessions, users, webauthn_ceremonies};
use super::session_lookups::SessionLookups;
use super::{admin, invalidations, mail};
use crate::domain::import::PYAUTH;
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{CreateUserError, Housekeeping, UserRepository};
use crate::domain::{
    AccountChange, Applied, BackendError, ClientInfo, Email, FullName, MailJob, NewUser,
    PasswordHash, Role, Session, SessionId, User, UserId, UserQuery,
};

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

/// Every storage port on a SeaORM connection pool (PostgreSQL or SQLite): one store, so that
/// an account change spans users, sessions, tokens, factors, the trail and the outbox in one
/// transaction.
#[derive(Clone)]
pub struct SeaOrmStore {
    pub(super) db: DatabaseConnection,
    pub(super) bounded: Bounded,
    pub(super) sessions: SessionLookups,
}

impl SeaOrmStore {
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
pub(super) fn backend_error(err: DbErr) -> BackendError {
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

#[async_trait]
impl UserRepository for SeaOrmStore {
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
}

#[async_trait]
impl Housekeeping for SeaOrmStore {
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
