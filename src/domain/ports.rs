//! The ports: what the core needs from the outside world, as traits.
//!
//! Every adapter must honour the `# Errors` contract of each method: technology errors are
//! translated into [`BackendError`] (or a more specific domain error) inside the adapter, so
//! the core never sees a driver's error type.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::change::{AccountChange, Applied};
use super::import::{ImportError, ImportPlan, SourceUser, TargetUser};
use super::mfa::{
    AuthMethod, Ceremony, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge, Passkey,
    RecoveryCodeHash, TotpFactor,
};
use super::{
    AuditEvent, AuditQuery, BackendError, CookieHash, Email, EmailTokenHash, EmailTokenRecord,
    GeneratedKey, Hs256Acceptance, KeyAlgorithm, KeyChange, KeySet, Mail, MailJob, NewAuditEvent,
    NewEmailToken, NewRefreshToken, NewSession, NewUser, OutboxDepth, Password, PasswordHash,
    QueuedMail, RefreshTokenHash, RefreshTokenRecord, Role, Session, SessionId, SessionKey,
    SigningKey, User, UserId, UserQuery,
};

/// Storage of users and of their sessions.
///
/// One port rather than two: deactivating a user, changing a password and checking an access
/// token each touch a user and their sessions together, and must do so atomically (or in one
/// round trip), which only one adapter holding both can promise.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    /// Checks that storage answers, for readiness probes.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when it does not, within the adapter's timeout.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Stores a new user and returns it with its id, and records `user.audit` (whose
    /// `user_id`, when `None`, becomes the new id); with `send_verification`, queues a
    /// [`MailJob::Verification`] for it; all in one transaction.
    ///
    /// # Errors
    /// [`CreateUserError::EmailTaken`] when a user with the same normalised email exists, also
    /// when a concurrent insert wins the race (the unique index decides, not a prior read);
    /// [`CreateUserError::Backend`] otherwise.
    async fn create_user(&self, user: NewUser) -> Result<User, CreateUserError>;

    /// Finds a user by normalised email.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown email is `Ok(None)`.
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, BackendError>;

    /// Finds a user by id.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown id is `Ok(None)`.
    async fn find_user_by_id(&self, id: UserId) -> Result<Option<User>, BackendError>;

    /// Finds the user that `portcullis import pyauth` made from pyauth's row `pyauth_id`: an
    /// imported user holding that id. A user who registered here is never it, whatever their
    /// id, and neither is a row the import skipped or never saw.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; no such user is `Ok(None)`.
    async fn find_pyauth_user(&self, pyauth_id: i64) -> Result<Option<User>, BackendError>;

    /// Applies `change` to its account all or nothing: in one transaction (or under one lock)
    /// that first locks the account, checks every condition, then makes every edit in order,
    /// records its events and queues its mail. The store decides nothing else: what a change
    /// does is the core's.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed. A condition that does not
    /// hold (or an address or credential someone else holds) is `Ok(Applied::Refused)`.
    async fn apply(&self, change: AccountChange) -> Result<Applied, BackendError>;

    /// Users matching `query`, newest first (by id, descending), at most `query.limit`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, BackendError>;

    /// Records an event that changes nothing else (a failed login).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_audit(&self, event: NewAuditEvent) -> Result<(), BackendError>;

    /// Records the failure `event` folded into the last one like it: when an event of the same
    /// kind and outcome, from the same client address and for the same user (or for none), was
    /// recorded at or after `since`, that one's `detail.count` goes up by one instead;
    /// otherwise `event` is recorded with a count of 1. Folds into one event are serialised
    /// (none is lost); callers that find none at the same moment may each record one.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_folded(
        &self,
        event: NewAuditEvent,
        since: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Events matching `query`, newest first, at most `query.limit`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, BackendError>;

    /// Stores a new session with its key (its first refresh token, or the hash of its console
    /// cookie; the idle end is the key's), in one transaction, if the user is
    /// still active at `session.credential_version`; in the same transaction, sets the user's
    /// last login to `session.created_at`, records `session.audit`, and ends the user's least
    /// recently used live sessions beyond `session.live_limit`.
    ///
    /// The version check and the insert must be atomic against [`UserRepository::set_password`]
    /// and [`UserRepository::set_active`]: a session is either refused, or stored before the
    /// change and ended by it.
    ///
    /// # Errors
    /// [`CreateSessionError::Stale`] when the user's version moved on, the user is inactive or
    /// gone; [`CreateSessionError::Backend`] when storage fails. Either way nothing was stored.
    async fn create_session(
        &self,
        session: NewSession,
        key: SessionKey,
    ) -> Result<Session, CreateSessionError>;

    /// Loads a session and its user in one indexed lookup: the check behind every
    /// authenticated request. Ended and expired sessions are returned too; the core decides.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown id is `Ok(None)`.
    async fn find_session(&self, id: SessionId) -> Result<Option<(Session, User)>, BackendError>;

    /// Loads the session of a console cookie, with its user. Ended and expired sessions are
    /// returned too; the core decides.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_cookie_session(
        &self,
        hash: &CookieHash,
    ) -> Result<Option<(Session, User)>, BackendError>;

    /// Records a use of a live session at `now` and moves its idle end to `idle_expires_at`;
    /// an ended session is left as it is.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn touch_session(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Loads a refresh token, spent or not, with its session and user.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_refresh_token(
        &self,
        hash: &RefreshTokenHash,
    ) -> Result<Option<RefreshTokenRecord>, BackendError>;

    /// Spends `presented` and stores `next` in its place, atomically: a conditional update
    /// marks `presented` spent only if it is not spent yet, so of two concurrent rotations of
    /// one token exactly one returns [`Rotation::Rotated`]. The session's last use, client and
    /// idle expiry (`next.expires_at`) are updated with it, by an update that requires the
    /// session not to be ended, so a rotation racing a password change, a deactivation or a
    /// logout either happens before it (and is ended by it) or changes nothing.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed.
    async fn rotate_refresh_token(
        &self,
        presented: &RefreshTokenHash,
        next: NewRefreshToken,
        client: super::ClientInfo,
    ) -> Result<Rotation, BackendError>;

    /// Lists a user's sessions that are live at `now`, newest first, at most `limit` of them.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_live_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, BackendError>;

    /// Ends one session of `user_id` at `now`, recording `audit` with it. Returns `false`,
    /// recording nothing, when no live session of that user has this id (someone else's
    /// session is not touched).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn end_session(
        &self,
        user_id: UserId,
        id: SessionId,
        now: DateTime<Utc>,
        audit: NewAuditEvent,
    ) -> Result<bool, BackendError>;

    /// Queues `job` for the delivery worker, queued at `now`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing was queued.
    async fn enqueue_mail(&self, job: MailJob, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Stores a one-time token (its hash only), with `audit` when given.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_email_token(
        &self,
        token: NewEmailToken,
        audit: Option<NewAuditEvent>,
    ) -> Result<(), BackendError>;

    /// Loads a one-time token, spent or not, with its user.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_email_token(
        &self,
        hash: &EmailTokenHash,
    ) -> Result<Option<EmailTokenRecord>, BackendError>;

    /// Deletes sessions that are no longer live at `now`, refresh and link tokens past their
    /// expiry, pending second steps and WebAuthn ceremonies past theirs, delivered mail kept
    /// long enough, and audit events older than `audit_before`.
    /// Returns how many sessions were deleted.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError>;
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CreateSessionError {
    /// The user changed since the password was checked (new password, deactivation), or is
    /// gone: the check no longer vouches for anything.
    #[error("the user changed while the session was being opened")]
    Stale,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a refresh-token rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Rotated,
    /// The token was spent already; nothing changed.
    AlreadySpent,
    /// The session has ended; nothing changed.
    SessionEnded,
}

