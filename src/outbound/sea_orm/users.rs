//! [`UserRepository`] for the SeaORM store: users created, found and listed, and every
//! account change applied in one transaction (`changes.rs`).

use async_trait::async_trait;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr};

use super::bounded::backend_error;
use super::entities::users;
use super::rows::to_user;
use super::store::SeaOrmStore;
use super::{admin, mail};
use crate::domain::import::PYAUTH;
use crate::domain::ports::{CreateUserError, UserRepository};
use crate::domain::{
    AccountChange, Applied, BackendError, Email, MailJob, NewUser, User, UserId, UserQuery,
};

#[async_trait]
impl UserRepository for SeaOrmStore {
    async fn ping(&self) -> Result<(), BackendError> {
        // A failed ping is an outage whatever the driver calls it.
        self.bounded(self.db.ping()).await.map_err(|err| match err {
            BackendError::Unexpected(source) => BackendError::Unavailable(source),
            other => other,
        })
    }

    async fn create_user(&self, new: NewUser) -> Result<User, CreateUserError> {
        let model = users::ActiveModel {
            email: Set(new.email.as_str().to_owned()),
            email_normalized: Set(new.email.normalized().to_owned()),
            email_key: Set(Some(new.email.key().to_owned())),
            full_name: Set(new.full_name.map(|n| n.as_str().to_owned())),
            password_hash: Set(new.password_hash.as_str().to_owned()),
            role: Set(new.role.as_str().to_owned()),
            is_active: Set(true),
            created_at: Set(new.created_at),
            updated_at: Set(new.created_at),
            credential_version: Set(0),
            email_verified: Set(false),
            last_login_at: Set(None),
            ..Default::default()
        };
        let (send_verification, now) = (new.send_verification, new.created_at);
        let mut audit = new.audit;
        let insert = async {
            let txn = self.write_transaction().await?;
            let user = match model.insert(&txn).await {
                Ok(user) => user,
                Err(err) => {
                    // Now, not when the dropped transaction gets round to it: on SQLite the
                    // failed insert holds the write lock until the transaction ends.
                    txn.rollback().await?;
                    return Err(err);
                }
            };
            audit.user_id = audit.user_id.or(Some(UserId(user.id)));
            admin::record(&txn, audit).await?;
            if send_verification {
                let job = MailJob::Verification {
                    user_id: UserId(user.id),
                };
                mail::enqueue(&txn, job, now).await?;
            }
            txn.commit().await?;
            Ok(user)
        };
        let inserted = match self.bounded.run_raw(insert).await? {
            Ok(model) => model,
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(CreateUserError::EmailTaken);
            }
            Err(err) => return Err(backend_error(err).into()),
        };
        Ok(to_user(inserted)?)
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError> {
        let found = self
            .bounded(
                users::Entity::find()
                    .filter(users::Column::EmailKey.eq(email.key()))
                    .one(&self.db),
            )
            .await?;
        found.map(to_user).transpose()
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError> {
        let found = self
            .bounded(users::Entity::find_by_id(id.0).one(&self.db))
            .await?;
        found.map(to_user).transpose()
    }

    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError> {
        // An import keeps the source row's id and marks the user; nothing else sets the mark.
        let found = self
            .bounded(
                users::Entity::find_by_id(pyauth_id)
                    .filter(users::Column::ImportedFrom.eq(PYAUTH))
                    .one(&self.db),
            )
            .await?;
        found.map(to_user).transpose()
    }

    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError> {
        self.apply_change(change).await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        let found = self.bounded(admin::list_users(&self.db, query)).await?;
        found.into_iter().map(to_user).collect()
    }
}
