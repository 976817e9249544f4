//! Administration: the operator's commands (by email, from the command line) and the admin
//! API's use cases (by id, for a signed-in admin), with an audit event for every change.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::accounts::Accounts;
use super::credentials::Credentials;
use super::limits::Guard;
use super::notices::Mailing;
use crate::domain::mfa::{FactorRemoval, Passkey, TOTP_DESCRIBED};
use crate::domain::ports::{
    AuditLog, Clock, CreateUserError, FactorRepository, MailOutbox, SessionRepository,
    UserRepository,
};
use crate::domain::{
    AccountChange, Applied, AuditEvent, AuditKind, AuditQuery, AuthPolicy, BackendError,
    ClientInfo, Condition, Edit, Email, FactorChange, FullName, MailJob, NewAuditEvent, Password,
    PasswordError, Principal, Refusal, Role, Session, User, UserChanges, UserId, UserQuery,
};

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no user with that email or id")]
    UnknownUser,
    #[error("email already registered")]
    EmailTaken,
    #[error("would leave no active admin")]
    LastAdmin,
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// A set-password or reset link was asked for, and no mail transport is configured.
    #[error("mail is not configured")]
    MailNotConfigured,
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

impl From<Refusal> for AdminError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownUser => Self::UnknownUser,
            Refusal::LastAdmin => Self::LastAdmin,
            other => Self::Backend(BackendError::unexpected(format!(
                "an administrative change refused: {other:?}"
            ))),
        }
    }
}

/// A new user, as an admin asks for one.
pub struct NewAccount {
    pub email: Email,
    pub full_name: Option<FullName>,
    pub role: Role,
    /// `None`: the user chooses one through a set-password link sent by mail.
    pub password: Option<Password>,
}

/// Who asks for an administrative change: an admin of the API, or the operator's shell.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Admin(&'a Principal, &'a ClientInfo),
    Operator,
}

impl Actor<'_> {
    /// `kind` of `user`, done by this actor at `at`.
    pub(super) fn event(
        self,
        kind: AuditKind,
        user: Option<UserId>,
        at: DateTime<Utc>,
    ) -> NewAuditEvent {
        match self {
            Self::Admin(admin, client) => {
                NewAuditEvent::new(kind, user, client, at).by(admin.user.id)
            }
            Self::Operator => {
                NewAuditEvent::new(kind, user, &ClientInfo::default(), at).with("via", "cli")
            }
        }
    }
}

/// A description of `changes`, for the audit trail.
fn describe(changes: &UserChanges) -> String {
    let mut parts = Vec::new();
    if let Some(role) = changes.role {
        parts.push(format!("role={role}"));
    }
    if let Some(active) = changes.is_active {
        parts.push(format!("is_active={active}"));
    }
    if let Some(name) = &changes.full_name {
        parts.push(format!(
            "full_name={}",
            name.as_ref().map_or("", |n| n.as_str())
        ));
    }
    if let Some(verified) = changes.email_verified {
        parts.push(format!("email_verified={verified}"));
    }
    parts.join(",")
}

/// The administrators' and the operator's use cases.
pub struct Admin {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) audit: Arc<dyn AuditLog>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) outbox: Arc<dyn MailOutbox>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) accounts: Arc<Accounts>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) guard: Arc<Guard>,
    pub(super) mailing: Arc<Mailing>,
}

impl Admin {
    /// Creates a user with any role and a password (the operator's way to make the first
    /// admin).
    ///
    /// # Errors
    /// [`AdminError::EmailTaken`] when the email is registered already.
    pub async fn create_user_as_operator(
        &self,
        email: Email,
        password: Password,
        role: Role,
    ) -> Result<User, AdminError> {
        self.create_account(
            Actor::Operator,
            NewAccount {
                email,
                full_name: None,
                role,
                password: Some(password),
            },
        )
        .await
    }