/// The delivery side of the mail outbox that [`UserRepository::enqueue_mail`] fills.
///
/// With several instances on one database, a job is claimed by one of them at a time.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MailOutbox: Send + Sync + 'static {
    /// Claims up to `limit` jobs that are due at `now` and not claimed by anyone, for `lease`:
    /// no other claim returns them until the lease ends, so a worker that dies mid-delivery
    /// leaves its jobs to the next one.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, BackendError>;

    /// Marks a claimed job done at `now`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn finish_mail(&self, id: i64, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Puts a claimed job back, due again at `retry_at`, with `attempts` made and the last
    /// `error`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn retry_mail(
        &self,
        id: i64,
        attempts: u32,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), BackendError>;

    /// Gives a claimed job up after `attempts`, keeping it with its last `error` for the
    /// operator.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn fail_mail(&self, id: i64, attempts: u32, error: &str) -> Result<(), BackendError>;

    /// How many jobs wait, and how many were given up.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn mail_depth(&self) -> Result<OutboxDepth, BackendError>;
}

/// Why a mail was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth another try later: the server is down, busy, or answered 4xx.
    #[error("mail not delivered, will retry: {0}")]
    Transient(String),
    /// Refused for good (a 5xx answer, a malformed address): retrying cannot help.
    #[error("mail refused: {0}")]
    Rejected(String),
}

