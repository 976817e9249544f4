//! [`RateLimiter`] on SeaORM: counters every instance shares, updated with one atomic upsert
//! (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`) on PostgreSQL and SQLite alike.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, InsertStatement, OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::bounded::Bounded;
use super::entities::{login_failures, rate_limit_counters};
use crate::domain::BackendError;
use crate::domain::ports::{FailureRecord, RateLimiter};

/// [`RateLimiter`] on the service's own database.
#[derive(Clone)]
pub struct SeaOrmRateLimiter {
    bounded: Bounded,
}

impl SeaOrmRateLimiter {
    /// `timeout` bounds every call.
    pub fn new(db: DatabaseConnection, timeout: Duration) -> Self {
        Self {
            bounded: Bounded::new(db, timeout),
        }
    }

    /// Runs an insert and says how many rows it wrote.
    async fn execute(&self, insert: &InsertStatement) -> Result<u64, BackendError> {
        let db = self.bounded.db();
        let done = self
            .bounded
            .run(db.execute_raw(db.get_database_backend().build(insert)))
            .await?;
        Ok(done.rows_affected())
    }

    /// Runs an upsert that returns one counter, and reads it.
    async fn upsert_returning(
        &self,
        upsert: &InsertStatement,
        column: &str,
    ) -> Result<u32, BackendError> {
        let db = self.bounded.db();
        let row = self
            .bounded
            .run(db.query_one_raw(db.get_database_backend().build(upsert)))
            .await?
            .ok_or_else(|| BackendError::unexpected("upsert returned no row"))?;
        let value: i32 = row.try_get("", column).map_err(BackendError::unexpected)?;
        u32::try_from(value).map_err(BackendError::unexpected)
    }
}

#[async_trait]
impl RateLimiter for SeaOrmRateLimiter {
    async fn increment(
        &self,
        bucket: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<u32, BackendError> {
        use rate_limit_counters::{Column, Entity};
        let upsert = Query::insert()
            .into_table(Entity)
            .columns([Column::Bucket, Column::Count, Column::ExpiresAt])
            .values_panic([bucket.into(), 1i32.into(), expires_at.into()])
            .on_conflict(
                OnConflict::column(Column::Bucket)
                    .value(Column::Count, Expr::col((Entity, Column::Count)).add(1))
                    .to_owned(),
            )
            .returning_col(Column::Count)
            .to_owned();
        self.upsert_returning(&upsert, "count").await
    }

    async fn failures(&self, account: &str) -> Result<Option<FailureRecord>, BackendError> {
        let found = self
            .bounded
            .run(login_failures::Entity::find_by_id(account.to_owned()).one(self.bounded.db()))
            .await?;
        found
            .map(|run| {
                Ok(FailureRecord {
                    count: u32::try_from(run.failures).map_err(BackendError::unexpected)?,
                    last_at: run.last_failure_at,
                })
            })
            .transpose()
    }

    async fn swap_failures(
        &self,
        account: &str,
        seen: Option<FailureRecord>,
        next: FailureRecord,
    ) -> Result<bool, BackendError> {
        use login_failures::{Column, Entity};
        let count = i32::try_from(next.count).map_err(BackendError::unexpected)?;
        let db = self.bounded.db();
        // A conditional write either way, so that of concurrent swaps from one `seen` the
        // database lets exactly one through: an insert that yields to any existing run, or an
        // update that matches only the run as it was read.
        let changed = match seen {
            None => {
                let insert = Query::insert()
                    .into_table(Entity)
                    .columns([Column::Account, Column::Failures, Column::LastFailureAt])
                    .values_panic([account.into(), count.into(), next.last_at.into()])
                    .on_conflict(OnConflict::column(Column::Account).do_nothing().to_owned())
                    .to_owned();
                self.execute(&insert).await?
            }
            Some(seen) => {
                let seen_count = i32::try_from(seen.count).map_err(BackendError::unexpected)?;
                self.bounded
                    .run(
                        Entity::update_many()
                            .col_expr(Column::Failures, Expr::val(count))
                            .col_expr(Column::LastFailureAt, Expr::val(next.last_at))
                            .filter(Column::Account.eq(account))
                            .filter(Column::Failures.eq(seen_count))
                            .filter(Column::LastFailureAt.eq(seen.last_at))
                            .exec(db),
                    )
                    .await?
                    .rows_affected
            }
        };
        Ok(changed == 1)
    }

    async fn record_failure(&self, account: &str, now: DateTime<Utc>) -> Result<(), BackendError> {
        use login_failures::{Column, Entity};
        let upsert = Query::insert()
            .into_table(Entity)
            .columns([Column::Account, Column::Failures, Column::LastFailureAt])
            .values_panic([account.into(), 1i32.into(), now.into()])
            .on_conflict(
                OnConflict::column(Column::Account)
                    .value(Column::LastFailureAt, Expr::val(now))
                    .to_owned(),
            )
            .to_owned();
        self.execute(&upsert).await?;
        Ok(())
    }

    async fn release_attempt(&self, account: &str) -> Result<(), BackendError> {
        use login_failures::{Column, Entity};
        self.bounded
            .run(
                Entity::update_many()
                    .col_expr(Column::Failures, Expr::col(Column::Failures).sub(1))
                    .filter(Column::Account.eq(account))
                    .filter(Column::Failures.gt(0))
                    .exec(self.bounded.db()),
            )
            .await?;
        Ok(())
    }

    async fn clear_failures(&self, account: &str) -> Result<(), BackendError> {
        self.bounded
            .run(login_failures::Entity::delete_by_id(account.to_owned()).exec(self.bounded.db()))
            .await?;
        Ok(())
    }

    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let db = self.bounded.db();
        self.bounded
            .run(async {
                rate_limit_counters::Entity::delete_many()
                    .filter(rate_limit_counters::Column::ExpiresAt.lte(now))
                    .exec(db)
                    .await?;
                login_failures::Entity::delete_many()
                    .filter(login_failures::Column::LastFailureAt.lt(forget_before))
                    .exec(db)
                    .await
            })
            .await?;
        Ok(())
    }
}
