//! Request and response bodies, spelled exactly as clients of the old service send and read them.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object, Union};
use serde::Deserialize;
use uuid::Uuid;

use super::schema::OneOfTwo;
use crate::domain::mfa::{Factor, Factors, Passkey};
use crate::domain::service::LoginStep;
use crate::domain::{Role, Session, SessionId, TokenPair, User};

// The validators below document the contract in the schema; the domain types enforce it
// (bodies are parsed with serde, not by poem-openapi). The patterns say "no control
// characters" (Unicode category Cc).

/// `POST /auth/register`. The email fields of the request bodies are declared `format: email`
/// in the published document (`http::complete_spec`).
#[derive(Debug, Deserialize, Object)]
pub struct RegisterRequest {
    /// An email address; `Alice@Example.com` and `alice@example.com` are one account, and so
    /// are addresses that only look alike.
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: String,
    /// 8 characters to 72 bytes (bcrypt hashes 72 bytes, and nothing is cut off), no control
    /// characters.
    #[oai(validator(
        min_length = 8,
        max_length = 72,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    ))]
    pub password: String,
    /// At most 255 characters, no control characters.
    #[oai(
        nullable,
        validator(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")
    )]
    pub full_name: Option<String>,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, Object)]
pub struct LoginRequest {
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: String,
    pub password: String,
}

/// `POST /auth/refresh`.
#[derive(Debug, Deserialize, Object)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh. It is spent by this call.
    pub refresh_token: String,
}

/// `POST /auth/password`.
#[derive(Debug, Deserialize, Object)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// Same policy as registration: 8 characters to 72 bytes, no control characters.
    #[oai(validator(
        min_length = 8,
        max_length = 72,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    ))]
    pub new_password: String,
}

/// `POST /auth/password/forgot`.
#[derive(Debug, Deserialize, Object)]
pub struct ForgotPasswordRequest {
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: String,
}

/// `POST /auth/password/reset`.
#[derive(Debug, Deserialize, Object)]
pub struct ResetPasswordRequest {
    /// The token of the reset link.
    pub token: String,
    /// Same policy as registration: 8 characters to 72 bytes, no control characters.
    #[oai(validator(
        min_length = 8,
        max_length = 72,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    ))]
    pub new_password: String,
}

/// `POST /auth/verify` and `POST /auth/email/confirm`.
#[derive(Debug, Deserialize, Object)]
pub struct LinkTokenRequest {
    /// The token of the link.
    pub token: String,
}

/// `POST /auth/email`.
#[derive(Debug, Deserialize, Object)]
pub struct ChangeEmailRequest {
    #[oai(validator(min_length = 3, max_length = 254))]
    pub new_email: String,
    pub current_password: String,
}

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    User,
    Admin,
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Self {
        match role {
            RoleName::User => Self::User,
            RoleName::Admin => Self::Admin,
        }
    }
}

impl From<Role> for RoleName {
    fn from(role: Role) -> Self {
        match role {
            Role::User => Self::User,
            Role::Admin => Self::Admin,
        }
    }
}

/// A second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum FactorName {
    Totp,
    Passkey,
}

impl FactorName {
    pub fn list(factors: Factors) -> Vec<Self> {
        factors
            .list()
            .into_iter()
            .map(|factor| match factor {
                Factor::Totp => Self::Totp,
                Factor::Passkey => Self::Passkey,
            })
            .collect()
    }
}

/// A passkey of the caller's.
#[derive(Debug, Object)]
pub struct PasskeyResponse {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The last sign-in with it.
    #[oai(nullable)]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<Passkey> for PasskeyResponse {
    fn from(passkey: Passkey) -> Self {
        Self {
            id: passkey.id,
            name: passkey.name,
            created_at: passkey.created_at,
            last_used_at: passkey.last_used_at,
        }
    }
}

/// `PATCH /auth/passkeys/{id}`.
#[derive(Debug, Deserialize, Object)]
pub struct RenamePasskeyRequest {
    /// At most 64 characters, no control characters, not blank; trimmed.
    #[oai(validator(
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    ))]
    pub name: String,
}

/// A user's second factors, as an admin sees them.
#[derive(Debug, Object)]
pub struct FactorsResponse {
    /// `totp`, `passkey`.
    pub factors: Vec<FactorName>,
}

/// A user, as every response shows one. Never a password or a hash.
#[derive(Debug, Object)]
pub struct UserResponse {
    pub id: i64,
    pub email: String,
    #[oai(nullable)]
    pub full_name: Option<String>,
    pub role: RoleName,
    pub is_active: bool,
    /// Whether the address was proved, by a verification or a reset link.
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    /// The second factors the user has: `totp`, `passkey`.
    pub factors: Vec<FactorName>,
}

impl UserResponse {
    pub fn new(user: User, factors: Factors) -> Self {
        Self {
            id: user.id.0,
            email: user.email.as_str().to_owned(),
            full_name: user.full_name.map(|n| n.as_str().to_owned()),
            role: user.role.into(),
            is_active: user.is_active,
            email_verified: user.email_verified,
            created_at: user.created_at,
            factors: FactorName::list(factors),
        }
    }
}