/// Composes a [`Mail`] from its template and delivers it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Delivers `mail` and returns the server's answer.
    ///
    /// # Errors
    /// [`MailError`] saying whether a retry can help.
    async fn send(&self, mail: &Mail) -> Result<String, MailError>;
}

/// Password hashing: slow on purpose, so adapters must keep it off the async workers.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    /// Hashes a policy-checked password with a fresh salt.
    ///
    /// # Errors
    /// [`BackendError::Overloaded`] when the hashing capacity is saturated;
    /// [`BackendError::Unexpected`] for anything else.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, BackendError>;

    /// Checks `candidate` against `hash`, in time independent of where they differ. A
    /// candidate the algorithm cannot take whole (too long, or holding a NUL) never matches:
    /// it is not truncated.
    ///
    /// # Errors
    /// As [`PasswordHasher::hash`]; a malformed stored hash is `Unexpected`.
    async fn verify(&self, candidate: &str, hash: &PasswordHash) -> Result<bool, BackendError>;

    /// Whether `hash` was made with other parameters than this hasher uses now (another bcrypt
    /// cost), so that a login that has just verified the password should store a fresh hash.
    /// A hash of another algorithm is not this hasher's to judge: `false`.
    fn needs_rehash(&self, hash: &PasswordHash) -> bool;
}

/// The claims of an access token that the core cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: UserId,
    pub role: Role,
    pub session_id: SessionId,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub token_id: String,
    /// How the session's user signed in (`amr`).
    pub methods: Vec<AuthMethod>,
}

/// The claims of an access token of the old service (pyauth): HS256 with the shared secret,
/// `sub`, `role` and `exp` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyauthClaims {
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
}

/// Why a presented token is not accepted by the issuer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, wrong algorithm, issuer or audience, malformed: not ours.
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The token names a key (this `kid`) the issuer has not loaded: another instance may have
    /// made it since this one last read the key table.
    #[error("token names a key this instance has not loaded")]
    UnknownKey(String),
    /// Signing failed: a key problem, not the caller's.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Signs and checks access tokens.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TokenIssuer: Send + Sync + 'static {
    /// Signs `claims` into a token string.
    ///
    /// # Errors
    /// [`TokenError::Backend`] when signing fails.
    fn issue(&self, claims: &AccessClaims) -> Result<String, TokenError>;

    /// Checks a token's algorithm, signature, issuer and audience and returns its claims.
    /// Expiry is left to the caller, who owns the clock.
    ///
    /// # Errors
    /// [`TokenError::UnknownKey`] for a token whose `kid` is not among the keys installed;
    /// [`TokenError::Rejected`] for any other token this issuer did not sign as it is.
    fn verify(&self, token: &str) -> Result<AccessClaims, TokenError>;

    /// Checks a token in the old service's shape: HS256 with the shared secret, `sub` and
    /// `exp`, and none of the claims Portcullis adds (`iss`, `aud`, `sid`). Expiry is left to
    /// the caller.
    ///
    /// # Errors
    /// [`TokenError::Rejected`] for anything else.
    fn verify_pyauth(&self, token: &str) -> Result<PyauthClaims, TokenError>;
}

