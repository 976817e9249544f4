//! `portcullis import pyauth`: pyauth's PostgreSQL database read in a read-only transaction
//! ([`PyauthDatabase`]), and the target written in one transaction
//! ([`ImportTarget`] for [`SeaOrmStore`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    AccessMode, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect, SqlErr, Statement,
    TransactionTrait,
};

use super::admin;
use super::entities::users;
use super::store::{SeaOrmStore, end_sessions, next_version};
use crate::domain::import::{
    ImportError, ImportPlan, ImportedUser, PYAUTH, SourceUser, TargetUser,
};
use crate::domain::ports::{ImportSource, ImportTarget};
use crate::domain::{BackendError, NewAuditEvent, UserId};

/// Rows per `INSERT`: large enough to make 100,000 users a hundred statements, small enough to
/// stay far below PostgreSQL's 65,535 bind parameters (14 columns a row).
const BATCH: usize = 1000;

/// pyauth's database.
pub struct PyauthDatabase {
    db: DatabaseConnection,
    url: String,
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}://{user}@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// One line, whatever the driver wrote.
fn one_line(err: impl std::fmt::Display) -> String {
    err.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl PyauthDatabase {
    /// Connects to pyauth's database: `postgresql://`, `postgres://` or SQLAlchemy's
    /// `postgresql+psycopg2://`, as pyauth's `.env` has it.
    ///
    /// # Errors
    /// [`ImportError::Source`] for another scheme or a database that does not answer.
    pub async fn connect(url: &str) -> Result<Self, ImportError> {
        let rest = ["postgresql+psycopg2://", "postgresql://", "postgres://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or_else(|| {
                ImportError::Source(format!(
                    "--from must be a PostgreSQL URL (postgresql://, postgres:// or \
                     postgresql+psycopg2://), not {}",
                    redacted(url)
                ))
            })?;
        let url = format!("postgres://{rest}");
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let db = Database::connect(options).await.map_err(|err| {
            ImportError::Source(format!(
                "cannot connect to {}: {}",
                redacted(&url),
                one_line(err)
            ))
        })?;
        Ok(Self { db, url })
    }
}

fn source_user(row: &sea_orm::QueryResult) -> Result<SourceUser, DbErr> {
    Ok(SourceUser {
        id: row.try_get("", "id")?,
        email: row.try_get("", "email")?,
        hashed_password: row.try_get("", "hashed_password")?,
        full_name: row.try_get("", "full_name")?,
        role: row.try_get("", "role")?,
        is_active: row.try_get("", "is_active")?,
        created_at: row.try_get::<DateTime<Utc>>("", "created_at")?,
    })
}

#[async_trait]
impl ImportSource for PyauthDatabase {
    async fn pyauth_users(&self) -> Result<Vec<SourceUser>, ImportError> {
        let read = async {
            // Read-only: the import never writes to pyauth's database, even by mistake.
            let txn = self
                .db
                .begin_with_config(None, Some(AccessMode::ReadOnly))
                .await?;
            let rows = txn
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT id::bigint AS id, email, hashed_password, full_name, role::text AS role, \
                     is_active, created_at FROM users ORDER BY id",
                ))
                .await?;
            let users = rows
                .iter()
                .map(source_user)
                .collect::<Result<Vec<_>, _>>()?;
            txn.commit().await?;
            Ok::<_, DbErr>(users)
        };
        read.await.map_err(|err| {
            ImportError::Source(format!(
                "{} is not a pyauth database: {}",
                redacted(&self.url),
                one_line(err)
            ))
        })
    }
}

fn imported_model(user: &ImportedUser, now: DateTime<Utc>) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(user.id.0),
        email: Set(user.email.as_str().to_owned()),
        email_normalized: Set(user.email.normalized().to_owned()),
        email_key: Set(Some(user.email.key().to_owned())),
        full_name: Set(user.full_name.as_ref().map(|n| n.as_str().to_owned())),
        password_hash: Set(user.password_hash.as_str().to_owned()),
        role: Set(user.role.as_str().to_owned()),
        is_active: Set(user.is_active),
        created_at: Set(user.created_at),
        updated_at: Set(now),
        credential_version: Set(0),
        // pyauth never proved an address.
        email_verified: Set(false),
        last_login_at: Set(None),
        imported_from: Set(Some(PYAUTH.to_owned())),
        imported_digest: Set(Some(user.digest())),
    }
}

