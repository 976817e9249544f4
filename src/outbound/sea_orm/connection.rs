//! Connecting to PostgreSQL or SQLite, and applying migrations.

use std::path::Path;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
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

/// Opens a pool. For a SQLite file, creates its folder, and switches the file to WAL so that
/// readers do not wait for writers.
///
/// # Errors
/// When the folder cannot be made or the database does not answer within the timeout.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    if let Some(dir) = sqlite_folder(&settings.url) {
        std::fs::create_dir_all(dir)
            .map_err(|err| DbErr::Custom(format!("cannot create {}: {err}", dir.display())))?;
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
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite && !settings.url.contains(":memory:") {
        db.execute_unprepared("PRAGMA journal_mode = WAL").await?;
    }
    Ok(db)
}

/// The folder of a SQLite file URL such as `sqlite://data/portcullis.db?mode=rwc`.
fn sqlite_folder(url: &str) -> Option<&Path> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
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

/// Applies every pending migration.
///
/// # Errors
/// When a migration fails; each runs in its own transaction where the engine allows.
pub async fn migrate_up(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
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

    #[test]
    fn the_folder_of_a_sqlite_file_is_found() {
        assert_eq!(
            sqlite_folder("sqlite://data/portcullis.db?mode=rwc"),
            Some(Path::new("data"))
        );
        assert_eq!(
            sqlite_folder("sqlite:///tmp/x/db.sqlite"),
            Some(Path::new("/tmp/x"))
        );
        assert_eq!(sqlite_folder("sqlite::memory:"), None);
        assert_eq!(sqlite_folder("sqlite://portcullis.db"), None);
        assert_eq!(sqlite_folder("postgres://localhost/db"), None);
    }
}