/// The time, as a port, so that expiry can be tested without waiting.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Waiting, as a port: the core paces work (reloads of the keys) without a runtime of its own.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Timer: Send + Sync + 'static {
    /// Completes once `duration` has passed (at once for zero or less).
    async fn sleep(&self, duration: chrono::TimeDelta);
}

/// One account's run of failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRecord {
    /// Consecutive failures, the latest included.
    pub count: u32,
    pub last_at: DateTime<Utc>,
}

/// Counters for abuse limits. Shared by every instance that uses the same adapter, so that a
/// database adapter gives a whole fleet one budget.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Adds one attempt to the counter `bucket` (created at zero, to be forgotten after
    /// `expires_at`) and returns its value, this attempt included. Atomic: of any number of
    /// concurrent increments, each sees a different value.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn increment(&self, bucket: &str, expires_at: DateTime<Utc>)
    -> Result<u32, BackendError>;

    /// The run of failures of `account`, if any.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn failures(&self, account: &str) -> Result<Option<FailureRecord>, BackendError>;

    /// Replaces the run of `account` with `next` if it is still `seen` (`None`: no run is
    /// stored), and says whether it did. Atomic: of any number of concurrent calls made with
    /// the same `seen`, at most one returns `true`. This is how a password attempt is admitted
    /// and counted in one step, before its hash starts, on every instance at once.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; then nothing has changed.
    async fn swap_failures(
        &self,
        account: &str,
        seen: Option<FailureRecord>,
        next: FailureRecord,
    ) -> Result<bool, BackendError>;

    /// Records that an attempt admitted by [`RateLimiter::swap_failures`] failed at `now`:
    /// the run's last failure moves to `now` (the attempt itself was counted on admission).
    /// When the run was cleared meanwhile, a new run of one failure starts.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn record_failure(&self, account: &str, now: DateTime<Utc>) -> Result<(), BackendError>;

    /// Gives back an attempt that was admitted but never checked (the hash could not run):
    /// the run has one failure fewer, never fewer than none.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn release_attempt(&self, account: &str) -> Result<(), BackendError>;

    /// Forgets the failures of `account` (after a correct password).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn clear_failures(&self, account: &str) -> Result<(), BackendError>;

    /// Deletes counters whose window ended at or before `now`, and failure runs whose last
    /// failure is older than `forget_before`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), BackendError>;
}

/// Storage of the signing keys, shared by every instance.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SigningKeyStore: Send + Sync + 'static {
    /// Every key, retired ones included, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_keys(&self) -> Result<Vec<SigningKey>, BackendError>;

    /// The key `kid` as the table holds it now, if any: one lookup by primary key.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_key(&self, kid: &str) -> Result<Option<SigningKey>, BackendError>;

    /// Applies `change` all or nothing. `Ok(false)`, with nothing changed, when a move finds its
    /// key no longer in its `from` state, or the insert would make a second `next` or
    /// `current` key: another instance (or the CLI) got there first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn apply_key_change(&self, change: &KeyChange) -> Result<bool, BackendError>;
}

/// Makes key pairs, and seals their private halves for storage.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait KeyForge: Send + Sync + 'static {
    /// A new key pair of `algorithm`.
    ///
    /// # Errors
    /// [`BackendError`] when the generator or the sealing fails.
    fn generate(&self, algorithm: KeyAlgorithm) -> Result<GeneratedKey, BackendError>;
}

/// Where the token issuer takes its keys from: the core installs each new state of the key
/// table, and the issuer signs and verifies with it until the next one.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait KeyRing: Send + Sync + 'static {
    /// Replaces the keys in use.
    ///
    /// # Errors
    /// [`BackendError`] when a key cannot be opened (a different `SECRET_KEY` sealed it); the
    /// keys in use stay as they were.
    fn install(&self, keys: &KeySet, hs256: Hs256Acceptance) -> Result<(), BackendError>;

    /// The `kid` of the key that signs a token issued at `at` with the keys in use; `None`
    /// while HS256 signs (the shared secret has no `kid` and cannot be retired).
    fn signing_kid(&self, at: DateTime<Utc>) -> Option<String>;
}

