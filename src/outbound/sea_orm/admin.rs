//! The administration side of [`SeaOrmStore`]: the audit trail, the user search with
//! keyset pagination, and the changes that the last-admin rule guards.
//!
//! The last-admin rule is decided inside the transaction of the change: after the change, at
//! least one active admin must be left, or everything rolls back. On PostgreSQL concurrent
//! admin changes are serialised by a transaction-level advisory lock taken first, so two
//! admins demoting each other cannot both see the other still in place; SQLite has one writer,
//! and the check runs after the change's own write, under its lock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

use super::entities::{audit_events, users};
use super::store::SeaOrmStore;
use crate::domain::ports::AuditLog;
use crate::domain::{
    AuditEvent, AuditKind, AuditQuery, BackendError, ClientInfo, FOLDED_COUNT, NewAuditEvent, Role,
    UserId, UserQuery,
};

/// Any number that no other advisory lock of the service uses.
const ADMIN_LOCK: i64 = 0x0070_6f72_7461_646d;

/// Search text shorter than this is matched by scanning: trigram indexes need three
/// characters.
const TRIGRAM: usize = 3;

/// Writes `event` on `conn` (the transaction of the change it records).
pub(super) async fn record(conn: &impl ConnectionTrait, event: NewAuditEvent) -> Result<(), DbErr> {
    let detail = serde_json::to_string(&event.detail).unwrap_or_else(|_| "{}".into());
    audit_events::ActiveModel {
        at: Set(event.at),
        kind: Set(event.kind.as_str().to_owned()),
        success: Set(event.success),
        user_id: Set(event.user_id.map(|id| id.0)),
        actor_id: Set(event.actor_id.map(|id| id.0)),
        ip: Set(event.client.ip),
        user_agent: Set(event.client.user_agent),
        detail: Set(detail),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// [`crate::domain::ports::UserRepository::record_folded`] in `txn`: the last event like
/// `event` since `since` (found through the index on client address, kind and time) has its
/// count raised, or `event` is written with a count of 1. On PostgreSQL the row found is locked,
/// so concurrent folds into it count one after the other; SQLite's write transaction runs
/// alone.
pub(super) async fn record_folded(
    txn: &impl ConnectionTrait,
    event: NewAuditEvent,
    since: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut earlier = audit_events::Entity::find()
        .filter(audit_events::Column::Ip.eq(event.client.ip.clone()))
        .filter(audit_events::Column::Kind.eq(event.kind.as_str()))
        .filter(audit_events::Column::At.gte(since))
        .filter(audit_events::Column::Success.eq(event.success))
        .filter(match event.user_id {
            Some(id) => audit_events::Column::UserId.eq(id.0),
            None => audit_events::Column::UserId.is_null(),
        })
        .order_by_desc(audit_events::Column::At)
        .order_by_desc(audit_events::Column::Id);
    if txn.get_database_backend() == DbBackend::Postgres {
        earlier = earlier.lock_exclusive();
    }
    let Some(row) = earlier.one(txn).await? else {
        return record(txn, event.with(FOLDED_COUNT, 1)).await;
    };
    let mut detail: BTreeMap<String, String> =
        serde_json::from_str(&row.detail).unwrap_or_default();
    let count = detail
        .get(FOLDED_COUNT)
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(1);
    detail.insert(FOLDED_COUNT.to_owned(), (count + 1).to_string());
    let detail = serde_json::to_string(&detail).unwrap_or_else(|_| "{}".into());
    audit_events::Entity::update_many()
        .col_expr(audit_events::Column::Detail, Expr::value(detail))
        .filter(audit_events::Column::Id.eq(row.id))
        .exec(txn)
        .await?;
    Ok(())
}

fn to_event(row: audit_events::Model) -> Result<AuditEvent, BackendError> {
    let detail: BTreeMap<String, String> =
        serde_json::from_str(&row.detail).map_err(BackendError::unexpected)?;
    Ok(AuditEvent {
        id: row.id,
        event: NewAuditEvent {
            at: row.at,
            kind: AuditKind::parse(&row.kind)
                .ok_or_else(|| BackendError::unexpected(format!("unknown event {:?}", row.kind)))?,
            success: row.success,
            user_id: row.user_id.map(UserId),
            actor_id: row.actor_id.map(UserId),
            client: ClientInfo {
                user_agent: row.user_agent,
                ip: row.ip,
            },
            detail,
        },
    })
}

/// Events matching `query`, newest first.
pub(super) async fn list_audit(
    conn: &impl ConnectionTrait,
    query: &AuditQuery,
) -> Result<Vec<AuditEvent>, DbErr> {
    use audit_events::Column;
    let mut filter = Condition::all();
    if let Some(before) = query.before {
        filter = filter.add(Column::Id.lt(before));
    }
    if let Some(user) = query.user_id {
        filter = filter.add(Column::UserId.eq(user.0));
    }
    if let Some(actor) = query.actor_id {
        filter = filter.add(Column::ActorId.eq(actor.0));
    }
    if let Some(kind) = query.kind {
        filter = filter.add(Column::Kind.eq(kind.as_str()));
    }
    if let Some(since) = query.since {
        filter = filter.add(Column::At.gte(since));
    }
    if let Some(until) = query.until {
        filter = filter.add(Column::At.lte(until));
    }
    let rows = audit_events::Entity::find()
        .filter(filter)
        .order_by_desc(Column::Id)
        .limit(u64::from(query.limit))
        .all(conn)
        .await?;
    rows.into_iter()
        .map(|row| to_event(row).map_err(|err| DbErr::Custom(err.to_string())))
        .collect()
}

/// `text` as a literal inside a `LIKE '%...%'` pattern with `ESCAPE '\'`.
fn like_anywhere(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The condition that the search text `text` (lower-cased) appears in the email or the name.
fn search_condition(backend: DbBackend, text: &str) -> sea_orm::sea_query::SimpleExpr {
    let pattern = like_anywhere(text);
    if backend == DbBackend::Sqlite && text.chars().count() >= TRIGRAM {
        // The FTS5 trigram index finds candidates by substring (both columns, any case); the
        // LIKE keeps the exact meaning.
        let phrase = format!("\"{}\"", text.replace('"', "\"\""));
        return Expr::cust_with_values(
            "users.id IN (SELECT rowid FROM users_search WHERE users_search MATCH ?) \
             AND (users.email_normalized LIKE ? ESCAPE '\\' OR lower(users.full_name) LIKE ? ESCAPE '\\')",
            [phrase, pattern.clone(), pattern],
        );
    }
    match backend {
        // Numbered, because sea-query's PostgreSQL builder takes `$n`, not `?`.
        DbBackend::Postgres => Expr::cust_with_values(
            "(users.email_normalized LIKE $1 ESCAPE '\\' OR lower(users.full_name) LIKE $1 ESCAPE '\\')",
            [pattern],
        ),
        _ => Expr::cust_with_values(
            "(users.email_normalized LIKE ? ESCAPE '\\' OR lower(users.full_name) LIKE ? ESCAPE '\\')",
            [pattern.clone(), pattern],
        ),
    }
}

/// Users matching `query`, newest first.
pub(super) async fn list_users(
    conn: &impl ConnectionTrait,
    query: &UserQuery,
) -> Result<Vec<users::Model>, DbErr> {
    use users::Column;
    let mut filter = Condition::all();
    if let Some(before) = query.before {
        filter = filter.add(Column::Id.lt(before.0));
    }
    if let Some(role) = query.role {
        filter = filter.add(Column::Role.eq(role.as_str()));
    }
    if let Some(active) = query.is_active {
        filter = filter.add(Column::IsActive.eq(active));
    }
    if let Some(verified) = query.email_verified {
        filter = filter.add(Column::EmailVerified.eq(verified));
    }
    if let Some(text) = &query.search {
        filter = filter.add(search_condition(conn.get_database_backend(), text));
    }
    users::Entity::find()
        .filter(filter)
        .order_by_desc(Column::Id)
        .limit(u64::from(query.limit))
        .all(conn)
        .await
}

/// Serialises changes that may remove an admin (PostgreSQL; SQLite has one writer anyway).
pub(super) async fn lock_admins(conn: &impl ConnectionTrait) -> Result<(), DbErr> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [ADMIN_LOCK.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Whether any active admin is left.
pub(super) async fn any_admin_left(conn: &impl ConnectionTrait) -> Result<bool, DbErr> {
    let admins = users::Entity::find()
        .filter(users::Column::Role.eq(Role::Admin.as_str()))
        .filter(users::Column::IsActive.eq(true))
        .count(conn)
        .await?;
    Ok(admins > 0)
}

/// Deletes events older than `before`.
pub(super) async fn purge_audit(
    conn: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<(), DbErr> {
    audit_events::Entity::delete_many()
        .filter(audit_events::Column::At.lt(before))
        .exec(conn)
        .await?;
    Ok(())
}

#[async_trait]
impl AuditLog for SeaOrmStore {
    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        self.bounded(record(&self.db, event)).await
    }

    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            record_folded(&txn, event, since).await?;
            txn.commit().await
        })
        .await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError> {
        self.bounded(list_audit(&self.db, query)).await
    }
}

#[cfg(test)]
mod tests {
    use super::like_anywhere;

    #[test]
    fn search_text_is_literal_in_like_patterns() {
        assert_eq!(like_anywhere("ann"), "%ann%");
        assert_eq!(like_anywhere("50%_\\"), "%50\\%\\_\\\\%");
    }
}
