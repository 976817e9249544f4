//! Checking credentials: the one path of every password check (limits, the failure delay, one
//! hash for known and unknown addresses), the re-check of a signed-in user's password, and the
//! rules of a new password.

use std::sync::Arc;

use chrono::TimeDelta;
use uuid::Uuid;

use super::limits::{
    Action, Guard, LimitError, LimitPolicy, Throttled, backoff_delay, subject_key,
};
use super::opening::session_ended;
use crate::domain::ports::{
    AuditLog, Clock, CreateSessionError, FailureRecord, PasswordHasher, RateLimiter,
    SessionRepository, UserRepository,
};
use crate::domain::{
    AccountChange, AuditKind, AuthPolicy, BackendError, ClientInfo, Condition, Edit, Email,
    FullName, NewAuditEvent, Password, PasswordError, PasswordHash, Principal, SessionId, User,
};

/// Checks credentials: every password check, the re-check of a signed-in user's password, and
/// the rules of a new one.
pub struct Credentials {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) audit: Arc<dyn AuditLog>,
    pub(super) hasher: Arc<dyn PasswordHasher>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) limits: LimitPolicy,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
    pub(super) dummy_hash: futures_util::lock::Mutex<Option<PasswordHash>>,
}

impl Credentials {
    /// The one way the core checks a password: within `account`'s failure run (the
    /// normalised email, shared by login, the token grant, the second step of a login and
    /// every signed-in re-check).
    ///
    /// The attempt is admitted and counted as a failure in one atomic swap before the hash
    /// starts, so however many attempts arrive at once, at most `free_failures + 1` hashes
    /// start before the first delay, on every instance together. When the hash ends, a wrong
    /// password dates the failure, and a hash that could not run gives the attempt back. A
    /// right password leaves the run as it is: the caller clears it
    /// ([`Credentials::clear_failures`]) once the whole proof is in, which for a user with a
    /// second factor is only after the code.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] while the account serves a delay (nothing is hashed then);
    /// [`LimitError::Backend`] from the limiter or the hasher.
    pub(super) async fn verify_password(
        &self,
        account: &str,
        candidate: &str,
        hash: &PasswordHash,
    ) -> Result<bool, LimitError> {
        self.admit_check(account).await?;
        let verdict = self.hasher.verify(candidate, hash).await;
        match verdict {
            Ok(true) => {}
            Ok(false) => self.record_wrong(account).await?,
            Err(_) if self.limits.enabled => {
                self.limiter
                    .release_attempt(&subject_key("failures", account))
                    .await?;
            }
            Err(_) => {}
        }
        Ok(verdict?)
    }