/// pyauth's database, read-only.
#[async_trait]
pub trait ImportSource: Send + Sync {
    /// Every row of pyauth's `users` table, by id.
    ///
    /// # Errors
    /// [`ImportError::Source`] when it cannot be reached or is not pyauth's schema.
    async fn pyauth_users(&self) -> Result<Vec<SourceUser>, ImportError>;
}

/// The store users are imported into.
#[async_trait]
pub trait ImportTarget: Send + Sync {
    /// Every user, as far as an import cares.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn import_snapshot(&self) -> Result<Vec<TargetUser>, BackendError>;

    /// Writes `plan`'s inserts (with their ids, marked imported) and updates, and records
    /// `audit`, in one transaction, moves the id sequence past the largest id, and reports
    /// progress in users written so far. `audit.at` is the time of the writes.
    ///
    /// # Errors
    /// [`ImportError::TargetChanged`] when a write meets a user that was not in the snapshot;
    /// nothing is written then.
    async fn apply_import(
        &self,
        plan: &ImportPlan,
        audit: NewAuditEvent,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<(), ImportError>;
}

/// Storage of second factors (TOTP secrets, recovery codes, passkeys), of the pending second
/// steps of logins, and of WebAuthn ceremonies in progress.
///
/// Implemented by the same adapter as [`UserRepository`], on the same storage: deleting a user
/// deletes their factors, and every instance sees every challenge and ceremony.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait FactorRepository: Send + Sync + 'static {
    /// Which factors user `id` has.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn factors(&self, id: UserId) -> Result<Factors, BackendError>;

    /// User `id`'s TOTP factor, confirmed or not.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_totp(&self, id: UserId) -> Result<Option<TotpFactor>, BackendError>;

    /// Stores `sealed_secret` as user `id`'s unconfirmed TOTP secret, replacing an unconfirmed
    /// one. `Ok(false)`, with nothing changed, when a confirmed one exists.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_pending_totp(
        &self,
        id: UserId,
        sealed_secret: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// Records that a code of `step` was accepted for user `id`'s confirmed factor, if no code
    /// of this step or a later one was: a conditional update, so of two uses of one code
    /// exactly one returns `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn use_totp_step(&self, id: UserId, step: i64) -> Result<bool, BackendError>;

    /// Spends one unused recovery code of user `id` at `now`; `false` when there is none with
    /// this hash (or it is spent). Of two concurrent uses exactly one returns `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn spend_recovery_code(
        &self,
        id: UserId,
        hash: &RecoveryCodeHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// Stores a pending second step of a login.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), BackendError>;

    /// Loads a challenge, spent or not.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails; an unknown hash is `Ok(None)`.
    async fn find_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
    ) -> Result<Option<MfaChallenge>, BackendError>;

    /// Counts a wrong code against a challenge, and spends it at `now` when that makes
    /// `max_failures`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn fail_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        max_failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Spends an unspent challenge at `now`: of two concurrent spends exactly one returns
    /// `true`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn spend_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError>;

    /// User `id`'s passkeys, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn list_passkeys(&self, id: UserId) -> Result<Vec<Passkey>, BackendError>;

    /// The passkey with WebAuthn credential id `credential_id`, whoever holds it.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>, BackendError>;

    /// Records a sign-in with passkey `id` at `now`, storing its `credential` when the
    /// authenticator moved its counter or backup state.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn touch_passkey(
        &self,
        id: uuid::Uuid,
        credential: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Names passkey `id` of user `user_id` `name`; `false` when the user has no such passkey
    /// (someone else's is not touched).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: uuid::Uuid,
        name: &str,
    ) -> Result<bool, BackendError>;

    /// Stores a WebAuthn ceremony until it is finished or expires, and deletes the ceremonies
    /// that expired by `now`: sign-in starts need no account, so abandoned ones must not wait
    /// for the periodic purge (one indexed delete, by expiry).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn store_ceremony(
        &self,
        ceremony: Ceremony,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Takes the ceremony of `challenge`: deletes it and returns it, so that it finishes at
    /// most once, unless it expired by `now` (it is deleted then too).
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    async fn take_ceremony(
        &self,
        challenge: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>, BackendError>;
}

