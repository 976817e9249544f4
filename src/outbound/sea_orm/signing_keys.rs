//! [`SigningKeyStore`] on SeaORM: the `signing_keys` table every instance shares.
//!
//! A move is an `UPDATE ... WHERE kid = ? AND state = ?` that must touch its row, and the
//! partial unique indexes refuse a second `next` or `current` key, so concurrent instances
//! racing to make the same change cannot both make it: the loser's transaction rolls back.

use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    SqlErr,
};

use super::bounded::Bounded;
use super::entities::signing_keys;
use crate::domain::ports::SigningKeyStore;
use crate::domain::{BackendError, KeyChange, SigningKey};

/// [`SigningKeyStore`] on the service's own database.
#[derive(Clone)]
pub struct SeaOrmSigningKeyStore {
    bounded: Bounded,
}

impl SeaOrmSigningKeyStore {
    /// `timeout` bounds every call.
    pub fn new(db: DatabaseConnection, timeout: Duration) -> Self {
        Self {
            bounded: Bounded::new(db, timeout),
        }
    }
}

fn to_key(model: signing_keys::Model) -> Result<SigningKey, BackendError> {
    Ok(SigningKey {
        algorithm: model.algorithm.parse().map_err(BackendError::unexpected)?,
        state: model.state.parse().map_err(BackendError::unexpected)?,
        kid: model.kid,
        public_jwk: model.public_jwk,
        sealed_private: model.private_key,
        created_at: model.created_at,
        activates_at: model.activates_at,
        retires_at: model.retires_at,
        retired_at: model.retired_at,
    })
}

fn to_model(key: &SigningKey) -> signing_keys::ActiveModel {
    signing_keys::ActiveModel {
        kid: Set(key.kid.clone()),
        algorithm: Set(key.algorithm.as_str().to_owned()),
        state: Set(key.state.as_str().to_owned()),
        public_jwk: Set(key.public_jwk.clone()),
        private_key: Set(key.sealed_private.clone()),
        created_at: Set(key.created_at),
        activates_at: Set(key.activates_at),
        retires_at: Set(key.retires_at),
        retired_at: Set(key.retired_at),
    }
}

/// Applies `change` in one transaction; `Ok(false)`, rolled back, when it lost a race.
async fn apply(bounded: &Bounded, change: &KeyChange) -> Result<bool, DbErr> {
    let txn = bounded.write_transaction().await?;
    for step in &change.moves {
        let mut update = signing_keys::Entity::update_many()
            .col_expr(signing_keys::Column::State, Expr::value(step.to.as_str()))
            .filter(signing_keys::Column::Kid.eq(&step.kid))
            .filter(signing_keys::Column::State.eq(step.from.as_str()));
        if let Some(at) = step.activates_at {
            update = update.col_expr(signing_keys::Column::ActivatesAt, Expr::value(at));
        }
        if let Some(at) = step.retires_at {
            update = update.col_expr(signing_keys::Column::RetiresAt, Expr::value(at));
        }
        if let Some(at) = step.retired_at {
            update = update.col_expr(signing_keys::Column::RetiredAt, Expr::value(at));
        }
        if update.exec(&txn).await?.rows_affected != 1 {
            return Ok(false);
        }
    }
    if let Some(key) = &change.insert {
        match signing_keys::Entity::insert(to_model(key)).exec(&txn).await {
            Ok(_) => {}
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
    }
    txn.commit().await?;
    Ok(true)
}

#[async_trait]
impl SigningKeyStore for SeaOrmSigningKeyStore {
    async fn list_keys(&self) -> Result<Vec<SigningKey>, BackendError> {
        let query = signing_keys::Entity::find()
            .order_by_asc(signing_keys::Column::CreatedAt)
            .order_by_asc(signing_keys::Column::Kid)
            .all(self.bounded.db());
        self.bounded
            .run(query)
            .await?
            .into_iter()
            .map(to_key)
            .collect()
    }

    async fn find_key(&self, kid: &str) -> Result<Option<SigningKey>, BackendError> {
        let query = signing_keys::Entity::find_by_id(kid.to_owned()).one(self.bounded.db());
        self.bounded.run(query).await?.map(to_key).transpose()
    }

    async fn apply_key_change(&self, change: &KeyChange) -> Result<bool, BackendError> {
        self.bounded.run(apply(&self.bounded, change)).await
    }
}