    /// Admits one check of a secret of `account` (a password, a code) into its failure run,
    /// counting it as a failure until it proves right, unless the run owes a delay.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] during the delay.
    pub(super) async fn admit_check(&self, account: &str) -> Result<(), LimitError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.admit_attempt(&subject_key("failures", account)).await
    }

    /// Dates the failure of a check admitted by [`Credentials::admit_check`] that proved
    /// wrong.
    pub(super) async fn record_wrong(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.limiter
            .record_failure(&subject_key("failures", account), self.clock.now())
            .await
    }

    /// Forgets `account`'s failure run: the account's owner has proved who they are.
    pub(super) async fn clear_failures(&self, account: &str) -> Result<(), BackendError> {
        if !self.limits.enabled {
            return Ok(());
        }
        self.limiter
            .clear_failures(&subject_key("failures", account))
            .await
    }

    /// Admits one password attempt for the run `key`, counting it, unless the run owes a
    /// delay.
    async fn admit_attempt(&self, key: &str) -> Result<(), LimitError> {
        for _ in 0..ADMISSION_TRIES {
            let seen = self.limiter.failures(key).await?;
            let now = self.clock.now();
            let live = seen.filter(|run| run.last_at >= now - self.limits.failure_memory);
            if let Some(run) = live
                && let Some(delay) = backoff_delay(&self.limits, run.count)
                && now < run.last_at + delay
            {
                return Err(Throttled {
                    retry_after: run.last_at + delay - now,
                }
                .into());
            }
            let next = FailureRecord {
                count: live.map_or(1, |run| run.count.saturating_add(1)),
                last_at: now,
            };
            if self.limiter.swap_failures(key, seen, next).await? {
                return Ok(());
            }
        }
        // Another attempt won every swap: the account is under a burst, which is what the
        // delay is for.
        Err(Throttled {
            retry_after: self.limits.first_delay,
        }
        .into())
    }

    /// Counts a wrong password given by the signed-in session `session`, and returns how many
    /// it has given (none while the limits are off).
    pub(super) async fn wrong_rechecks(&self, session: SessionId) -> Result<u32, BackendError> {
        if !self.limits.enabled {
            return Ok(0);
        }
        let forget_at = self.clock.now() + self.limits.failure_memory;
        let bucket = format!(
            "password_check_failures:{}",
            subject_key("session", &session.to_string())
        );
        self.limiter.increment(&bucket, forget_at).await
    }

    /// Counts one re-check by the signed-in `user` (a password or a code asked again) from
    /// `client`; refuses it over the re-check quotas.
    pub(super) async fn throttle_recheck(
        &self,
        user: &crate::domain::User,
        client: &crate::domain::ClientInfo,
    ) -> Result<(), LimitError> {
        self.guard
            .throttle(
                Action::PasswordCheck,
                client.ip.as_deref(),
                Some(&user.id.to_string()),
            )
            .await
    }

    /// Checks the password of a signed-in caller: the one path for every use case that asks
    /// for it again. The attempt is limited per client address and per user, and goes through
    /// the account's failure run shared with login ([`Credentials::verify_password`]). A
    /// session that gets `free_failures` wrong passwords is ended: whoever holds its token is
    /// guessing.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] over a limit or during the failure delay, before any hash.
    pub(super) async fn recheck_password(
        &self,
        principal: &Principal,
        candidate: &str,
        client: &ClientInfo,
    ) -> Result<bool, LimitError> {
        let user = &principal.user;
        self.throttle_recheck(user, client).await?;
        let right = self
            .verify_password(user.email.key(), candidate, &user.password_hash)
            .await?;
        if right {
            // The session passed every factor at its login: the password completes the proof.
            self.clear_failures(user.email.key()).await?;
        }
        // A token of the old service has no session to end; the failure run and the limits
        // above still apply to it.
        if let (false, Some(session_id)) = (right, principal.session_id)
            && self.wrong_rechecks(session_id).await? >= self.limits.free_failures
        {
            tracing::warn!(%session_id, user_id = %user.id, "repeated wrong passwords; ending the session");
            let audit = session_ended(
                principal,
                session_id,
                "repeated wrong passwords",
                client,
                self.clock.now(),
            );
            self.sessions
                .end_session(user.id, session_id, self.clock.now(), audit)
                .await?;
        }
        Ok(right)
    }

    /// The checks of a login, in order: abuse limits, the password (at the cost of one hash
    /// whether or not the email is known), the account's state; then a rehash if one is due.
    /// Returns the user to open a session for, or to ask a second factor of. The account's
    /// failure run is left to the caller to clear.
    pub(super) async fn check_login(
        &self,
        email: &Email,
        password: &str,
        client: &ClientInfo,
    ) -> Result<User, LoginError> {
        let account = email.key();
        self.guard
            .throttle(Action::Login, client.ip.as_deref(), Some(account))
            .await?;
        let user = self.users.find_user_by_email(email).await?;
        // An unknown email is checked against the dummy hash and counted like a wrong password.
        // A known one waits for the dummy hash too: right after a start, while it is still being
        // made, an unknown email would otherwise answer later than a known one.
        let dummy = self.dummy_hash().await?;
        let hash = user.as_ref().map_or(&dummy, |u| &u.password_hash);
        let right = self.verify_password(account, password, hash).await?;
        if !right {
            // A registered email's failures name its user; an unknown one's name nobody.
            let failed = NewAuditEvent::new(
                AuditKind::LoginFailed,
                user.as_ref().map(|u| u.id),
                client,
                self.clock.now(),
            )
            .failed();
            self.record_failure(failed).await?;
        }
        let Some(user) = user.filter(|_| right) else {
            return Err(LoginError::InvalidCredentials);
        };
        self.check_account(&user)?;
        if self.hasher.needs_rehash(&user.password_hash) {
            self.rehash(&user, password).await;
        }
        Ok(user)
    }

    /// Whether `user`, who has proved who they are, may sign in: active, and verified when
    /// verified addresses are required.
    pub(super) fn check_account(&self, user: &User) -> Result<(), LoginError> {
        if !user.is_active {
            return Err(LoginError::Inactive);
        }
        if self.policy.mail.require_verified && !user.email_verified {
            return Err(LoginError::Unverified);
        }
        Ok(())
    }

    /// Stores `password`, just verified, hashed again with the hasher's current parameters (a
    /// raised or lowered bcrypt cost, or an imported hash): one extra hash on this login, none
    /// on the next. Best effort: a failure is logged, and the login goes on.
    async fn rehash(&self, user: &User, password: &str) {
        let Ok(password) = Password::parse(password) else {
            return;
        };
        let stored = match self.hasher.hash(&password).await {
            // The same password: sessions and the credential version stay. A new password that
            // won a race is never overwritten.
            Ok(hash) => {
                let change = AccountChange::of(user.id, self.clock.now())
                    .when(Condition::PasswordHashIs(user.password_hash.clone()))
                    .then(Edit::SetPasswordHash(hash));
                self.users.apply(change).await.map(drop)
            }
            Err(err) => Err(err),
        };
        if let Err(err) = stored {
            tracing::warn!(user_id = %user.id, error = %err, "password rehash failed; the next login tries again");
        }
    }

    /// The dummy hash: a random password hashed once, by the same hasher as real passwords.
    async fn dummy_hash(&self) -> Result<PasswordHash, BackendError> {
        let mut slot = self.dummy_hash.lock().await;
        if let Some(hash) = slot.as_ref() {
            return Ok(hash.clone());
        }
        let random = Password::parse(&Uuid::new_v4().simple().to_string())
            .map_err(BackendError::unexpected)?;
        let hash = self.hasher.hash(&random).await?;
        *slot = Some(hash.clone());
        Ok(hash)
    }

    /// Makes the dummy hash now, if it is not made yet: what a server does right after it
    /// starts serving, so that the first login finds it ready.
    ///
    /// # Errors
    /// [`BackendError`] from the hasher; the next login that needs the hash tries again.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        self.dummy_hash().await.map(drop)
    }

    /// The password rules that need the account (common passwords, the address itself, the
    /// strength score): the one check for every place a password is set.
    ///
    /// # Errors
    /// The [`PasswordError`] naming the rule that failed.
    pub fn check_new_password(
        &self,
        password: &Password,
        email: &Email,
        full_name: Option<&FullName>,
    ) -> Result<(), PasswordError> {
        self.policy.password.check(password, email, full_name)
    }

    /// Records a failure (a wrong password or code): one a client address caused is folded into
    /// the last one like it within the fold window, so that strangers' attempts cannot grow the
    /// trail by a row each, whether or not the limits are on.
    ///
    /// # Errors
    /// [`BackendError`] from the repository.
    pub(super) async fn record_failure(&self, event: NewAuditEvent) -> Result<(), BackendError> {
        let window = self.policy.audit_fold_window;
        if !event.is_foldable() || window <= TimeDelta::zero() {
            return self.audit.record_audit(event).await;
        }
        let since = event.at - window;
        self.audit.record_folded(event, since).await
    }
}

/// Admissions tried before a contended account's attempt is refused: each failed swap means
/// another attempt was admitted or refused meanwhile, so a handful always settles it.
pub(super) const ADMISSION_TRIES: usize = 8;

/// Why a login failed. Unknown email and wrong password are one variant on purpose.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("incorrect email or password")]
    InvalidCredentials,
    /// Only ever returned after the password was verified.
    #[error("inactive user account")]
    Inactive,
    /// Only ever returned after the password was verified, for an active account, when
    /// verified addresses are required.
    #[error("email not verified")]
    Unverified,
    /// Only ever returned after the password was verified, by a login that cannot take a
    /// second step (the OAuth2 password grant), for a user with a second factor.
    #[error("mfa_required")]
    SecondFactorRequired,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A session that could not be stored after a right password: the user changed meanwhile
/// (password, deactivation), so the password checked is no longer the one that counts.
pub(super) fn login_session_error(err: CreateSessionError) -> LoginError {
    match err {
        CreateSessionError::Stale => LoginError::InvalidCredentials,
        CreateSessionError::Backend(err) => LoginError::Backend(err),
    }
}