/// Encrypts secrets the core must read back (TOTP secrets), so the database alone never
/// yields them.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait SecretSealer: Send + Sync + 'static {
    /// Seals `plaintext`, bound to `bound_to`: it opens only with the same binding.
    ///
    /// # Errors
    /// [`BackendError`] when the random generator fails.
    fn seal(&self, plaintext: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError>;

    /// # Errors
    /// [`BackendError`] when `sealed` was not sealed with this key and binding.
    fn open(&self, sealed: &[u8], bound_to: &str) -> Result<Vec<u8>, BackendError>;
}

/// A WebAuthn ceremony's start: the options for the browser, and what to keep until it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeremonyStart {
    /// JSON text for `navigator.credentials.create` or `.get` (`{"publicKey": {...}}`).
    pub options: String,
    /// The challenge, as the browser's answer will carry it: the key to find the state by.
    pub challenge: String,
    /// The adapter's state, opaque to the core.
    pub state: String,
}

/// A credential a registration ceremony verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPasskey {
    pub credential_id: Vec<u8>,
    /// The credential as the adapter stores it: opaque to the core.
    pub credential: String,
}

/// A verified sign-in with a passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub credential_id: Vec<u8>,
    /// The stored credential, updated (sign counter, backup state), when it changed.
    pub updated_credential: Option<String>,
}

/// Why a WebAuthn answer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// Malformed, for another challenge or origin, badly signed, a cloned authenticator: the
    /// caller's answer is refused.
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The WebAuthn ceremonies (passkeys): options for the browser, and the checks of its
/// answers. The relying party (id and origin) is the adapter's configuration.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait PasskeyCeremonies: Send + Sync + 'static {
    /// Options to create a discoverable credential for the user with handle `user_handle`,
    /// shown as `user_name` and `display_name`, excluding the credentials `existing`.
    ///
    /// # Errors
    /// [`CeremonyError::Backend`] when the options cannot be made.
    fn start_registration(
        &self,
        user_handle: uuid::Uuid,
        user_name: &str,
        display_name: &str,
        existing: &[Vec<u8>],
    ) -> Result<CeremonyStart, CeremonyError>;

    /// Checks the browser's answer (the `PublicKeyCredential` as JSON) to a registration
    /// against its `state`.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for an answer that does not verify.
    fn finish_registration(
        &self,
        state: &str,
        response: &str,
    ) -> Result<RegisteredPasskey, CeremonyError>;

    /// Options for a sign-in with any discoverable credential (no user named beforehand).
    ///
    /// # Errors
    /// [`CeremonyError::Backend`] when the options cannot be made.
    fn start_authentication(&self) -> Result<CeremonyStart, CeremonyError>;

    /// The challenge a browser's answer carries, to find its ceremony by.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for a malformed answer.
    fn challenge_of(&self, response: &str) -> Result<String, CeremonyError>;

    /// The credential id an assertion claims to be made with, unverified: which stored
    /// credential to check it against.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for a malformed answer.
    fn credential_of(&self, response: &str) -> Result<Vec<u8>, CeremonyError>;

    /// Checks an assertion against the ceremony's `state` and the stored `credential` of the
    /// user with handle `user_handle`.
    ///
    /// # Errors
    /// [`CeremonyError::Rejected`] for an assertion that does not verify.
    fn finish_authentication(
        &self,
        state: &str,
        response: &str,
        user_handle: uuid::Uuid,
        credential: &str,
    ) -> Result<VerifiedAssertion, CeremonyError>;
}
