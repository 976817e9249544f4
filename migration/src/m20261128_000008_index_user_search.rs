//! Index-backed search of users by any part of the email or the full name.
//!
//! - PostgreSQL: `pg_trgm` GIN indexes on the lower-cased email and full name, which serve
//!   `LIKE '%text%'` (and so prefixes) for text of three characters or more.
//! - SQLite: an FTS5 table with the trigram tokenizer (case-insensitive), kept in step with
//!   `users` by triggers, which serves the same substring match; it is filled from the
//!   existing users here.
//!
//! Shorter search text is matched by scanning, on both.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    // No pending list: users change seldom, and a search must not scan a list of recent
    // insertions that only a vacuum would merge into the index.
    "CREATE INDEX ix_users_email_trgm ON users USING gin (email_normalized gin_trgm_ops) \
     WITH (fastupdate = off)",
    "CREATE INDEX ix_users_full_name_trgm ON users USING gin (lower(full_name) gin_trgm_ops) \
     WITH (fastupdate = off)",
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP INDEX IF EXISTS ix_users_full_name_trgm",
    "DROP INDEX IF EXISTS ix_users_email_trgm",
];

const SQLITE_UP: &[&str] = &[
    "CREATE VIRTUAL TABLE users_search USING fts5(email, full_name, content='users', \
     content_rowid='id', tokenize='trigram')",
    "INSERT INTO users_search (rowid, email, full_name) SELECT id, email_normalized, full_name \
     FROM users",
    "CREATE TRIGGER users_search_insert AFTER INSERT ON users BEGIN \
     INSERT INTO users_search (rowid, email, full_name) \
     VALUES (new.id, new.email_normalized, new.full_name); END",
    "CREATE TRIGGER users_search_delete AFTER DELETE ON users BEGIN \
     INSERT INTO users_search (users_search, rowid, email, full_name) \
     VALUES ('delete', old.id, old.email_normalized, old.full_name); END",
    "CREATE TRIGGER users_search_update AFTER UPDATE OF email_normalized, full_name ON users \
     BEGIN \
     INSERT INTO users_search (users_search, rowid, email, full_name) \
     VALUES ('delete', old.id, old.email_normalized, old.full_name); \
     INSERT INTO users_search (rowid, email, full_name) \
     VALUES (new.id, new.email_normalized, new.full_name); END",
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS users_search_update",
    "DROP TRIGGER IF EXISTS users_search_delete",
    "DROP TRIGGER IF EXISTS users_search_insert",
    "DROP TABLE IF EXISTS users_search",
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
