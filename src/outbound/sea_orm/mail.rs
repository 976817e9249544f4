//! The mail outbox and the one-time tokens on SeaORM: the rows, and [`MailOutbox`] for
//! [`SeaOrmStore`].
//!
//! Claiming is one statement on both engines: an `UPDATE ... WHERE id IN (due, unclaimed jobs)
//! RETURNING ...` that sets a lease. On PostgreSQL the inner select takes
//! `FOR UPDATE SKIP LOCKED`, so instances claiming at the same moment pass each other's rows
//! by instead of waiting, and each job goes to one of them. SQLite has one writer: the
//! statement runs alone, so the same rows cannot be claimed twice there either.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr,
    EntityTrait, FromQueryResult, QueryFilter, Statement,
};

use serde::{Deserialize, Serialize};

use super::admin;
use super::entities::{email_tokens, mail_outbox, users};
use super::rows::to_user;
use super::store::SeaOrmStore;
use crate::domain::ports::{LinkTokens, MailOutbox};
use crate::domain::{
    BackendError, ClientInfo, Email, FactorChange, LinkTokenHash, LinkTokenKind, LinkTokenRecord,
    MailJob, NewAuditEvent, NewLinkToken, OutboxDepth, QueuedMail, SessionId, User, UserId,
};

const PENDING: &str = "pending";
const SENT: &str = "sent";
const FAILED: &str = "failed";

/// How long delivered (and, from when it was queued, given-up) mail stays in the outbox
/// before the purge deletes it.
pub(super) const SENT_MAIL_KEPT: TimeDelta = TimeDelta::days(7);

/// What `mail_outbox.detail` holds, for the jobs that carry more than its columns.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobDetail {
    /// The client of a `forgot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    /// A `forgot`'s: whether a client is named (an admin's request names none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    requested: bool,
    /// A factor notice's change and factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    change: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    factors: Vec<String>,
}

/// The row that queues `job` at `now`.
pub(super) fn outbox_row(job: MailJob, now: DateTime<Utc>) -> mail_outbox::ActiveModel {
    let mut detail = None;
    let (name, email, user_id, session_id) = match job {
        MailJob::PasswordReset {
            email,
            requested_by,
        } => {
            detail = Some(
                requested_by.map_or_else(JobDetail::default, |client| JobDetail {
                    ip: client.ip,
                    user_agent: client.user_agent,
                    requested: true,
                    ..JobDetail::default()
                }),
            );
            ("password_reset", Some(email), None, None)
        }
        MailJob::Verification { user_id } => ("verification", None, Some(user_id), None),
        MailJob::Invitation { user_id } => ("invitation", None, Some(user_id), None),
        MailJob::EmailChange {
            user_id,
            new_email,
            keep,
        } => ("email_change", Some(new_email), Some(user_id), keep),
        MailJob::FactorNotice {
            user_id,
            change,
            factors,
        } => {
            detail = Some(JobDetail {
                change: Some(change.as_str().to_owned()),
                factors,
                ..JobDetail::default()
            });
            ("factor_notice", None, Some(user_id), None)
        }
    };
    mail_outbox::ActiveModel {
        job: Set(name.to_owned()),
        email: Set(email.map(|e| e.as_str().to_owned())),
        user_id: Set(user_id.map(|id| id.0)),
        session_id: Set(session_id.map(|id| id.0)),
        detail: Set(
            detail.map(|detail| serde_json::to_string(&detail).unwrap_or_else(|_| "{}".to_owned()))
        ),
        state: Set(PENDING.to_owned()),
        attempts: Set(0),
        queued_at: Set(now),
        due_at: Set(now),
        claimed_until: Set(None),
        finished_at: Set(None),
        last_error: Set(None),
        ..Default::default()
    }
}

/// Queues `job` at `now` on `conn` (a transaction, when it announces something).
pub(super) async fn enqueue(
    conn: &impl ConnectionTrait,
    job: MailJob,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    outbox_row(job, now).insert(conn).await?;
    Ok(())
}

fn to_job(row: &mail_outbox::Model) -> Result<MailJob, BackendError> {
    let email = || {
        row.email
            .clone()
            .map(Email::from_trusted)
            .ok_or_else(|| BackendError::unexpected("a mail job without its address"))
    };
    let user_id = || {
        row.user_id
            .map(UserId)
            .ok_or_else(|| BackendError::unexpected("a mail job without its user"))
    };
    let detail: JobDetail = match &row.detail {
        Some(text) => serde_json::from_str(text).map_err(BackendError::unexpected)?,
        // Queued by a version before `detail`: its reset jobs were all recorded at delivery.
        None => JobDetail {
            requested: true,
            ..JobDetail::default()
        },
    };
    match row.job.as_str() {
        "password_reset" => Ok(MailJob::PasswordReset {
            email: email()?,
            requested_by: detail.requested.then_some(ClientInfo {
                ip: detail.ip,
                user_agent: detail.user_agent,
            }),
        }),
        "verification" => Ok(MailJob::Verification {
            user_id: user_id()?,
        }),
        "invitation" => Ok(MailJob::Invitation {
            user_id: user_id()?,
        }),
        "email_change" => Ok(MailJob::EmailChange {
            user_id: user_id()?,
            new_email: email()?,
            keep: row.session_id.map(SessionId),
        }),
        "factor_notice" => Ok(MailJob::FactorNotice {
            user_id: user_id()?,
            change: detail
                .change
                .as_deref()
                .and_then(FactorChange::parse)
                .ok_or_else(|| BackendError::unexpected("a factor notice without its change"))?,
            factors: detail.factors,
        }),
        other => Err(BackendError::unexpected(format!(
            "unknown mail job {other:?}"
        ))),
    }
}