    /// Creates a user for `actor`. Without a password, the user gets a set-password link by
    /// mail (valid `invitation_ttl_hours`), queued with the user.
    ///
    /// # Errors
    /// [`AdminError::EmailTaken`]; [`AdminError::MailNotConfigured`] without a password and
    /// without mail (nothing is created then).
    pub async fn create_account(
        &self,
        actor: Actor<'_>,
        account: NewAccount,
    ) -> Result<User, AdminError> {
        if let Some(password) = &account.password {
            self.credentials.check_new_password(
                password,
                &account.email,
                account.full_name.as_ref(),
            )?;
        }
        let invite = account.password.is_none();
        if invite && !self.mailing.mail_configured() {
            return Err(AdminError::MailNotConfigured);
        }
        // An invited user's password is one nobody knows until the link sets another.
        let password = match account.password {
            Some(password) => password,
            None => Password::parse(&format!(
                "{}{}",
                Uuid::new_v4().simple(),
                Uuid::new_v4().simple()
            ))
            .map_err(BackendError::unexpected)?,
        };
        let mut audit = actor
            .event(AuditKind::UserCreated, None, self.clock.now())
            .with("role", account.role);
        let invite = invite && {
            let queued = self
                .guard
                .within_mail_budget(&[&account.email], None)
                .await?;
            if !queued {
                audit = audit.with(
                    "invitation",
                    "not sent: the address's mail budget is spent; send a reset link later",
                );
            }
            queued
        };
        let user = self
            .accounts
            .create_user(
                account.email,
                password,
                account.full_name,
                account.role,
                false,
                audit,
            )
            .await?;
        if invite {
            self.outbox
                .enqueue_mail(MailJob::Invitation { user_id: user.id }, self.clock.now())
                .await?;
        }
        Ok(user)
    }

    /// Gives the user with `email` the role `role`; it applies to their next request.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`]; [`AdminError::LastAdmin`] for the last active admin.
    pub async fn set_role(&self, email: &Email, role: Role) -> Result<User, AdminError> {
        let changes = UserChanges {
            role: Some(role),
            ..UserChanges::default()
        };
        self.change_by_email(email, changes).await
    }

    /// Activates or deactivates the user with `email`; deactivation ends all their sessions.
    ///
    /// # Errors
    /// As [`Admin::set_role`].
    pub async fn set_active(&self, email: &Email, active: bool) -> Result<User, AdminError> {
        let changes = UserChanges {
            is_active: Some(active),
            ..UserChanges::default()
        };
        self.change_by_email(email, changes).await
    }

