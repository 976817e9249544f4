//! The operator's commands: create a user, change a role, (de)activate.

use super::AuthService;
use crate::domain::ports::CreateUserError;
use crate::domain::{BackendError, Email, Password, Role, User};

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no user with that email")]
    UnknownUser,
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<CreateUserError> for AdminError {
    fn from(err: CreateUserError) -> Self {
        match err {
            CreateUserError::EmailTaken => Self::EmailTaken,
            CreateUserError::Backend(err) => Self::Backend(err),
        }
    }
}

impl AuthService {
    /// Creates a user with any role (the operator's way to make the first admin).
    ///
    /// # Errors
    /// [`AdminError::EmailTaken`] when the email is registered already.
    pub async fn create_user_as_operator(
        &self,
        email: Email,
        password: Password,
        role: Role,
    ) -> Result<User, AdminError> {
        Ok(self.create_user(email, password, None, role, false).await?)
    }

    /// Gives the user with `email` the role `role`; it applies to their next request.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`] when nobody has that email.
    pub async fn set_role(&self, email: &Email, role: Role) -> Result<User, AdminError> {
        let user = self.find_by_email(email).await?;
        self.users
            .set_role(user.id, role)
            .await?
            .ok_or(AdminError::UnknownUser)
    }

    /// Activates or deactivates the user with `email`; deactivation ends all their sessions.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`] when nobody has that email.
    pub async fn set_active(&self, email: &Email, active: bool) -> Result<User, AdminError> {
        let user = self.find_by_email(email).await?;
        self.users
            .set_active(user.id, active, self.clock.now())
            .await?
            .ok_or(AdminError::UnknownUser)
    }

    /// Marks the address of the user with `email` verified or not.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`] when nobody has that email.
    pub async fn set_email_verified(
        &self,
        email: &Email,
        verified: bool,
    ) -> Result<User, AdminError> {
        let user = self.find_by_email(email).await?;
        self.users
            .set_email_verified(user.id, verified)
            .await?
            .ok_or(AdminError::UnknownUser)
    }

    async fn find_by_email(&self, email: &Email) -> Result<User, AdminError> {
        self.users
            .find_user_by_email(email)
            .await?
            .ok_or(AdminError::UnknownUser)
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;

    use super::super::test_support::{Mocks, user};
    use super::*;
    use crate::domain::UserId;

    #[tokio::test]
    async fn promoting_an_unknown_email_fails_and_changes_nothing() {
        let mut m = Mocks::new();
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.users.expect_set_role().never();
        let email = Email::parse("ghost@example.com").unwrap();
        let err = m.service().set_role(&email, Role::Admin).await.unwrap_err();
        assert!(matches!(err, AdminError::UnknownUser));
    }

    #[tokio::test]
    async fn promoting_sets_the_role_of_the_user_found_by_email() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(9, Role::User, true))));
        m.users
            .expect_set_role()
            .with(eq(UserId(9)), eq(Role::Admin))
            .times(1)
            .returning(|_, _| Ok(Some(user(9, Role::Admin, true))));
        let email = Email::parse("user9@example.com").unwrap();
        let updated = m.service().set_role(&email, Role::Admin).await.unwrap();
        assert_eq!(updated.role, Role::Admin);
    }

    #[tokio::test]
    async fn deactivating_goes_through_the_repository_with_the_clock() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(9, Role::User, true))));
        m.users
            .expect_set_active()
            .with(eq(UserId(9)), eq(false), eq(m.now))
            .times(1)
            .returning(|_, _, _| Ok(Some(user(9, Role::User, false))));
        let email = Email::parse("user9@example.com").unwrap();
        assert!(
            !m.service()
                .set_active(&email, false)
                .await
                .unwrap()
                .is_active
        );
    }
}