/// Tokens of a login or refresh.
#[derive(Debug, Object)]
pub struct TokenResponse {
    /// A JWT for the `Authorization: Bearer` header.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Opaque; spend it at `POST /auth/refresh` for a new pair.
    pub refresh_token: String,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            token_type: "bearer".into(),
            expires_in: pair.expires_in_seconds,
            refresh_token: pair.refresh_token,
        }
    }
}

/// What `POST /auth/login` answers a right password of a user with a second factor.
#[derive(Debug, Object)]
pub struct MfaRequiredResponse {
    /// Always `true`.
    pub mfa_required: bool,
    /// Opaque, single use, valid 5 minutes: pass it to `POST /auth/mfa/verify` with a code.
    pub mfa_token: String,
    /// How the login can be completed: `totp`, `recovery_code`.
    pub methods: Vec<String>,
}

/// The answer of `POST /auth/login`: tokens, or the second step it needs.
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum LoginResponse {
    Tokens(TokenResponse),
    MfaRequired(MfaRequiredResponse),
}

impl From<LoginStep> for LoginResponse {
    fn from(step: LoginStep) -> Self {
        match step {
            LoginStep::Done(pair) => Self::Tokens(pair.into()),
            LoginStep::SecondFactor(pending) => Self::MfaRequired(MfaRequiredResponse {
                mfa_required: true,
                mfa_token: pending.mfa_token,
                methods: pending.methods.into_iter().map(String::from).collect(),
            }),
        }
    }
}

/// `POST /auth/mfa/totp`: a new secret, active once confirmed.
#[derive(Debug, Object)]
pub struct TotpEnrolmentResponse {
    /// The secret in base32, for apps that take it typed.
    pub secret: String,
    /// The `otpauth://totp/...` URI, for apps that scan it.
    pub otpauth_uri: String,
}

/// `POST /auth/mfa/totp/confirm`.
#[derive(Debug, Deserialize, Object)]
pub struct TotpConfirmRequest {
    /// A current 6-digit code of the app.
    #[oai(validator(max_length = 32))]
    pub code: String,
}

/// `DELETE /auth/mfa/totp`: exactly one of a code and the password.
#[derive(Debug, Deserialize, Object)]
pub struct TotpRemovalRequest {
    /// A current 6-digit code of the app, or a recovery code.
    #[oai(validator(max_length = 64))]
    pub code: Option<String>,
    /// Instead of a code: the account's password.
    #[oai(validator(max_length = 1024))]
    pub password: Option<String>,
}

