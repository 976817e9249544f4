//! Connecting to PostgreSQL or SQLite, and applying migrations.

use std::path::Path;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteConnection;
use sea_orm::sqlx::{Connection as _, Executor as _};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite://...`.
    pub url: String,
    pub max_connections: u32,
    /// The bound on connecting and on waiting for a pooled connection.
    pub connect_timeout: Duration,
}

/// Opens a pool. For a SQLite file, creates its folder (mode 0700) and the file (mode 0600)
/// when they do not exist, since it holds password hashes, emails and addresses; SQLite gives
/// its journal files the database file's mode. Then switches the file to WAL so that readers
/// do not wait for writers, and checks that it can be written.
///
/// # Errors
/// When the folder or file cannot be made, a SQLite file cannot be written, or the database
/// does not answer within the timeout.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    if let Some(file) = sqlite_file(&settings.url) {
        create_private(file)
            .map_err(|err| DbErr::Custom(format!("cannot create {}: {err}", file.display())))?;
        // The pool retries a connection it could not open until its timeout, and then tells
        // only that it timed out: one connection of our own says why.
        let probe = async {
            let mut conn = SqliteConnection::connect(&settings.url).await?;
            let checked = check_writable(&mut conn).await;
            conn.close().await?;
            checked
        };
        probe.await.map_err(|err| {
            DbErr::Custom(format!(
                "cannot write to the SQLite database {}: {err}. Portcullis writes on every \
                 login: make the file, its folder and its file system writable, with space free",
                file.display()
            ))
        })?;
    }
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(settings.max_connections)
        .min_connections(0)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        // Pinging on every checkout doubles the round trips of the hot path; a connection that
        // has been busy is known to be alive, and a broken one fails its query, is dropped, and
        // the next request gets a fresh one.
        .test_before_acquire_if_idle_for(Duration::from_secs(5))
        // When a write fails with SQLITE_FULL or SQLITE_IOERR, SQLite rolls the whole
        // transaction back by itself; sqlx still counts it open, its own ROLLBACK then fails,
        // and the connection returns to the pool believing it is in a transaction. The next
        // transaction on it becomes a savepoint, and after one more failure a savepoint inside
        // a transaction nobody commits: registrations answered 201 were lost, and the write
        // lock it held timed every other writer out. Such a connection is closed instead.
        .map_sqlx_sqlite_before_acquire(|conn, _| {
            Box::pin(async move { Ok(!conn.is_in_transaction()) })
        })
        // SQLite opens a file it may not write read-only, without a word.
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|conn, _| Box::pin(async move { check_writable(conn).await }))
        })
        .sqlx_logging(false)
        // Connections are opened below, together: one at a time, each TLS handshake with
        // PostgreSQL would add to the start-up.
        .connect_lazy(true);
    let db = Database::connect(options).await?;
    open_together(&db, STARTUP_CONNECTIONS.min(settings.max_connections)).await?;
    if sqlite_file(&settings.url).is_some() {
        db.execute_unprepared("PRAGMA journal_mode = WAL").await?;
    }
    Ok(db)
}

/// Writes and rolls back on each new SQLite connection. A connection that SQLite opened
/// read-only would refuse every write for as long as the pool kept it, long after the file was
/// writable again; refused here, it is opened again at the next request. So an instance on a
/// file it cannot write fails to start, rather than serving token checks while every login
/// fails. Taking the write lock alone proves nothing: SQLite grants it on a read-only file in
/// WAL mode.
async fn check_writable(conn: &mut SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    conn.execute("BEGIN").await?;
    let written = conn
        .execute("CREATE TABLE portcullis_write_check (x INTEGER)")
        .await;
    let rolled_back = conn.execute("ROLLBACK").await;
    written?;
    rolled_back?;
    Ok(())
}

/// The file of a SQLite file URL such as `sqlite://data/portcullis.db?mode=rwc`.
/// Connections start-up uses at once (the migrator holds two while it queries on a third).
const STARTUP_CONNECTIONS: u32 = 3;

/// Opens `count` connections of the pool at the same time (each answers a `SELECT 1`), so
/// that a database that cannot be reached fails start-up, as an eager pool would.
async fn open_together(db: &DatabaseConnection, count: u32) -> Result<(), DbErr> {
    let pings = (0..count).map(|_| db.execute_unprepared("SELECT 1"));
    futures_util::future::try_join_all(pings).await?;
    Ok(())
}

fn sqlite_file(url: &str) -> Option<&Path> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    Some(Path::new(path))
}

