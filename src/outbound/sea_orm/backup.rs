//! Online backups of a SQLite database, taken through SQLite's backup API while the service
//! keeps writing. PostgreSQL has its own tools (`pg_dump`, WAL archiving; see the operations
//! page), so it is refused here, as are in-memory databases, which have no file.
//!
//! The copy is one `sqlite3_backup_step(-1)`: a single call reads every page inside one read
//! transaction, so on a WAL database it is one snapshot, taken while other connections keep
//! committing. Stepping a few pages at a time would hold no lock between steps, but a write by
//! another connection between two steps restarts the copy from the first page: under a steady
//! write flood it might never finish. The cost of the single step is that the WAL cannot be
//! checkpointed past the snapshot until the copy ends, so it grows for that while.
//!
//! The copy is written to a private temporary file beside the target, checked with
//! `PRAGMA integrity_check`, synced, and only then renamed into place: a backup cut short never
//! carries the target's name. The C API is used only here, on handles sqlx-sqlite lends.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
use sea_orm::{DatabaseConnection, DbBackend};

use super::connection::private_new_file;

/// A backup written and in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The database file that was copied.
    pub source: PathBuf,
    /// The backup file.
    pub path: PathBuf,
    /// The backup's size on disk.
    pub bytes: u64,
    /// Database pages copied.
    pub pages: u64,
    /// Users in the backup.
    pub users: u64,
    /// How long the copy held its snapshot of the database (meanwhile the WAL cannot be
    /// checkpointed past it, and grows).
    pub copying: Duration,
    /// From the start until the backup had its name: the copy, the check, the sync.
    pub elapsed: Duration,
}

/// Why no backup was made. Whatever the reason, the target is untouched and no temporary file
/// is left behind.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `memory://` or an in-memory SQLite database: nothing on disk to copy.
    #[error("the database is in memory: there is no file to back up")]
    InMemory,
    /// PostgreSQL, whose own tools do this.
    #[error("the database is PostgreSQL, not a SQLite file")]
    PostgreSql,
    /// The target exists and replacing it was not asked for.
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    /// The target is the live database or one of its journal files.
    #[error("{} is the database being backed up, or its journal", .0.display())]
    SameFile(PathBuf),
    /// A file could not be made, synced or renamed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused a step of the copy or of the checks.
    #[error("SQLite: {0}")]
    Sqlite(String),
    /// The copy failed `PRAGMA integrity_check`; it was deleted.
    #[error("the copy failed its integrity check: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for BackupError {
    fn from(err: sqlx::Error) -> Self {
        Self::Sqlite(err.to_string())
    }
}

/// How often, and how far apart, a copy that found the database busy is tried again. The
/// source connection already waits its busy timeout inside each try.
const BUSY_RETRIES: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_millis(200);

/// Copies `db`'s SQLite database into the file `to`, consistently, while other connections
/// (this process's or other processes') keep writing. An existing `to` is replaced only when
/// `replace` is set.
///
/// Runs the copy with `tokio::task::block_in_place`, so it needs the multi-threaded runtime.
///
/// # Errors
/// See [`BackupError`].
pub async fn backup(
    db: &DatabaseConnection,
    to: &Path,
    replace: bool,
) -> Result<Backup, BackupError> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Err(BackupError::PostgreSql);
    }
    let started = Instant::now();
    let mut source = db.get_sqlite_connection_pool().acquire().await?;
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&mut *source)
            .await?;
    if file.is_empty() {
        return Err(BackupError::InMemory);
    }
    let source_file = PathBuf::from(file);
    check_target(to, &source_file, replace)?;
    let partial = Partial::create(to)?;
    let mut copy = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&partial.path)
            .journal_mode(SqliteJournalMode::Delete)
            // The integrity check of a large copy takes seconds; the operator is told the time.
            .disable_statement_logging(),
    )
    .await?;
    let copy_started = Instant::now();
    let pages = copy_snapshot(&mut source, &mut copy).await?;
    let copying = copy_started.elapsed();
    drop(source);
    let users = check_copy(&mut copy).await?;
    copy.close().await?;
    if !replace && to.symlink_metadata().is_ok() {
        // Made while we copied.
        return Err(BackupError::Exists(to.to_owned()));
    }
    partial.put_in_place(to)?;
    let bytes = std::fs::metadata(to)
        .map_err(|source| io("cannot read", to, source))?
        .len();
    Ok(Backup {
        source: source_file,
        path: to.to_owned(),
        bytes,
        pages,
        users,
        copying,
        elapsed: started.elapsed(),
    })
}

/// Refuses a target that exists (unless `replace`), or that is the live database or one of
/// its journal files, which a rename would destroy.
fn check_target(to: &Path, source: &Path, replace: bool) -> Result<(), BackupError> {
    if let Ok(target) = std::fs::canonicalize(to) {
        let live = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
        let journals = ["-wal", "-shm", "-journal"].map(|suffix| {
            let mut name = live.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        });
        if target == live || journals.contains(&target) {
            return Err(BackupError::SameFile(to.to_owned()));
        }
    }
    match to.symlink_metadata() {
        Ok(meta) if meta.is_dir() => Err(io(
            "cannot replace",
            to,
            std::io::Error::other("it is a folder; name a file in it"),
        )),
        Ok(_) if !replace => Err(BackupError::Exists(to.to_owned())),
        _ => Ok(()),
    }
}