impl OneOfTwo for TotpRemovalRequest {
    const CHOICES: [&'static str; 2] = ["code", "password"];
}

/// `POST /auth/mfa/totp`: the account's password, asked again before a factor is added.
#[derive(Debug, Deserialize, Object)]
pub struct CurrentPasswordRequest {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub current_password: String,
}

/// `POST /auth/passkeys/register/start`: the caller proves themselves again before a passkey
/// is added, with exactly one of the account's password or, for a user with TOTP, a current
/// code or an unused recovery code.
#[derive(Debug, Deserialize, Object)]
pub struct FactorProofRequest {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub current_password: Option<String>,
    /// A current 6-digit TOTP code, or a recovery code.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub code: Option<String>,
}

impl OneOfTwo for FactorProofRequest {
    const CHOICES: [&'static str; 2] = ["current_password", "code"];
}

/// The recovery codes of a new TOTP factor: shown this once, stored only as hashes.
#[derive(Debug, Object)]
pub struct RecoveryCodesResponse {
    /// Ten single-use codes, each good for one login instead of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// `POST /auth/mfa/verify`: the second step of a login.
#[derive(Debug, Deserialize, Object)]
pub struct MfaVerifyRequest {
    /// The `mfa_token` of the login's first step.
    #[oai(validator(max_length = 256))]
    pub mfa_token: String,
    /// A current 6-digit TOTP code; or instead:
    #[oai(validator(max_length = 32))]
    pub code: Option<String>,
    /// one of the recovery codes.
    #[oai(validator(max_length = 64))]
    pub recovery_code: Option<String>,
}

impl OneOfTwo for MfaVerifyRequest {
    const CHOICES: [&'static str; 2] = ["code", "recovery_code"];
}

/// A plain message.
#[derive(Debug, Object)]
pub struct MessageResponse {
    pub message: String,
}

impl MessageResponse {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What a protected route says about its caller.
#[derive(Debug, Object)]
pub struct ProtectedResponse {
    pub message: String,
    pub user_id: i64,
    pub user_email: String,
    pub user_role: RoleName,
}

impl ProtectedResponse {
    pub fn new(message: impl Into<String>, user: &User) -> Self {
        Self {
            message: message.into(),
            user_id: user.id.0,
            user_email: user.email.as_str().to_owned(),
            user_role: user.role.into(),
        }
    }
}

/// One of the caller's sessions.
#[derive(Debug, Object)]
pub struct SessionResponse {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The last login or refresh.
    pub last_used_at: DateTime<Utc>,
    #[oai(nullable)]
    pub user_agent: Option<String>,
    #[oai(nullable)]
    pub ip: Option<String>,
    /// Whether the token of this request belongs to this session.
    pub current: bool,
}

impl SessionResponse {
    /// `current`: the caller's session, if its token has one.
    pub fn new(session: Session, current: Option<SessionId>) -> Self {
        Self {
            id: session.id.0,
            created_at: session.created_at,
            last_used_at: session.last_used_at,
            user_agent: session.client.user_agent,
            ip: session.client.ip,
            current: Some(session.id) == current,
        }
    }
}

/// A user as an administrator sees one: `UserResponse` and two more times.
#[derive(Debug, Object)]
pub struct AdminUser {
    pub id: i64,
    pub email: String,
    #[oai(nullable)]
    pub full_name: Option<String>,
    pub role: RoleName,
    pub is_active: bool,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    /// The last successful login.
    #[oai(nullable)]
    pub last_login_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for AdminUser {
    fn from(user: User) -> Self {
        Self {
            id: user.id.0,
            email: user.email.as_str().to_owned(),
            full_name: user.full_name.map(|n| n.as_str().to_owned()),
            role: user.role.into(),
            is_active: user.is_active,
            email_verified: user.email_verified,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
            updated_at: user.updated_at,
        }
    }
}

/// One page of users, newest first.
#[derive(Debug, Object)]
pub struct AdminUserPage {
    pub items: Vec<AdminUser>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// `POST /admin/users`.
#[derive(Debug, Deserialize, Object)]
pub struct CreateUserRequest {
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: String,
    #[oai(validator(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"))]
    pub full_name: Option<String>,
    /// `user` (the default) or `admin`.
    pub role: Option<RoleName>,
    /// Without one, the user gets a link by mail to choose it. 8 characters to 72 bytes, no
    /// control characters.
    #[oai(validator(
        min_length = 8,
        max_length = 72,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    ))]
    pub password: Option<String>,
}

/// `PATCH /admin/users/{id}`: absent fields stay as they are; `full_name: null` clears it, and
/// `null` for any other field is refused (it would read as "absent" and change nothing).
#[derive(Debug, Deserialize, Object)]
pub struct UpdateUserRequest {
    #[serde(default, deserialize_with = "not_null")]
    pub role: Option<RoleName>,
    #[serde(default, deserialize_with = "not_null")]
    pub is_active: Option<bool>,
    #[serde(default)]
    #[oai(validator(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"))]
    pub full_name: poem_openapi::types::MaybeUndefined<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub email_verified: Option<bool>,
}

/// A field that may be left out but is never `null`: serde's `Option` reads `null` as absent,
/// which would answer a request that asked for nothing with a 200.
pub(crate) fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom("must not be null")),
    }
}

/// A session as an administrator sees one.
#[derive(Debug, Object)]
pub struct AdminSession {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    #[oai(nullable)]
    pub user_agent: Option<String>,
    #[oai(nullable)]
    pub ip: Option<String>,
}

impl From<Session> for AdminSession {
    fn from(session: Session) -> Self {
        Self {
            id: session.id.0,
            created_at: session.created_at,
            last_used_at: session.last_used_at,
            user_agent: session.client.user_agent,
            ip: session.client.ip,
        }
    }
}

/// Whether a recorded action worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

/// One event of the audit trail.
#[derive(Debug, Object)]
pub struct AuditEventResponse {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `user.registered`, `login.succeeded`, `login.failed`, `session.ended`, ...
    pub kind: String,
    pub outcome: Outcome,
    /// The account concerned; kept after the account is deleted.
    #[oai(nullable)]
    pub user_id: Option<i64>,
    /// The admin who acted, when not the user.
    #[oai(nullable)]
    pub actor_id: Option<i64>,
    #[oai(nullable)]
    pub ip: Option<String>,
    #[oai(nullable)]
    pub user_agent: Option<String>,
    /// Never a password, a token or a hash.
    pub detail: std::collections::BTreeMap<String, String>,
}

impl From<crate::domain::AuditEvent> for AuditEventResponse {
    fn from(recorded: crate::domain::AuditEvent) -> Self {
        let event = recorded.event;
        Self {
            id: recorded.id,
            at: event.at,
            kind: event.kind.as_str().to_owned(),
            outcome: if event.success {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            user_id: event.user_id.map(|id| id.0),
            actor_id: event.actor_id.map(|id| id.0),
            ip: event.client.ip,
            user_agent: event.client.user_agent,
            detail: event.detail,
        }
    }
}

/// One page of audit events, newest first.
#[derive(Debug, Object)]
pub struct AuditPage {
    pub items: Vec<AuditEventResponse>,
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}