/// Creates `file`'s missing folders readable by the owner only, and `file` itself, if it does
/// not exist, readable and writable by the owner only. Existing ones keep their modes: they
/// are the operator's.
fn create_private(file: &Path) -> std::io::Result<()> {
    if let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    match private_new_file(file) {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Creates `file`, readable and writable by the owner only; fails if it exists.
pub(super) fn private_new_file(file: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file).map(drop)
}

/// How many pooled connections exist and how many of them are idle, for metrics.
pub fn pool_usage(db: &DatabaseConnection) -> (u32, usize) {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => (0, 0),
    }
}

/// Where the database's schema stands against this binary's migrations, after [`migrate_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// The database has every migration of this binary, and no other.
    Current,
    /// The database has every migration of this binary, and these too (their versions), which
    /// a newer release applied during a rolling upgrade. Migrations only add
    /// (docs/decisions/25-rolling-upgrades.md), so this binary still works on that schema.
    Ahead(Vec<String>),
}

/// Applies every pending migration, unless a newer release has migrated the database already:
/// then it applies nothing and says which versions it does not know. (sea-orm-migration's own
/// `up` refuses any database with an applied migration it has no file for, which would stop
/// an older instance from restarting in the middle of a rollout.)
///
/// # Errors
/// When a migration fails (each runs in its own transaction where the engine allows), or when
/// the database has migrations this binary does not know while it lacks some of this binary's:
/// histories that diverged, which no release can serve.
pub async fn migrate_up(db: &DatabaseConnection) -> Result<SchemaState, DbErr> {
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    let applied: Vec<String> = Migrator::get_migration_models(db)
        .await?
        .into_iter()
        .map(|model| model.version)
        .collect();
    let unknown: Vec<String> = applied
        .iter()
        .filter(|version| !known.contains(version))
        .cloned()
        .collect();
    if unknown.is_empty() {
        Migrator::up(db, None).await?;
        return Ok(SchemaState::Current);
    }
    let missing: Vec<&str> = known
        .iter()
        .filter(|name| !applied.contains(name))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(SchemaState::Ahead(unknown))
    } else {
        Err(DbErr::Migration(format!(
            "the database has migrations this release does not know ({}) and lacks some of its \
             own ({}): it was migrated by a release of another line; run `portcullis migrate` \
             with a release that has both",
            unknown.join(", "),
            missing.join(", ")
        )))
    }
}

/// Rolls back every migration.
///
/// # Errors
/// When a rollback fails.
pub async fn migrate_down(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::down(db, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::TransactionTrait as _;

    #[test]
    fn the_file_of_a_sqlite_url_is_found() {
        assert_eq!(
            sqlite_file("sqlite://data/portcullis.db?mode=rwc"),
            Some(Path::new("data/portcullis.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///tmp/x/db.sqlite"),
            Some(Path::new("/tmp/x/db.sqlite"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(
            sqlite_file("sqlite://portcullis.db"),
            Some(Path::new("portcullis.db"))
        );
        assert_eq!(sqlite_file("postgres://localhost/db"), None);
    }

    /// SQLite's own full disk: the one connection may grow the file by a few pages only.
    #[tokio::test]
    async fn a_write_refused_for_a_full_disk_leaves_no_connection_that_loses_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display());
        let settings = DatabaseSettings {
            url,
            max_connections: 1,
            connect_timeout: Duration::from_secs(5),
        };
        let db = connect(&settings).await.unwrap();
        db.execute_unprepared("CREATE TABLE rows (x BLOB)")
            .await
            .unwrap();
        let pages = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA page_count",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        db.execute_unprepared(&format!("PRAGMA max_page_count = {}", pages + 3))
            .await
            .unwrap();
        let insert = |size: u32| format!("INSERT INTO rows VALUES (randomblob({size}))");

        // SQLite rolls this transaction back by itself when the disk fills.
        let filling = db.begin().await.unwrap();
        let mut refused = None;
        for _ in 0..100 {
            if let Err(err) = filling.execute_unprepared(&insert(3000)).await {
                refused = Some(err);
                break;
            }
        }
        assert!(refused.unwrap().to_string().contains("full"));
        drop(filling);
        // A transaction given up (an account change refused), then one committed.
        let given_up = db.begin().await.unwrap();
        given_up.execute_unprepared(&insert(10)).await.unwrap();
        drop(given_up);
        let kept = db.begin().await.unwrap();
        kept.execute_unprepared(&insert(10)).await.unwrap();
        kept.commit().await.unwrap();

        // Another connection sees what was committed.
        let other = connect(&settings).await.unwrap();
        let rows = other
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM rows",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(rows, 1, "the committed row is in the file, and only it");
        other.close().await.unwrap();
        db.close().await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let url = format!("sqlite://{}/portcullis.db?mode=rwc", dir.display());
        let db = connect(&DatabaseSettings {
            url,
            max_connections: 1,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        migrate_up(&db).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() >= 2, "the database and its WAL: {files:?}");
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        db.close().await.unwrap();
    }
}
