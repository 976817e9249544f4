//! Tells every instance's session cache about each change to a user or the end of a session,
//! from the database itself, in the transaction of the change.
//!
//! Triggers rather than code in each write: every write counts, whichever path made it (the
//! API, the CLI, an import, an operator's own SQL), and none can be forgotten by a later one.
//!
//! - PostgreSQL: `pg_notify('portcullis_session_cache', ...)` with `u:<user id>` when a user
//!   row changes or goes, `s:<session id>` when a session is ended. A notification is
//!   delivered only when its transaction commits, so no instance hears of a change before the
//!   change is visible.
//! - SQLite has no notifications: the same triggers append to `session_cache_invalidations`,
//!   which each server reads every few milliseconds, after the last sequence number it saw.
//!   That is how a change made by another process on the same file (the CLI) reaches a running
//!   server.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "CREATE FUNCTION portcullis_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('portcullis_session_cache', 'u:' || OLD.id); RETURN NULL; END $$",
    "CREATE FUNCTION portcullis_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('portcullis_session_cache', 's:' || NEW.id); RETURN NULL; END $$",
    // A row locked by an update that changes nothing (`SET x = x`) tells nobody.
    "CREATE TRIGGER users_changed AFTER UPDATE ON users FOR EACH ROW \
     WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION portcullis_user_changed()",
    "CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW \
     EXECUTE FUNCTION portcullis_user_changed()",
    "CREATE TRIGGER sessions_ended AFTER UPDATE OF ended_at ON sessions FOR EACH ROW \
     WHEN (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL) \
     EXECUTE FUNCTION portcullis_session_ended()",
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS sessions_ended ON sessions",
    "DROP TRIGGER IF EXISTS users_deleted ON users",
    "DROP TRIGGER IF EXISTS users_changed ON users",
    "DROP FUNCTION IF EXISTS portcullis_session_ended()",
    "DROP FUNCTION IF EXISTS portcullis_user_changed()",
];

const SQLITE_UP: &[&str] = &[
    // `at` (Unix seconds) lets old rows be purged; AUTOINCREMENT never reuses a number, so a
    // reader that remembers the last one it saw misses nothing.
    "CREATE TABLE session_cache_invalidations (\
     seq INTEGER PRIMARY KEY AUTOINCREMENT, \
     user_id BIGINT, \
     session_id BLOB, \
     at BIGINT NOT NULL DEFAULT (unixepoch()))",
    "CREATE TRIGGER users_changed AFTER UPDATE ON users FOR EACH ROW \
     WHEN OLD.email IS NOT NEW.email OR OLD.email_normalized IS NOT NEW.email_normalized \
     OR OLD.full_name IS NOT NEW.full_name OR OLD.password_hash IS NOT NEW.password_hash \
     OR OLD.role IS NOT NEW.role OR OLD.is_active IS NOT NEW.is_active \
     OR OLD.updated_at IS NOT NEW.updated_at \
     OR OLD.credential_version IS NOT NEW.credential_version \
     OR OLD.email_verified IS NOT NEW.email_verified \
     OR OLD.last_login_at IS NOT NEW.last_login_at \
     BEGIN INSERT INTO session_cache_invalidations (user_id) VALUES (OLD.id); END",
    "CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW \
     BEGIN INSERT INTO session_cache_invalidations (user_id) VALUES (OLD.id); END",
    "CREATE TRIGGER sessions_ended AFTER UPDATE OF ended_at ON sessions FOR EACH ROW \
     WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL \
     BEGIN INSERT INTO session_cache_invalidations (session_id) VALUES (NEW.id); END",
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS sessions_ended",
    "DROP TRIGGER IF EXISTS users_deleted",
    "DROP TRIGGER IF EXISTS users_changed",
    "DROP TABLE IF EXISTS session_cache_invalidations",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_per_backend(manager, POSTGRES_UP, SQLITE_UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_per_backend(manager, POSTGRES_DOWN, SQLITE_DOWN).await
    }
}