/// Writes one plan in the transaction `txn`.
async fn write(
    txn: &sea_orm::DatabaseTransaction,
    plan: &ImportPlan,
    audit: NewAuditEvent,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Result<(), DbErr> {
    let now = audit.at;
    let mut written = 0;
    for batch in plan.inserts.chunks(BATCH) {
        users::Entity::insert_many(batch.iter().map(|u| imported_model(u, now)))
            .exec_without_returning(txn)
            .await?;
        written += batch.len();
        progress(written);
    }
    for user in &plan.updates {
        let current: Option<(String, bool)> = users::Entity::find_by_id(user.id.0)
            .select_only()
            .columns([users::Column::PasswordHash, users::Column::IsActive])
            .into_tuple()
            .one(txn)
            .await?;
        // A new password or a deactivation in pyauth ends the user's sessions here, as those
        // changes do when made here.
        let revoke = current.is_none_or(|(hash, active)| {
            hash != user.password_hash.as_str() || (active && !user.is_active)
        });
        let mut update = users::Entity::update_many()
            .col_expr(
                users::Column::PasswordHash,
                Expr::value(user.password_hash.as_str()),
            )
            .col_expr(users::Column::Role, Expr::value(user.role.as_str()))
            .col_expr(users::Column::IsActive, Expr::value(user.is_active))
            .col_expr(
                users::Column::FullName,
                Expr::value(user.full_name.as_ref().map(|n| n.as_str().to_owned())),
            )
            .col_expr(users::Column::UpdatedAt, Expr::value(now))
            .col_expr(users::Column::ImportedDigest, Expr::value(user.digest()))
            .filter(users::Column::Id.eq(user.id.0))
            .filter(users::Column::ImportedFrom.eq(PYAUTH));
        if revoke {
            update = update.col_expr(users::Column::CredentialVersion, next_version());
        }
        if update.exec(txn).await?.rows_affected != 1 {
            return Err(DbErr::RecordNotUpdated);
        }
        if revoke {
            end_sessions(txn, user.id, None, now).await?;
        }
        written += 1;
        progress(written);
    }
    // Ids were given, not drawn: the sequence moves past every source id, never back.
    let reserved = plan.largest_source_id;
    let sql = match txn.get_database_backend() {
        DbBackend::Postgres => format!(
            "SELECT setval(pg_get_serial_sequence('users', 'id'), \
             GREATEST((SELECT COALESCE(MAX(id), 1) FROM users), {reserved}, \
             (SELECT last_value FROM users_id_seq)))"
        ),
        _ => format!("UPDATE sqlite_sequence SET seq = MAX(seq, {reserved}) WHERE name = 'users'"),
    };
    txn.execute_unprepared(&sql).await?;
    admin::record(txn, audit).await
}

#[async_trait]
impl ImportTarget for SeaOrmStore {
    async fn import_snapshot(&self) -> Result<Vec<TargetUser>, BackendError> {
        let rows: Vec<(i64, Option<String>, Option<String>, Option<String>)> =
            users::Entity::find()
                .select_only()
                .columns([
                    users::Column::Id,
                    users::Column::EmailKey,
                    users::Column::ImportedFrom,
                    users::Column::ImportedDigest,
                ])
                .into_tuple()
                .all(self.db())
                .await
                .map_err(BackendError::unexpected)?;
        Ok(rows
            .into_iter()
            .map(|(id, key, from, digest)| TargetUser {
                id: UserId(id),
                email_key: key.unwrap_or_default(),
                imported_digest: digest.filter(|_| from.as_deref() == Some(PYAUTH)),
            })
            .collect())
    }

    async fn apply_import(
        &self,
        plan: &ImportPlan,
        audit: NewAuditEvent,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<(), ImportError> {
        let run = async {
            let txn = self.db().begin().await?;
            write(&txn, plan, audit, progress).await?;
            txn.commit().await
        };
        run.await.map_err(|err| match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => ImportError::TargetChanged,
            _ if matches!(err, DbErr::RecordNotUpdated) => ImportError::TargetChanged,
            _ => ImportError::Backend(BackendError::unexpected(err)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redacted("postgresql+psycopg2://app:s3cret@db:5432/pyauth"),
            "postgresql+psycopg2://app@db:5432/pyauth"
        );
        assert_eq!(redacted("postgres://db/pyauth"), "postgres://db/pyauth");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
