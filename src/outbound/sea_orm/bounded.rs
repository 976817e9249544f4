//! Every database call bounded by a timeout and its error classified, so that a stalled or
//! lost database is a quick [`BackendError::Unavailable`] and anything else a bug
//! ([`BackendError::Unexpected`]). Shared by every SeaORM adapter.

use std::future::Future;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr, RuntimeErr, TransactionTrait};

use crate::domain::BackendError;

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
    pub(super) async fn run_raw<T>(
        &self,
        call: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<Result<T, DbErr>, BackendError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|elapsed| BackendError::Unavailable(Box::new(elapsed)))
    }
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
