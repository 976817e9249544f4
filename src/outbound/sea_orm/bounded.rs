//! Every database call bounded by a timeout and its error classified, so that a stalled or
//! lost database is a quick [`BackendError::Unavailable`], a full, read-only or failing storage
//! a [`BackendError::Storage`], and anything else a bug ([`BackendError::Unexpected`]). Shared
//! by every SeaORM adapter.

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

/// What a database error means for the caller.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// An outage (no connection, a dropped one, a busy SQLite file): worth a retry.
    Outage,
    /// The storage refuses the work (disk full, read-only, I/O errors): lasts until fixed.
    Storage,
    /// Anything else: a bug.
    Bug,
}

/// Translates a database error into the [`BackendError`] the ports promise.
pub(super) fn backend_error(err: DbErr) -> BackendError {
    let kind = match &err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Kind::Outage,
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            use sea_orm::sqlx::Error as Sqlx;
            match inner.as_ref() {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => {
                    Kind::Outage
                }
                Sqlx::Database(db) => {
                    let postgres = db
                        .try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>()
                        .is_some();
                    match (db.code(), postgres) {
                        (Some(code), true) => postgres_kind(&code),
                        (Some(code), false) => code.parse().map_or(Kind::Bug, sqlite_kind),
                        (None, _) => Kind::Bug,
                    }
                }
                _ => Kind::Bug,
            }
        }
        _ => Kind::Bug,
    };
    match kind {
        Kind::Outage => BackendError::Unavailable(Box::new(err)),
        Kind::Storage => BackendError::Storage(Box::new(err)),
        Kind::Bug => BackendError::Unexpected(Box::new(err)),
    }
}

/// A SQLite result code; the primary code is the low byte of an extended one (such as
/// `SQLITE_BUSY_SNAPSHOT`, 517).
fn sqlite_kind(code: i32) -> Kind {
    match code & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED
        5 | 6 => Kind::Outage,
        // SQLITE_READONLY, SQLITE_IOERR (a write refused by a read-only file system or an
        // immutable file is SQLITE_IOERR_WRITE), SQLITE_FULL, SQLITE_CANTOPEN (the WAL of a file
        // on a read-only file system)
        8 | 10 | 13 | 14 => Kind::Storage,
        _ => Kind::Bug,
    }
}

/// A PostgreSQL SQLSTATE (some are all digits, so it cannot be told from a SQLite code).
fn postgres_kind(code: &str) -> Kind {
    match code {
        // admin shutdown, crash shutdown, cannot connect now (starting or stopping)
        "57P01" | "57P02" | "57P03" => Kind::Outage,
        // disk full, I/O error, a read-only transaction (a standby after a failover)
        "53100" | "58030" | "25006" => Kind::Storage,
        _ => Kind::Bug,
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, postgres_kind, sqlite_kind};

    #[test]
    fn busy_and_shutdown_codes_are_outages() {
        for code in [5, 6, 517, 773, 262] {
            assert_eq!(sqlite_kind(code), Kind::Outage, "{code}");
        }
        for code in ["57P01", "57P02", "57P03"] {
            assert_eq!(postgres_kind(code), Kind::Outage, "{code}");
        }
    }

    #[test]
    fn a_full_read_only_or_failing_storage_is_a_storage_fault() {
        // SQLITE_FULL, SQLITE_READONLY, SQLITE_IOERR_WRITE (a write refused by a read-only
        // file system or an immutable file), SQLITE_READONLY_DBMOVED, SQLITE_CANTOPEN.
        for code in [13, 8, 778, 1032, 14] {
            assert_eq!(sqlite_kind(code), Kind::Storage, "{code}");
        }
        // Disk full, I/O error, a read-only transaction.
        for code in ["53100", "58030", "25006"] {
            assert_eq!(postgres_kind(code), Kind::Storage, "{code}");
        }
    }

    #[test]
    fn constraint_and_schema_errors_are_bugs() {
        for code in [19, 2067, 1] {
            assert_eq!(sqlite_kind(code), Kind::Bug, "{code}");
        }
        // 53100 as a SQLite code would be a bug; PostgreSQL's unique violation and unknown
        // table too.
        assert_eq!(sqlite_kind(53100), Kind::Bug);
        for code in ["23505", "42P01"] {
            assert_eq!(postgres_kind(code), Kind::Bug, "{code}");
        }
    }
}