    /// Marks the address of the user with `email` verified or not.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn set_email_verified(
        &self,
        email: &Email,
        verified: bool,
    ) -> Result<User, AdminError> {
        let changes = UserChanges {
            email_verified: Some(verified),
            ..UserChanges::default()
        };
        self.change_by_email(email, changes).await
    }

    /// Deletes the user with `email`.
    ///
    /// # Errors
    /// As [`Admin::set_role`].
    pub async fn delete_by_email(&self, email: &Email) -> Result<User, AdminError> {
        let user = self.find_by_email(email).await?;
        self.delete_account(Actor::Operator, user.id).await?;
        Ok(user)
    }

    async fn change_by_email(
        &self,
        email: &Email,
        changes: UserChanges,
    ) -> Result<User, AdminError> {
        let user = self.find_by_email(email).await?;
        self.update_account(Actor::Operator, user.id, changes).await
    }

    /// The user with `email`.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn find_user(&self, email: &Email) -> Result<User, AdminError> {
        self.find_by_email(email).await
    }

    async fn find_by_email(&self, email: &Email) -> Result<User, AdminError> {
        self.users
            .find_user_by_email(email)
            .await?
            .ok_or(AdminError::UnknownUser)
    }

    /// The user with `id`.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn account(&self, id: UserId) -> Result<User, AdminError> {
        self.users
            .find_user_by_id(id)
            .await?
            .ok_or(AdminError::UnknownUser)
    }

    /// Users matching `query`, newest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn list_accounts(&self, query: &UserQuery) -> Result<Vec<User>, BackendError> {
        self.users.list_users(query).await
    }

    /// Applies `changes` to user `id`. A deactivation also moves the credential version on and
    /// ends every session, so nothing the account allowed outlives it; a change that could
    /// remove an admin is made only if an active admin is left (the store decides, for every
    /// change at once).
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`]; [`AdminError::LastAdmin`].
    pub async fn update_account(
        &self,
        actor: Actor<'_>,
        id: UserId,
        changes: UserChanges,
    ) -> Result<User, AdminError> {
        let now = self.clock.now();
        let audit = actor
            .event(AuditKind::UserUpdated, Some(id), now)
            .with("changes", describe(&changes));
        let change = AccountChange::update(id, now, changes).recording(audit);
        Ok(self.users.apply(change).await?.user()?)
    }

    /// Deletes user `id`, their sessions and tokens; their audit events stay.
    ///
    /// # Errors
    /// As [`Admin::update_account`].
    pub async fn delete_account(&self, actor: Actor<'_>, id: UserId) -> Result<(), AdminError> {
        let now = self.clock.now();
        let change = AccountChange::of(id, now)
            .when(Condition::LeavesAnActiveAdmin)
            .then(Edit::Delete)
            .recording(actor.event(AuditKind::UserDeleted, Some(id), now));
        match self.users.apply(change).await? {
            Applied::Refused(refusal) => Err(refusal.into()),
            Applied::Done(_) | Applied::Deleted => Ok(()),
        }
    }

    /// The live sessions of user `id`, newest first.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn account_sessions(&self, id: UserId) -> Result<Vec<Session>, AdminError> {
        let user = self.account(id).await?;
        Ok(self
            .sessions
            .list_live_sessions(user.id, self.clock.now(), self.policy.max_sessions_per_user)
            .await?)
    }

    /// Ends every session of user `id`.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn end_account_sessions(
        &self,
        actor: Actor<'_>,
        id: UserId,
    ) -> Result<(), AdminError> {
        let now = self.clock.now();
        let change = AccountChange::of(id, now)
            .then(Edit::EndSessions { keep: None })
            .recording(actor.event(AuditKind::AdminSessionsEnded, Some(id), now));
        self.users.apply(change).await?.user()?;
        Ok(())
    }

    /// Removes every second factor of user `id` (TOTP, recovery codes, passkeys), for a user
    /// who lost them; their next login asks for the password alone. Returns whether there was
    /// anything to remove (only then is an event recorded).
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn reset_factors(&self, actor: Actor<'_>, id: UserId) -> Result<bool, AdminError> {
        let user = self.account(id).await?;
        let audit = actor.event(AuditKind::MfaReset, Some(user.id), self.clock.now());
        let mut removed = Vec::new();
        if let Some(totp) = self.factors.find_totp(user.id).await?
            && totp.confirmed_at.is_some()
        {
            removed.push(TOTP_DESCRIBED.to_owned());
        }
        let passkeys = self.factors.list_passkeys(user.id).await?;
        removed.extend(passkeys.iter().map(Passkey::described));
        let notice = self
            .mailing
            .factor_notice(&user, FactorChange::Removed, removed, None)
            .await?;
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::HasFactors { passkeys: true })
            .then(Edit::RemoveFactors(FactorRemoval {
                totp: true,
                passkeys: Vec::new(),
            }))
            .then(Edit::RemoveAllPasskeys)
            .recording(audit)
            .mailing(notice);
        match self.users.apply(change).await? {
            Applied::Refused(Refusal::NothingToRemove) => Ok(false),
            applied => applied.user().map(|_| true).map_err(AdminError::from),
        }
    }

    /// [`Admin::reset_factors`] of the user with `email`, for the operator.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`].
    pub async fn reset_factors_by_email(&self, email: &Email) -> Result<bool, AdminError> {
        let user = self.find_by_email(email).await?;
        self.reset_factors(Actor::Operator, user.id).await
    }

    /// Mails user `id` a reset link, at `actor`'s request, within the address's mail budget.
    /// The request is recorded at once (`password.reset_requested` by the actor, from their
    /// client), with whether the link was queued.
    ///
    /// # Errors
    /// [`AdminError::UnknownUser`]; [`AdminError::MailNotConfigured`].
    pub async fn send_reset_link(&self, actor: Actor<'_>, id: UserId) -> Result<(), AdminError> {
        if !self.mailing.mail_configured() {
            return Err(AdminError::MailNotConfigured);
        }
        let user = self.account(id).await?;
        let now = self.clock.now();
        let audit = actor.event(AuditKind::PasswordResetRequested, Some(user.id), now);
        if !self.guard.within_mail_budget(&[&user.email], None).await? {
            let audit = audit.with("mail", "not sent: the address's mail budget is spent");
            self.audit.record_audit(audit).await?;
            return Ok(());
        }
        let job = MailJob::PasswordReset {
            email: user.email,
            requested_by: None,
        };
        let change = AccountChange::of(user.id, now)
            .recording(audit.with("mail", "queued"))
            .mailing(Some(job));
        self.users.apply(change).await?.user()?;
        Ok(())
    }

    /// Audit events matching `query`, newest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError> {
        self.audit.list_audit(query).await
    }
}

#[cfg(test)]
mod tests;