pub(super) fn token_row(token: NewLinkToken) -> email_tokens::ActiveModel {
    email_tokens::ActiveModel {
        token_hash: Set(token.hash.0),
        kind: Set(token.kind.as_str().to_owned()),
        user_id: Set(token.user_id.0),
        email: Set(token.email),
        new_email: Set(token.new_email.map(|e| e.as_str().to_owned())),
        keep_session: Set(token.keep_session.map(|id| id.0)),
        created_at: Set(token.created_at),
        expires_at: Set(token.expires_at),
        spent_at: Set(None),
    }
}

pub(super) fn to_token(
    row: email_tokens::Model,
    user: User,
) -> Result<LinkTokenRecord, BackendError> {
    Ok(LinkTokenRecord {
        kind: LinkTokenKind::parse(&row.kind).ok_or_else(|| {
            BackendError::unexpected(format!("unknown token kind {:?}", row.kind))
        })?,
        user,
        email: row.email,
        new_email: row.new_email.map(Email::from_trusted),
        keep_session: row.keep_session.map(SessionId),
        expires_at: row.expires_at,
        spent_at: row.spent_at,
    })
}

/// Spends `token` of `user_id` at `now` if it is unspent; says whether it did.
pub(super) async fn spend(
    conn: &impl ConnectionTrait,
    token: &str,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let spent = email_tokens::Entity::update_many()
        .col_expr(email_tokens::Column::SpentAt, Expr::value(now))
        .filter(email_tokens::Column::TokenHash.eq(token))
        .filter(email_tokens::Column::UserId.eq(user_id.0))
        .filter(email_tokens::Column::SpentAt.is_null())
        .exec(conn)
        .await?;
    Ok(spent.rows_affected == 1)
}