/// Copies every page of `source` into `copy` in one step, so from one snapshot.
async fn copy_snapshot(
    source: &mut SqliteConnection,
    copy: &mut SqliteConnection,
) -> Result<u64, BackupError> {
    let mut source = source.lock_handle().await?;
    let mut copy = copy.lock_handle().await?;
    let (from, to) = (source.as_raw_handle(), copy.as_raw_handle());
    // The copy reads and writes the whole database: seconds for a large one.
    let pages = tokio::task::block_in_place(|| step_all(from, to))?;
    Ok(u64::try_from(pages).unwrap_or_default())
}

/// The backup API's init, step(-1) (tried again while the source is busy) and finish.
fn step_all(from: NonNull<ffi::sqlite3>, to: NonNull<ffi::sqlite3>) -> Result<i32, BackupError> {
    let main = c"main".as_ptr();
    // SAFETY: both handles come from `lock_handle` guards that the caller holds until this
    // returns, so no other thread uses either connection meanwhile; the backup object is
    // created, used and finished here, before the guards are released.
    unsafe {
        let backup = ffi::sqlite3_backup_init(to.as_ptr(), main, from.as_ptr(), main);
        if backup.is_null() {
            return Err(BackupError::Sqlite(message(to)));
        }
        let mut tries = 0;
        let stepped = loop {
            let code = ffi::sqlite3_backup_step(backup, -1);
            // sqlx turns on extended result codes; SQLITE_BUSY_SNAPSHOT and kin are busy too.
            if matches!(code & 0xff, ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED) && tries < BUSY_RETRIES
            {
                tries += 1;
                std::thread::sleep(BUSY_PAUSE);
                continue;
            }
            break code;
        };
        let pages = ffi::sqlite3_backup_pagecount(backup);
        // finish reports the step's error, if any, and leaves its message on `to`.
        let finished = ffi::sqlite3_backup_finish(backup);
        if stepped != ffi::SQLITE_DONE || finished != ffi::SQLITE_OK {
            return Err(BackupError::Sqlite(message(to)));
        }
        Ok(pages)
    }
}

/// The last error message of the connection `db`.
fn message(db: NonNull<ffi::sqlite3>) -> String {
    // SAFETY: `db` is a live, locked connection (see `step_all`); sqlite3_errmsg returns a
    // NUL-terminated string that it owns and keeps until the next call on `db`, and it is
    // copied before that.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `PRAGMA integrity_check` on the copy, then its users, counted.
async fn check_copy(copy: &mut SqliteConnection) -> Result<u64, BackupError> {
    // The copied header still says WAL (the backup API rewrites it only for a WAL target), and
    // every later opening of the file would then make -wal and -shm files beside it. A rollback
    // journal keeps the backup one file; the service turns WAL back on when it opens a restore.
    sqlx::query("PRAGMA journal_mode = DELETE")
        .execute(&mut *copy)
        .await?;
    let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut *copy)
        .await?;
    if report != ["ok"] {
        return Err(BackupError::Corrupt(report.join("; ")));
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *copy)
        .await
        .map_err(|err| {
            BackupError::Sqlite(format!(
                "{err} (is DATABASE_URL a Portcullis database, migrated?)"
            ))
        })?;
    Ok(u64::try_from(users).unwrap_or_default())
}

/// The temporary file a backup is written to, beside its target; deleted (with any journal)
/// unless it was put in place.
struct Partial {
    path: PathBuf,
    placed: bool,
}

impl Partial {
    /// A new, empty file readable by the owner only (an empty file is an empty database): a
    /// backup holds what the database does, password hashes included.
    fn create(to: &Path) -> Result<Self, BackupError> {
        let name = to.file_name().ok_or_else(|| {
            io(
                "cannot write to",
                to,
                std::io::Error::other("not a file name"),
            )
        })?;
        let mut partial = std::ffi::OsString::from(".");
        partial.push(name);
        partial.push(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
        let path = to.with_file_name(partial);
        private_new_file(&path).map_err(|source| io("cannot create", &path, source))?;
        Ok(Self {
            path,
            placed: false,
        })
    }

    /// Syncs the file, renames it to `to`, and syncs the folder so that the name survives a
    /// crash too.
    fn put_in_place(mut self, to: &Path) -> Result<(), BackupError> {
        std::fs::File::open(&self.path)
            .and_then(|file| file.sync_all())
            .map_err(|source| io("cannot sync", &self.path, source))?;
        std::fs::rename(&self.path, to).map_err(|source| io("cannot rename to", to, source))?;
        self.placed = true;
        let folder = match to.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(folder)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| io("cannot sync", folder, source))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed {
            let mut journal = self.path.clone().into_os_string();
            journal.push("-journal");
            // Best effort: there is nothing more to do with an error while giving up.
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(journal);
        }
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_database_and_its_journals_are_never_a_target_even_with_replace() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("portcullis.db");
        for name in ["portcullis.db", "portcullis.db-wal", "portcullis.db-shm"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
            let target = dir.path().join(name);
            assert!(matches!(
                check_target(&target, &live, true),
                Err(BackupError::SameFile(_))
            ));
        }
        let other = dir.path().join("backup.db");
        assert!(check_target(&other, &live, false).is_ok());
        std::fs::write(&other, b"").unwrap();
        assert!(matches!(
            check_target(&other, &live, false),
            Err(BackupError::Exists(_))
        ));
        assert!(check_target(&other, &live, true).is_ok());
    }
}
