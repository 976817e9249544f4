//! The SeaORM store: one object serving every storage port (each in a file of its own), and
//! the statements several of them share.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
};

use super::bounded::Bounded;
use super::entities::{sessions, users};
use super::session_lookups::SessionLookups;
use crate::domain::{BackendError, SessionId, UserId};

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