/// Spends every unspent token of `user_id` of one of `kinds`.
pub(super) async fn spend_all(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    kinds: &[LinkTokenKind],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    email_tokens::Entity::update_many()
        .col_expr(email_tokens::Column::SpentAt, Expr::value(now))
        .filter(email_tokens::Column::UserId.eq(user_id.0))
        .filter(email_tokens::Column::Kind.is_in(kinds.iter().map(|k| k.as_str())))
        .filter(email_tokens::Column::SpentAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// Deletes expired tokens, and delivered mail older than [`SENT_MAIL_KEPT`].
pub(super) async fn purge(conn: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<(), DbErr> {
    email_tokens::Entity::delete_many()
        .filter(email_tokens::Column::ExpiresAt.lte(now))
        .exec(conn)
        .await?;
    mail_outbox::Entity::delete_many()
        .filter(mail_outbox::Column::State.eq(SENT))
        .filter(mail_outbox::Column::FinishedAt.lt(now - SENT_MAIL_KEPT))
        .exec(conn)
        .await?;
    // Given up within hours of being queued (the retries stop after an hour's wait): kept as
    // long as delivered mail, for the operator to read, and no longer, or jobs a broken
    // transport fails would pile up for good.
    mail_outbox::Entity::delete_many()
        .filter(mail_outbox::Column::State.eq(FAILED))
        .filter(mail_outbox::Column::QueuedAt.lt(now - SENT_MAIL_KEPT))
        .exec(conn)
        .await?;
    Ok(())
}

/// The claim statement; see the module's comment.
fn claim_statement(
    backend: DbBackend,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u32,
) -> Statement {
    let (sql, lock) = match backend {
        DbBackend::Postgres => (
            "UPDATE mail_outbox SET claimed_until = $1 WHERE id IN (\
                SELECT id FROM mail_outbox WHERE state = 'pending' AND due_at <= $2 \
                AND (claimed_until IS NULL OR claimed_until <= $2) \
                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
            true,
        ),
        _ => (
            "UPDATE mail_outbox SET claimed_until = ? WHERE id IN (\
                SELECT id FROM mail_outbox WHERE state = 'pending' AND due_at <= ? \
                AND (claimed_until IS NULL OR claimed_until <= ?) \
                ORDER BY id LIMIT ?) \
             RETURNING *",
            false,
        ),
    };
    let values: Vec<sea_orm::Value> = if lock {
        vec![until.into(), now.into(), i64::from(limit).into()]
    } else {
        vec![
            until.into(),
            now.into(),
            now.into(),
            i64::from(limit).into(),
        ]
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Settles a claimed job: the columns `set` change, and the claim is let go.
async fn settle(
    repo: &SeaOrmStore,
    id: i64,
    set: Vec<(mail_outbox::Column, sea_orm::sea_query::SimpleExpr)>,
) -> Result<(), BackendError> {
    let db = repo.db();
    let mut update = mail_outbox::Entity::update_many()
        .col_expr(
            mail_outbox::Column::ClaimedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .filter(mail_outbox::Column::Id.eq(id));
    for (column, value) in set {
        update = update.col_expr(column, value);
    }
    repo.bounded(update.exec(db)).await?;
    Ok(())
}

/// The last error kept with a job, cut to its column.
fn error_text(error: &str) -> String {
    error.chars().take(1000).collect()
}

#[async_trait]
impl MailOutbox for SeaOrmStore {
    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError> {
        self.bounded(enqueue(&self.db, job, now)).await
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease: TimeDelta,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, BackendError> {
        let db = self.db();
        let statement = claim_statement(db.get_database_backend(), now, now + lease, limit);
        let rows = self
            .bounded(mail_outbox::Model::find_by_statement(statement).all(db))
            .await?;
        let mut claimed = rows
            .into_iter()
            .map(|row| {
                Ok(QueuedMail {
                    id: row.id,
                    job: to_job(&row)?,
                    attempts: u32::try_from(row.attempts).map_err(BackendError::unexpected)?,
                    queued_at: row.queued_at,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        // RETURNING gives no order; deliver in the order the jobs were queued.
        claimed.sort_by_key(|mail| mail.id);
        Ok(claimed)
    }

    async fn finish_mail(&self, id: i64, now: DateTime<Utc>) -> Result<(), BackendError> {
        settle(
            self,
            id,
            vec![
                (mail_outbox::Column::State, Expr::value(SENT)),
                (mail_outbox::Column::FinishedAt, Expr::value(now)),
            ],
        )
        .await
    }

    async fn retry_mail(
        &self,
        id: i64,
        attempts: u32,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), BackendError> {
        let attempts = i32::try_from(attempts).map_err(BackendError::unexpected)?;
        settle(
            self,
            id,
            vec![
                (mail_outbox::Column::Attempts, Expr::value(attempts)),
                (mail_outbox::Column::DueAt, Expr::value(retry_at)),
                (
                    mail_outbox::Column::LastError,
                    Expr::value(error_text(error)),
                ),
            ],
        )
        .await
    }

    async fn fail_mail(&self, id: i64, attempts: u32, error: &str) -> Result<(), BackendError> {
        let attempts = i32::try_from(attempts).map_err(BackendError::unexpected)?;
        settle(
            self,
            id,
            vec![
                (mail_outbox::Column::State, Expr::value(FAILED)),
                (mail_outbox::Column::Attempts, Expr::value(attempts)),
                (
                    mail_outbox::Column::LastError,
                    Expr::value(error_text(error)),
                ),
            ],
        )
        .await
    }

    async fn mail_depth(&self) -> Result<OutboxDepth, BackendError> {
        #[derive(FromQueryResult)]
        struct Count {
            n: i64,
        }
        let db = self.db();
        let count = |state: &'static str| {
            Count::find_by_statement(Statement::from_sql_and_values(
                db.get_database_backend(),
                match db.get_database_backend() {
                    DbBackend::Postgres => "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = $1",
                    _ => "SELECT COUNT(*) AS n FROM mail_outbox WHERE state = ?",
                },
                [state.into()],
            ))
            .one(db)
        };
        let pending = self.bounded(count(PENDING)).await?.map_or(0, |c| c.n);
        let failed = self.bounded(count(FAILED)).await?.map_or(0, |c| c.n);
        Ok(OutboxDepth {
            pending: u64::try_from(pending).unwrap_or(0),
            failed: u64::try_from(failed).unwrap_or(0),
        })
    }
}

#[async_trait]
impl LinkTokens for SeaOrmStore {
    async fn store_email_token(
        &self,
        token: NewLinkToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            token_row(token).insert(&txn).await?;
            if let Some(audit) = audit {
                admin::record(&txn, audit).await?;
            }
            txn.commit().await
        })
        .await
    }

    async fn find_email_token(
        &self,
        hash: &LinkTokenHash,
    ) -> Result<Option<LinkTokenRecord>, BackendError> {
        let found = self
            .bounded(
                email_tokens::Entity::find_by_id(hash.0.clone())
                    .find_also_related(users::Entity)
                    .one(&self.db),
            )
            .await?;
        let Some((token, Some(user))) = found else {
            return Ok(None);
        };
        Ok(Some(to_token(token, to_user(user)?)?))
    }
}
